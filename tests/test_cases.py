"""Tests for model_zoo.cases: case-table reading, validation messages and the adapters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from model_zoo.cases import (
    CASE_COLUMNS,
    btxrd_to_cases,
    detect_format,
    image_header_size,
    paper_to_cases,
    read_case_table,
)
from model_zoo.clinical import validate_clinical
from model_zoo.errors import InputError

# ----------------------------------------------------------------------------- helpers


def _png(path: Path, w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w), dtype=np.uint8)).save(path)
    return path


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture()
def imgdir(tmp_path: Path) -> Path:
    _png(tmp_path / "img" / "a.png", 40, 30)
    _png(tmp_path / "img" / "b.png", 64, 64)
    return tmp_path


# ----------------------------------------------------------------------------- happy path


def test_reads_a_clean_case_table(imgdir: Path):
    csv = _write(
        imgdir / "cases.csv",
        "image,label,patient_id,age,sex,site,roi_x0,roi_y0,roi_x1,roi_y1,center,note\n"
        "img/a.png,1,007,48,m,Appendicular,5,5,20,25,A,first\n"
        f"{imgdir / 'img' / 'b.png'},0,008,12.5,Female,axial,,,,,B,second\n",
    )
    table = read_case_table(csv)
    f = table.frame
    assert table.source_format == "cases"
    assert table.errors == []
    assert list(f["row_error"]) == ["", ""]
    # Contract columns first, extras kept, image_path/row_error added.
    assert list(f.columns[: len(CASE_COLUMNS)]) == CASE_COLUMNS
    assert "note" in f.columns and list(f["note"]) == ["first", "second"]
    assert f["image_path"].tolist() == [str((imgdir / "img" / "a.png").resolve()), str((imgdir / "img" / "b.png").resolve())]
    assert f["label"].tolist() == [1, 0]
    assert f["patient_id"].tolist() == ["007", "008"]  # ids stay text: leading zeros kept
    assert f["age"].tolist() == [48.0, 12.5]
    assert f["sex"].tolist() == ["M", "F"]
    assert f["site"].tolist() == ["appendicular", "axial"]
    assert f.loc[0, ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]].tolist() == [5, 5, 20, 25]
    assert f.loc[1, ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]].isna().all()


def test_minimal_table_gets_clinical_and_roi_columns(imgdir: Path):
    csv = _write(imgdir / "c.csv", "image\nimg/a.png\n")
    f = read_case_table(csv).frame
    assert "label" not in f.columns  # never invented
    for col in ["age", "sex", "site", "roi_x0", "roi_y1"]:
        assert col in f.columns and f[col].isna().all()


def test_label_map_maps_class_names(imgdir: Path):
    csv = _write(imgdir / "c.csv", "image,label\nimg/a.png,Malignant\nimg/a.png,benign\nimg/a.png,1\nimg/a.png,cyst\n")
    t = read_case_table(csv, label_map={"malignant": 1, "benign": 0})
    assert t.frame["label"].iloc[:3].tolist() == [1, 0, 1]
    assert pd.isna(t.frame["label"].iloc[3])
    assert t.errors == ["row 4: label 'cyst' is not 0/1 or one of: benign, malignant"]
    with pytest.raises(InputError, match="label_map values must be 0 or 1"):
        read_case_table(csv, label_map={"malignant": 2})


def test_relative_path_escaping_with_dotdot_is_fine_when_it_exists(tmp_path: Path):
    _png(tmp_path / "images" / "x.png")
    (tmp_path / "tables").mkdir()
    csv = _write(tmp_path / "tables" / "c.csv", "image\n../images/x.png\n../images/missing.png\n")
    t = read_case_table(csv)
    assert t.frame["row_error"].iloc[0] == ""
    assert t.frame["image_path"].iloc[0] == str((tmp_path / "images" / "x.png").resolve())
    assert t.errors == [f"row 2: image file not found: {(tmp_path / 'images' / 'missing.png').resolve()}"]


def test_symlink_to_regular_file_is_fine(imgdir: Path):
    os.symlink(imgdir / "img" / "a.png", imgdir / "link.png")
    t = read_case_table(_write(imgdir / "c.csv", "image\nlink.png\n"))
    assert t.errors == []


# ----------------------------------------------------------------------------- row errors


def test_every_row_error_kind_has_its_message(imgdir: Path):
    (imgdir / "adir").mkdir()
    os.mkfifo(imgdir / "afifo")
    rows = [
        "img/a.png,1,48,M,axial,,,,",  # 1 fine
        "img/nope.png,1,48,M,axial,,,,",  # 2 missing file
        "img/a.png,1,abc,M,axial,,,,",  # 3 age not a number
        "img/a.png,1,130,M,axial,,,,",  # 4 age out of range
        "img/a.png,1,-1,M,axial,,,,",  # 5 age negative
        "img/a.png,1,48,X,axial,,,,",  # 6 sex
        "img/a.png,1,48,M,spine,,,,",  # 7 site
        "img/a.png,1,48,M,axial,50,0,60,10",  # 8 ROI entirely outside the 40x30 image
        "img/a.png,1,48,M,axial,5,5,5,10",  # 9 ROI zero width
        "img/a.png,1,48,M,axial,5,5,10,",  # 10 ROI incomplete
        "img/a.png,1,48,M,axial,5,x,10,10",  # 11 ROI not a number
        "adir,1,48,M,axial,,,,",  # 12 directory
        "afifo,1,48,M,axial,,,,",  # 13 FIFO
        ",1,48,M,axial,,,,",  # 14 empty image
        "img/a.png,yes,48,M,axial,,,,",  # 15 label
        "img/a.png,1,abc,Q,moon,,,,",  # 16 several at once
    ]
    csv = _write(imgdir / "c.csv", "image,label,age,sex,site,roi_x0,roi_y0,roi_x1,roi_y1\n" + "\n".join(rows) + "\n")
    t = read_case_table(csv)
    err = dict(zip(range(1, len(rows) + 1), t.frame["row_error"]))
    assert err[1] == ""
    assert err[2] == f"image file not found: {(imgdir / 'img' / 'nope.png').resolve()}"
    assert err[3] == "age 'abc' is not a number"
    assert err[4] == "age '130' is outside 0-120 years"
    assert err[5] == "age '-1' is outside 0-120 years"
    assert err[6] == "sex 'X' is not M or F"
    assert err[7] == "site 'spine' is not appendicular or axial"
    assert err[8] == "ROI (50, 0, 60, 10) lies entirely outside the 40x30 image"
    assert err[9] == "ROI (5, 5, 5, 10) has zero or negative area (needs x1 > x0 and y1 > y0)"
    assert err[10] == "ROI is incomplete: roi_y1 empty"
    assert err[11] == "roi_y0 'x' is not a number"
    assert err[12] == f"image path is not a regular file: {(imgdir / 'adir').resolve()}"
    assert err[13] == f"image path is not a regular file: {(imgdir / 'afifo').resolve()}"
    assert err[14] == "image path is empty"
    assert err[15] == "label 'yes' is not 0/1 (pass a label_map to map class names)"
    assert err[16] == ("age 'abc' is not a number; sex 'Q' is not M or F; site 'moon' is not appendicular or axial")
    # Bad rows are marked, not dropped, and the error list numbers data rows from 1.
    assert len(t.frame) == len(rows)
    assert t.errors[0] == f"row 2: {err[2]}"
    assert [e.split(":")[0] for e in t.errors] == [f"row {i}" for i in range(2, 17)]
    assert t.ok.tolist() == [True] + [False] * 15


def test_roi_partly_outside_is_clamped(imgdir: Path):
    csv = _write(imgdir / "c.csv", "image,roi_x0,roi_y0,roi_x1,roi_y1\nimg/a.png,-5,10,50,20\n")
    t = read_case_table(csv)
    assert t.errors == []
    assert t.frame.loc[0, ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]].tolist() == [0, 10, 40, 20]


def test_check_files_false_skips_file_access(tmp_path: Path):
    csv = _write(tmp_path / "c.csv", "image,roi_x0,roi_y0,roi_x1,roi_y1\nnot/there.png,5,5,500,500\nx.png,5,5,1,9\n")
    t = read_case_table(csv, check_files=False)
    assert t.frame["row_error"].iloc[0] == ""  # no file, no size: only the area is checked
    assert "zero or negative area" in t.frame["row_error"].iloc[1]


def test_roi_checked_against_dicom_header(tmp_path: Path, rg3_paths):
    dcm = rg3_paths["RG3_UNCR.dcm"]
    assert image_header_size(dcm) == (1760, 1760)
    csv = _write(
        tmp_path / "c.csv",
        f"image,roi_x0,roi_y0,roi_x1,roi_y1\n{dcm},1700,1700,1800,1800\n{dcm},1760,0,1800,10\n",
    )
    t = read_case_table(csv)
    assert t.frame.loc[0, "roi_x1"] == 1760 and t.frame.loc[0, "row_error"] == ""
    assert t.frame.loc[1, "row_error"] == "ROI (1760, 0, 1800, 10) lies entirely outside the 1760x1760 image"


def test_unreadable_image_header_is_a_row_error(tmp_path: Path):
    _write(tmp_path / "junk.png", "this is not an image")
    csv = _write(tmp_path / "c.csv", "image,roi_x0,roi_y0,roi_x1,roi_y1\njunk.png,1,1,5,5\njunk.png,,,,\n")
    t = read_case_table(csv)
    assert "cannot read the image header" in t.frame["row_error"].iloc[0]
    assert t.frame["row_error"].iloc[1] == ""  # no ROI: the header is never read (cheap)


def test_require_label(imgdir: Path):
    with pytest.raises(InputError, match="missing required column\\(s\\): label"):
        read_case_table(_write(imgdir / "c.csv", "image\nimg/a.png\n"), require_label=True)
    t = read_case_table(_write(imgdir / "d.csv", "image,label\nimg/a.png,\nimg/a.png,0\n"), require_label=True)
    assert t.errors == ["row 1: label is missing"]


# ----------------------------------------------------------------------------- table errors


def test_missing_image_column_is_named(tmp_path: Path):
    with pytest.raises(InputError, match=r"missing required column\(s\): image$"):
        read_case_table(_write(tmp_path / "c.csv", "file,label\na.png,1\n"))


def test_partial_roi_columns_refused(tmp_path: Path):
    with pytest.raises(InputError, match="roi_x0, roi_y0 but not roi_x1, roi_y1"):
        read_case_table(_write(tmp_path / "c.csv", "image,roi_x0,roi_y0\na.png,1,1\n"))


def test_latin1_file_is_read(imgdir: Path):
    csv = _write(imgdir / "c.csv", "image,center\nimg/a.png,Hôpital Cochin\n", encoding="latin-1")
    t = read_case_table(csv)
    assert t.frame["center"].iloc[0] == "Hôpital Cochin" and t.errors == []


def test_utf8_bom_is_stripped(imgdir: Path):
    csv = imgdir / "c.csv"
    csv.write_bytes(b"\xef\xbb\xbfimage,age\nimg/a.png,30\n")
    assert read_case_table(csv).frame["age"].iloc[0] == 30.0


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        ("image,age\na.png,3\n".encode("utf-16"), "not a UTF-8 or Latin-1 text CSV"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a UTF-8 or Latin-1 text CSV"),
        (b'image,age\n"a.png,3\n', "cannot parse case table"),
    ],
)
def test_unreadable_tables_raise(tmp_path: Path, content: bytes, message: str):
    p = tmp_path / "c.csv"
    p.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_case_table(p)


def test_missing_table_raises(tmp_path: Path):
    with pytest.raises(InputError, match="case table not found"):
        read_case_table(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- clinical


def test_validate_clinical():
    assert validate_clinical("48", "male", "AXIAL") == (48.0, "M", "axial")
    assert validate_clinical(0, "F", "appendicular") == (0.0, "F", "appendicular")
    assert validate_clinical(120, " Female ", None) == (120.0, "F", None)
    assert validate_clinical(None, float("nan"), "") == (None, None, None)
    for args, message in [
        (("abc", "M", "axial"), "age 'abc' is not a number"),
        ((120.5, "M", "axial"), "age '120.5' is outside 0-120 years"),
        ((-0.1, "M", "axial"), "age '-0.1' is outside 0-120 years"),
        ((True, "M", "axial"), "age 'True' is not a number"),
        ((30, "X", "axial"), "sex 'X' is not M or F"),
        ((30, "M", "spine"), "site 'spine' is not appendicular or axial"),
    ]:
        with pytest.raises(InputError) as info:
            validate_clinical(*args)
        assert str(info.value) == message


# ----------------------------------------------------------------------------- BTXRD


def _btxrd_csv(root: Path, rows: list[dict]) -> Path:
    cols = ["image_id", "image", "mask", "label", "tumor_subtype", "age", "sex", "site", "region",
            "site_group", "view", "center", "mask_bbox_256"]  # fmt: skip
    df = pd.DataFrame([{c: r.get(c, "") for c in cols} for r in rows], columns=cols)
    p = root / "metadata.csv"
    df.to_csv(p, index=False)
    return p


def test_btxrd_adapter_synthetic(tmp_path: Path):
    _png(tmp_path / "images" / "a.png", 256, 256)
    _png(tmp_path / "images" / "big.png", 512, 1024)  # an "original size" image
    base = dict(mask="m.png", age=30, sex="F", site="tibia", region="lower limb",
                site_group="appendicular", view="frontal", center=1)  # fmt: skip
    csv = _btxrd_csv(
        tmp_path,
        [
            dict(
                base,
                image_id="A",
                image="images/a.png",
                label="malignant",
                tumor_subtype="osteosarcoma",
                mask_bbox_256="[10, 20, 29, 59]",
            ),  # fmt: skip
            dict(base, image_id="N", image="images/a.png", label="normal", mask_bbox_256=""),
            dict(
                base,
                image_id="B",
                image="images/big.png",
                label="benign",
                tumor_subtype="osteochondroma",
                mask_bbox_256="[10, 20, 29, 59]",
            ),  # fmt: skip
            dict(base, image_id="C", image="images/a.png", label="weird", mask_bbox_256="[1, 1, 5, 5]"),
            dict(base, image_id="D", image="images/a.png", label="benign", mask_bbox_256="[1, 2]"),
        ],
    )
    t = read_case_table(csv)
    f = t.frame
    assert t.source_format == "btxrd"
    assert f["image_id"].tolist() == ["A", "B", "C", "D"]  # normal excluded
    assert f.index.tolist() == [0, 2, 3, 4]  # CSV data-row positions kept for messages
    assert f["label"].iloc[:2].tolist() == [1, 0]
    assert f["site"].iloc[0] == "appendicular" and f["bone_site"].iloc[0] == "tibia"
    assert f["subtype"].iloc[0] == "osteosarcoma"
    # Inclusive BTXRD bbox -> exclusive edges.
    assert f.loc[0, ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]].tolist() == [10, 20, 30, 60]
    # On a 512 x 1024 image the 256-grid box scales by (2, 4).
    assert f.loc[2, ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]].tolist() == [20, 80, 60, 240]
    assert t.errors == [
        "row 4: BTXRD label 'weird' is not benign, malignant or normal",
        "row 5: mask_bbox_256 '[1, 2]' is not a list of four numbers",
    ]
    with pytest.raises(InputError, match="unknown BTXRD task"):
        btxrd_to_cases(pd.read_csv(csv), tmp_path, task="tumour_vs_normal")


@pytest.mark.btxrd
def test_btxrd_real_metadata(btxrd_dir: Path):
    t = read_case_table(btxrd_dir / "metadata.csv")
    f = t.frame
    assert t.source_format == "btxrd"
    assert t.errors == []
    assert len(f) == 1345
    assert int(f["label"].sum()) == 235
    assert set(f["site"]) == {"appendicular", "axial"}
    assert set(f["sex"]) == {"M", "F"}
    assert f["subtype"].notna().all() and not f["bone_site"].isna().any()
    x0, y0, x1, y1 = (f[c].to_numpy() for c in ["roi_x0", "roi_y0", "roi_x1", "roi_y1"])
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 256).all() and (y1 <= 256).all()
    assert ((x1 - x0) >= 1).all() and ((y1 - y0) >= 1).all()
    # Independent reference: the ROI is exactly the mask's bounding box (exclusive edges).
    for _, row in f.sample(25, random_state=0).iterrows():
        mask = np.asarray(Image.open(btxrd_dir / row["mask"])) > 0
        ys, xs = np.nonzero(mask)
        assert [row["roi_x0"], row["roi_y0"], row["roi_x1"], row["roi_y1"]] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# ----------------------------------------------------------------------------- paper


def test_paper_adapter_synthetic(tmp_path: Path):
    for name in ["p1.png", "p2.png", "p3.png", "p4.png", "p5.png", "p6.png"]:
        _png(tmp_path / "xr" / name)
    csv = _write(
        tmp_path / "labels.csv",
        "path,age,gender,location,ganran,hospital\n"
        "xr/p1.png,34,男,0,1,H1\n"
        "xr/p2.png,61,女,1,0,H1\n"
        "xr/p3.png,12,1,axial,1,H2\n"
        "xr/p4.png,70,0,Appendicular,0,H2\n"
        "xr/p5.png,45,Female,,,H3\n"
        "xr/p6.png,45,2,3,5,H3\n",
    )
    t = read_case_table(csv)
    f = t.frame
    assert t.source_format == "paper"
    assert f["image_path"].tolist() == [str((tmp_path / "xr" / f"p{i}.png").resolve()) for i in range(1, 7)]
    assert f["label"].iloc[:4].tolist() == [1, 0, 1, 0]  # ganran 1 = infection = positive
    assert pd.isna(f["label"].iloc[4])
    assert f["sex"].iloc[:5].tolist() == ["M", "F", "M", "F", "F"]
    assert f["site"].iloc[:4].tolist() == ["appendicular", "axial", "axial", "appendicular"]
    assert f["hospital"].tolist() == ["H1", "H1", "H2", "H2", "H3", "H3"]  # extra columns kept
    assert f["gender"].iloc[0] == "男"  # original columns pass through
    assert t.errors == [
        "row 6: ganran '5' is not 1 (infection) or 0 (tumour); "
        "gender '2' is not M/F, male/female, 1/0 or 男/女; location '3' is not appendicular/axial or 0/1"
    ]


def test_paper_adapter_direct_site_column():
    df = pd.DataFrame({"path": ["/x/a.png"], "gender": ["M"], "site": ["1"], "ganran": ["0"]})
    out = paper_to_cases(df, Path("/ignored"))
    assert out["image"].iloc[0] == "/x/a.png"  # absolute paths stay
    assert out["site"].iloc[0] == "axial" and out["sex"].iloc[0] == "M" and out["label"].iloc[0] == 0


def test_detect_format():
    assert detect_format(["image", "label"]) == "cases"
    assert detect_format(["image_id", "image", "label", "site_group", "mask_bbox_256", "x"]) == "btxrd"
    assert detect_format(["path", "age", "gender", "ganran"]) == "paper"
    assert detect_format(["path", "age", "gender"]) == "paper"


def test_dicom_and_png_header_sizes(tmp_path: Path, rg3_paths):
    assert image_header_size(_png(tmp_path / "a.png", 33, 21)) == (33, 21)
    jpg = tmp_path / "b.jpg"
    Image.fromarray(np.zeros((7, 9, 3), dtype=np.uint8)).save(jpg)
    assert image_header_size(jpg) == (9, 7)
    # A DICOM under a misleading name is still recognised by its 'DICM' magic.
    renamed = tmp_path / "scan.img"
    renamed.write_bytes(rg3_paths["RG3_UNCR.dcm"].read_bytes())
    assert image_header_size(renamed) == (1760, 1760)
    if "RG3_J2KR.dcm" in rg3_paths:
        assert image_header_size(rg3_paths["RG3_J2KR.dcm"]) == (1760, 1760)


def test_btxrd_bbox_json_roundtrip_values():
    # The adapter is pure: no files touched, index kept.
    df = pd.DataFrame(
        {
            "image_id": ["a"],
            "image": ["images/a.png"],
            "label": ["Malignant"],
            "site_group": ["axial"],
            "mask_bbox_256": [json.dumps([0, 0, 255, 255])],
            "site": ["hip bone"],
        },  # fmt: skip
        index=[7],
    )
    out = btxrd_to_cases(df, Path("/data/btxrd"))
    assert out.index.tolist() == [7]
    assert out["image"].iloc[0] == str(Path("/data/btxrd/images/a.png"))
    assert out[["roi_x0", "roi_y0", "roi_x1", "roi_y1"]].iloc[0].tolist() == [0, 0, 256, 256]
    assert out["label"].iloc[0] == 1 and out["row_error"].iloc[0] == ""


@pytest.mark.parametrize(
    "value, missing",
    [
        (None, True),
        (pd.NA, True),
        (float("nan"), True),
        (np.float32("nan"), True),
        (np.float64("nan"), True),
        (pd.NaT, True),
        ("", True),
        ("  ", True),
        ("nan", False),
        (0, False),
        (0.0, False),
        ("M", False),
        (np.float32(12.5), False),
        (np.array([np.nan]), False),
        (np.array(np.nan), True),
        (np.datetime64("NaT"), True),
        (np.datetime64("2020-01-01"), False),
        (True, False),
        (pd.Timestamp("2020"), False),
    ],
)
def test_is_missing_covers_every_missing_marker(value, missing):
    """The pandas-free is_missing agrees with pandas' own notion on every scalar marker."""
    from model_zoo.clinical import is_missing

    assert is_missing(value) is missing
    if np.ndim(value) == 0 and not isinstance(value, str):
        assert missing is bool(pd.isna(value))


def test_inference_reads_clinical_values_by_the_case_table_rules():
    """One reading of age/sex/site: what a case table accepts, inference encodes the same way."""
    from model_zoo.ensemble import clinical_vector

    assert clinical_vector(48, "male", " AXIAL ", age_fill=30.0) == clinical_vector(48.0, "M", "axial", age_fill=30.0)
    assert clinical_vector("48", "Female", "appendicular", age_fill=30.0) == [48.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(InputError, match="sex 'X' is not M or F"):
        clinical_vector(48, "X", None, age_fill=30.0)
    with pytest.raises(InputError, match="age '130' is outside 0-120 years"):
        clinical_vector(130, None, None, age_fill=30.0)


def test_inference_does_not_import_pandas():
    """The prediction path reads clinical values without the CSV stack (pandas is slow to import)."""
    import subprocess
    import sys

    code = "import sys, model_zoo.ensemble; print('pandas' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1]
    )
    assert out.stdout.strip() == "False"


def test_predict_treats_numpy_and_pandas_missing_like_none():
    """Zoo inputs may come straight from a DataFrame (pd.NA, float32 NaN): same encoding as None."""
    from model_zoo.ensemble import clinical_vector

    assert clinical_vector(np.float32("nan"), pd.NA, None, age_fill=30.0) == clinical_vector(None, None, None, age_fill=30.0)
