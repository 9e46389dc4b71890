"""Batch prediction from uploads: a case CSV plus a zip of images, through ``predict_cases``.

Uploads are unpacked into a ``tempfile.TemporaryDirectory`` that is removed as soon as the
batch finishes (also on errors); nothing else is written to disk. The zip is checked entry
by entry before anything is extracted: absolute paths, ``..`` components, drive letters,
links and special files are refused, and the total uncompressed size and the number of
files are capped (a "zip bomb" stops at the cap, whatever its headers claim).

A case row may only name an image inside the uploaded zip: an absolute path or one that
climbs out of the upload folder is marked as a bad row (otherwise a web user could make
the server read its own files).
"""

from __future__ import annotations

import io
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from model_zoo.errors import InputError
from model_zoo.zoo import sha256_bytes

if TYPE_CHECKING:  # pragma: no cover
    from model_zoo.ensemble import Zoo

MAX_FILES = 20_000
MAX_TOTAL_BYTES = 4 * 1024**3  # uncompressed
OUTSIDE_MESSAGE = "image path must point inside the uploaded zip (absolute paths and '..' are not allowed)"
_CHUNK = 1 << 20


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path a zip entry may be extracted to, or None to refuse it."""
    norm = name.replace("\\", "/")
    if not norm or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return None
    parts = PurePosixPath(norm).parts
    if any(p in ("..",) for p in parts) or not parts:
        return None
    return PurePosixPath(*[p for p in parts if p not in (".", "")])


def safe_extract_zip(data: bytes, dest: Path, *, max_files: int = MAX_FILES, max_total_bytes: int = MAX_TOTAL_BYTES) -> list[str]:
    """Extract a zip's regular files into ``dest``; return their relative paths.

    Raises
    ------
    InputError
        Not a zip, an unsafe entry (absolute path, '..', drive letter, link or special
        file), too many files, or more than ``max_total_bytes`` uncompressed. Nothing is
        extracted when an unsafe entry is found (all entries are checked first).
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InputError("the images upload is not a valid zip file") from None
    dest = Path(dest)
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for info in infos:
            rel = _safe_member_path(info.filename)
            if rel is None:
                raise InputError(f"zip entry {info.filename!r} has an unsafe path (absolute or with '..'); refused")
            # Unix type bits in the high word (absent = plain file, e.g. ZipFile.writestr).
            ftype = stat.S_IFMT((info.external_attr >> 16) & 0xFFFF)
            if ftype and ftype != stat.S_IFREG:
                raise InputError(f"zip entry {info.filename!r} is a link or special file; refused")
            if rel.parts[0] == "__MACOSX" or rel.name.startswith("._") or rel.name == ".DS_Store":
                continue  # macOS resource forks: not images
            plan.append((info, rel))
        if len(plan) > max_files:
            raise InputError(f"the zip holds {len(plan)} files; the limit is {max_files}")
        total = 0
        written: list[str] = []
        root = dest.resolve()
        for info, rel in plan:
            target = (dest / Path(*rel.parts)).resolve()
            if root not in target.parents:  # belt and braces after the path check
                raise InputError(f"zip entry {info.filename!r} would be written outside the upload folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while block := src.read(_CHUNK):
                    total += len(block)
                    if total > max_total_bytes:
                        raise InputError(f"the zip expands to more than {max_total_bytes / 1024**3:.1f} GiB; refused")
                    out.write(block)
            written.append(rel.as_posix())
    return written


def _single_top_folder(names: list[str]) -> str | None:
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return next(iter(tops))
    return None


@dataclass
class BatchResult:
    frame: pd.DataFrame  # the predict CSV columns, README: Batch prediction (image_path dropped: it named the temp folder)
    n_rows: int
    n_failed: int
    files_in_zip: int
    pdf_zip: bytes | None = None  # one PDF case report per successful row (tumour-board pack)

    @property
    def n_ood(self) -> int:
        """Rows the release's out-of-distribution check flagged (0 for releases without one)."""
        return int(self.frame["ood"].eq(True).sum()) if "ood" in self.frame.columns else 0

    @property
    def failed(self) -> pd.DataFrame:
        cols = [c for c in ("image", "error") if c in self.frame.columns]
        bad = self.frame[self.frame["error"].astype(str) != ""]
        return bad[cols].assign(row=bad.index + 1)[["row", *cols]]

    def csv_bytes(self) -> bytes:
        return self.frame.to_csv(index=False).encode("utf-8")


def _confine_images(csv_path: Path, root: Path) -> dict[int, str]:
    """Rewrite rows whose image lies outside ``root`` to a missing in-folder name.

    Returns {row index: the original image value} for the rewritten rows.
    """
    text = csv_path.read_bytes().decode("utf-8-sig", errors="replace")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError):
        return {}  # let read_case_table report the problem with its own message
    frame.columns = [str(c).strip() for c in frame.columns]
    if "image" not in frame.columns:
        return {}
    outside: dict[int, str] = {}
    real_root = root.resolve()
    for i, value in frame["image"].items():
        v = str(value).strip()
        if not v:
            continue
        p = Path(v.replace("\\", "/"))
        resolved = (csv_path.parent / p).resolve()
        if p.is_absolute() or ".." in p.parts or real_root not in resolved.parents:
            outside[int(i)] = v
            frame.at[i, "image"] = f"__outside_upload__/{int(i)}"
    if outside:
        frame.to_csv(csv_path, index=False)
    return outside


@contextmanager
def uploaded_case_table(csv_bytes: bytes, zip_bytes: bytes | None) -> Iterator[UploadedTable]:
    """Unpack an uploaded case table and image zip into a temporary folder (removed on exit).

    The CSV's ``image`` paths are relative to the zip's root (or to its single top-level
    folder, if everything in the zip sits in one folder - a zipped directory). Rows naming
    an image outside the upload are rewritten so they fail (see :data:`OUTSIDE_MESSAGE`).
    """
    if not csv_bytes:
        raise InputError("the case table upload is empty")
    with tempfile.TemporaryDirectory(prefix="bone-zoo-upload-") as tmp:
        root = Path(tmp) / "upload"
        root.mkdir()
        names = safe_extract_zip(zip_bytes, root) if zip_bytes else []
        csv_dir = root
        top = _single_top_folder(names)
        if top is not None:
            try:
                head = pd.read_csv(io.BytesIO(csv_bytes), dtype=str, nrows=50, keep_default_na=False)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, UnicodeDecodeError):
                head = pd.DataFrame()
            head.columns = [str(c).strip() for c in head.columns]
            images = [str(v).replace("\\", "/") for v in head.get("image", [])]
            if images and not any(v.startswith(top + "/") for v in images):
                csv_dir = root / top
        csv_path = csv_dir / CSV_NAME
        csv_path.write_bytes(csv_bytes)
        outside = _confine_images(csv_path, root)
        yield UploadedTable(csv_path=csv_path, work_dir=Path(tmp), outside=outside, files_in_zip=len(names), root=root)


CSV_NAME = "__cases__.csv"  # the uploaded table's name inside the temporary folder


@dataclass
class UploadedTable:
    csv_path: Path
    work_dir: Path  # a scratch folder inside the temporary directory
    outside: dict[int, str]
    files_in_zip: int
    root: Path | None = None  # the folder the zip was unpacked into

    def public_message(self, message: str, csv_name: str | None = None) -> str:
        """``message`` as the user may see it: paths relative to the upload (never the server's
        temporary folder) and the uploaded table's own name instead of the internal one."""
        folders = [self.csv_path.parent, self.root, self.work_dir]
        for folder in [f for f in folders if f is not None]:
            for form in dict.fromkeys((str(folder), str(Path(folder).resolve()))):
                message = message.replace(form + "/", "").replace(form, "the upload")
        return message.replace(CSV_NAME, csv_name or "(uploaded table)")

    def fix_errors(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Give rows that named an image outside the upload their real message and path back;
        every other message loses the server's temporary folder (paths relative to the upload)."""
        frame = frame.copy()
        if "error" in frame.columns:
            frame["error"] = [self.public_message(str(e)) if isinstance(e, str) else e for e in frame["error"]]
        if self.outside and "image" in frame.columns:
            # Match by the sentinel, not by position: adapters (BTXRD) may drop rows.
            for j, value in frame["image"].items():
                tail = str(value).replace("\\", "/").rsplit("__outside_upload__/", 1)
                if len(tail) == 2 and tail[1].isdigit() and int(tail[1]) in self.outside:
                    frame.at[j, "error"] = OUTSIDE_MESSAGE
                    frame.at[j, "image"] = self.outside[int(tail[1])]
        return frame


def run_batch(
    zoo: Zoo,
    csv_bytes: bytes,
    zip_bytes: bytes | None,
    *,
    roi_mode: str = "given",
    progress: Callable[[int, int], None] | None = None,
    with_reports: bool = False,
    csv_name: str | None = None,
    block_flagged: bool = True,
    report_image_names: bool = False,
    allow_ood: bool = False,
) -> BatchResult:
    """Predict every row of an uploaded case table with images from an uploaded zip; with
    ``with_reports`` also a zip of PDF case reports (progress reported as a second pass).

    ``csv_name``: the uploaded table's file name, used in messages. ``block_flagged``: rows the
    input gate flags (a tiny or featureless ROI, a region that is not bone/limb/pelvis) are
    errors, as the Case page withholds them until acknowledged. ``report_image_names``: name
    each PDF after its image and print the image name in it (image names often identify the
    patient, so off by default; every PDF names its case-table row). ``allow_ood``: rows the
    release's out-of-distribution check flags get their prediction word (and a PDF) too; without
    it they keep ``ood`` True, an empty ``prediction`` and the reason in ``warning``, as
    ``python -m model_zoo predict`` without ``--allow-ood``.
    """
    from model_zoo.predict import predict_cases
    from model_zoo.roi import ROI_MODES

    if roi_mode not in ROI_MODES:
        raise InputError(f"ROI mode {roi_mode!r} is not one of {', '.join(ROI_MODES)}")
    with uploaded_case_table(csv_bytes, zip_bytes) as up:
        try:
            frame = predict_cases(
                zoo,
                up.csv_path,
                up.work_dir / "predictions.csv",
                roi_mode=roi_mode,
                progress=progress,
                block_flagged=block_flagged,
                allow_ood=allow_ood,
            )
        except InputError as err:  # the table itself is unusable: say so in the user's terms
            raise InputError(up.public_message(str(err), csv_name)) from None
        frame = up.fix_errors(frame)
        pdf_zip = (
            reports_zip(zoo, frame, progress=progress, image_names=report_image_names) if with_reports else None
        )  # images still on disk here
    frame = frame.drop(columns=[c for c in ("image_path",) if c in frame.columns])
    n_failed = int((frame["error"].astype(str) != "").sum())
    return BatchResult(frame=frame, n_rows=len(frame), n_failed=n_failed, files_in_zip=up.files_in_zip, pdf_zip=pdf_zip)


def report_name(row_number: int, image: Any, *, with_image: bool) -> str:
    """A batch PDF's file name: ``case-0007.pdf``, or ``case-0007-<image stem>.pdf`` (only
    letters, digits, '.', '-' and '_' kept from the stem) when image names are wanted."""
    import re

    base = f"case-{row_number:04d}"
    if with_image and isinstance(image, str) and image.strip():
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePosixPath(image.strip().replace("\\", "/")).stem).strip("._")
        if stem:
            base += f"-{stem[:80]}"
    return base + ".pdf"


def reports_zip(
    zoo: Zoo,
    frame: pd.DataFrame,
    max_side: int = 1024,
    progress: Callable[[int, int], None] | None = None,
    image_names: bool = False,
) -> bytes:
    """A zip of PDF case reports, one per successful row with a prediction word (an
    out-of-distribution row without one gets none), named by row number.

    Every report names its case-table row; with ``image_names`` the file name carries the
    image's name too and the report prints it (as an identifier the user opted into). Uses
    the predictions already in ``frame`` (no second inference) and the library's report
    builder, so batch and case-page reports read the same.
    """
    import io
    import zipfile

    from model_zoo import imaging, roi
    from model_zoo.report_pdf import CaseReport, build_case_report

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, row in frame.reset_index(drop=True).iterrows():
            if progress:
                progress(i, len(frame))
            if str(row.get("error", "")) != "" or not row.get("image_path"):
                continue
            if not isinstance(row.get("prediction"), str) or not row["prediction"]:
                continue  # withheld: out of distribution (see the 'ood' and 'warning' columns)
            data = Path(row["image_path"]).read_bytes()
            pixels = imaging.load_image(data).pixels
            h, w = pixels.shape
            scale = min(1.0, max_side / max(h, w))
            shown = roi.resize(pixels, (max(1, int(w * scale)), max(1, int(h * scale)))) if scale < 1 else pixels
            members = {mid: float(row[f"p_{mid}"]) for mid in zoo.member_ids}

            def value(key: str) -> Any:
                v = row.get(key)
                return None if v is None or (isinstance(v, float) and np.isnan(v)) or v == "" else v

            report = CaseReport(
                zoo_name=zoo.release_name,
                zoo_version=zoo.version,
                p_members=members,
                call=zoo.call(float(row["p_ensemble"])),  # the Case page's framing (no jitter run in batch)
                radiograph=shown,
                image_size_wh=(w, h),
                roi_box=tuple(float(row[c]) for c in ("roi_x0", "roi_y0", "roi_x1", "roi_y1")),
                image_sha256=sha256_bytes(data),
                roi_source=str(row.get("roi_source", "")),
                threshold_rule=zoo.threshold_rule,
                p_clinic=None if value("p_clinic") is None else float(row["p_clinic"]),
                disagreement=float(max(members.values()) - min(members.values())) if members else None,
                age=None if value("age") is None else float(row["age"]),
                sex=value("sex"),
                site=value("site"),
                zoo_files=zoo.files,
                intended_use=zoo.intended_use,
                image_tags={"Case table row": str(i + 1)},
                identifiers={"Image": str(row["image"])} if image_names and value("image") is not None else None,
            )
            zf.writestr(
                report_name(i + 1, row.get("image"), with_image=image_names),
                build_case_report(report, include_identifiers=image_names),
            )
    return buf.getvalue()
