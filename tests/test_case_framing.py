"""Honest framing of the Case page's call (issue 17, "Deliver" 3): PPV/NPV in plain words, why the
ensemble can lie outside its members, and the page showing the call of ``Zoo.call``.

The call's rule (band, ROI-jitter flips, scale) lives in ``model_zoo.framing`` and is tested in
``test_framing.py``; the AppTests here check that the page shows exactly that call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dashboard import case_logic as cl
from model_zoo import framing
from model_zoo.manifest import Manifest
from model_zoo.zoo import default_zoo_dir

REPO = Path(__file__).resolve().parents[1]
# The bundled release, whichever version it is (so a release swap needs no test edit).
DEMO_MANIFEST = default_zoo_dir() / "manifest.json"


# ----------------------------------------------------------------------------- PPV / NPV


@pytest.mark.parametrize(
    "x, words",
    [
        (0.28, "about 1 time in 4"),
        (0.93, "about 9 times in 10"),
        (0.10, "about 1 time in 10"),
        (0.45, "about 1 time in 2"),
        (0.50, "about 5 times in 10"),
        (0.74, "about 7 times in 10"),
        (0.97, "about 97 times in 100"),
        (0.999, "about 99 times in 100"),
        (0.0, "never"),
        (1.0, "every time"),
    ],
)
def test_times_in(x, words):
    assert cl.times_in(x) == words


def _manifest(ppv=0.28, npv=0.93, kind="external", n=232, n_pos=31) -> Manifest:
    return _demo().replace(
        evaluation={
            "test": {"kind": "internal", "n": 269, "n_positive": 47, "ensemble": {"ppv": 0.56, "npv": 0.94}},
            "centre3": {"kind": kind, "n": n, "n_positive": n_pos, "ensemble": {"ppv": ppv, "npv": npv}},
        }
    )


def _demo() -> Manifest:
    """The bundled demo release's manifest (the typed record the helpers take)."""
    return Manifest.from_dict(json.loads(DEMO_MANIFEST.read_text()))


def test_ppv_npv_sentence_from_the_external_block():
    s = cl.ppv_npv_sentence(_manifest(), "malignant", "benign")
    assert s.startswith(
        "At a hospital the model had not seen (centre3), a 'malignant' call was right about 1 time "
        "in 4 and a 'benign' call about 9 times in 10"
    )
    assert "31 of 232" in s
    # The words follow the numbers (none hard-coded), and the internal block is never quoted.
    s2 = cl.ppv_npv_sentence(_manifest(ppv=0.5, npv=0.7), "malignant", "benign")
    assert "right about 5 times in 10" in s2 and "call about 7 times in 10" in s2


def test_ppv_npv_sentence_absent_without_external_numbers():
    assert cl.ppv_npv_sentence(_demo().replace(evaluation=None), "malignant", "benign") is None
    assert cl.ppv_npv_sentence(_manifest(kind="internal"), "malignant", "benign") is None
    assert cl.ppv_npv_sentence(_manifest(ppv=None), "malignant", "benign") is None
    assert cl.ppv_npv_sentence(_manifest(npv="n/a"), "malignant", "benign") is None


@pytest.mark.skipif(not DEMO_MANIFEST.exists(), reason="demo release not present")
def test_ppv_npv_sentence_on_the_demo_release():
    manifest = json.loads(DEMO_MANIFEST.read_text())
    s = cl.ppv_npv_sentence(Manifest.from_dict(manifest), "malignant", "benign")
    external = next(b for b in manifest["evaluation"].values() if b.get("kind") == "external")["ensemble"]
    # the words follow the release's own external PPV/NPV (2.2.4 at centre 3: 0.41 and 0.92)
    assert f"'malignant' call was right {cl.times_in(external['ppv'])}" in s
    assert f"'benign' call {cl.times_in(external['npv'])}" in s


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
    shown = [m.value for m in at.markdown if m.value.startswith("#### Probability of")]
    # First run: the jitter check has not run when the headline is drawn -> the band alone decides.
    assert shown == [f"#### {zoo.call(ref.p_ensemble).sentence}"]
    ppv = cl.ppv_npv_sentence(zoo.manifest, zoo.positive_class, zoo.negative_class)
    assert (ppv in [m.value for m in at.markdown]) if ppv else True
    outside = cl.outside_members_caption(ref.p_ensemble, ref.p_members, ref.p_clinic, zoo.positive_class)
    assert (outside in [c.value for c in at.caption]) is (outside is not None)

    # A rerun (opacity) reads the cached jitter result: the headline includes the flip rule.
    probs = zoo.jitter_probs(pixels, s["roi_box"], age=None, sex="F", site="appendicular", n=framing.JITTER_BOXES)
    j = framing.jitter_summary(ref.p_ensemble, probs, ref.threshold)
    note = framing.jitter_note(zoo.call(ref.p_ensemble, j), j)
    assert (note in [w.value for w in at.warning]) if note else True
    at.slider(key="case_opacity").set_value(0.8).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [m.value for m in at.markdown if m.value.startswith("#### Probability of")]
    assert shown == [f"#### {zoo.call(ref.p_ensemble, j).sentence}"]


def test_case_page_renders_an_indeterminate_call(dash_env, tmp_path, monkeypatch):
    """A release whose band holds the sample: the page shows "indeterminate" and no class word."""
    from streamlit.testing.v1 import AppTest
    from test_framing import release_with_band

    monkeypatch.setenv("MODEL_ZOO_DIR", str(release_with_band(dash_env["release"], tmp_path, 0.49, "0.0.2")))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180).run()
    at.button(key="case_load_sample").click().run()
    at.checkbox(key="case_confirm").check().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [m.value for m in at.markdown if m.value.startswith("#### Probability of")]
    assert len(shown) == 1 and "-> indeterminate - the call" in shown[0] and "lies at the threshold" in shown[0]
    call = shown[0].split("->", 1)[1]
    assert "benign" not in call and "malignant" not in call
