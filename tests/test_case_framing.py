"""Honest framing of the Case page's call (issue 17, "Deliver" 3): the indeterminate band, the
ROI-jitter flip rule, PPV/NPV in plain words and why the ensemble can lie outside its members.

The pure functions live in ``dashboard.case_logic``; one AppTest checks that the sample case
still renders with them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dashboard import case_logic as cl

REPO = Path(__file__).resolve().parents[1]
DEMO_MANIFEST = REPO / "assets" / "zoo" / "demo-btxrd-2.1.3" / "manifest.json"


def _jitter(n: int, same: int) -> dict:
    return {"n": n, "same_call": same, "p_min": 0.1, "p_max": 0.9, "p_sd": 0.1, "probs": [0.5] * n}


def _head(p: float, t: float) -> cl.Headline:
    return cl.headline(p, t, None, None, "malignant", "benign")


# ----------------------------------------------------------------------------- band


@pytest.mark.parametrize("p, t, inside", [
    (0.45, 0.50, True), (0.55, 0.50, True),  # both edges count, despite float rounding
    (0.50, 0.50, True),
    (0.449, 0.50, False), (0.551, 0.50, False),
    (0.08, 0.13, True), (0.18, 0.13, True), (0.079, 0.13, False), (0.181, 0.13, False),
])
def test_threshold_band_edges(p, t, inside):
    assert cl.INDETERMINATE_BAND == 0.05
    assert cl.in_threshold_band(p, t) is inside


def test_band_is_a_parameter():
    assert not cl.in_threshold_band(0.42, 0.5)
    assert cl.in_threshold_band(0.42, 0.5, band=0.1)


# ----------------------------------------------------------------------------- flip rule


def test_jitter_flip_rule():
    assert cl.JITTER_FLIP_MIN == 1
    assert not cl.jitter_flips(None)
    assert not cl.jitter_flips({"n": 0, "same_call": 0})
    assert not cl.jitter_flips(_jitter(8, 8))
    assert cl.jitter_flips(_jitter(8, 7))  # one box of eight is enough
    assert cl.jitter_flips(_jitter(8, 0))
    assert not cl.jitter_flips(_jitter(8, 7), min_flips=2)
    # The summary the page computes feeds the rule directly.
    assert cl.jitter_flips(cl.jitter_summary(0.6, [0.7, 0.65, 0.45], 0.5))
    assert not cl.jitter_flips(cl.jitter_summary(0.6, [0.7, 0.65, 0.55], 0.5))


def test_indeterminate_reasons():
    assert cl.indeterminate_reasons(0.9, 0.5, None) == []
    assert cl.indeterminate_reasons(0.9, 0.5, _jitter(8, 8)) == []
    assert cl.indeterminate_reasons(0.52, 0.5, None) == [cl.REASON_BAND]
    assert cl.indeterminate_reasons(0.9, 0.5, _jitter(8, 5)) == [cl.REASON_BOX]
    assert cl.indeterminate_reasons(0.52, 0.5, _jitter(8, 5)) == [cl.REASON_BOX, cl.REASON_BAND]


# ----------------------------------------------------------------------------- headline


def test_headline_outside_band_keeps_the_hard_word():
    head = _head(0.80, 0.50)
    framed = cl.framed_headline(head, "malignant", None)
    assert framed.sentence == head.sentence
    assert framed.sentence.endswith("-> above: malignant)")
    assert cl.framed_headline(_head(0.20, 0.50), "malignant", _jitter(8, 8)).sentence.endswith("below: benign)")


def test_headline_in_band_is_indeterminate_without_a_class_word():
    framed = cl.framed_headline(_head(0.53, 0.50), "malignant", None)
    assert framed.sentence == "Probability of malignant: 0.53 (threshold 0.50) -> indeterminate - the call lies at the threshold"
    call = framed.sentence.split("->", 1)[1]
    assert "malignant" not in call and "benign" not in call
    assert framed.p == 0.53 and framed.threshold == 0.50


def test_headline_jitter_flip_and_both_reasons():
    box = cl.framed_headline(_head(0.90, 0.50), "malignant", _jitter(8, 2)).sentence
    assert box.endswith("-> indeterminate - the call depends on the exact box")
    both = cl.framed_headline(_head(0.47, 0.50), "malignant", _jitter(8, 6)).sentence
    assert both.endswith("-> indeterminate - the call depends on the exact box / lies at the threshold")


def test_headline_band_uses_the_calibrated_scale_when_shown():
    # Raw 0.70 vs 0.50 is far from the threshold; calibrated 0.16 vs 0.13 is inside the band.
    head = cl.headline(0.70, 0.50, 0.16, 0.13, "malignant", "benign")
    assert head.calibrated
    framed = cl.framed_headline(head, "malignant", None)
    assert "indeterminate" in framed.sentence and "0.16 (threshold 0.13)" in framed.sentence
    assert framed.calibrated and framed.raw_note == head.raw_note


def test_jitter_note_names_the_other_call():
    assert cl.jitter_indeterminate_note(_jitter(8, 8), "benign", "malignant", 0.9, 0.5) is None
    assert cl.jitter_indeterminate_note(None, "benign", "malignant", 0.9, 0.5) is None
    note = cl.jitter_indeterminate_note(_jitter(8, 5), "benign", "malignant", 0.9, 0.5)
    assert note.startswith("Indeterminate - the call depends on the exact box") and "3 of 8" in note
    assert "'benign'" in note
    assert "'malignant'" in cl.jitter_indeterminate_note(_jitter(8, 7), "benign", "malignant", 0.2, 0.5)


# ----------------------------------------------------------------------------- PPV / NPV


@pytest.mark.parametrize("x, words", [
    (0.28, "about 1 time in 4"), (0.93, "about 9 times in 10"), (0.10, "about 1 time in 10"),
    (0.45, "about 1 time in 2"), (0.50, "about 5 times in 10"), (0.74, "about 7 times in 10"),
    (0.97, "about 97 times in 100"), (0.999, "about 99 times in 100"), (0.0, "never"), (1.0, "every time"),
])
def test_times_in(x, words):
    assert cl.times_in(x) == words


def _manifest(ppv=0.28, npv=0.93, kind="external", n=232, n_pos=31) -> dict:
    return {"evaluation": {
        "test": {"kind": "internal", "n": 269, "n_positive": 47, "ensemble": {"ppv": 0.56, "npv": 0.94}},
        "centre3": {"kind": kind, "n": n, "n_positive": n_pos, "ensemble": {"ppv": ppv, "npv": npv}},
    }}


def test_ppv_npv_sentence_from_the_external_block():
    s = cl.ppv_npv_sentence(_manifest(), "malignant", "benign")
    assert s.startswith("At a hospital the model had not seen (centre3), a 'malignant' call was right about 1 time "
                        "in 4 and a 'benign' call about 9 times in 10")
    assert "31 of 232" in s
    # The words follow the numbers (none hard-coded), and the internal block is never quoted.
    s2 = cl.ppv_npv_sentence(_manifest(ppv=0.5, npv=0.7), "malignant", "benign")
    assert "right about 5 times in 10" in s2 and "call about 7 times in 10" in s2


def test_ppv_npv_sentence_absent_without_external_numbers():
    assert cl.ppv_npv_sentence({}, "malignant", "benign") is None
    assert cl.ppv_npv_sentence(_manifest(kind="internal"), "malignant", "benign") is None
    assert cl.ppv_npv_sentence(_manifest(ppv=None), "malignant", "benign") is None
    assert cl.ppv_npv_sentence(_manifest(npv="n/a"), "malignant", "benign") is None


@pytest.mark.skipif(not DEMO_MANIFEST.exists(), reason="demo release not present")
def test_ppv_npv_sentence_on_the_demo_release():
    manifest = json.loads(DEMO_MANIFEST.read_text())
    s = cl.ppv_npv_sentence(manifest, "malignant", "benign")
    assert "'malignant' call was right about 1 time in 4" in s  # PPV 0.28 at centre3
    assert "'benign' call about 9 times in 10" in s  # NPV 0.93


# ----------------------------------------------------------------------------- outside the members


def test_outside_members_condition():
    members = {"a": 0.40, "b": 0.63, "c": 0.55}
    assert cl.outside_members(0.74, members) == "above"
    assert cl.outside_members(0.30, members) == "below"
    assert cl.outside_members(0.63, members) is None  # equal to the top member is inside
    assert cl.outside_members(0.40, members) is None
    assert cl.outside_members(0.50, members) is None
    assert cl.outside_members(0.5, {}) is None


def test_outside_members_caption():
    members = {"a": 0.40, "b": 0.63}
    assert cl.outside_members_caption(0.50, members, 0.8, "malignant") is None
    cap = cl.outside_members_caption(0.74, members, 0.81, "malignant")
    assert "above every image member (highest 0.63)" in cap
    assert "age, sex and site" in cap and "not an average" in cap and "0.81" in cap
    low = cl.outside_members_caption(0.20, members, None, "malignant")
    assert "below every image member (lowest 0.40)" in low and "clinic-only" not in low


# ----------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def dash_env(tiny_release, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("framing")
    saved = {k: os.environ.get(k) for k in ("MODEL_ZOO_DIR", "MODEL_ZOO_AUDIT_LOG")}
    os.environ["MODEL_ZOO_DIR"] = str(tiny_release["release"])
    os.environ["MODEL_ZOO_AUDIT_LOG"] = str(tmp / "audit.jsonl")
    yield tiny_release
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_case_page_sample_renders_the_framed_call(dash_env):
    from streamlit.testing.v1 import AppTest

    from model_zoo import imaging
    from model_zoo.ensemble import load_zoo
    from model_zoo.sample import sample_case

    zoo = load_zoo(dash_env["release"])
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180).run()
    at.button(key="case_load_sample").click().run()
    at.checkbox(key="case_confirm").check().run()
    assert not at.exception, [e.value for e in at.exception]

    s = sample_case()
    pixels = imaging.load_image(s["path"]).pixels
    ref = zoo.predict(pixels, s["roi_box"], age=None, sex="F", site="appendicular")
    head = cl.prediction_headline(zoo, ref)
    shown = [m.value for m in at.markdown if m.value.startswith("#### Probability of")]
    # First run: the jitter check has not run when the headline is drawn -> the band alone decides.
    assert shown == [f"#### {cl.framed_headline(head, zoo.positive_class, None).sentence}"]
    ppv = cl.ppv_npv_sentence(zoo.manifest, zoo.positive_class, zoo.negative_class)
    assert (ppv in [m.value for m in at.markdown]) if ppv else True
    outside = cl.outside_members_caption(ref.p_ensemble, ref.p_members, ref.p_clinic, zoo.positive_class)
    assert (outside in [c.value for c in at.caption]) is (outside is not None)

    # A rerun (opacity) reads the cached jitter result: the headline includes the flip rule.
    j = cl.jitter_summary(ref.p_ensemble, cl.jitter_probs(zoo, pixels, s["roi_box"], None, "F", "appendicular",
                                                          n=8), ref.threshold)
    note = cl.jitter_indeterminate_note(j, zoo.negative_class, zoo.positive_class, ref.p_ensemble, ref.threshold)
    assert (note in [w.value for w in at.warning]) if note else True
    at.slider(key="case_opacity").set_value(0.8).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [m.value for m in at.markdown if m.value.startswith("#### Probability of")]
    assert shown == [f"#### {cl.framed_headline(head, zoo.positive_class, j).sentence}"]


def test_case_page_renders_an_indeterminate_call(dash_env, monkeypatch):
    """With a band wide enough to hold the sample, the page shows "indeterminate" and no class word."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(cl, "INDETERMINATE_BAND", 1.0)
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180).run()
    at.button(key="case_load_sample").click().run()
    at.checkbox(key="case_confirm").check().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [m.value for m in at.markdown if m.value.startswith("#### Probability of")]
    assert len(shown) == 1 and "-> indeterminate - the call" in shown[0] and "lies at the threshold" in shown[0]
    call = shown[0].split("->", 1)[1]
    assert "benign" not in call and "malignant" not in call
