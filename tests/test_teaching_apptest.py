"""Teaching and Zoo pages under AppTest (issue 17): teaching mode, reader ROC beside the model's,
the case-by-case reveal, plain words before statistics; on the shared tiny release and on the
bundled demo zoo (rendering without exception)."""

from __future__ import annotations

import io
import json
import zipfile

import pandas as pd
import pytest

from test_dashboard_apptest import _app, _no_crash, _page, _table, _upload_pair, dash_env, zoo  # noqa: F401

SUBTYPES = ("osteosarcoma", "osteochondroma")


def _with_subtypes(csv_bytes: bytes) -> tuple[bytes, pd.DataFrame]:
    frame = pd.read_csv(io.BytesIO(csv_bytes), dtype=str)
    frame["subtype"] = [SUBTYPES[int(v) == 0] for v in frame["label"]]
    return frame.to_csv(index=False).encode(), frame


def _load(at, csv_bytes: bytes, zip_bytes: bytes, cams: bool = True):
    at.file_uploader(key="teach_csv").set_value(("cases.csv", csv_bytes, "text/csv"))
    at.file_uploader(key="teach_zip").set_value(("images.zip", zip_bytes, "application/zip")).run()
    if not cams:
        at.checkbox(key="teach_cams").uncheck()
    at.button(key="teach_load").click().run()
    _no_crash(at)
    return at.session_state["teach_cases"]


def _read_all(at, cases, reader: str, answer, confidence=lambda cid: 3, teaching: bool = False) -> list[tuple[str, str]]:
    """Reads every case for ``reader``; in teaching mode returns (case, truth line shown after its read)."""
    at.text_input(key="teach_reader").input(reader).run()
    shown = []
    for _ in range(len(cases)):
        current = at.session_state["teach_answers"].get(reader, {})
        cid = next(c.case_id for c in cases if c.case_id not in current)
        at.radio(key="teach_call").set_value(answer(cid))
        at.select_slider(key="teach_conf").set_value(confidence(cid))
        at.form_submit_button[0].click().run()
        _no_crash(at)
        if teaching:
            shown.append((cid, next(m.value for m in at.markdown if m.value.startswith("**Truth:"))))
            assert not [r for r in at.radio if r.key == "teach_call"], "the next case waits for 'Next case'"
            at.button(key="teach_next").click().run()
            _no_crash(at)
    assert len(at.session_state["teach_answers"][reader]) == len(cases)
    return shown


def test_teaching_mode_reveal_roc_and_export(dash_env, zoo):
    from sklearn.metrics import roc_auc_score

    from dashboard import teaching_logic as tl

    csv_bytes, zip_bytes, _ = _upload_pair(dash_env, n=6, bad_rows=False)
    csv_bytes, frame = _with_subtypes(csv_bytes)
    at = _page(_app(), "teaching")
    cases = _load(at, csv_bytes, zip_bytes)
    assert {c.subtype for c in cases} <= set(SUBTYPES) and all(c.subtype for c in cases)
    truth = {c.case_id: c for c in cases}
    pos, neg = zoo.positive_class, zoo.negative_class

    # Blind reading shows no subtype; teaching mode reveals each case right after its read.
    at.text_input(key="teach_reader").input("Ann").run()
    assert not any(s in m.value for m in at.markdown for s in SUBTYPES)
    at.toggle(key="teach_mode").set_value(True).run()
    shown = _read_all(at, cases, "Ann", lambda cid: pos if truth[cid].label else neg, confidence=lambda cid: 5, teaching=True)
    assert [cid for cid, _ in shown] == [c.case_id for c in cases]
    for cid, line in shown:
        assert line.startswith(f"**Truth: {pos if truth[cid].label else neg}** - subtype: {truth[cid].subtype};")
    at.toggle(key="teach_mode").set_value(False).run()
    bob = {c.case_id: (1, 1 + i % 5) for i, c in enumerate(cases)}  # always malignant, mixed confidence
    _read_all(at, cases, "Bob", lambda cid: pos, confidence=lambda cid: bob[cid][1])

    at.button(key="teach_reveal").click().run()
    _no_crash(at)
    roc = _table(at, "DeLong p vs model").set_index("rater")
    labels = [c.label for c in cases]
    assert list(roc.index) == [tl.MODEL_RATER, "Ann", "Bob"]
    assert roc.loc["Ann", "AUC (DeLong 95% CI)"].startswith("1.00")
    bob_auc = roc_auc_score(labels, [tl.confidence_rating(*bob[c.case_id]) for c in cases])
    assert roc.loc["Bob", "AUC (DeLong 95% CI)"].startswith(f"{bob_auc:.2f}")
    model_auc = roc_auc_score(labels, [c.p_ensemble for c in cases])
    assert roc.loc[tl.MODEL_RATER, "AUC (DeLong 95% CI)"].startswith(f"{model_auc:.2f}")
    assert [c for c in at.get("plotly_chart")], "the ROC figure"

    # Case by case: every rater's answer marked; the model's sentence is the Case page's framing.
    for cid in list(truth)[:2]:
        at.selectbox(key="teach_case_pick").set_value(cid).run()
        _no_crash(at)
        marks = _table(at, "confidence").set_index("rater")
        case = truth[cid]
        assert marks.loc["Ann", ""] == "right"
        assert marks.loc["Bob", ""] == ("right" if case.label else "WRONG")
        assert marks.loc[tl.MODEL_RATER, "answer"] == tl.model_call(case, zoo).head.sentence
        assert any(m.value.startswith("**Truth: ") and case.subtype in m.value for m in at.markdown)
        assert len([i for i in at.image]) >= 2, "the radiograph and its heatmap"
    study = _table(at, "subtype")
    assert set(study["model"]) <= {pos, neg, "indeterminate"}
    assert at.download_button(key="teach_download").label == "Download all answers (CSV)"


def test_teaching_mode_off_keeps_reads_blind(dash_env, zoo):
    csv_bytes, zip_bytes, _ = _upload_pair(dash_env, n=3, bad_rows=False)
    csv_bytes, _ = _with_subtypes(csv_bytes)
    at = _page(_app(), "teaching")
    cases = _load(at, csv_bytes, zip_bytes, cams=False)
    at.text_input(key="teach_reader").input("Cy").run()
    at.radio(key="teach_call").set_value(zoo.positive_class)
    at.form_submit_button[0].click().run()
    _no_crash(at)
    assert not [m for m in at.markdown if m.value.startswith("**Truth:")]
    assert not [b for b in at.button if b.key == "teach_next"]
    assert len(at.session_state["teach_answers"]["Cy"]) == 1 and len(cases) == 3


# ----------------------------------------------------------------------------- the bundled zoo


@pytest.fixture
def bundled(monkeypatch, tmp_path):
    """The dashboard on the bundled demo release (assets/zoo), not the tiny test release."""
    from model_zoo.zoo import BUNDLED_ZOO_PARENT, list_releases

    if not list_releases(BUNDLED_ZOO_PARENT):
        pytest.skip(f"no bundled zoo under {BUNDLED_ZOO_PARENT}")
    monkeypatch.delenv("MODEL_ZOO_DIR", raising=False)
    monkeypatch.setenv("MODEL_ZOO_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    return json.loads((list_releases(BUNDLED_ZOO_PARENT)[-1] / "manifest.json").read_text(encoding="utf-8"))


def test_zoo_page_on_the_bundled_zoo_opens_with_plain_words(bundled):
    from model_zoo.validation_text import plain_summary

    at = _page(_app(), "zoo")
    summary = plain_summary(bundled["evaluation"], bundled["task"]["positive_class"], bundled["task"]["negative_class"])
    assert summary, "the bundled release has evaluation blocks"
    assert at.subheader[0].value == "In plain words", [s.value for s in at.subheader]
    assert any(m.value == summary for m in at.markdown)
    assert "At a hospital whose images it had never seen" in summary


def test_teaching_page_on_the_bundled_zoo_renders(bundled, tmp_path):
    from synthetic import write_case_table

    table = write_case_table(tmp_path / "cases", n=3, size=96, seed=4)
    frame = pd.read_csv(table, dtype=str)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel in frame["image"]:
            zf.write(table.parent / rel, rel)
    csv_bytes, _ = _with_subtypes(frame.to_csv(index=False).encode())
    at = _page(_app(), "teaching")
    cases = _load(at, csv_bytes, buf.getvalue())
    assert len(cases) == 3 and all(c.cam_png for c in cases)
    positive = bundled["task"]["positive_class"]
    _read_all(at, cases, "Ann", lambda cid: positive, confidence=lambda cid: 2)
    at.button(key="teach_reveal").click().run()
    _no_crash(at)
    assert list(_table(at, "DeLong p vs model")["rater"])[1:] == ["Ann"]
    marks = _table(at, "confidence")
    assert marks.iloc[0]["answer"].startswith(f"Probability of {positive}")
