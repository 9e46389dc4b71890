"""Dashboard tests: every page under Streamlit's AppTest, plus the pages' pure helpers.

One tiny zoo (training.fit on synthetic cases, ~40 s on 2 cores) serves the whole module.
AppTest runs the real ``dashboard/app.py`` with ``st.navigation`` and switches pages; the
zoo is loaded once per process by ``st.cache_resource``, as in the server.

Under AppTest the drawing canvas returns only its default (no rectangle), so ROI drawing
itself is left to the browser test; the coordinate mapping is tested directly below.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"
TIMEOUT = 180


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dash_env(tiny_release, tmp_path_factory):
    """The shared tiny released zoo + its synthetic cases; MODEL_ZOO_DIR and the audit log point at them."""
    tmp = tmp_path_factory.mktemp("dash")
    release, cases = tiny_release["release"], tiny_release["cases"]
    saved = {k: os.environ.get(k) for k in ("MODEL_ZOO_DIR", "MODEL_ZOO_AUDIT_LOG")}
    os.environ["MODEL_ZOO_DIR"] = str(release)
    os.environ["MODEL_ZOO_AUDIT_LOG"] = str(tmp / "audit.jsonl")
    yield {"release": release, "cases": cases, "audit": tmp / "audit.jsonl", "tmp": tmp}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def zoo(dash_env):
    from model_zoo.ensemble import load_zoo

    return load_zoo(dash_env["release"])


def _app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def _no_crash(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    texts = [e.value for e in at.error]
    assert not any("Reference" in t for t in texts), texts  # the guard's "unexpected error" text


def _table(at, column: str) -> pd.DataFrame:
    """The first st.dataframe on the page with this column (AppTest keeps no key for read-only tables)."""
    for df in at.dataframe:
        value = df.value
        if column in value.columns:
            return value
    raise AssertionError(f"no table with column {column!r}")


def _pdf_strings(pdf: bytes) -> str:
    """Decompressed PDF content streams, PDF string escapes undone."""
    import re
    import zlib

    parts = []
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            parts.append(zlib.decompress(m.group(1)).decode("latin-1"))
        except zlib.error:
            continue
    return "\n".join(parts).replace("\\(", "(").replace("\\)", ")")


def _finish_scorecam(at, timeout: float = 300):
    """ScoreCAM runs in the background (issue 17): wait for the session's job, then rerun the
    page the way the polling fragment would once the job ends."""
    if "case_scorecam_job" not in at.session_state:
        return at
    assert at.session_state["case_scorecam_job"].join(timeout), "ScoreCAM did not finish"
    return at.run()


def _case_view(zoo, case, methods=("gradcam", "scorecam")):
    """The view the Case page shows for ``case`` (its crops and heatmaps), built from the same
    ``case_logic`` helpers, for checking the PDF outside the page."""
    from dashboard import case_logic as cl

    pixels, meta = case.image.pixels, case.image.meta
    crops = cl.member_crops(zoo, pixels, case.box)
    view_box, view_wh = cl.cam_view_geometry(crops, 300)
    dw, dh, _ = cl.display_size(*case.size, 520, 520, min_side=520)
    c, w, *_ = cl.window_units(meta)
    full = cl.rewindow(cl.downscale(pixels, (dw, dh)), meta, c, w)
    gray = (cl.roi_view_gray(pixels, meta, view_box, view_wh, c, w), full)
    cams = {
        label: {
            m.spec.member_id: cl.member_cam(zoo, i, pixels, case.box, method, view_box, view_wh, (dw, dh))
            for i, m in enumerate(zoo.members)
        }
        for label, method in (("GradCAM", "gradcam"), ("ScoreCAM", "scorecam"))
        if method in methods
    }
    return cl.CaseView(radiograph=full, crops=crops, cams=cams, cam_gray=gray, opacity=0.5)


def _page(at, name: str):
    at.run()
    at.switch_page(f"app_pages/{name}.py").run()
    _no_crash(at)
    return at


def _upload_pair(dash_env, n: int = 6, bad_rows: bool = True) -> tuple[bytes, bytes, pd.DataFrame]:
    """(csv bytes, zip bytes, the frame) for the first n synthetic cases; images zipped in a folder."""
    cases = dash_env["cases"]
    frame = pd.read_csv(cases, dtype=str).head(n).copy()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel in frame["image"]:
            zf.write(cases.parent / rel, f"myset/{rel}")  # zipped folder: CSV paths are relative to it
    if bad_rows:
        frame.loc[1, "image"] = "/etc/hostname"
        frame.loc[2, "age"] = "abc"
    return frame.to_csv(index=False).encode(), buf.getvalue(), frame


# ----------------------------------------------------------------------------- case page


def test_case_page_sample_prediction(dash_env, zoo):
    from model_zoo import audit, imaging
    from model_zoo.framing import probability_sentence
    from model_zoo.sample import sample_case

    at = _app().run()
    _no_crash(at)
    assert at.button(key="case_load_sample") is not None
    assert at.file_uploader(key="case_upload") is not None
    at.button(key="case_load_sample").click().run()
    _no_crash(at)
    # DICOM pre-fills: PatientSex F, BodyPartExamined EXTREMITY -> appendicular; no PatientAge.
    assert at.selectbox(key="case_sex").value == "F"
    assert at.selectbox(key="case_site").value == "appendicular"
    assert at.number_input(key="case_age").value is None
    assert at.radio(key="case_roi_mode").value == "Enter coordinates"
    shown = [m.value for m in at.markdown if m.value.startswith("#### Probability of")]
    assert not shown, "no prediction before the clinical inputs are confirmed"

    _finish_scorecam(at.checkbox(key="case_confirm").check().run())
    _no_crash(at)
    s = sample_case()
    img = imaging.load_image(s["path"])
    ref = zoo.predict(img.pixels, s["roi_box"], age=None, sex="F", site="appendicular")
    expected = probability_sentence(ref.p_ensemble, ref.threshold, zoo.positive_class, zoo.negative_class)
    if zoo.calibration is not None:  # the headline is the calibrated probability on the calibrated scale
        expected = probability_sentence(ref.p_calibrated, zoo.threshold_calibrated, zoo.positive_class, zoo.negative_class)
    shown = [m.value for m in at.markdown if m.value.startswith("#### Probability of")]
    assert shown == [f"#### {expected}"]
    # Member probabilities, disagreement, clinic model, jitter, heatmaps (GradCAM then ScoreCAM), PDF.
    assert any("Member disagreement" in m.value for m in at.markdown)
    assert any("Clinic-only model" in m.value for m in at.markdown)
    assert any("slightly shifted/resized boxes" in s.value for s in list(at.success) + list(at.warning))
    captions = " ".join(c for i in at.image for c in i.captions)
    assert "GradCAM" in captions and "ScoreCAM" in captions
    assert at.slider(key="case_opacity").value == 0.5
    assert at.download_button(key="case_pdf").label.startswith("Download the PDF")

    events = [e for e in audit.read_events(dash_env["audit"]) if e["event"] == "case_prediction"]
    assert len(events) == 1, "one audit line per distinct prediction, not per rerun"
    ev = events[0]
    assert ev["image_sha256"] == __import__("hashlib").sha256(s["path"].read_bytes()).hexdigest()
    assert ev["roi"] == [float(v) for v in s["roi_box"]]
    assert ev["outputs"]["p_ensemble"] == pytest.approx(ref.p_ensemble)
    assert ev["zoo"] == {"name": zoo.manifest.name, "version": zoo.manifest.version}
    assert "RG3" not in json.dumps(ev)

    # The PDF the download button would produce (AppTest does not run deferred downloads).
    from dashboard import case_logic as cl

    case = at.session_state["case"]
    assert isinstance(case, cl.CaseState) and case.box == tuple(float(v) for v in s["roi_box"])
    view = _case_view(zoo, case)
    pdf = cl.case_pdf(
        zoo,
        case,
        case.box,
        "sample ROI",
        {"age": None, "sex": "F", "site": "appendicular"},
        ref,
        None,
        [],
        view=view,
        reference="Jane Roe",
        include_identifiers=False,
    )
    text = _pdf_strings(pdf)
    assert expected in text and zoo.manifest.files["stacker.joblib"] in text
    assert "ScoreCAM ensemble-weighted, ROI" in text and "GradCAM" in text
    assert "Jane Roe" not in text
    assert "Jane Roe" in _pdf_strings(
        cl.case_pdf(zoo, case, case.box, "sample ROI", {}, ref, None, [], reference="Jane Roe", include_identifiers=True)
    )
    bare = _pdf_strings(cl.case_pdf(zoo, case, case.box, "sample ROI", {}, ref, None, []))
    assert "GradCAM" not in bare, "without the page's view the report has no heatmaps"

    # Opacity change reruns without recomputation or a second audit line.
    at.slider(key="case_opacity").set_value(0.8).run()
    _no_crash(at)
    assert len([e for e in audit.read_events(dash_env["audit"]) if e["event"] == "case_prediction"]) == 1


def test_case_page_viewer_presets_legend_and_settings_kept_across_images(dash_env, monkeypatch):
    """Issue 17, viewer: window/level presets and typed values, the header as a wrapping
    table, a colour legend under the heatmaps, and the size/invert/opacity/ScoreCAM/jitter
    choices kept when the next image is opened (they used to reset with every upload)."""
    from dashboard import viewer

    at = _app().run()
    at.button(key="case_load_sample").click().run()
    _no_crash(at)
    header = at.table[0].value  # st.table wraps long values; st.dataframe truncated them
    assert "Modality" in set(header["tag"]) and "MONOCHROME1" in set(header["value"])
    # Presets from the image's own values; each sets the slider and the typed field together.
    presets = at.session_state["case"].presets
    assert [p.name for p in presets] == ["Header window", "Full range", "Bone", "Soft tissue"]
    at.button(key="case_wl_preset_2").click().run()
    _no_crash(at)
    assert at.slider(key="case_wc").value == pytest.approx(presets[2].center)
    assert at.number_input(key="case_ww_num").value == pytest.approx(presets[2].width)
    at.number_input(key="case_wc_num").set_value(400.0).run()  # keyboard entry moves the slider
    assert at.slider(key="case_wc").value == 400.0

    _finish_scorecam(at.checkbox(key="case_confirm").check().run())
    _no_crash(at)
    legends = [i for i in at.image if viewer.LEGEND_CAPTION in i.captions]
    assert len(legends) == 2, "one legend under the GradCAM and one under the ScoreCAM maps"
    at.slider(key="case_opacity").set_value(0.8)
    at.checkbox(key="case_scorecam").uncheck()
    at.checkbox(key="case_jitter").uncheck()
    at.toggle(key="case_invert").set_value(True)
    at.select_slider(key="case_display_px").set_value(640).run()
    _no_crash(at)

    # The next image: a synthetic radiograph; the page stops at "draw an ROI" (no heatmap widgets).
    row = pd.read_csv(dash_env["cases"], dtype=str).iloc[0]
    data = (dash_env["cases"].parent / row["image"]).read_bytes()
    at.file_uploader(key="case_upload").set_value(("next.png", data, "image/png")).run()
    _no_crash(at)
    assert at.session_state["case"].label == "uploaded image"
    at.radio(key="case_roi_mode").set_value("Whole image").run()
    import streamlit as st

    widths: dict[str, object] = {}  # caption -> width of each st.image in the next run
    real_image = st.image

    def image(img, caption=None, *args, **kwargs):
        widths[str(caption)] = kwargs.get("width")
        return real_image(img, caption, *args, **kwargs)

    monkeypatch.setattr(st, "image", image)
    at.checkbox(key="case_confirm").check().run()
    _no_crash(at)
    assert at.slider(key="case_opacity").value == 0.8
    assert at.checkbox(key="case_scorecam").value is False
    assert at.checkbox(key="case_jitter").value is False
    assert at.toggle(key="case_invert").value is True
    assert at.select_slider(key="case_display_px").value == 640
    assert widths.get("ROI whole image") == 640, f"the small image is shown at the chosen size: {widths}"
    assert [p.name for p in at.session_state["case"].presets][0] == "Default"  # PNG: no header window


def _slow_scorecam(monkeypatch, *, fail: bool = False):
    """Make the page's ScoreCAM slow (or failing) and cancellable; GradCAM stays real.
    Returns an Event set once a ScoreCAM task has started."""
    import threading
    import time

    from dashboard import case_logic as cl
    from model_zoo import explain

    real = cl.member_cam
    started = threading.Event()

    def member_cam(zoo, index, pixels, box, method, *args, should_stop=None, progress=None, **kwargs):
        if method != "scorecam":
            return real(zoo, index, pixels, box, method, *args, **kwargs)
        started.set()
        if fail:
            raise RuntimeError("internal detail that must not reach the page")
        for step in range(1200):  # ~60 s unless cancelled
            explain.check_stop(should_stop)
            progress(step, 1200)
            time.sleep(0.05)
        raise AssertionError("the job was never cancelled")

    monkeypatch.setattr(cl, "member_cam", member_cam)
    return started


def test_case_page_scorecam_runs_in_background_and_cancels(dash_env, monkeypatch):
    """Issue 17: ScoreCAM no longer holds the page: the result and the PDF are there while it
    runs; Cancel stops it with a message; a new image cancels a stale job."""
    started = _slow_scorecam(monkeypatch)
    at = _app().run()
    at.button(key="case_load_sample").click().run()
    at.checkbox(key="case_confirm").check().run()
    _no_crash(at)
    job = at.session_state["case_scorecam_job"]
    assert started.wait(60) and not job.status().finished
    assert at.download_button(key="case_pdf") is not None, "the rest of the page does not wait for ScoreCAM"
    assert "ScoreCAM" not in " ".join(c for i in at.image for c in i.captions)
    at.button(key="case_scorecam_cancel").click().run()
    _no_crash(at)
    assert job.should_stop() and job.join(30)
    at.run()
    _no_crash(at)
    assert "ScoreCAM was cancelled." in [i.value for i in at.info]
    assert at.button(key="case_scorecam_restart") is not None

    at.button(key="case_scorecam_restart").click().run()  # starts again ...
    _no_crash(at)
    again = at.session_state["case_scorecam_job"]
    assert again is not job and not again.status().finished
    row = pd.read_csv(dash_env["cases"], dtype=str).iloc[0]  # ... and a new image cancels it
    data = (dash_env["cases"].parent / row["image"]).read_bytes()
    at.file_uploader(key="case_upload").set_value(("next.png", data, "image/png")).run()
    _no_crash(at)
    assert again.should_stop() and again.join(30) and again.status().state == "cancelled"
    assert "case_scorecam_job" not in at.session_state


def test_case_page_scorecam_failure_is_a_message(dash_env, monkeypatch):
    _slow_scorecam(monkeypatch, fail=True)
    at = _app().run()
    at.button(key="case_load_sample").click().run()
    _finish_scorecam(at.checkbox(key="case_confirm").check().run())
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("ScoreCAM failed (RuntimeError). Reference "), errors
    assert "internal detail" not in errors[0]
    assert "GradCAM" in " ".join(c for i in at.image for c in i.captions), "GradCAM is unaffected"
    assert at.button(key="case_scorecam_restart") is not None


def test_case_page_zoom_and_pan_keep_the_roi_in_stored_pixels(dash_env):
    """Issue 17, zoom/pan: the viewer shows a window of the stored image; the ROI stays in stored
    pixels whatever the view; 'Zoom to ROI', the pan buttons and 'Reset view' move the window;
    zoom and pan are kept for the next image. (The drawn-box path is in tests/test_browser.py.)"""
    from dashboard import viewer

    def roi_caption() -> str:
        return next(c.value for c in at.caption if c.value.startswith("ROI in stored pixels"))

    def view_caption() -> str:
        return next((c.value for c in at.caption if c.value.startswith("Zoom ")), "no zoom caption (1x)")

    at = _app().run()
    at.button(key="case_load_sample").click().run()
    _no_crash(at)
    before = roi_caption()
    assert at.button(key="case_pan_left").disabled and at.button(key="case_zoom_reset").disabled  # 1x
    at.select_slider(key="case_zoom").set_value(2.0).run()
    _no_crash(at)
    assert view_caption().startswith("Zoom 2x: showing x 440-1320, y 440-1320")
    assert roi_caption() == before, "zooming moves the view, not the ROI"
    at.button(key="case_pan_right").click().run()
    at.button(key="case_pan_up").click().run()
    _no_crash(at)
    assert view_caption().startswith("Zoom 2x: showing x 880-1760, y 0-880")  # half a view each way
    assert roi_caption() == before
    # 'Enter coordinates' (the sample's mode) still takes stored pixels while zoomed.
    at.number_input(key="case_x0").set_value(700.0).run()
    _no_crash(at)
    assert "x 700-925, y 985-1205" in roi_caption() and at.session_state["case"].box == (700, 985, 925, 1205)
    at.button(key="case_zoom_roi").click().run()
    _no_crash(at)
    s = viewer.current(at.session_state)
    x0, y0, x1, y1 = at.session_state["case"].box
    assert s.zoom > 1.0 and at.select_slider(key="case_zoom").value == s.zoom
    wx0, wy0, wx1, wy1 = viewer.view_window(s, (1760, 1760))
    assert wx0 <= x0 and x1 <= wx1 and wy0 <= y0 and y1 <= wy1, "the ROI is in view"
    assert (s.zoom, s.pan_x, s.pan_y) == (3.0, pytest.approx(812.5 / 1760), pytest.approx(1095 / 1760))

    # The next image keeps the zoom and the pan (fractions of the image).
    kept = viewer.current(at.session_state)
    row = pd.read_csv(dash_env["cases"], dtype=str).iloc[0]
    data = (dash_env["cases"].parent / row["image"]).read_bytes()
    at.file_uploader(key="case_upload").set_value(("next.png", data, "image/png")).run()
    _no_crash(at)
    assert viewer.current(at.session_state) == kept and at.select_slider(key="case_zoom").value == kept.zoom
    at.button(key="case_zoom_reset").click().run()
    _no_crash(at)
    assert view_caption() == "no zoom caption (1x)" and at.select_slider(key="case_zoom").value == 1.0


def test_case_page_auto_crop_proposal_is_editable(dash_env, zoo):
    from model_zoo import imaging
    from model_zoo.predict import propose_roi
    from model_zoo.sample import sample_case

    at = _app().run()
    at.button(key="case_load_sample").click().run()
    at.radio(key="case_roi_mode").set_value("Auto-crop").run()
    _no_crash(at)
    from dashboard.case_logic import localiser_caution

    assert localiser_caution(zoo.localiser.metrics) in [w.value for w in at.warning]
    at.button(key="case_edit_auto").click().run()
    _no_crash(at)
    assert at.radio(key="case_roi_mode").value == "Enter coordinates"
    expected, _ = propose_roi(zoo, imaging.load_image(sample_case()["path"]).pixels)
    got = [at.number_input(key=k).value for k in ("case_x0", "case_y0", "case_x1", "case_y1")]
    assert got == pytest.approx([round(v) for v in expected], abs=0.5)


def test_case_page_quality_gate_colour_and_tiny_roi(dash_env):
    rng = np.random.default_rng(0)
    rgb = np.zeros((200, 160, 3), np.uint8)
    rgb[..., 0] = rng.integers(150, 255, (200, 160))  # a strongly red "photo"
    rgb[..., 1] = np.linspace(0, 255, 160, dtype=np.uint8)[None, :]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    at = _app().run()
    at.file_uploader(key="case_upload").set_value(("photo.png", buf.getvalue(), "image/png")).run()
    _no_crash(at)
    at.radio(key="case_roi_mode").set_value("Enter coordinates").run()
    at.checkbox(key="case_confirm").check().run()
    _no_crash(at)
    warn = " ".join(w.value for w in at.warning)
    assert "colour image" in warn
    assert not [m for m in at.markdown if m.value.startswith("#### Probability of")], "withheld until overridden"
    # A 10 x 10 px ROI is flagged too.
    at.number_input(key="case_x0").set_value(20.0)
    at.number_input(key="case_y0").set_value(20.0)
    at.number_input(key="case_x1").set_value(30.0)
    at.number_input(key="case_y1").set_value(30.0).run()
    assert "ROI is tiny" in " ".join(w.value for w in at.warning)
    at.checkbox(key="case_override").check().run()
    _no_crash(at)
    assert [m for m in at.markdown if m.value.startswith("#### Probability of")]


def test_case_page_bad_file_is_one_line_error(dash_env):
    at = _app().run()
    at.file_uploader(key="case_upload").set_value(("notes.dcm", b"hello, this is not an image", "application/dicom")).run()
    _no_crash(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "not a DICOM, PNG or JPEG" in errors[0] and "\n" not in errors[0]


def test_no_zoo_page_explains(dash_env, tmp_path, monkeypatch):
    import dashboard.common as common

    monkeypatch.delenv("MODEL_ZOO_DIR")
    monkeypatch.setattr(common, "BUNDLED_ZOO_PARENT", tmp_path / "empty")
    for page in ("case", "batch", "teaching", "zoo"):
        at = _page(_app(), page)
        assert any("No model zoo is installed" in w.value for w in at.warning), page


# ----------------------------------------------------------------------------- batch page


def test_batch_page_good_and_bad_rows(dash_env, zoo):
    from model_zoo import imaging

    csv_bytes, zip_bytes, frame = _upload_pair(dash_env)
    at = _page(_app(), "batch")
    assert at.button(key="batch_run").disabled
    at.file_uploader(key="batch_csv").set_value(("cases.csv", csv_bytes, "text/csv"))
    at.file_uploader(key="batch_zip").set_value(("images.zip", zip_bytes, "application/zip")).run()
    at.button(key="batch_run").click().run()
    _no_crash(at)
    assert at.session_state["batch_result"].pdf_zip is None, "PDF reports are opt-in"
    assert not [b for b in at.get("download_button") if b.key == "batch_pdf_zip"]
    at.checkbox(key="batch_pdfs").check().run()
    at.button(key="batch_run").click().run()
    _no_crash(at)
    result = at.session_state["batch_result"]
    out = result.frame
    assert len(out) == len(frame) and result.n_failed == 2
    assert "inside the uploaded zip" in out.loc[1, "error"] and out.loc[1, "image"] == "/etc/hostname"
    assert "age" in out.loc[2, "error"]
    good = out[out["error"] == ""]
    assert len(good) == 4 and "image_path" not in out.columns
    assert {"p_ensemble", "roi_x0", "roi_y0", "roi_x1", "roi_y1", "error"} | {f"p_{m}" for m in zoo.member_ids} <= set(
        out.columns
    )
    # Independent check of one row against Zoo.predict on the original file.
    row = good.iloc[0]
    img = imaging.load_image(dash_env["cases"].parent / row["image"])
    ref = zoo.predict(
        img.pixels,
        tuple(float(row[c]) for c in ("roi_x0", "roi_y0", "roi_x1", "roi_y1")),
        age=float(row["age"]),
        sex=row["sex"],
        site=row["site"],
    )
    assert float(row["p_ensemble"]) == pytest.approx(ref.p_ensemble, abs=1e-9)
    assert any(w.value.startswith("4 of 6 cases predicted") for w in at.warning)
    assert at.download_button(key="batch_download").label == "Download predictions (CSV)"
    # the tumour-board pack: one PDF per successful row, none for the failed ones
    import zipfile

    with zipfile.ZipFile(io.BytesIO(result.pdf_zip)) as zf:
        names = sorted(zf.namelist())
        assert names == [f"case-{i + 1:04d}.pdf" for i in good.index]
        assert all(zf.read(n).startswith(b"%PDF") for n in names)
    assert at.download_button(key="batch_pdf_zip").label == "Download PDF case reports (zip)"


def test_batch_page_unsafe_zip_refused(dash_env):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.png", b"x")
    at = _page(_app(), "batch")
    at.file_uploader(key="batch_csv").set_value(("cases.csv", b"image\nescape.png\n", "text/csv"))
    at.file_uploader(key="batch_zip").set_value(("bad.zip", buf.getvalue(), "application/zip")).run()
    at.button(key="batch_run").click().run()
    _no_crash(at)
    assert any("unsafe path" in e.value for e in at.error)
    assert not (dash_env["tmp"].parent / "escape.png").exists()


# ----------------------------------------------------------------------------- teaching page


def test_teaching_page_two_readers_and_reveal(dash_env, zoo):
    from training import stats

    csv_bytes, zip_bytes, _ = _upload_pair(dash_env, n=6, bad_rows=False)
    at = _page(_app(), "teaching")
    at.file_uploader(key="teach_csv").set_value(("cases.csv", csv_bytes, "text/csv"))
    at.file_uploader(key="teach_zip").set_value(("images.zip", zip_bytes, "application/zip")).run()
    at.button(key="teach_load").click().run()
    _no_crash(at)
    cases = at.session_state["teach_cases"]
    assert len(cases) == 6
    # Blind: no label, probability or file name on the page while reading.
    at.text_input(key="teach_reader").input("Ann").run()
    page_text = " ".join(m.value for m in at.markdown) + " ".join(c for i in at.image for c in i.captions)
    assert "case0" not in page_text and "p_ensemble" not in page_text
    truth = {c.case_id: c.label for c in cases}
    for reader, answer in (("Ann", lambda cid: truth[cid]), ("Bob", lambda cid: 1)):
        at.text_input(key="teach_reader").input(reader).run()
        for _ in range(len(cases)):
            current = at.session_state["teach_answers"].get(reader, {})
            cid = next(c.case_id for c in cases if c.case_id not in current)
            at.radio(key="teach_call").set_value(zoo.positive_class if answer(cid) else zoo.negative_class)
            at.form_submit_button[0].click().run()
            _no_crash(at)
        assert len(at.session_state["teach_answers"][reader]) == len(cases)
    at.button(key="teach_reveal").click().run()
    _no_crash(at)
    table = _table(at, "Cohen kappa vs model")
    by = table.set_index("rater")
    assert by.loc["Ann", "accuracy"].startswith("1.00")
    # Bob calls everything positive: sensitivity 1, specificity 0 (Wilson CI from training.stats).
    n_neg = sum(1 for v in truth.values() if v == 0)
    lo, hi = stats.wilson_ci(0, n_neg)
    assert by.loc["Bob", "specificity"] == f"0.00 ({lo:.2f}-{hi:.2f})"
    assert by.loc["Bob", "sensitivity"].startswith("1.00")
    assert any("Fleiss kappa" in m.value for m in at.markdown)
    labels = [b.label for b in at.download_button]
    assert "Download all answers (CSV)" in labels and "Download the study table (CSV)" in labels


# ----------------------------------------------------------------------------- zoo page


def test_zoo_page(dash_env, zoo):
    at = _page(_app(), "zoo")
    members = _table(at, "CAM layer")
    assert list(members["member"]) == zoo.member_ids
    assert set(members["input (px)"]) == {m.spec.input_size for m in zoo.members}
    files = _table(at, "sha256")
    assert dict(zip(files["file"], files["sha256"])) == zoo.manifest.files
    metrics = _table(at, "AUC (DeLong 95% CI)")
    assert "ensemble" in set(metrics["model"])
    split = at.radio(key="zoo_split").value  # opens on the held-out test split
    assert split == "test"
    shown = json.loads((zoo.root / "report" / split / "metrics.json").read_text())
    auc = shown["models"]["ensemble"]["auc"]
    assert metrics.set_index("model").loc["ensemble", "AUC (DeLong 95% CI)"].startswith(f"{auc:.3f}")
    assert any("Intended use" in i.value for i in at.info)
    assert at.selectbox(key="zoo_pick").value == str(dash_env["release"])
    assert any("Model card" in m.value for m in at.markdown)


# ----------------------------------------------------------------------------- pure helpers


def test_canvas_box_maps_display_to_stored_pixels():
    from dashboard.case_logic import canvas_box, canvas_drawing

    scale = 0.25  # a 1760-px image shown at 440 px
    data = {
        "objects": [
            {
                "type": "rect",
                "left": 100,
                "top": 50,
                "width": 40,
                "height": 20,
                "scaleX": 1.5,
                "scaleY": 2.0,
                "originX": "left",
                "originY": "top",
            }
        ]
    }
    assert canvas_box(data, scale, (1760, 1760)) == (400.0, 200.0, 640.0, 360.0)
    # capitalised Fabric type, centre origin, clamped at the image edge
    data = {
        "objects": [{"type": "Rect", "left": 430, "top": 20, "width": 40, "height": 20, "originX": "center", "originY": "center"}]
    }
    assert canvas_box(data, scale, (1760, 1760)) == (1640.0, 40.0, 1760.0, 120.0)
    assert canvas_box({"objects": [{"type": "circle"}]}, scale, (100, 100)) is None
    assert canvas_box(canvas_drawing((400, 200, 640, 360), scale), scale, (1760, 1760)) == (400.0, 200.0, 640.0, 360.0)


def test_suggest_site_and_prefill():
    from model_zoo.gate import check_body_part  # the site suggestion behind the page's pre-fill

    assert check_body_part("PELVIS")[0] == "axial"
    assert check_body_part("LSPINE")[0] == "axial"
    assert check_body_part("EXTREMITY")[0] == "appendicular"
    assert check_body_part("knee")[0] == "appendicular"
    assert check_body_part("HIP")[0] == "axial" and "femur" in check_body_part("HIP")[1]
    assert check_body_part(None)[0] is None and check_body_part("PHANTOM")[0] is None


def test_overlay_keeps_image_where_heat_is_zero():
    from dashboard.case_logic import overlay

    gray = np.full((20, 30), 0.5, np.float32)
    heat = np.zeros((20, 30), np.float32)
    heat[5:10, 5:10] = 1.0
    out = overlay(gray, heat, 0.6)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert (out[0, 0] == 128).all(), "no tint where there is no evidence"
    assert not (out[7, 7] == 128).all()
    assert (overlay(gray, heat, 0.0) == 128).all()


def test_rewindow_default_is_identity_and_narrowing_adds_contrast():
    from dashboard.case_logic import rewindow, window_units
    from model_zoo.imaging import ImageMeta

    pixels = np.linspace(0, 1, 101, dtype=np.float32)[None, :].repeat(4, 0)
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        meta = ImageMeta(source_format="dicom", original_size=(101, 4), photometric=photometric, window=(550.0, 1024.0))
        c, w, lo, hi, _ = window_units(meta)
        np.testing.assert_allclose(rewindow(pixels, meta, c, w), pixels, atol=2e-3)
        narrow = rewindow(pixels, meta, c, w / 4)
        assert np.ptp(narrow[:, 40:61]) > 3 * np.ptp(pixels[:, 40:61])
    meta = ImageMeta(source_format="png", original_size=(101, 4))
    c, w, *_ = window_units(meta)
    np.testing.assert_allclose(rewindow(pixels, meta, c, w), pixels, atol=3e-3)


def test_jitter_summary_counts_call_changes():
    from model_zoo.framing import jitter_summary

    j = jitter_summary(0.6, [0.55, 0.62, 0.38, 0.7], threshold=0.5)
    assert j.n == 4 and j.same_call == 3 and j.n_flips == 1
    assert j.p_min == 0.38 and j.p_max == 0.7
    assert j.p_sd == pytest.approx(np.std([0.55, 0.62, 0.38, 0.7], ddof=1))


def test_image_quality_flags():
    from dashboard.case_logic import image_quality
    from model_zoo.gate import roi_quality
    from model_zoo.imaging import load_image
    from model_zoo.sample import sample_case

    img = load_image(sample_case()["path"])
    assert image_quality(img.pixels, img.meta).blocking == ()
    assert roi_quality(img.pixels, sample_case()["roi_box"]) == []
    assert roi_quality(img.pixels, (10, 10, 20, 60))  # 10 px wide
    flat = np.full((100, 100), 0.4, np.float32)
    assert any("near-constant" in b for b in image_quality(flat, img.meta).blocking)
    long = np.random.default_rng(0).random((40, 400)).astype(np.float32)
    assert any("aspect" in b for b in image_quality(long, img.meta).blocking)


def test_safe_extract_zip_rejects_traversal(tmp_path):
    from dashboard.batch_logic import safe_extract_zip
    from model_zoo.errors import InputError

    for bad in ("../up.png", "/abs.png", "a/../../up.png", "C:/win.png", "..\\win.png"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("ok.png", b"fine")
            zf.writestr(bad, b"x")
        with pytest.raises(InputError, match="unsafe path"):
            safe_extract_zip(buf.getvalue(), tmp_path / "out")
        assert not (tmp_path / "out" / "ok.png").exists(), "nothing extracted when any entry is unsafe"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/b.png", b"1234")
        zf.writestr("__MACOSX/a/._b.png", b"junk")
    assert safe_extract_zip(buf.getvalue(), tmp_path / "ok") == ["a/b.png"]
    with pytest.raises(InputError, match="expands to more than"):
        safe_extract_zip(buf.getvalue(), tmp_path / "small", max_total_bytes=3)
    link = zipfile.ZipInfo("a/link.png")
    link.external_attr = (0o120777) << 16  # a symlink entry
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(InputError, match="link or special file"):
        safe_extract_zip(buf.getvalue(), tmp_path / "link")
    with pytest.raises(InputError, match="not a valid zip"):
        safe_extract_zip(b"PK not really", tmp_path / "x")


def test_sample_roi_inside_image():
    from model_zoo.imaging import load_image
    from model_zoo.roi import validate_box
    from model_zoo.sample import sample_case

    s = sample_case()
    img = load_image(s["path"])
    assert img.pixels.shape == (1760, 1760)
    assert validate_box(s["roi_box"], (1760, 1760)) == s["roi_box"]
    x0, y0, x1, y1 = (int(v) for v in s["roi_box"])
    # The box holds the lucent lesion: darker than the cortical bone just above it.
    lesion = img.pixels[1050:1150, 810:900].mean()
    shaft = img.pixels[850:950, 810:900].mean()
    assert lesion < shaft


def test_localiser_caution_quotes_the_recorded_hit_rate():
    from dashboard.case_logic import localiser_caution

    text = localiser_caution({"test": {"frac_iou_gt_0_3": 0.327, "n_lesion": 269}})
    assert "33% of 269 lesions" in text and text.startswith("Check the proposed box")
    assert "overlapped" not in localiser_caution({})  # nothing recorded: no invented evidence
    assert "overlapped" not in localiser_caution({"test": {"frac_iou_gt_0_3": None, "n_lesion": 0}})
