"""Hostile inputs (issue 8): every corpus entry through the loader, the batch CLI and the case page.

The corpus lives in ``tests/hostile.py`` (generated in memory; no patient data). Each
entry either loads (valid-but-odd images) or is refused with an
:class:`~model_zoo.errors.InputError` whose message is one line and says what is wrong.
The same files then go through ``python -m model_zoo predict`` in one case table (a bad
row never stops the batch) and through the dashboard's upload path under AppTest (a bad
upload shows one ``st.error``, never a traceback).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import hostile
from hostile import GOOD, IMAGE_CORPUS, LOADS, ROW_CORPUS, TABLE_CORPUS
from model_zoo.errors import InputError

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"

# Known library bugs found by this corpus, as strict xfails, so the rest of the suite stays
# green until they are fixed (the three it found - PNG IDAT CRC, broken deflate stream hidden
# by EXIF reading, NUL-byte files called text - are fixed in model_zoo.imaging).
KNOWN_BUGS: dict[str, str] = {}  # all bugs this corpus found are fixed; add new ones here

# The worst kinds for the upload path (bombs, lying headers, other formats, empty).
DASHBOARD_KINDS = [
    "empty_file",
    "pdf_named_dcm",
    "zip_named_png",
    "html_named_dcm",
    "dicom_truncated_in_pixels",
    "dicom_sr_no_pixel_data",
    "dicom_bits_stored_gt_allocated",
    "dicom_mpeg2_transfer_syntax",
    "dicom_huge_dimensions",
    "dicom_nested_sequence_bomb",
    "png_decompression_bomb",
    "jpeg_decompression_bomb",
    "png_100000x10",
    "png_text_chunk_bomb",
    "jpeg_truncated_half",
]

_BY_KIND = {e.kind: e for e in IMAGE_CORPUS}


def _param(entry):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[entry.kind])] if entry.kind in KNOWN_BUGS else []
    return pytest.param(entry, id=entry.kind, marks=marks)


def _one_line(msg: str) -> None:
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    assert "Traceback" not in msg and 'File "' not in msg, msg
    assert len(msg) < 600, f"message too long for a user ({len(msg)} chars)"


# ----------------------------------------------------------------------------- the corpus itself


def test_corpus_is_broad_and_well_formed():
    kinds = [e.kind for e in IMAGE_CORPUS] + [r.kind for r in ROW_CORPUS] + [t.kind for t in TABLE_CORPUS]
    assert len(kinds) == len(set(kinds)), "kind names are unique"
    assert len(IMAGE_CORPUS) >= 30 and len(kinds) >= 60
    refused = [e for e in IMAGE_CORPUS if e.expect is not LOADS]
    loads = [e for e in IMAGE_CORPUS if e.expect is LOADS]
    assert len(refused) >= 30 and len(loads) >= 10
    for entry in IMAGE_CORPUS:
        re.compile(entry.expect or "")
        assert entry.build() == entry.build(), f"{entry.kind}: builders are deterministic"
    # The brief's named families are all present.
    for needed in (
        "empty_file",
        "pdf_named_dcm",
        "zip_named_png",
        "html_named_dcm",
        "dicom_sr_no_pixel_data",
        "dicom_bits_stored_gt_allocated",
        "dicom_pixel_data_short",
        "dicom_rgb",
        "dicom_ybr_full_422_jpeg",
        "dicom_multiframe",
        "dicom_mpeg2_transfer_syntax",
        "dicom_huge_dimensions",
        "png_16bit",
        "png_palette",
        "jpeg_cmyk",
        "png_1x1",
        "png_100000x10",
        "png_decompression_bomb",
        "jpeg_decompression_bomb",
        "age_nan_is_missing",
        "age_negative",
        "age_200",
        "sex_unknown",
        "site_unknown",
        "roi_outside_image",
        "roi_zero_area",
        "csv_utf16",
        "csv_missing_image_column",
        "path_traversal_to_etc_passwd",
    ):
        assert needed in kinds, needed


# ----------------------------------------------------------------------------- (a) load_image


@pytest.mark.parametrize("entry", [_param(e) for e in IMAGE_CORPUS])
def test_load_image_loads_or_refuses_in_one_line(entry):
    from model_zoo.imaging import load_image

    data = entry.build()
    start = time.perf_counter()
    if entry.expect is LOADS:
        img = load_image(data, name=entry.filename)
        p = img.pixels
        assert p.dtype == np.float32 and p.ndim == 2 and min(p.shape) >= 32
        assert np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0
        assert img.meta.source_format in ("dicom", "png", "jpeg")
        assert p.max() > p.min(), "the corpus's odd-but-valid images all have content"
    else:
        with pytest.raises(InputError) as err:
            load_image(data, name=entry.filename)
        msg = str(err.value)
        _one_line(msg)
        assert msg.startswith(f"{entry.filename}: "), f"message names the file: {msg}"
        assert re.search(entry.expect, msg), f"{entry.expect!r} does not match {msg!r}"
    # Bombs and lying headers are refused from the header, not after decoding.
    assert time.perf_counter() - start < 5.0


def test_trailing_zero_padding_does_not_change_the_image():
    from model_zoo.imaging import load_image

    for kind, clean in (
        ("png_trailing_zero_padding", lambda: hostile.png_bytes(hostile.noise_image())),
        ("jpeg_trailing_zero_padding", lambda: hostile.jpeg_bytes(hostile.noise_image())),
    ):
        padded = load_image(_BY_KIND[kind].build()).pixels
        np.testing.assert_array_equal(padded, load_image(clean()).pixels)


def test_lying_pixel_length_loads_with_a_warning_not_silently():
    """More pixel data than Rows x Columns: the declared size wins and the user is told."""
    from model_zoo.imaging import load_image

    img = load_image(_BY_KIND["dicom_pixel_data_long"].build())
    assert img.pixels.shape == (32, 64)
    assert any("pixel data" in w for w in img.meta.warnings), img.meta.warnings


def test_file_object_and_path_give_the_same_refusal(tmp_path):
    from model_zoo.imaging import load_image

    entry = _BY_KIND["pdf_named_dcm"]
    path = tmp_path / entry.filename
    path.write_bytes(entry.build())
    messages = []
    for source in (path, str(path), open(path, "rb")):
        with pytest.raises(InputError) as err:
            load_image(source)
        if hasattr(source, "close"):
            source.close()
        messages.append(str(err.value))
    assert len(set(messages)) == 1 and messages[0].startswith("scan.dcm: ")


# ----------------------------------------------------------------------------- (b) the batch CLI


def _good_images(folder: Path, n: int = 3) -> list[dict]:
    from synthetic import synthetic_image

    rng = np.random.default_rng(42)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        pixels, box = synthetic_image(rng, 96, positive=bool(i % 2))
        Image.fromarray(pixels).save(folder / "images" / f"good{i}.png")
        rows.append(
            {
                "kind": f"good_{i}",
                "image": f"images/good{i}.png",
                "age": str(20 + 10 * i),
                "sex": "MF"[i % 2],
                "site": "appendicular",
                "roi_x0": box[0],
                "roi_y0": box[1],
                "roi_x1": box[2],
                "roi_y1": box[3],
            }
        )
    return rows


@pytest.fixture(scope="module")
def batch_run(tiny_release, tmp_path_factory):
    """One case table listing every corpus file, every bad row and three good images,
    predicted once through ``python -m model_zoo predict``."""
    from model_zoo.__main__ import main

    folder = tmp_path_factory.mktemp("hostile_batch")
    rows = _good_images(folder)
    expect = {r["kind"]: LOADS for r in rows}
    for entry in IMAGE_CORPUS:
        rel = Path("hostile") / entry.kind / entry.filename
        (folder / rel).parent.mkdir(parents=True)
        (folder / rel).write_bytes(entry.build())
        rows.append({"kind": entry.kind, "image": rel.as_posix()})
        expect[entry.kind] = entry.expect
    for bad in ROW_CORPUS:
        row = {"kind": bad.kind, **bad.row}
        if row["image"] == GOOD:
            row["image"] = "images/good0.png"
        rows.append(row)
        expect[bad.kind] = bad.expect
    frame = pd.DataFrame(rows)
    cases = folder / "cases.csv"
    frame.to_csv(cases, index=False)
    out = folder / "out.csv"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["predict", "--cases", str(cases), "--out", str(out), "--zoo", str(tiny_release["release"]), "--quiet"])
    result = pd.read_csv(out, dtype=str, keep_default_na=False)
    return {
        "code": code,
        "stderr": err.getvalue(),
        "out": result,
        "input": frame,
        "expect": expect,
        "folder": folder,
        "release": tiny_release["release"],
    }


def test_batch_exit_code_and_summary(batch_run):
    assert batch_run["code"] == 1, "the run completed but rows failed"
    n = len(batch_run["input"])
    n_failed = sum(1 for e in batch_run["out"]["error"] if e)
    assert re.search(rf"{n - n_failed}/{n} rows predicted .*; {n_failed} failed", batch_run["stderr"])
    assert "Traceback" not in batch_run["stderr"]


def test_batch_every_row_kept_in_order(batch_run):
    out, frame = batch_run["out"], batch_run["input"]
    assert list(out["kind"]) == list(frame["kind"]), "one output row per input row, same order"
    zoo_cols = {"p_ensemble", "p_clinic", "prediction", "roi_source", "error"}
    assert zoo_cols <= set(out.columns)


def test_batch_bad_rows_have_one_line_errors_good_rows_probabilities(batch_run):
    out = batch_run["out"].set_index("kind")
    member_cols = [c for c in out.columns if c.startswith("p_") and c not in ("p_ensemble", "p_clinic")]
    assert len(member_cols) == 4
    problems = []
    for kind, expect in batch_run["expect"].items():
        row = out.loc[kind]
        error = row["error"]
        assert not error.startswith("unexpected error"), f"{kind}: a non-InputError leaked: {error}"
        if kind in KNOWN_BUGS:  # tracked by the xfail in (a); here only: the batch survived it
            continue
        if expect is LOADS:
            if error != "":
                problems.append(f"{kind}: expected a prediction, got error {error!r}")
                continue
            probs = [float(row[c]) for c in ["p_ensemble", *member_cols]]
            assert all(0.0 <= p <= 1.0 for p in probs), (kind, probs)
            assert row["prediction"] != "" and row["roi_source"] != "", kind
        else:
            if error == "":
                problems.append(f"{kind}: expected an error matching {expect!r}, got a prediction")
                continue
            _one_line(error)
            if not re.search(expect, error):
                problems.append(f"{kind}: {expect!r} does not match {error!r}")
            assert row["p_ensemble"] == "", f"{kind}: a failed row carries no probability"
    assert not problems, "\n".join(problems)


def test_batch_good_rows_match_zoo_predict(batch_run):
    """Hostile neighbours change nothing: good rows equal a direct Zoo.predict."""
    from model_zoo.ensemble import load_zoo
    from model_zoo.imaging import load_image

    zoo = load_zoo(batch_run["release"])
    out = batch_run["out"].set_index("kind")
    for i in range(3):
        row = out.loc[f"good_{i}"]
        img = load_image(batch_run["folder"] / row["image"])
        box = tuple(float(row[c]) for c in ("roi_x0", "roi_y0", "roi_x1", "roi_y1"))
        ref = zoo.predict(img.pixels, box, age=float(row["age"]), sex=row["sex"], site=row["site"])
        assert float(row["p_ensemble"]) == pytest.approx(ref.p_ensemble, abs=1e-9)
    # 'NaN' in a CSV is pandas' missing-value marker: predicted as "age not given".
    nan_age = out.loc["age_nan_is_missing"]
    assert nan_age["error"] == "" and nan_age["age"] == ""
    img = load_image(batch_run["folder"] / "images" / "good0.png")
    box = tuple(float(nan_age[c]) for c in ("roi_x0", "roi_y0", "roi_x1", "roi_y1"))
    ref = zoo.predict(img.pixels, box, age=None)
    assert float(nan_age["p_ensemble"]) == pytest.approx(ref.p_ensemble, abs=1e-9)


def test_batch_path_traversal_reads_no_secret_into_output(batch_run):
    """A case row naming /etc/passwd: refused as not an image, its content never echoed."""
    out = batch_run["out"].set_index("kind")
    err = out.loc["path_traversal_to_etc_passwd", "error"]
    assert err.startswith("passwd: not a DICOM, PNG or JPEG image")
    text = (batch_run["folder"] / "out.csv").read_text()
    if Path("/etc/passwd").is_file():
        first = Path("/etc/passwd").read_text().splitlines()[0]
        assert first not in text
    assert "root:" not in text


@pytest.mark.parametrize("table", TABLE_CORPUS, ids=lambda t: t.kind)
def test_unusable_case_tables_refused_in_one_line(table, tmp_path, tiny_release, capsys):
    from model_zoo.__main__ import main
    from model_zoo.cases import read_case_table

    path = tmp_path / "cases.csv"
    path.write_bytes(table.build())
    with pytest.raises(InputError) as err:
        read_case_table(path)
    _one_line(str(err.value))
    assert re.search(table.expect, str(err.value)), str(err.value)
    out = tmp_path / "out.csv"
    assert main(["predict", "--cases", str(path), "--out", str(out), "--zoo", str(tiny_release["release"]), "--quiet"]) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr == f"error: {err.value}", stderr
    assert not out.exists()


# ----------------------------------------------------------------------------- (c) the case page


@pytest.fixture(scope="module")
def app_env(tiny_release, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_dash")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODEL_ZOO_DIR", str(tiny_release["release"]))
        mp.setenv("MODEL_ZOO_AUDIT_LOG", str(tmp / "audit.jsonl"))
        yield tmp


def _upload(at, name: str, data: bytes):
    at.file_uploader(key="case_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _no_traceback_shown(at) -> None:
    texts = [e.value for e in list(at.error) + list(at.warning) + list(at.info)] + [m.value for m in at.markdown]
    for t in texts:
        assert "Traceback" not in t and "Reference" not in t, t  # "Reference": the guard's unexpected-error text


def test_case_page_upload_of_hostile_files_shows_one_error(app_env):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=180).run()
    assert not at.exception
    # A good (odd) upload first, so each refusal must also clear the previous case.
    good = _BY_KIND["dicom_multiframe"]
    _upload(at, good.filename, good.build())
    assert at.session_state["case"].size == (64, 64)
    assert any("multi-frame: first of 3 frames used" in i.value for i in at.info)
    assert not at.error
    for kind in DASHBOARD_KINDS:
        entry = _BY_KIND[kind]
        _upload(at, entry.filename, entry.build())
        errors = [e.value for e in at.error]
        assert len(errors) == 1, (kind, errors)
        _one_line(errors[0])
        assert errors[0].startswith(f"{entry.filename}: ") and re.search(entry.expect, errors[0]), (kind, errors[0])
        assert "case" not in at.session_state, f"{kind}: the previous image must not stay on the page"
        assert any("Upload a radiograph" in i.value for i in at.info), kind
        assert not [m for m in at.markdown if m.value.startswith("#### Probability")], kind
        _no_traceback_shown(at)


def test_case_page_zero_area_roi_is_an_error_not_a_crash(app_env):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=180).run()
    _upload(at, "ok.png", hostile.png_bytes(hostile.noise_image(size=(80, 64))))
    at.radio(key="case_roi_mode").set_value("Enter coordinates").run()
    for key, value in (("case_x0", 30.0), ("case_y0", 10.0), ("case_x1", 30.0), ("case_y1", 50.0)):
        at.number_input(key=key).set_value(value)
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "zero or negative area" in errors[0] and "Fix the box" in errors[0], errors
    _one_line(errors[0])
    assert not [m for m in at.markdown if m.value.startswith("#### Probability")]
    _no_traceback_shown(at)
