"""PDF case report (model_zoo.report_pdf), audit log (model_zoo.audit) and sample case.

The PDF's text is checked in its decompressed content streams (fpdf2 writes core-font text
as literal strings inside zlib-compressed page streams), so the tests read what a PDF
viewer would render, not the Python objects that went in.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import zlib

import numpy as np
import pytest

from model_zoo import audit
from model_zoo.framing import DEFAULT_INDETERMINATE_BAND, JitterSummary, frame_call, probability_sentence
from model_zoo.report_pdf import (
    CaseReport,
    HeatmapFigure,
    build_case_report,
    pdf_text,
)


def _pdf_text(pdf: bytes) -> str:
    """Concatenated, decompressed content of every stream (text operators included)."""
    out = []
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        data = m.group(1)
        try:
            data = zlib.decompress(data)
        except zlib.error:
            pass
        out.append(data.decode("latin-1"))
    # PDF literal strings escape parentheses and backslashes.
    return "\n".join(out).replace("\\(", "(").replace("\\)", ")").replace("\\\\", "\\")


def _report(
    *,
    p_ensemble: float = 0.73,
    threshold: float = 0.41,
    p_calibrated: float | None = None,
    threshold_calibrated: float | None = None,
    band: float = DEFAULT_INDETERMINATE_BAND,
    **over,
) -> CaseReport:
    """A full report whose call is framed by the product rule (``frame_call``) from the
    probabilities given and the report's jitter result, unless ``call`` is given."""
    rng = np.random.default_rng(0)
    jitter = over.get("jitter", JitterSummary(n=8, n_flips=0, p_min=0.65, p_max=0.79, p_sd=0.05))
    call = frame_call(
        p_ensemble,
        threshold,
        "malignant",
        "benign",
        p_calibrated=p_calibrated,
        threshold_calibrated=threshold_calibrated,
        band=band,
        jitter=jitter,
    )
    kw = dict(
        zoo_name="tiny-zoo",
        zoo_version="0.0.1",
        call=call,
        p_members={"effnet_b3": 0.61, "vit": 0.88},
        radiograph=rng.random((300, 200)).astype(np.float32),
        image_size_wh=(1000, 1500),
        roi_box=(100.0, 200.0, 400.0, 600.0),
        image_sha256="a" * 64,
        roi_source="drawn on the image",
        threshold_rule="youden",
        p_clinic=0.35,
        disagreement=0.27,
        age=14.0,
        sex="F",
        site="appendicular",
        crops={"effnet_b3": rng.random((64, 64)), "vit": rng.random((64, 64))},
        heatmaps=[HeatmapFigure(f"GradCAM {i}", (rng.random((50, 60, 3)) * 255).astype(np.uint8)) for i in range(3)],
        jitter=jitter,
        warnings=["colour image converted to grayscale"],
        calibration_note="Not recalibrated.",
        zoo_files={"members/vit.safetensors": "b" * 64, "stacker.joblib": "c" * 64},
        manifest_sha256="d" * 64,
        intended_use="Research and teaching only; not a medical device.",
        created=dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc),
        identifiers={"Case reference": "Smith^Jane 12345"},
    )
    kw.update(over)
    return CaseReport(**kw)


def test_pdf_contents():
    pdf = build_case_report(_report())
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    text = _pdf_text(pdf)
    assert "Probability of malignant: 0.73 (threshold 0.41 -> above: malignant)" in text
    for needle in (
        "tiny-zoo 0.0.1",
        "b" * 64,
        "c" * 64,
        "d" * 64,
        "a" * 64,
        "not a medical device",
        "2026-01-02",
        "0.610",
        "0.880",
        "Clinic-only model",
        "youden",
        "x 100-400, y 200-600",
        "colour image converted",
        "same class call in 8 of 8",
        "14 years",
    ):
        assert needle in text, needle
    # radiograph + 2 crops + 3 heatmaps, all distinct images
    assert len(re.findall(rb"/Subtype\s*/Image", pdf)) == 6


def test_pdf_identifiers_only_on_opt_in():
    plain = _pdf_text(build_case_report(_report()))
    assert "Smith" not in plain and "12345" not in plain
    opted = _pdf_text(build_case_report(_report(), include_identifiers=True))
    assert "Smith^Jane 12345" in opted


def test_pdf_roi_is_drawn_on_the_radiograph():
    from model_zoo.report_pdf import _radiograph_with_roi

    rep = _report(radiograph=np.zeros((150, 100), np.float32))  # 10x smaller than stored
    img = np.asarray(_radiograph_with_roi(rep))
    # stored box (100, 200, 400, 600) -> display (10, 20, 40, 60): red outline there, black inside
    assert tuple(img[20, 25]) == (255, 40, 40) and tuple(img[40, 10]) == (255, 40, 40)
    assert tuple(img[40, 25]) == (0, 0, 0) and tuple(img[5, 5]) == (0, 0, 0)


def test_pdf_survives_non_latin_text():
    rep = _report(warnings=["contrast ≥ limit → check", "病变"], identifiers={"ref": "Ünal – 7"})
    text = _pdf_text(build_case_report(rep, include_identifiers=True))
    assert "contrast >= limit -> check" in text and "Ünal - 7".encode("latin-1").decode("latin-1") in text
    assert pdf_text("病变") == "??"


@pytest.mark.parametrize(
    "p, t, expected",
    [
        (0.73, 0.41, "Probability of malignant: 0.73 (threshold 0.41 -> above: malignant)"),
        (0.20, 0.41, "Probability of malignant: 0.20 (threshold 0.41 -> below: benign)"),
        (0.41, 0.41, "Probability of malignant: 0.41 (threshold 0.41 -> at: malignant)"),
        (0.406, 0.409, "Probability of malignant: 0.406 (threshold 0.409 -> below: benign)"),
    ],
)
def test_probability_sentence(p, t, expected):
    assert probability_sentence(p, t, "malignant", "benign") == expected


# ----------------------------------------------------------------------------- audit


def test_audit_appends_one_json_line_per_event(tmp_path):
    log = tmp_path / "sub" / "audit.jsonl"
    ev = audit.prediction_event(
        image_sha256="e" * 64,
        zoo_name="tiny-zoo",
        zoo_version="0.0.1",
        roi_box=(1, 2.345, 30, 40),
        roi_source="drawn",
        age=float("nan"),
        sex="F",
        site=None,
        p_ensemble=np.float32(0.5),
        p_members={"vit": 0.25},
        p_clinic=None,
        threshold=0.4,
        label="malignant",
    )
    first = audit.append_event(log, ev)
    audit.append_event(log, {"event": "batch_prediction", "n_rows": np.int64(3)})
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    got = json.loads(lines[0])
    assert got == first and got["inputs"]["age"] is None and got["roi"] == [1.0, 2.35, 30.0, 40.0]
    assert got["outputs"]["p_ensemble"] == 0.5 and "time" in got
    assert json.loads(lines[1])["n_rows"] == 3
    assert (os.stat(log).st_mode & 0o777) == 0o600
    assert audit.read_events(log) == [json.loads(x) for x in lines]


def test_audit_refuses_identifiers_and_keeps_log_intact(tmp_path):
    log = tmp_path / "audit.jsonl"
    audit.append_event(log, {"event": "x"})
    for bad in ({"PatientName": "Jane"}, {"inputs": {"patient_id": "7"}}, {"file_name": "smith.dcm"}):
        with pytest.raises(ValueError, match="identifier"):
            audit.append_event(log, bad)
    with pytest.raises(TypeError):
        audit.append_event(log, {"blob": object()})
    assert len(log.read_text().splitlines()) == 1


def test_audit_concurrent_appends_do_not_interleave(tmp_path):
    log = tmp_path / "audit.jsonl"
    pad = "x" * 3000  # longer than a typical stdio buffer, so a split write would show

    def worker(k: int) -> None:
        for i in range(25):
            audit.append_event(log, {"event": "t", "k": k, "i": i, "pad": pad})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = audit.read_events(log)
    assert len(events) == 100 and {(e["k"], e["i"]) for e in events} == {(k, i) for k in range(4) for i in range(25)}


def test_audit_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv(audit.AUDIT_ENV, str(tmp_path / "a.jsonl"))
    assert audit.default_audit_path() == tmp_path / "a.jsonl"
    monkeypatch.delenv(audit.AUDIT_ENV)
    assert audit.default_audit_path().parts[-3:] == (".cache", "bone-zoo", "audit.jsonl")


def test_pdf_reads_the_call_and_nothing_beside_it():
    """The report has one source for the headline, the raw output and the threshold: the framed
    call. No field can say something else (the old fallback fields are gone)."""
    import dataclasses

    call = frame_call(0.62, 0.50, "malignant", "benign", p_calibrated=0.71, threshold_calibrated=0.58)
    text = _pdf_text(build_case_report(_report(call=call)))
    assert "Probability of malignant: 0.71 (threshold 0.58 -> above: malignant) (calibrated)" in text
    assert "0.620 (threshold 0.500; uncalibrated, same side)" in text and "0.500 (youden)" in text
    assert "0.73" not in text, "nothing from the default probabilities leaks in"
    names = {f.name for f in dataclasses.fields(CaseReport)}
    assert not names & {
        "label",
        "p_calibrated",
        "threshold_calibrated",
        "p_ensemble",
        "threshold",
        "positive_class",
        "negative_class",
    }
    assert not hasattr(CaseReport, "framed_call")
