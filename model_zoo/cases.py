"""Case tables: read, adapt and validate the CSVs that list cases (README: Case table).

A case table has one row per radiograph:

==============================  =====================================================
``image``                       path to a DICOM/PNG/JPG, relative to the CSV's folder
                                or absolute (required)
``label``                       optional: 1 = positive class, 0 = negative, or class
                                names mapped through ``label_map``
``patient_id``                  optional grouping key for splits
``age``, ``sex``, ``site``      years (0-120); M/F; appendicular/axial
``roi_x0 .. roi_y1``            optional ROI in stored-image pixels (x1/y1 exclusive)
``center``                      optional acquisition centre
==============================  =====================================================

Extra columns are kept and passed through. Two other layouts are detected by their
columns and adapted: the BTXRD ``metadata.csv`` (:func:`btxrd_to_cases`) and the paper's
label CSV (:func:`paper_to_cases`).

Rows are validated one by one. A bad row is *marked* (``row_error``), never dropped, so a
batch job can predict the good rows and report the bad ones; only problems with the table
as a whole (unreadable file, missing ``image`` column) raise :class:`InputError`.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_zoo import roi as roi_mod
from model_zoo.clinical import (
    SITES,
    cell_text,
    is_missing,
    parse_age,
    parse_number,
    parse_sex,
    parse_site,
)
from model_zoo.errors import InputError

__all__ = [
    "CASE_COLUMNS",
    "ROI_COLUMNS",
    "CaseTable",
    "btxrd_to_cases",
    "detect_format",
    "image_header_size",
    "paper_to_cases",
    "read_case_table",
]

CASE_COLUMNS = [
    "image",
    "label",
    "patient_id",
    "age",
    "sex",
    "site",
    "roi_x0",
    "roi_y0",
    "roi_x1",
    "roi_y1",
    "center",
]
ROI_COLUMNS = ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]

# Columns that identify the two foreign layouts.
BTXRD_COLUMNS = frozenset({"image_id", "image", "label", "site_group", "mask_bbox_256"})
PAPER_COLUMNS = frozenset({"path", "ganran"})

# BTXRD stores every image as a 256 x 256 PNG; its boxes are on that grid.
BTXRD_GRID_WH = (256, 256)

_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}


@dataclass
class CaseTable:
    """A validated case table.

    Attributes
    ----------
    frame
        One row per input case (BTXRD: normal rows excluded). All input columns are kept;
        ``age``, ``sex``, ``site`` and the four ROI columns are always present (NaN where
        not given) and normalised (age float years, sex ``"M"``/``"F"``, site
        ``"appendicular"``/``"axial"``, ROI floats clamped to the image); ``label`` is
        nullable ``Int64`` when present. Added: ``image_path`` (absolute path string) and
        ``row_error`` (``""`` when the row is usable). The index is the 0-based data-row
        position in the CSV, so ``index + 1`` is the row number used in messages.
    source_format
        ``"cases"``, ``"btxrd"`` or ``"paper"``.
    errors
        One message per bad row, e.g. ``"row 7: age 'abc' is not a number"``.
    """

    frame: pd.DataFrame
    source_format: str
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.Series:
        """Boolean mask of the rows without an error."""
        return self.frame["row_error"] == ""


# ----------------------------------------------------------------------------- values


def _parse_label(value: Any, label_map: dict[str, int] | None) -> int | None:
    if is_missing(value):
        return None
    s = cell_text(value)
    if label_map:
        if s in label_map:
            return int(label_map[s])
        folded = {str(k).strip().lower(): v for k, v in label_map.items()}
        if s.lower() in folded:
            return int(folded[s.lower()])
    try:
        number = float(s)
    except ValueError:
        number = math.nan
    if number in (0.0, 1.0):
        return int(number)
    if label_map:
        names = ", ".join(sorted(str(k) for k in label_map))
        raise InputError(f"label '{s}' is not 0/1 or one of: {names}")
    raise InputError(f"label '{s}' is not 0/1 (pass a label_map to map class names)")


# ----------------------------------------------------------------------------- files


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def image_header_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of a stored image, reading only its header.

    PNG/JPG (anything Pillow opens) via ``PIL.Image.open(path).size``, which does not decode
    pixels; DICOM via ``pydicom.dcmread(stop_before_pixels=True)`` ``Columns``/``Rows``.

    Raises
    ------
    InputError
        When neither reader understands the file.
    """
    p = Path(path)
    try:
        dicom = _is_dicom_file(p)
    except OSError as err:
        raise InputError(f"cannot open image {p}: {err.strerror or err}") from None
    if not dicom:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(p) as im:
                return int(im.size[0]), int(im.size[1])
        except (UnidentifiedImageError, OSError, ValueError):
            pass  # maybe a DICOM without preamble: try pydicom below
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, force=not dicom)
        cols, rows = int(ds.Columns), int(ds.Rows)
    except (InvalidDicomError, AttributeError, OSError, ValueError, TypeError, KeyError):
        raise InputError(f"cannot read the image header of {p} (not a PNG, JPG or DICOM image)") from None
    return cols, rows


def _resolve_image(value: Any, root: Path) -> Path:
    p = Path(str(value).strip()).expanduser()
    if not p.is_absolute():
        p = root / p
    # resolve() follows symlinks and '..' the way the OS will when opening the file; an
    # escaping '..' is allowed as long as the file exists.
    return p.resolve()


def _check_regular_file(path: Path) -> str | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to a regular file is fine
    except FileNotFoundError:
        return f"image file not found: {path}"
    except OSError as err:
        return f"cannot access image file {path}: {err.strerror or err}"
    if not stat.S_ISREG(st.st_mode):
        return f"image path is not a regular file: {path}"
    return None


def _read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV as text cells (so messages quote what the user wrote, and ids like '007'
    keep their zeros), trying utf-8 (with or without BOM) then latin-1."""
    if not path.exists():
        raise InputError(f"case table not found: {path}")
    if not path.is_file():
        raise InputError(f"case table is not a regular file: {path}")
    data = path.read_bytes()
    # latin-1 decodes any byte string, so catch binary/UTF-16 files explicitly.
    if b"\x00" in data[:65536]:
        raise InputError(f"case table {path} is not a UTF-8 or Latin-1 text CSV (binary content)")
    text = None
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    if text is None:  # pragma: no cover - latin-1 always decodes
        raise InputError(f"case table {path} is not UTF-8 or Latin-1 text")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise InputError(f"case table {path} is empty") from None
    except (pd.errors.ParserError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot parse case table {path} as CSV: {first}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def detect_format(columns: Any) -> str:
    """``"btxrd"``, ``"paper"`` or ``"cases"`` from a table's column names."""
    cols = {str(c).strip() for c in columns}
    if BTXRD_COLUMNS <= cols:
        return "btxrd"
    if PAPER_COLUMNS <= cols or ("path" in cols and "image" not in cols and "gender" in cols):
        return "paper"
    return "cases"


# ----------------------------------------------------------------------------- adapters


def _parse_btxrd_bbox(value: Any) -> tuple[float, float, float, float] | None:
    if is_missing(value):
        return None
    try:
        box = json.loads(str(value))
        x0, y0, x1, y1 = (float(v) for v in box)
    except (ValueError, TypeError):
        raise InputError(f"mask_bbox_256 '{cell_text(value)}' is not a list of four numbers") from None
    # BTXRD's mask_bbox_256 is inclusive ([x_min, y_min, x_max, y_max] of mask pixels,
    # checked against the masks); our boxes are exclusive, so the far edges move by one.
    return (x0, y0, x1 + 1.0, y1 + 1.0)


def btxrd_to_cases(df: pd.DataFrame, root: Path, *, task: str = "malignant_vs_benign") -> pd.DataFrame:
    """Map BTXRD ``metadata.csv`` rows onto case-table columns.

    Task ``"malignant_vs_benign"`` (the only one): label malignant = 1, benign = 0; normal
    rows are EXCLUDED (they have no lesion, ROI or subtype). A label other than
    benign/malignant/normal is kept with an empty label and a ``row_error``.

    Mapping: ``image`` -> absolute path under ``root``; ``site_group`` -> ``site``; BTXRD's
    own ``site`` (the bone name, e.g. 'tibia+fibula') -> ``bone_site``; ``tumor_subtype``
    -> ``subtype``; ``mask_bbox_256`` -> ``roi_x0..roi_y1``, converted from BTXRD's
    inclusive max pixel to an exclusive edge (+1). Those coordinates are on the 256 x 256
    stored PNG, i.e. stored-image pixels for this dataset; :func:`read_case_table` rescales
    them when the image on disk has another size (e.g. the original radiographs). All
    other columns (image_id, view, center, mask, region, ...) pass through.

    The result has a ``row_error`` column ('' when fine) and keeps ``df``'s index.
    """
    if task != "malignant_vs_benign":
        raise InputError(f"unknown BTXRD task {task!r} (supported: 'malignant_vs_benign')")
    missing = sorted(BTXRD_COLUMNS - set(df.columns))
    if missing:
        raise InputError(f"BTXRD table is missing column(s): {', '.join(missing)}")
    root = Path(root)
    diagnosis = df["label"].astype("string").str.strip().str.lower()
    keep = diagnosis.ne("normal").fillna(True)
    src = df.loc[keep]
    diagnosis = diagnosis.loc[keep]

    out = pd.DataFrame(index=src.index)
    out["image"] = [str(Path(root) / str(p).strip()) if not is_missing(p) else np.nan for p in src["image"]]
    labels: list[Any] = []
    errors: list[str] = []
    rois: list[tuple[float, float, float, float] | None] = []
    for dx, raw_label, bbox in zip(diagnosis, src["label"], src["mask_bbox_256"]):
        msgs = []
        if dx == "malignant":
            labels.append(1)
        elif dx == "benign":
            labels.append(0)
        else:
            labels.append(pd.NA)
            msgs.append(f"BTXRD label '{cell_text(raw_label)}' is not benign, malignant or normal")
        try:
            rois.append(_parse_btxrd_bbox(bbox))
        except InputError as err:
            rois.append(None)
            msgs.append(str(err))
        errors.append("; ".join(msgs))
    out["label"] = pd.array(labels, dtype="Int64")
    out["age"] = src["age"] if "age" in src else np.nan
    out["sex"] = src["sex"] if "sex" in src else np.nan
    out["site"] = src["site_group"]
    for i, col in enumerate(ROI_COLUMNS):
        out[col] = [b[i] if b is not None else np.nan for b in rois]
    out["center"] = src["center"] if "center" in src else np.nan
    if "tumor_subtype" in src:
        out["subtype"] = src["tumor_subtype"]
    if "site" in src:
        out["bone_site"] = src["site"]
    consumed = {"image", "label", "age", "sex", "site", "site_group", "center", "tumor_subtype"}
    for col in src.columns:
        if col not in consumed and col not in out.columns:
            out[col] = src[col]
    out["row_error"] = errors
    return out


_GENDER_CODES = {
    "m": "M",
    "male": "M",
    "1": "M",
    "男": "M",
    "f": "F",
    "female": "F",
    "0": "F",
    "女": "F",
}


def paper_to_cases(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Map the paper's label CSV (tumour vs infection) onto case-table columns.

    The paper's data are under restricted access, so this follows the column names we were
    given; the codings below are ASSUMPTIONS, checked per row (a value outside them marks
    the row, it is never guessed):

    * ``path`` -> ``image`` (relative to ``root``, the CSV's folder, or absolute).
    * ``ganran`` (Chinese 感染, "infection") -> ``label``: 1 = infection (the positive
      class), 0 = tumour. Missing -> unlabelled row.
    * ``gender`` -> ``sex``: 'M'/'F', 'male'/'female' (any case), 男/女, or numeric
      1 = male, 0 = female (the common 1/0 coding; a 1/2 coding is NOT assumed and is
      reported as an error).
    * ``site`` or else ``location`` -> ``site``: 'appendicular'/'axial' (any case), or
      numeric 0 = appendicular, 1 = axial (appendicular is the majority class in bone
      tumour/infection series, so 0 was taken as the reference level).
    * ``age`` is passed on as is and validated by :func:`read_case_table`.

    All input columns are kept (``gender``, ``ganran`` ... pass through unchanged). The
    result has a ``row_error`` column ('' when fine) and keeps ``df``'s index.
    """
    if "path" not in df.columns:
        raise InputError("paper-format table is missing column(s): path")
    root = Path(root)
    out = df.copy()
    out["image"] = [str(root / str(p).strip()) if not is_missing(p) else np.nan for p in df["path"]]
    errors: list[list[str]] = [[] for _ in range(len(df))]

    labels: list[Any] = []
    if "ganran" in df.columns:
        for i, v in enumerate(df["ganran"]):
            if is_missing(v):
                labels.append(pd.NA)
                continue
            try:
                number = float(cell_text(v))
            except ValueError:
                number = math.nan
            if number in (0.0, 1.0):
                labels.append(int(number))
            else:
                labels.append(pd.NA)
                errors[i].append(f"ganran '{cell_text(v)}' is not 1 (infection) or 0 (tumour)")
        out["label"] = pd.array(labels, dtype="Int64")

    if "gender" in df.columns:
        sexes: list[Any] = []
        for i, v in enumerate(df["gender"]):
            if is_missing(v):
                sexes.append(np.nan)
                continue
            key = cell_text(v).lower()
            if key in _GENDER_CODES:
                sexes.append(_GENDER_CODES[key])
            else:
                sexes.append(np.nan)
                errors[i].append(f"gender '{cell_text(v)}' is not M/F, male/female, 1/0 or 男/女")
        out["sex"] = sexes

    site_col = "site" if "site" in df.columns else ("location" if "location" in df.columns else None)
    if site_col is not None:
        sites: list[Any] = []
        for i, v in enumerate(df[site_col]):
            if is_missing(v):
                sites.append(np.nan)
                continue
            key = cell_text(v).lower()
            if key in SITES:
                sites.append(key)
            elif key in ("0", "1"):
                sites.append(SITES[int(key)])
            else:
                sites.append(np.nan)
                errors[i].append(f"{site_col} '{cell_text(v)}' is not appendicular/axial or 0/1")
        out["site"] = sites

    out["row_error"] = ["; ".join(m) for m in errors]
    return out


# ----------------------------------------------------------------------------- reading


def _validate_label_map(label_map: dict[str, int] | None) -> None:
    if label_map is None:
        return
    bad = {k: v for k, v in label_map.items() if v not in (0, 1) or isinstance(v, bool)}
    if bad:
        raise InputError(f"label_map values must be 0 or 1; got {bad}")


def _row_roi(
    row: pd.Series, size_wh: tuple[int, int] | None, source_format: str
) -> tuple[tuple[float, float, float, float] | None, list[str]]:
    """Parse and check one row's ROI; returns (clamped box or None, messages)."""
    raw = [row[c] for c in ROI_COLUMNS]
    missing = [c for c, v in zip(ROI_COLUMNS, raw) if is_missing(v)]
    if len(missing) == 4:
        return None, []
    if missing:
        return None, [f"ROI is incomplete: {', '.join(missing)} empty"]
    values: list[float] = []
    msgs = []
    for c, v in zip(ROI_COLUMNS, raw):
        try:
            x = parse_number(v, c)
        except InputError as err:
            msgs.append(str(err))
            continue
        if x is None or not math.isfinite(x):
            msgs.append(f"{c} '{cell_text(v)}' is not a finite number")
            continue
        values.append(x)
    if msgs:
        return None, msgs
    box = tuple(values)
    if size_wh is not None and source_format == "btxrd" and size_wh != BTXRD_GRID_WH:
        # BTXRD boxes live on the 256 x 256 grid; the image here is another size (e.g. the
        # original radiograph), and BTXRD's resize ignored the aspect ratio, so scale per axis.
        box = roi_mod.scale_box(box, BTXRD_GRID_WH, size_wh)
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return None, [f"ROI {roi_mod.fmt_box(box)} has zero or negative area (needs x1 > x0 and y1 > y0)"]
    if size_wh is None:
        return box, []  # type: ignore[return-value]
    try:
        return roi_mod.validate_box(box, size_wh), []
    except InputError as err:
        return None, [str(err)]


def read_case_table(
    path: str | os.PathLike[str],
    *,
    label_map: dict[str, int] | None = None,
    check_files: bool = True,
    require_label: bool = False,
) -> CaseTable:
    """Read and validate a case table (or a BTXRD ``metadata.csv``, or the paper's CSV).

    Parameters
    ----------
    path
        The CSV. Relative image paths are relative to its folder.
    label_map
        Class name -> 0/1, for ``label`` columns holding names (matched exactly, then
        case-insensitively). 0/1 labels are always accepted.
    check_files
        Check that each image exists and is a regular file, and read image headers (only
        for rows with an ROI) to check the ROI against the image size. ``False`` skips all
        file access (ROIs then get only the area check).
    require_label
        Demand a ``label`` column (InputError if absent) and a label on every row (a row
        without one is marked).

    Returns
    -------
    CaseTable
        See :class:`CaseTable`. Partly-outside ROIs are clamped to the image.

    Raises
    ------
    InputError
        Unreadable/unparsable file, or missing required columns (named in the message).
    """
    csv_path = Path(path).expanduser()
    raw = _read_csv(csv_path)
    root = csv_path.resolve().parent
    fmt = detect_format(raw.columns)
    if fmt == "btxrd":
        frame = btxrd_to_cases(raw, root)
    elif fmt == "paper":
        frame = paper_to_cases(raw, root)
    else:
        frame = raw.copy()
        frame["row_error"] = ""  # an incoming row_error column (stale output) is replaced

    required = ["image"] + (["label"] if require_label else [])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"case table {csv_path.name} is missing required column(s): {', '.join(missing)}")
    present_roi = [c for c in ROI_COLUMNS if c in frame.columns]
    if present_roi and len(present_roi) < 4:
        absent = [c for c in ROI_COLUMNS if c not in frame.columns]
        raise InputError(f"case table {csv_path.name} has ROI column(s) {', '.join(present_roi)} but not {', '.join(absent)}")
    _validate_label_map(label_map)
    for col in ["age", "sex", "site", *ROI_COLUMNS]:
        if col not in frame.columns:
            frame[col] = np.nan

    has_label = "label" in frame.columns
    image_paths: list[Any] = []
    ages: list[Any] = []  # floats (NaN when missing); Any like sexes/sites, filled by one loop below
    sexes: list[Any] = []
    sites: list[Any] = []
    labels: list[Any] = []
    boxes: list[tuple[float, float, float, float] | None] = []
    row_errors: list[str] = []
    for _, row in frame.iterrows():
        msgs = [row["row_error"]] if row["row_error"] else []
        # image
        file_ok = False
        resolved: Path | None = None
        if is_missing(row["image"]):
            msgs.append("image path is empty")
            image_paths.append(np.nan)
        else:
            resolved = _resolve_image(row["image"], root)
            image_paths.append(str(resolved))
            if check_files:
                problem = _check_regular_file(resolved)
                if problem:
                    msgs.append(problem)
                else:
                    file_ok = True
        # label
        label = None
        if has_label:
            try:
                label = _parse_label(row["label"], label_map)
            except InputError as err:
                msgs.append(str(err))
            else:
                if label is None and require_label and not msgs:
                    msgs.append("label is missing")
        labels.append(pd.NA if label is None else label)
        # clinical values: each checked separately so a row reports every problem at once
        for col, parse, out in (("age", parse_age, ages), ("sex", parse_sex, sexes), ("site", parse_site, sites)):
            try:
                value = parse(row[col])
            except InputError as err:
                msgs.append(str(err))
                value = None
            out.append(np.nan if value is None else value)
        # ROI: the image header is read only when there is an ROI to check
        size_wh = None
        has_roi = not all(is_missing(row[c]) for c in ROI_COLUMNS)
        if has_roi and file_ok and resolved is not None:
            try:
                size_wh = image_header_size(resolved)
            except InputError as err:
                msgs.append(str(err))
        box, roi_msgs = _row_roi(row, size_wh, fmt)
        msgs.extend(roi_msgs)
        boxes.append(box)
        row_errors.append("; ".join(m for m in msgs if m))

    frame["image_path"] = pd.Series(image_paths, index=frame.index)
    if has_label:
        frame["label"] = pd.array(labels, dtype="Int64")
    frame["age"] = pd.Series(ages, index=frame.index, dtype="float64")
    frame["sex"] = pd.Series(sexes, index=frame.index)
    frame["site"] = pd.Series(sites, index=frame.index)
    for i, col in enumerate(ROI_COLUMNS):
        frame[col] = pd.Series([b[i] if b is not None else np.nan for b in boxes], index=frame.index, dtype="float64")
    frame["row_error"] = row_errors

    # Case columns first (in contract order), then everything else as it came.
    ordered = [c for c in CASE_COLUMNS if c in frame.columns]
    ordered += [c for c in frame.columns if c not in ordered and c not in ("image_path", "row_error")]
    frame = frame[ordered + ["image_path", "row_error"]]
    errors = [f"row {idx + 1}: {msg}" for idx, msg in zip(frame.index, row_errors) if msg]
    return CaseTable(frame=frame, source_format=fmt, errors=errors)
