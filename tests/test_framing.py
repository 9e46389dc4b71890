"""One framing rule for every output (issue 17, "frame the call honestly"): ``model_zoo.framing``,
``Zoo.call`` and the release's ``threshold.indeterminate_band``, and the PDF report and the DICOM
SR saying "indeterminate" where the rule does.

The rule is checked against hand-worked cases on both scales; the outputs against the tiny
release (``tiny_release``) and a copy of it that states a wider band (no new fit).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

from model_zoo import framing
from model_zoo.zoo import default_zoo_dir
from model_zoo.framing import INDETERMINATE, REASON_BAND, REASON_BOX, JitterSummary, frame_call

REPO = Path(__file__).resolve().parents[1]
DEMO_MANIFEST = default_zoo_dir() / "manifest.json"  # the bundled release


def release_with_band(release: Path, parent: Path, band: float, version: str) -> Path:
    """A verified copy of ``release`` whose manifest states ``threshold.indeterminate_band``."""
    from model_zoo.zoo import ReleaseWriter, verify_release

    import dataclasses

    manifest = verify_release(release)
    with ReleaseWriter(parent, manifest.name, version) as rw:
        for rel in manifest.files:
            rw.copy_file(rel, release / rel)
        threshold = dataclasses.replace(manifest.threshold, indeterminate_band=band)
        return rw.publish(manifest.replace(threshold=threshold))


def _flips(n_flips: int, n: int = 8) -> JitterSummary:
    return JitterSummary(n=n, n_flips=n_flips, p_min=0.1, p_max=0.9, p_sd=0.1)


def _raw(p: float, t: float, **kw) -> framing.Call:
    return frame_call(p, t, "malignant", "benign", **kw)


# ----------------------------------------------------------------------------- the rule, raw scale


@pytest.mark.parametrize(
    "p, t, word",
    [
        (0.53, 0.50, INDETERMINATE),
        (0.47, 0.50, INDETERMINATE),
        (0.50, 0.50, INDETERMINATE),
        (0.45, 0.50, INDETERMINATE),
        (0.55, 0.50, INDETERMINATE),  # both edges count, despite float rounding
        (0.449, 0.50, "benign"),
        (0.551, 0.50, "malignant"),
        (0.90, 0.50, "malignant"),
        (0.10, 0.50, "benign"),
        (0.08, 0.13, INDETERMINATE),
        (0.18, 0.13, INDETERMINATE),
        (0.079, 0.13, "benign"),
        (0.181, 0.13, "malignant"),
    ],
)
def test_rule_on_the_raw_scale(p, t, word):
    call = _raw(p, t)
    assert framing.DEFAULT_INDETERMINATE_BAND == 0.05
    assert call.word == word and not call.calibrated and call.scale == "raw"
    assert (call.p, call.threshold, call.band) == (p, t, 0.05)
    assert call.reasons == ((REASON_BAND,) if word == INDETERMINATE else ())


def test_band_is_the_release_fact_passed_in():
    assert _raw(0.42, 0.50).word == "benign"
    assert _raw(0.42, 0.50, band=0.1).word == INDETERMINATE
    assert _raw(0.53, 0.50, band=0.0).word == "malignant"
    assert _raw(0.50, 0.50, band=0.0).word == INDETERMINATE, "a tie is never a class word"


def test_jitter_flip_makes_any_probability_indeterminate():
    assert framing.JITTER_FLIP_MIN == 1
    assert _raw(0.90, 0.50, jitter=_flips(0)).word == "malignant"
    box = _raw(0.90, 0.50, jitter=_flips(1))
    assert box.word == INDETERMINATE and box.reasons == (REASON_BOX,)
    both = _raw(0.47, 0.50, jitter=_flips(6))
    assert both.reasons == (REASON_BOX, REASON_BAND)
    assert _raw(0.90, 0.50, jitter=JitterSummary(0, 0, None, None, None)).word == "malignant"


def test_sentences():
    assert _raw(0.80, 0.50).sentence == "Probability of malignant: 0.80 (threshold 0.50 -> above: malignant)"
    assert _raw(0.20, 0.50).sentence.endswith("below: benign)")
    ind = _raw(0.53, 0.50).sentence
    assert ind == "Probability of malignant: 0.53 (threshold 0.50) -> indeterminate - the call lies at the threshold"
    called = ind.split("->", 1)[1]
    assert "malignant" not in called and "benign" not in called
    assert _raw(0.47, 0.50, jitter=_flips(2)).sentence.endswith(
        "-> indeterminate - the call depends on the exact box / lies at the threshold"
    )


# ----------------------------------------------------------------------------- the rule, calibrated scale


def test_rule_on_the_calibrated_scale():
    # Raw 0.70 vs 0.50 is far from the threshold; calibrated 0.16 vs 0.13 lies inside the band.
    near = _raw(0.70, 0.50, p_calibrated=0.16, threshold_calibrated=0.13)
    assert near.calibrated and near.scale == "calibrated" and near.word == INDETERMINATE
    assert (near.p, near.threshold, near.p_raw, near.threshold_raw) == (0.16, 0.13, 0.70, 0.50)
    assert "0.16 (threshold 0.13)" in near.sentence
    assert "Raw stacker output 0.70 against its threshold 0.50" in near.scale_note
    # Raw 0.52 vs 0.50 would be inside the band; calibrated 0.80 vs 0.60 is not: the shown scale decides.
    far = _raw(0.52, 0.50, p_calibrated=0.80, threshold_calibrated=0.60)
    assert far.word == "malignant" and far.p == 0.80
    assert far.sentence == "Probability of malignant: 0.80 (threshold 0.60 -> above: malignant)"
    assert _raw(0.30, 0.50, p_calibrated=0.05, threshold_calibrated=0.13).word == "benign"


def test_a_calibration_that_flips_the_call_is_never_shown():
    flipped = _raw(0.62, 0.50, p_calibrated=0.30, threshold_calibrated=0.35)
    assert not flipped.calibrated and flipped.word == "malignant" and flipped.p == 0.62
    assert "disagrees" in flipped.scale_note
    assert _raw(0.62, 0.50).scale_note is None


@pytest.mark.parametrize("band", [-0.01, 0.5, 0.7, float("nan"), "wide", None, True])
def test_band_validation(band):
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        framing.check_band(band)
    with pytest.raises(ValueError):
        _raw(0.6, 0.5, band=band)


def test_jitter_summary_and_note():
    j = framing.jitter_summary(0.6, [0.7, 0.65, 0.45], 0.5)
    assert (j.n, j.n_flips, j.same_call, j.flips) == (3, 1, 2, True)
    assert not framing.jitter_summary(0.6, [0.7, 0.65, 0.55], 0.5).flips
    assert framing.jitter_summary(0.6, [], 0.5) == JitterSummary(0, 0, None, None, None)
    assert "changed for 1 of 3 boxes" in framing.jitter_sentence(j)
    assert framing.jitter_sentence(None) == "ROI-jitter check not run."
    call = _raw(0.9, 0.5, jitter=_flips(3))
    note = framing.jitter_note(call, _flips(3))
    assert note.startswith("Indeterminate - the call depends on the exact box") and "3 of 8" in note
    assert "'benign'" in note
    assert "'malignant'" in framing.jitter_note(_raw(0.2, 0.5), _flips(1))
    assert framing.jitter_note(call, _flips(0)) is None and framing.jitter_note(call, None) is None


# ----------------------------------------------------------------------------- Zoo.call and the release


@pytest.fixture(scope="module")
def zoo(tiny_release):
    from model_zoo.ensemble import load_zoo

    return load_zoo(tiny_release["release"])


@pytest.fixture(scope="module")
def wide(tiny_release, tmp_path_factory):
    """The tiny release stating a band of 0.49: nearly every case is indeterminate."""
    from model_zoo.ensemble import load_zoo

    return load_zoo(release_with_band(tiny_release["release"], tmp_path_factory.mktemp("band"), 0.49, "0.0.2"))


def test_zoo_call_is_the_rule_with_the_release_facts(zoo):
    cal = zoo.calibration
    assert cal is not None and zoo.threshold_calibrated is not None, "the tiny release is calibrated"
    assert zoo.indeterminate_band == 0.05
    t = zoo.threshold
    for p in (0.01, t - 0.2, t - 0.01, t, t + 0.01, t + 0.2, 0.99):
        p = float(np.clip(p, 0.001, 0.999))
        expected = frame_call(
            p,
            t,
            zoo.positive_class,
            zoo.negative_class,
            p_calibrated=float(cal.apply(p)),
            threshold_calibrated=zoo.threshold_calibrated,
            band=0.05,
        )
        assert zoo.call(p) == expected
    at = zoo.call(t)
    assert at.word == INDETERMINATE and at.calibrated == (cal.slope > 0)
    far = 0.999 if zoo.threshold_calibrated < 0.9 else 0.001
    assert zoo.call(far).word in (zoo.positive_class, zoo.negative_class)
    assert zoo.call(far, _flips(1)).word == INDETERMINATE


def test_zoo_band_comes_from_the_release(zoo, wide):
    assert wide.indeterminate_band == 0.49
    p = zoo.threshold + 0.2 if zoo.threshold < 0.7 else zoo.threshold - 0.2
    assert wide.call(p).band == 0.49
    assert wide.call(p).p == pytest.approx(zoo.call(p).p), "same scale, same probability"


def test_release_without_the_field_uses_the_library_default(tmp_path):
    from model_zoo.ensemble import Zoo
    from model_zoo.errors import IntegrityError

    from model_zoo.manifest import Manifest, StackerInfo, Task, ThresholdInfo

    base = Manifest(
        name="z",
        version="1.0.0",
        task=Task("t", "malignant", "benign"),
        members=(),
        stacker=StackerInfo(file="stacker.joblib", chosen="lr", age_fill=40.0),
        threshold=ThresholdInfo(value=0.4),
    )
    assert Zoo(tmp_path, base, [], None, None).indeterminate_band == framing.DEFAULT_INDETERMINATE_BAND
    stated = base.replace(threshold=ThresholdInfo(value=0.4, indeterminate_band=0.1))
    assert Zoo(tmp_path, stated, [], None, None).indeterminate_band == 0.1
    broken = base.replace(threshold=ThresholdInfo(value=0.4, indeterminate_band=0.6))
    with pytest.raises(IntegrityError, match="indeterminate_band"):
        Zoo(tmp_path, broken, [], None, None).indeterminate_band


# ----------------------------------------------------------------------------- config and fit


def test_config_band_is_validated():
    from model_zoo.errors import InputError
    from training.config import load_config
    from training.config import indeterminate_band

    cfg = load_config("tiny")
    assert cfg["threshold"]["indeterminate_band"] == 0.05 and indeterminate_band(cfg) == 0.05
    assert indeterminate_band(load_config("tiny", ["threshold.indeterminate_band=0.1"])) == 0.1
    assert indeterminate_band({"threshold": {"rule": "youden"}}) == 0.05, "absent: the library default"
    for bad in ("0.5", "-0.1", "wide", "null"):
        with pytest.raises(InputError, match="threshold.indeterminate_band"):
            indeterminate_band(load_config("tiny", [f"threshold.indeterminate_band={bad}"]))


def test_fit_refuses_a_bad_band_before_any_work(tmp_path):
    from model_zoo.errors import InputError
    from training.config import load_config
    from training.fit import fit

    cfg = load_config("tiny", ["threshold.indeterminate_band=0.5"])
    with pytest.raises(InputError, match="threshold.indeterminate_band"):
        fit(cfg, run_dir=tmp_path / "run", resume=False, progress=False, log=lambda *_: None)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_run_folder_from_before_the_band_still_resumes():
    from training.config import load_config
    from training.config import TRAINING_KEYS
    from training.config import resume_view as _resume_view

    cfg = load_config("tiny")
    old = json.loads(json.dumps(cfg))
    del old["threshold"]["indeterminate_band"]
    assert all(_resume_view(old).get(k) == _resume_view(cfg).get(k) for k in TRAINING_KEYS)
    wider = load_config("tiny", ["threshold.indeterminate_band=0.1"])
    assert _resume_view(old)["threshold"] != _resume_view(wider)["threshold"]


def test_fitted_release_carries_the_band(tiny_release, zoo):
    manifest = json.loads((tiny_release["release"] / "manifest.json").read_text())
    assert manifest["threshold"]["indeterminate_band"] == 0.05
    assert zoo.indeterminate_band == 0.05
    card = (tiny_release["release"] / "MODEL_CARD.md").read_text()
    assert "within 0.05 of it" in card and "indeterminate" in card


# ----------------------------------------------------------------------------- PDF and SR


def _pdf_strings(pdf: bytes) -> str:
    from test_dashboard_apptest import _pdf_strings as strings

    return strings(pdf)


def _pdf_text(pdf: bytes) -> str:
    """The PDF's shown text as one string: every text-show operator's string joined by spaces, so
    an assertion does not depend on where a long line wraps (the numbers' digits move the wrap)."""
    import re

    return " ".join(re.findall(r"\((.*?)\) Tj", _pdf_strings(pdf)))


def _headline(text: str) -> str:
    return next(line for line in text.splitlines() if "Probability of malignant" in line)


def test_pdf_says_indeterminate_in_the_band():
    from test_report_pdf import _report

    from model_zoo.report_pdf import build_case_report

    text = _pdf_strings(build_case_report(_report(p_ensemble=0.43, threshold=0.41)))
    assert "Probability of malignant: 0.43 (threshold 0.41) -> indeterminate - the call lies at the threshold" in text
    assert "-> above" not in text and "Indeterminate: read the result as neither benign nor malignant" in text
    boxed = _pdf_strings(build_case_report(_report(jitter=_flips(3))))
    assert "-> indeterminate - the call depends on the exact" in boxed and "same class call in 5 of 8" in boxed  # wraps
    plain = _pdf_strings(build_case_report(_report()))
    assert "-> above: malignant" in plain and "indeterminate" not in plain.lower()
    # A call framed with the release's band wins over the default.
    wide = frame_call(0.73, 0.41, "malignant", "benign", band=0.4)
    assert "-> indeterminate" in _pdf_strings(build_case_report(_report(call=wide)))


def _at_threshold(zoo, pixels):
    """A real prediction moved onto the threshold: inside the band on either scale."""
    box = (10.0, 10.0, 60.0, 60.0)
    pred = zoo.predict(pixels, box, age=30.0, sex="F", site="appendicular")
    return dataclasses.replace(
        pred, p_ensemble=zoo.threshold, p_calibrated=zoo.threshold_calibrated, label=zoo.label_for(zoo.threshold)
    ), box


def _rg3_header():
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG3_UNCR.dcm")
    if path is None:
        pytest.skip("pydicom-data's RG3_UNCR.dcm is not installed")
    return pydicom.dcmread(path, stop_before_pixels=True)


def _sr_call(sr) -> tuple[str, str]:
    import highdicom as hd

    (group,) = hd.sr.ComprehensiveSR.from_dataset(sr).content.get_planar_roi_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    return evaluation.value.value, evaluation.value.meaning


def test_pdf_and_sr_of_a_case_in_the_band(zoo):
    from model_zoo import imaging
    from model_zoo.pacs.study import prepare_writeback, simple_case_pdf

    header = _rg3_header()
    image = imaging.LoadedImage(
        pixels=np.random.default_rng(0).random((96, 96)).astype(np.float32),
        meta=imaging.ImageMeta(source_format="png", original_size=(96, 96)),
    )
    pred, box = _at_threshold(zoo, image.pixels)
    assert pred.label == zoo.positive_class, "the zoo's own label is a class word at the threshold"
    inputs = {"age": 30.0, "sex": "F", "site": "appendicular"}
    call = zoo.call(pred.p_ensemble)
    pdf = simple_case_pdf(zoo, image, box, "entered", inputs, pred, "a" * 64, call)
    assert "-> indeterminate - the call lies at the threshold" in _pdf_text(pdf)
    objects, _ = prepare_writeback(header, zoo, pred, box=box, roi_source="entered", inputs=inputs, pdf=pdf, call=call)
    assert _sr_call(objects["SR"]) == ("IND", INDETERMINATE)

    # Far from the threshold the SR codes the class word, as the page does; a flipping jitter box
    # makes that same case indeterminate in the SR too.
    far = 0.999 if zoo.threshold_calibrated < 0.9 else 0.001
    far_pred = dataclasses.replace(pred, p_ensemble=far, p_calibrated=float(zoo.calibration.apply(far)), label=zoo.label_for(far))
    objects, _ = prepare_writeback(
        header, zoo, far_pred, box=box, roi_source="entered", inputs=inputs, pdf=None, call=zoo.call(far)
    )
    word = zoo.call(far).word
    assert _sr_call(objects["SR"]) == ("POS" if word == zoo.positive_class else "NEG", word)
    objects, _ = prepare_writeback(
        header, zoo, far_pred, box=box, roi_source="entered", inputs=inputs, pdf=None, call=zoo.call(far, _flips(2))
    )
    assert _sr_call(objects["SR"]) == ("IND", INDETERMINATE)


def test_batch_pdf_uses_the_release_framing(wide, tmp_path):
    """The Batch page's PDF pack frames each row's call with ``Zoo.call`` (the release's band)."""
    import zipfile

    import pandas as pd
    from PIL import Image

    from dashboard.batch_logic import reports_zip

    path = tmp_path / "case.png"
    Image.fromarray((np.random.default_rng(1).random((96, 96)) * 255).astype(np.uint8)).save(path)
    p = wide.threshold
    row = {
        "image": "case.png",
        "image_path": str(path),
        "error": "",
        "prediction": wide.label_for(p),
        "p_ensemble": p,
        "p_clinic": 0.5,
        "roi_x0": 10.0,
        "roi_y0": 10.0,
        "roi_x1": 60.0,
        "roi_y1": 60.0,
        "roi_source": "given",
        "age": 30.0,
        "sex": "F",
        "site": "appendicular",
        **{f"p_{mid}": 0.5 for mid in wide.member_ids},
    }
    with zipfile.ZipFile(io.BytesIO(reports_zip(wide, pd.DataFrame([row])))) as zf:
        (name,) = zf.namelist()
        text = _pdf_strings(zf.read(name))
    assert "-> indeterminate - the call lies at the threshold" in text
    if wide.calibration is not None and wide.calibration.slope > 0:
        assert "(calibrated)" in text, "the calibrated scale, as on the Case page"


# ----------------------------------------------------------------------------- ROI jitter


class _CountingOod:
    """An OOD model stand-in that counts how often it is asked."""

    threshold = 1.0

    def __init__(self):
        self.calls = 0

    def score(self, features):
        self.calls += 1
        return np.zeros(1)

    def is_ood(self, score):
        return False


def test_jitter_probs_are_the_predicted_probabilities_with_one_gate_per_image(zoo, monkeypatch):
    """Each jittered box's probability is what ``predict`` gives for that box, but the OOD gate
    and the clinical checks run once per image (the caller's ``predict``), not once per box."""
    import copy

    from model_zoo import ensemble, roi

    pixels = np.random.default_rng(3).random((96, 96)).astype(np.float32)
    box, inputs = (10.0, 12.0, 60.0, 70.0), {"age": 30.0, "sex": "F", "site": "appendicular"}
    boxes = roi.jitter_boxes(box, (96, 96), framing.JITTER_BOXES, seed=0)
    expected = [zoo.predict(pixels, b, **inputs).p_ensemble for b in boxes]
    gated = copy.copy(zoo)
    gated.ood = _CountingOod()
    encoded = []
    real = ensemble.clinical_vector
    monkeypatch.setattr(ensemble, "clinical_vector", lambda *a, **k: encoded.append(a) or real(*a, **k))
    got = gated.jitter_probs(pixels, box, **inputs)
    assert got == pytest.approx(expected, abs=1e-6) and len(got) == framing.JITTER_BOXES
    assert gated.ood.calls == 0, "no OOD score per jittered box"
    assert len(encoded) == 1, "the clinical values are checked once per image"
    gated.predict(pixels, box, **inputs)
    assert gated.ood.calls == 1, "predict keeps its gate"
    assert gated.jitter_probs(pixels, box, **inputs, n=0) == []


def test_jitter_probs_still_refuse_bad_clinical_values(zoo):
    from model_zoo.errors import InputError

    pixels = np.random.default_rng(3).random((96, 96)).astype(np.float32)
    with pytest.raises(InputError):
        zoo.jitter_probs(pixels, (10.0, 10.0, 60.0, 60.0), age=500.0)


# ----------------------------------------------------------------------------- batch: predict and the Batch page


def _few_cases(tiny_release, folder: Path, n: int = 4) -> Path:
    import pandas as pd

    cases = Path(tiny_release["cases"])
    table = pd.read_csv(cases).head(n)
    table["image"] = [str((cases.parent / v).resolve()) for v in table["image"]]
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "cases.csv", index=False)
    return folder / "cases.csv"


def test_predict_csv_gives_the_framed_call_word(wide, zoo, tiny_release, tmp_path):
    """``prediction`` is the Case page's word (``Zoo.call``: the release's band and scale), not the
    class word at the raw threshold; ``call_basis`` says on what it was decided. Every contract
    column stays."""
    import pandas as pd

    from model_zoo.predict import predict_cases

    table = _few_cases(tiny_release, tmp_path / "in")
    for release in (wide, zoo):
        out = predict_cases(release, table, tmp_path / f"{release.version}.csv", roi_mode="given")
        written = pd.read_csv(tmp_path / f"{release.version}.csv", keep_default_na=False)
        assert {
            "p_ensemble",
            "roi_x0",
            "roi_y0",
            "roi_x1",
            "roi_y1",
            "error",
            "prediction",
            "call_basis",
            *[f"p_{m}" for m in release.member_ids],
        } <= set(written.columns)
        assert (written["error"] == "").all()
        calls = [release.call(p) for p in out["p_ensemble"]]
        assert list(written["prediction"]) == [c.word for c in calls]
        assert list(written["call_basis"]) == ["; ".join([c.scale, *c.reasons]) for c in calls]
    # The wide band (0.49) holds every one of these cases: the raw class word would be wrong.
    assert set(out["prediction"]) <= {zoo.positive_class, zoo.negative_class, INDETERMINATE}
    wide_out = pd.read_csv(tmp_path / f"{wide.version}.csv", keep_default_na=False)
    assert set(wide_out["prediction"]) == {INDETERMINATE}
    assert set(wide_out["call_basis"]) == {f"calibrated; {REASON_BAND}"}


def test_predict_resume_reframes_kept_rows(wide, tiny_release, tmp_path):
    """A resumed run keeps the finished rows' probabilities but frames their word again, so an
    output written with bare class words reads as a fresh run's would."""
    import pandas as pd

    from model_zoo.predict import predict_cases

    table = _few_cases(tiny_release, tmp_path / "in", n=2)
    out_path = tmp_path / "out.csv"
    predict_cases(wide, table, out_path)
    old = pd.read_csv(out_path, keep_default_na=False)
    old["prediction"] = [wide.label_for(p) for p in old["p_ensemble"]]  # the pre-framing output
    old = old.drop(columns=["call_basis"])
    old.to_csv(out_path, index=False)
    again = predict_cases(wide, table, out_path, resume=True)
    assert list(again["p_ensemble"]) == pytest.approx(list(old["p_ensemble"]))
    assert list(again["prediction"]) == [INDETERMINATE] * 2


def test_batch_page_rows_show_the_framed_call_word(wide, tiny_release, tmp_path):
    """The Batch page's table (``run_batch``) shows the same word as ``predict`` for each row."""
    import zipfile

    import pandas as pd

    from dashboard.batch_logic import run_batch

    cases = Path(tiny_release["cases"])
    table = pd.read_csv(cases).head(3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel in table["image"]:
            zf.write(cases.parent / rel, rel)
    result = run_batch(wide, table.to_csv(index=False).encode(), buf.getvalue(), roi_mode="given")
    assert result.n_failed == 0
    assert list(result.frame["prediction"]) == [wide.call(p).word for p in result.frame["p_ensemble"]]
    assert set(result.frame["prediction"]) == {INDETERMINATE}, "the wide band holds these cases"
    assert "call_basis" in result.frame.columns
