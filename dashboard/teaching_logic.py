"""Reader study logic: load a labelled case set, collect blind reads, score them (no Streamlit).

Statistics are not computed here: the study table (``label``, ``p_ensemble``,
``reader_<name>``) goes to ``training.report.compute_metrics`` (GUIDE contract 2.3), the
sanctioned exception to "the dashboard imports model_zoo only".

Blinding: readers see the image with its ROI and the clinical values, never the file name
(names often give the answer away), the label or the model's output; the case order is
shuffled once per case set, so it does not follow the table's order (often sorted by label).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dashboard import batch_logic
from dashboard import case_logic as cl
from model_zoo import imaging
from model_zoo.errors import InputError, ZooError

DISPLAY_SIDE = 720
CAM_SIDE = 360
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class TeachingCase:
    case_id: str  # "C01", ... (no file names)
    png: bytes  # display image with the ROI drawn
    label: int
    p_ensemble: float
    age: float | None
    sex: str | None
    site: str | None
    # Ensemble-weighted GradCAM on the ROI the model used (PNG), with the annotator's box drawn
    # on it when the table gave one (``annotator_box``); None when not prepared.
    cam_png: bytes | None = None
    annotator_box: bool = False
    cam_note: str = ""


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or str(v).strip() in ("", "nan", "<NA>")


def _display_png(pixels: np.ndarray, box: tuple[float, float, float, float]) -> bytes:
    from PIL import Image

    h, w = pixels.shape
    dw, dh, scale = cl.display_size(w, h, DISPLAY_SIDE, DISPLAY_SIDE)
    rgb = cl.draw_box(cl.downscale(pixels, (dw, dh)), box, scale)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def cam_with_box_png(zoo: Any, pixels: np.ndarray, box: tuple[float, float, float, float],
                     annotator: bool) -> tuple[bytes, str]:
    """The Case page's ensemble-weighted GradCAM on the ROI view (``case_logic.member_cam`` /
    ``ensemble_cam``), with the ROI drawn in white when it is the annotator's box. Returns the
    PNG and the blank-map note ("" when the map shows something)."""
    from PIL import Image

    h, w = pixels.shape
    crops = cl.member_crops(zoo, pixels, box)
    view_box = cl.union_box([cb for _, cb in crops.values()])
    vx0, vy0, vx1, vy1 = (int(v) for v in view_box)
    vw, vh, vscale = cl.display_size(vx1 - vx0, vy1 - vy0, CAM_SIDE, CAM_SIDE)
    dw, dh, _ = cl.display_size(w, h, CAM_SIDE, CAM_SIDE)
    views = {m.spec.member_id: cl.member_cam(zoo, i, pixels, box, "gradcam", view_box, (vw, vh), (dw, dh))
             for i, m in enumerate(zoo.members)}
    ens = cl.ensemble_cam(views, zoo.cam_weights, "GradCAM")
    gray = cl.downscale(np.ascontiguousarray(pixels[vy0:vy1, vx0:vx1]), (vw, vh))
    rgb = cl.overlay(gray, ens.roi_map, 0.5)
    if annotator:
        x0, y0, x1, y1 = box
        rgb = cl.draw_box(rgb, (x0 - vx0, y0 - vy0, x1 - vx0, y1 - vy0), vscale, colour=(255, 255, 255))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue(), ens.note


def load_case_set(zoo: Any, csv_bytes: bytes, zip_bytes: bytes | None, *, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None,
                  with_cams: bool = False) -> tuple[list[TeachingCase], list[str]]:
    """Predict a labelled case table and keep display images in memory.

    ``with_cams`` also prepares each case's ensemble GradCAM with the annotator's box (rows
    whose ROI came from the table) for the reveal (:func:`cam_with_box_png`).

    Returns
    -------
    cases : usable cases (label present, prediction succeeded), in shuffled order.
    skipped : one message per unusable row ("row 3: ...").
    """
    from model_zoo.predict import predict_cases

    cases: list[dict[str, Any]] = []
    skipped: list[str] = []
    with batch_logic.uploaded_case_table(csv_bytes, zip_bytes) as up:
        try:
            frame = predict_cases(zoo, up.csv_path, up.work_dir / "predictions.csv", roi_mode="given",
                                  progress=progress)
        except InputError as err:  # no temp-folder path or internal file name in the message
            raise InputError(up.public_message(str(err))) from None
        frame = up.fix_errors(frame)
        if "label" not in frame.columns:
            raise InputError("a reader study needs a 'label' column (the truth) in the case table")
        for pos, (_, row) in enumerate(frame.iterrows()):
            where = f"row {pos + 1}"
            if str(row.get("error", "")):
                skipped.append(f"{where}: {row['error']}")
                continue
            if _missing(row.get("label")):
                skipped.append(f"{where}: no label")
                continue
            try:
                image = imaging.load_image(row["image_path"])
            except ZooError as err:
                skipped.append(f"{where}: {err}")
                continue
            box = tuple(float(row[c]) for c in ("roi_x0", "roi_y0", "roi_x1", "roi_y1"))
            annotator = str(row.get("roi_source", "")) == "given"
            cam_png, cam_note = cam_with_box_png(zoo, image.pixels, box, annotator) if with_cams else (None, "")
            cases.append({
                "cam_png": cam_png, "annotator_box": annotator and cam_png is not None, "cam_note": cam_note,
                "png": _display_png(image.pixels, box), "label": int(row["label"]),
                "p_ensemble": float(row["p_ensemble"]),
                "age": None if _missing(row.get("age")) else float(row["age"]),
                "sex": None if _missing(row.get("sex")) else str(row["sex"]),
                "site": None if _missing(row.get("site")) else str(row["site"]),
            })
    order = np.random.default_rng(seed).permutation(len(cases))
    width = max(2, len(str(len(cases))))
    out = [TeachingCase(case_id=f"C{i + 1:0{width}d}", **cases[j]) for i, j in enumerate(order)]
    return out, skipped


def format_age(age: float | None) -> str:
    """An age as a reader expects it: "28 y", "2.5 y", "0.4 y"; "not given" when missing."""
    if age is None or not np.isfinite(age):
        return "not given"
    return f"{age:.0f} y" if float(age).is_integer() or age >= 10 else f"{age:.1f} y"


def reader_key(name: str) -> str:
    """A reader's name as a column-safe key (letters, digits, underscores)."""
    key = re.sub(r"\W+", "_", str(name).strip()).strip("_")
    if not key:
        raise InputError("enter a reader name (letters or digits)")
    return key[:40]


def answers_frame(answers: Mapping[str, Mapping[str, tuple[int, int]]], positive: str, negative: str) -> pd.DataFrame:
    """All reads as a long table: reader, case, read (class name), read_positive (0/1), confidence."""
    rows = [{"reader": r, "case": c, "read": positive if call else negative, "read_positive": int(call),
             "confidence": int(conf)}
            for r, per in answers.items() for c, (call, conf) in sorted(per.items())]
    return pd.DataFrame(rows, columns=["reader", "case", "read", "read_positive", "confidence"])


def complete_readers(answers: Mapping[str, Mapping[str, Any]], cases: list[TeachingCase]) -> list[str]:
    ids = {c.case_id for c in cases}
    return [r for r, per in answers.items() if ids <= set(per)]


def study_frame(cases: list[TeachingCase], answers: Mapping[str, Mapping[str, tuple[int, int]]],
                readers: list[str]) -> pd.DataFrame:
    """``case, label, p_ensemble, reader_<name>...`` for the readers given (complete ones)."""
    data: dict[str, list[Any]] = {
        "case": [c.case_id for c in cases],
        "label": [c.label for c in cases],
        "p_ensemble": [c.p_ensemble for c in cases],
    }
    for r in readers:
        data[f"reader_{r}"] = [int(answers[r][c.case_id][0]) for c in cases]
    return pd.DataFrame(data)


def study_metrics(frame: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Contract-2.3 metrics of the ensemble and the readers (``training.report``)."""
    from training.report import compute_metrics

    return compute_metrics(frame.drop(columns=["case"]), threshold=threshold)


def _ci(value: Any, ci: Any) -> str:
    if value is None:
        return "-"
    s = f"{float(value):.2f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        s += f" ({float(ci[0]):.2f}-{float(ci[1]):.2f})"
    return s


def rater_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Accuracy, sensitivity, specificity (Wilson 95 % CI) for the ensemble and each reader,
    with Cohen's kappa against the ensemble and Cochran's Q p against the ensemble."""
    rows = []
    ens = (metrics.get("models") or {}).get("ensemble")
    kappas = metrics.get("cohen_kappa") or {}
    if ens:
        rows.append({"rater": "model (ensemble)", **{k: _ci(ens.get(k), ens.get(f"{k}_ci"))
                                                      for k in ("accuracy", "sensitivity", "specificity")},
                     "Cohen kappa vs model": "-", "Cochran Q p vs model": "-"})
    for name, m in (metrics.get("readers") or {}).items():
        k = kappas.get(f"ensemble|{name}")
        q = m.get("cochran_q_p_vs_ensemble")
        rows.append({"rater": name, **{p: _ci(m.get(p), m.get(f"{p}_ci")) for p in ("accuracy", "sensitivity", "specificity")},
                     "Cohen kappa vs model": "-" if k is None else f"{float(k):.2f}",
                     "Cochran Q p vs model": "-" if q is None else f"{float(q):.3f}"})
    return pd.DataFrame(rows)


def agreement_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Human lines for Fleiss kappa among readers, Cochran's Q over all raters, reader pairs."""
    lines = []
    fk, fci = metrics.get("fleiss_kappa"), metrics.get("fleiss_kappa_ci") or [None, None]
    if fk is None:
        lines.append("Fleiss kappa among readers: not defined (needs at least two readers who disagree somewhere "
                     "or vary across cases).")
    else:
        ci = f" (95 % CI {fci[0]:.2f} to {fci[1]:.2f})" if None not in fci else ""
        lines.append(f"Fleiss kappa among readers: {fk:.2f}{ci}.")
    q = metrics.get("cochran_q_p")
    lines.append("Cochran's Q (correctness of the model and all readers): "
                 + ("not defined." if q is None else f"p = {q:.3f}."))
    for pair, k in (metrics.get("cohen_kappa") or {}).items():
        if not pair.startswith("ensemble|"):
            lines.append(f"Cohen kappa {pair.replace('|', ' vs ')}: " + ("not defined" if k is None else f"{k:.2f}"))
    return lines
