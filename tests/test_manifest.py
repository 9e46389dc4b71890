"""The typed release schema (``model_zoo.manifest``): the bundled release round-trips exactly,
a manifest of another format version is refused in words, no other module reads manifest keys,
and the bundled zoo's prediction on the sample case is what it was before the schema existed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from model_zoo.errors import InputError
from model_zoo.manifest import (
    FORMAT_VERSION,
    Manifest,
    UnsupportedFormatError,
    check_format_version,
    read_manifest_file,
)
from model_zoo.zoo import BUNDLED_ZOO_PARENT, default_zoo_dir, sha256_bytes, verify_release

REPO = Path(__file__).resolve().parents[1]
BUNDLED = BUNDLED_ZOO_PARENT / "demo-btxrd-2.2.4"


def test_bundled_manifest_round_trips_exactly():
    raw = (BUNDLED / "manifest.json").read_bytes()
    d = json.loads(raw)
    m = Manifest.from_dict(d)
    assert m.to_dict() == d
    assert m.to_json_bytes() == raw  # the writer reproduces the sealed bytes (its sha256 too)
    assert Manifest.from_dict(m.to_dict()) == m


def test_bundled_manifest_typed_fields():
    m = verify_release(BUNDLED)
    assert (m.name, m.version, m.format_version) == ("demo-btxrd", "2.2.4", FORMAT_VERSION)
    assert m.task.positive_class == "malignant" and m.task.negative_class == "benign"
    assert m.member_ids == ["effnet_b3", "effnet_b4", "vit"]
    assert m.members[0].spec.member_id == "effnet_b3" and m.members[0].weights in m.files
    assert m.threshold.chosen_on == "val" and m.threshold.indeterminate_band is None
    assert m.calibration is not None and m.calibration.method == "platt"
    assert m.localiser is not None and m.localiser.weights in m.files
    assert m.ood is not None and m.ood.file in m.files
    assert m.derived_from is not None and m.derived_from.release == "demo-btxrd 2.2.3"
    assert m.created == "2026-12-07T22:12:37+00:00"
    assert "centre3" in m.data.external and m.data.external["centre3"].n == 232


def test_omitted_sections_stay_omitted_and_unknown_keys_are_kept():
    d = json.loads((BUNDLED / "manifest.json").read_text())
    for key in ("ood", "explain", "derived_from", "localiser", "evaluation", "calibration"):
        d.pop(key)
    d["threshold"].pop("value_calibrated")
    d["members"][0].pop("trainable")
    d["future_section"] = {"a": 1}
    d["stacker"]["future_field"] = [1, 2]
    m = Manifest.from_dict(d)
    assert m.ood is None and m.localiser is None and m.calibration is None and m.evaluation is None
    assert m.to_dict() == d


@pytest.mark.parametrize(("version", "word"), [(FORMAT_VERSION + 1, "newer"), (0, "older")])
def test_other_format_versions_are_refused_in_words(version, word):
    with pytest.raises(UnsupportedFormatError, match=word) as info:
        check_format_version(version)
    assert isinstance(info.value, InputError)
    d = json.loads((BUNDLED / "manifest.json").read_text())
    d["format_version"] = version
    with pytest.raises(UnsupportedFormatError, match=f"format_version {version} is {word}"):
        Manifest.from_dict(d)


def test_verify_release_refuses_a_newer_format(tmp_path):
    dest = tmp_path / "demo-btxrd-9.0.0"
    shutil.copytree(BUNDLED, dest)
    d = json.loads((dest / "manifest.json").read_text())
    d["format_version"] = FORMAT_VERSION + 1
    blob = json.dumps(d, indent=2, sort_keys=True).encode()
    (dest / "manifest.json").write_bytes(blob)
    (dest / "manifest.sha256").write_text(sha256_bytes(blob) + "\n", encoding="ascii")
    with pytest.raises(InputError, match="newer than this model_zoo reads"):
        verify_release(dest)
    with pytest.raises(UnsupportedFormatError):
        read_manifest_file(dest)


def test_format_version_missing_or_not_a_number():
    with pytest.raises(UnsupportedFormatError, match="not a whole number"):
        check_format_version(None)
    with pytest.raises(UnsupportedFormatError, match="not a whole number"):
        check_format_version("1")


# Subscripting or .get() on something called "manifest" (``manifest["x"]``, ``zoo.manifest.get("x")``,
# ``manifest.get('x')``) anywhere but the schema module means a key string outside the schema.
_KEY_ACCESS = re.compile(r"""\bmanifest\s*(\[|\.get\s*\()""")


def test_no_manifest_key_access_outside_the_schema_module():
    offenders = []
    for package in ("model_zoo", "training", "dashboard"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "model_zoo" / "manifest.py":
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if _KEY_ACCESS.search(code):
                    offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "manifest keys read outside model_zoo/manifest.py:\n" + "\n".join(offenders)


# The bundled zoo on the sample case, recorded with the code before the typed schema (dict manifest).
BEFORE = {
    "p_ensemble": 0.4635423713158924,
    "p_members": {"effnet_b3": 0.8556473080124277, "effnet_b4": 0.048742802470827365, "vit": 0.6145797378047736},
    "p_clinic": 0.16529012245787836,
    "p_calibrated": 0.4533392543737679,
    "ood_score": 0.771281086648531,
    "threshold": 0.4683196275617116,
    "label": "benign",
    "band": 0.05,
    "threshold_calibrated": 0.45787755052618045,
}


def test_bundled_prediction_on_the_sample_case_is_unchanged():
    from model_zoo.ensemble import load_zoo
    from model_zoo.imaging import load_image
    from model_zoo.sample import sample_case

    try:
        case = sample_case()
    except InputError as err:
        pytest.skip(str(err))
    if default_zoo_dir() != BUNDLED:
        pytest.skip("MODEL_ZOO_DIR names another release")
    zoo = load_zoo(BUNDLED)
    assert isinstance(zoo.manifest, Manifest)
    pixels = load_image(case["path"]).pixels
    pred = zoo.predict(pixels, case["roi_box"], age=case["age"], sex=case["sex"], site=case["site"])
    assert pred.p_ensemble == pytest.approx(BEFORE["p_ensemble"], abs=1e-6)
    assert pred.p_members == pytest.approx(BEFORE["p_members"], abs=1e-6)
    assert pred.p_clinic == pytest.approx(BEFORE["p_clinic"], abs=1e-6)
    assert pred.p_calibrated == pytest.approx(BEFORE["p_calibrated"], abs=1e-6)
    assert pred.ood_score == pytest.approx(BEFORE["ood_score"], abs=1e-6)
    assert pred.threshold == pytest.approx(BEFORE["threshold"], abs=1e-12)
    assert pred.label == BEFORE["label"]
    assert zoo.indeterminate_band == BEFORE["band"]
    assert zoo.threshold_calibrated == pytest.approx(BEFORE["threshold_calibrated"], abs=1e-9)
