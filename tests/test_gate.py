"""The input gate (``model_zoo.gate``) and where it applies outside the dashboard pages.

Real DICOMs from pydicom-data: MR_small (an MR of the head) and CT_small (a CT with
PatientAge "000Y") are refused; RG1_UNCR (a CR with BodyPartExamined CHEST) is accepted with
a warning and no site pre-fill; RG3_UNCR (a CR of a distal tibia, EXTREMITY) passes.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _dicom(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom-data's {name} is not installed")
    return Path(path)


# ----------------------------------------------------------------------------- pure functions


def test_modality_radiographs_pass_rg_ot_warn_others_refused():
    from model_zoo.gate import check_modality

    for m in ("CR", "DX", "DR", "RF", "cr", " DX "):
        assert check_modality(m) == (None, None), m
    for m in ("RG", "OT"):
        refusal, warning = check_modality(m)
        assert refusal is None and warning and f"Modality {m}" in warning
    for m, what in (
        ("MR", "magnetic resonance"),
        ("CT", "computed tomography"),
        ("US", "ultrasound"),
        ("MG", "mammography"),
        ("XYZ", ""),
    ):
        refusal, warning = check_modality(m)
        assert warning is None and refusal.startswith(f"DICOM Modality {m}") and what in refusal, refusal
        assert "not a projection radiograph" in refusal
    refusal, warning = check_modality(None)
    assert refusal is None and "no Modality" in warning
    assert check_modality(None, source_format="png") == (None, None), "PNG/JPEG carry no modality"


@pytest.mark.parametrize(
    "body_part",
    ["CHEST", "HEAD", "BRAIN", "ABDOMEN", "SKULL", "CHESTABDPELVIS", "Thorax", "HEADNECK", "PHANTOM", "SOMETHING ELSE"],
)
def test_body_parts_that_are_not_bone_warn_and_prefill_no_site(body_part):
    from model_zoo.gate import check_body_part

    site, note, warning = check_body_part(body_part)
    assert site is None and "not pre-filled" in note
    assert warning and body_part in warning


@pytest.mark.parametrize(
    "body_part, site",
    [
        ("EXTREMITY", "appendicular"),
        ("knee", "appendicular"),
        ("FOREARM", "appendicular"),
        ("FEMORAL HEAD", "appendicular"),
        ("Humerus", "appendicular"),
        ("PELVIS", "axial"),
        ("LSPINE", "axial"),
        ("CSPINE", "axial"),
        ("RIBS", "axial"),
        ("HIP", "axial"),
    ],
)
def test_bone_body_parts_suggest_a_site_without_warning(body_part, site):
    from model_zoo.gate import check_body_part

    got, note, warning = check_body_part(body_part)
    assert (got, warning) == (site, None)
    assert body_part in note


def test_body_part_absent_or_hip():
    from model_zoo.gate import check_body_part

    assert check_body_part(None) == (None, "no BodyPartExamined in the header", None)
    assert check_body_part("  ")[2] is None
    assert "femur" in check_body_part("HIP")[1]


def test_implausible_ages_are_not_prefilled():
    from model_zoo.gate import MAX_PLAUSIBLE_AGE, check_age

    assert check_age("045Y") == (45.0, "age 45 y from PatientAge")
    assert check_age("006M")[0] == pytest.approx(0.5)
    assert check_age(None) == (None, "no PatientAge in the header")
    for raw, why in (
        ("000Y", "placeholder"),
        ("000D", "placeholder"),
        ("111Y", "implausible"),
        ("999Y", "implausible"),
        ("45", "not a DICOM age"),
        ("abc", "not a DICOM age"),
    ):
        age, note = check_age(raw)
        assert age is None and why in note and raw in note, (raw, note)
    assert check_age(None, parsed=MAX_PLAUSIBLE_AGE + 1)[0] is None
    assert check_age(None, parsed=30.0)[0] == 30.0


def test_roi_quality_tiny_and_featureless():
    from model_zoo.gate import MIN_ROI_SIDE, roi_quality

    rng = np.random.default_rng(0)
    pixels = rng.random((100, 100)).astype(np.float32)
    assert roi_quality(pixels, (10, 10, 60, 60)) == []
    assert "tiny" in roi_quality(pixels, (10, 10, 10 + MIN_ROI_SIDE - 1, 60))[0]
    pixels[:50, :50] = 0.3
    assert "featureless" in roi_quality(pixels, (0, 0, 40, 40))[0]


# ----------------------------------------------------------------------------- real DICOMs


def test_header_gate_on_pydicom_data():
    from dashboard.case_logic import prefill
    from model_zoo import gate, imaging

    mr = imaging.load_image(_dicom("MR_small.dcm")).meta
    assert mr.modality == "MR"
    assert gate.check_header(mr).refusal.startswith("DICOM Modality MR (magnetic resonance)")

    ct = imaging.load_image(_dicom("CT_small.dcm")).meta
    assert ct.modality == "CT" and ct.age_raw == "000Y" and ct.age == 0.0, "the loader keeps what is there"
    g = gate.check_header(ct)
    assert not g.accepted and "Modality CT" in g.refusal
    assert g.age is None and "placeholder" in g.age_note
    assert prefill(ct).age is None, "'000Y' is not pre-filled as age 0"

    rg1 = imaging.load_image(_dicom("RG1_UNCR.dcm")).meta
    g = gate.check_header(rg1)
    assert g.accepted and g.site is None and len(g.blocking) == 1 and "CHEST" in g.blocking[0]
    pre = prefill(rg1)
    assert pre.site is None and any("CHEST" in n and "not pre-filled" in n for n in pre.notes)

    rg3 = imaging.load_image(_dicom("RG3_UNCR.dcm")).meta
    g = gate.check_header(rg3)
    assert (g.refusal, g.blocking, g.warnings, g.site) == (None, (), (), "appendicular")
    assert prefill(rg3).site == "appendicular"


def test_png_passes_the_header_gate():
    from model_zoo import gate
    from model_zoo.imaging import ImageMeta

    g = gate.check_header(ImageMeta(source_format="png", original_size=(10, 10)))
    assert g.accepted and g.blocking == () and g.warnings == () and g.site is None


# ----------------------------------------------------------------------------- predict (CLI)


@pytest.fixture(scope="module")
def gate_cases(tmp_path_factory) -> Path:
    """A case table over the four pydicom-data files plus RG3 with a 10 x 10 px ROI."""
    folder = tmp_path_factory.mktemp("gate_cases")
    rows = [{"image": str(_dicom(n)), "kind": n} for n in ("MR_small.dcm", "CT_small.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm")]
    rows.append(
        {"image": str(_dicom("RG3_UNCR.dcm")), "kind": "tiny_roi", "roi_x0": 800, "roi_y0": 1000, "roi_x1": 810, "roi_y1": 1010}
    )
    rows[3].update({"roi_x0": 780, "roi_y0": 1000, "roi_x1": 940, "roi_y1": 1200})
    path = folder / "cases.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_predict_cli_refuses_other_modalities_and_flags_what_the_case_page_withholds(tiny_release, gate_cases, tmp_path):
    from model_zoo.__main__ import main

    out = tmp_path / "out.csv"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["predict", "--cases", str(gate_cases), "--out", str(out), "--zoo", str(tiny_release["release"]), "--quiet"])
    assert code == 1, "two rows failed"
    frame = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("kind")
    assert frame.loc["MR_small.dcm", "error"].startswith("DICOM Modality MR")
    assert frame.loc["CT_small.dcm", "error"].startswith("DICOM Modality CT")
    assert frame.loc["MR_small.dcm", "p_ensemble"] == "" and frame.loc["CT_small.dcm", "prediction"] == ""
    # Accepted rows are predicted; the CLI keeps what the gate flagged in 'warning'.
    assert frame.loc["RG1_UNCR.dcm", "error"] == "" and "CHEST" in frame.loc["RG1_UNCR.dcm", "warning"]
    assert frame.loc["RG3_UNCR.dcm", "error"] == "" and frame.loc["RG3_UNCR.dcm", "warning"] == ""
    assert frame.loc["tiny_roi", "error"] == "" and "ROI is tiny" in frame.loc["tiny_roi", "warning"]
    assert "2 predicted with an input warning" in err.getvalue()


def test_predict_cases_block_flagged_turns_flags_into_errors(tiny_release, gate_cases, tmp_path):
    from model_zoo.ensemble import load_zoo
    from model_zoo.predict import predict_cases

    frame = predict_cases(load_zoo(tiny_release["release"]), gate_cases, tmp_path / "out.csv", block_flagged=True).set_index(
        "kind"
    )
    assert "no prediction made" in frame.loc["RG1_UNCR.dcm", "error"] and "CHEST" in frame.loc["RG1_UNCR.dcm", "error"]
    assert "ROI is tiny" in frame.loc["tiny_roi", "error"]
    assert frame.loc["RG3_UNCR.dcm", "error"] == "" and 0.0 <= float(frame.loc["RG3_UNCR.dcm", "p_ensemble"]) <= 1.0


# ----------------------------------------------------------------------------- dashboard helpers


def test_whole_image_caution_quotes_the_release_measurement():
    import dataclasses

    from dashboard.case_logic import whole_image_caution
    from model_zoo.manifest import read_manifest_file
    from model_zoo.zoo import BUNDLED_ZOO_PARENT, list_releases

    base = read_manifest_file(list_releases(BUNDLED_ZOO_PARENT)[-1])
    assert base.localiser is not None

    def with_by_source(by_source):
        return base.replace(localiser=dataclasses.replace(base.localiser, ensemble_auc_by_roi_source=by_source))

    manifest = with_by_source(
        {
            "test": {"annotator": 0.873, "localiser": 0.791, "whole_image": 0.612, "n": 123},
            "val": {"annotator": 0.9, "localiser": 0.9, "whole_image": 0.9, "n": 50},
        }
    )
    text = whole_image_caution(manifest)
    assert "lower AUC with whole images" in text
    assert "123 internal test cases" in text and "0.61 on the whole image" in text
    assert "0.87 with the annotators' boxes" in text and "0.79 with auto-crop boxes" in text
    assert "0.90" not in text, "the test split is quoted, not validation"
    from model_zoo.zoo import default_zoo_dir

    bundled = read_manifest_file(default_zoo_dir())
    test = bundled.localiser.ensemble_auc_by_roi_source["test"]
    assert f"{test['whole_image']:.2f} on the whole image" in whole_image_caution(bundled)
    for absent in (
        base.replace(localiser=None),
        with_by_source({}),
        with_by_source({"val": {}}),
        with_by_source({"test": {"whole_image": None}}),
    ):
        generic = whole_image_caution(absent)
        assert "did not record" in generic and "AUC" not in generic


def test_teaching_age_shows_as_years_not_float():
    from dashboard.teaching_logic import format_age

    assert format_age(28.0) == "28 y"
    assert format_age(2.5) == "2.5 y"
    assert format_age(None) == "not given" and format_age(float("nan")) == "not given"


def test_batch_report_names():
    from dashboard.batch_logic import report_name

    assert report_name(7, "scans/IMG 0001.dcm", with_image=False) == "case-0007.pdf"
    assert report_name(7, "scans/IMG 0001.dcm", with_image=True) == "case-0007-IMG_0001.pdf"
    assert report_name(12, "..\\x\\..\\..\\evil/../a b$.png", with_image=True) == "case-0012-a_b.pdf"
    assert report_name(3, "", with_image=True) == "case-0003.pdf"


def test_public_message_hides_the_temporary_folder(tmp_path):
    from dashboard.batch_logic import CSV_NAME, UploadedTable

    root = tmp_path / "bone-zoo-upload-abc" / "upload"
    up = UploadedTable(
        csv_path=root / "myset" / CSV_NAME, work_dir=tmp_path / "bone-zoo-upload-abc", outside={}, files_in_zip=1, root=root
    )
    msg = up.public_message(f"image file not found: {root}/myset/MISSING.png; case table {CSV_NAME} bad", "cases.csv")
    assert msg == "image file not found: MISSING.png; case table cases.csv bad"
    assert up.public_message(f"cannot open image {root}/other/x.png") == "cannot open image other/x.png"


def test_plain_text_escapes_markdown():
    from dashboard.common import plain_text

    assert plain_text("case table __cases__.csv") == "case table \\_\\_cases\\_\\_.csv"
    assert plain_text("costs $5 *now*") == "costs \\$5 \\*now\\*"


def test_zoo_page_opens_on_the_test_split():
    from dashboard.zoo_info import default_split

    assert default_split(["test", "val"]) == 0
    assert default_split(["external", "val"]) == 1
    assert default_split(["a", "b"]) == 0


def test_streamlit_config_hides_the_developer_toolbar():
    import tomllib

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["client"]["toolbarMode"] == "viewer", "no Deploy button or developer menu for clinicians"
    assert config["server"]["address"] == "localhost"
