"""Reader study logic: load a labelled case set, collect blind reads, score them (no Streamlit).

Statistics are not computed here: the study table (``label``, ``p_ensemble``,
``reader_<name>``) goes to ``training.report.compute_metrics`` (README: Training, report), and the
reader ROC (read + confidence as a 1-10 rating) to ``training.stats`` (DeLong AUC, CI and the
paired test) - with ``training.evaluation``'s subtype column names, the sanctioned exception to "the dashboard imports model_zoo only".

Blinding: readers see the image with its ROI and the clinical values, never the file name
(names often give the answer away), the label or the model's output; the case order is
shuffled once per case set, so it does not follow the table's order (often sorted by label).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dashboard import batch_logic
from dashboard import case_logic as cl
from model_zoo import imaging
from model_zoo.errors import InputError, ZooError
from model_zoo.framing import Call

if TYPE_CHECKING:  # pragma: no cover
    from model_zoo.ensemble import Zoo

DISPLAY_SIDE = 720
CAM_SIDE = 360
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)
# A read plus its confidence on one ordinal scale for the reader ROC: 1 = certain benign ...
# 5 = benign guess, 6 = malignant guess ... 10 = certain malignant.
RATING_LEVELS = tuple(range(1, 2 * len(CONFIDENCE_LEVELS) + 1))


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
    subtype: str | None = None  # from the table's subtype column, shown only in the reveal


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


def cam_with_box_png(zoo: Zoo, pixels: np.ndarray, box: tuple[float, float, float, float], annotator: bool) -> tuple[bytes, str]:
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
    views = {
        m.spec.member_id: cl.member_cam(zoo, i, pixels, box, "gradcam", view_box, (vw, vh), (dw, dh))
        for i, m in enumerate(zoo.members)
    }
    ens = cl.ensemble_cam(views, zoo.cam_weights, "GradCAM")
    gray = cl.downscale(np.ascontiguousarray(pixels[vy0:vy1, vx0:vx1]), (vw, vh))
    rgb = cl.overlay(gray, ens.roi_map, 0.5)
    if annotator:
        x0, y0, x1, y1 = box
        rgb = cl.draw_box(rgb, (x0 - vx0, y0 - vy0, x1 - vx0, y1 - vy0), vscale, colour=(255, 255, 255))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue(), ens.note


def load_case_set(
    zoo: Zoo,
    csv_bytes: bytes,
    zip_bytes: bytes | None,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    with_cams: bool = False,
) -> tuple[list[TeachingCase], list[str]]:
    """Predict a labelled case table and keep display images in memory.

    ``with_cams`` also prepares each case's ensemble GradCAM with the annotator's box (rows
    whose ROI came from the table) for the reveal (:func:`cam_with_box_png`).

    Returns
    -------
    cases : usable cases (label present, prediction succeeded), in shuffled order.
    skipped : one message per unusable row ("row 3: ...").
    """
    from model_zoo.predict import predict_cases
    from training.evaluation import SUBTYPE_COLUMNS

    cases: list[dict[str, Any]] = []
    skipped: list[str] = []
    with batch_logic.uploaded_case_table(csv_bytes, zip_bytes) as up:
        try:
            frame = predict_cases(zoo, up.csv_path, up.work_dir / "predictions.csv", roi_mode="given", progress=progress)
        except InputError as err:  # no temp-folder path or internal file name in the message
            raise InputError(up.public_message(str(err))) from None
        frame = up.fix_errors(frame)
        if "label" not in frame.columns:
            raise InputError("a reader study needs a 'label' column (the truth) in the case table")
        subtype_column = next((c for c in SUBTYPE_COLUMNS if c in frame.columns), None)
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
            cases.append(
                {
                    "cam_png": cam_png,
                    "annotator_box": annotator and cam_png is not None,
                    "cam_note": cam_note,
                    "png": _display_png(image.pixels, box),
                    "label": int(row["label"]),
                    "p_ensemble": float(row["p_ensemble"]),
                    "age": None if _missing(row.get("age")) else float(row["age"]),
                    "sex": None if _missing(row.get("sex")) else str(row["sex"]),
                    "site": None if _missing(row.get("site")) else str(row["site"]),
                    "subtype": None if subtype_column is None or _missing(row.get(subtype_column)) else str(row[subtype_column]),
                }
            )
    order = np.random.default_rng(seed).permutation(len(cases))
    width = max(2, len(str(len(cases))))
    out = [TeachingCase(case_id=f"C{i + 1:0{width}d}", **cases[j]) for i, j in enumerate(order)]
    return out, skipped


def age_text(age: float | None) -> str:
    """An age in years as a reader writes it: "28" (never "28.0"), "2.5", "0.4"; "" when missing."""
    if age is None or not np.isfinite(age):
        return ""
    return f"{age:.0f}" if float(age).is_integer() or age >= 10 else f"{age:.1f}"


def format_age(age: float | None) -> str:
    """An age as a reader expects it: "28 y", "2.5 y", "0.4 y"; "not given" when missing."""
    text = age_text(age)
    return f"{text} y" if text else "not given"


def reader_key(name: str) -> str:
    """A reader's name as a column-safe key (letters, digits, underscores)."""
    key = re.sub(r"\W+", "_", str(name).strip()).strip("_")
    if not key:
        raise InputError("enter a reader name (letters or digits)")
    return key[:40]


def complete_readers(answers: Mapping[str, Mapping[str, Any]], cases: list[TeachingCase]) -> list[str]:
    ids = {c.case_id for c in cases}
    return [r for r, per in answers.items() if ids <= set(per)]


def study_frame(
    cases: list[TeachingCase], answers: Mapping[str, Mapping[str, tuple[int, int]]], readers: list[str]
) -> pd.DataFrame:
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
        rows.append(
            {
                "rater": "model (ensemble)",
                **{k: _ci(ens.get(k), ens.get(f"{k}_ci")) for k in ("accuracy", "sensitivity", "specificity")},
                "Cohen kappa vs model": "-",
                "Cochran Q p vs model": "-",
            }
        )
    for name, m in (metrics.get("readers") or {}).items():
        k = kappas.get(f"ensemble|{name}")
        q = m.get("cochran_q_p_vs_ensemble")
        rows.append(
            {
                "rater": name,
                **{p: _ci(m.get(p), m.get(f"{p}_ci")) for p in ("accuracy", "sensitivity", "specificity")},
                "Cohen kappa vs model": "-" if k is None else f"{float(k):.2f}",
                "Cochran Q p vs model": "-" if q is None else f"{float(q):.3f}",
            }
        )
    return pd.DataFrame(rows)


def agreement_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Human lines for Fleiss kappa among readers, Cochran's Q over all raters, reader pairs."""
    lines = []
    fk, fci = metrics.get("fleiss_kappa"), metrics.get("fleiss_kappa_ci") or [None, None]
    if fk is None:
        lines.append(
            "Fleiss kappa among readers: not defined (needs at least two readers who disagree somewhere or vary across cases)."
        )
    else:
        ci = f" (95 % CI {fci[0]:.2f} to {fci[1]:.2f})" if None not in fci else ""
        lines.append(f"Fleiss kappa among readers: {fk:.2f}{ci}.")
    q = metrics.get("cochran_q_p")
    lines.append("Cochran's Q (correctness of the model and all readers): " + ("not defined." if q is None else f"p = {q:.3f}."))
    for pair, k in (metrics.get("cohen_kappa") or {}).items():
        if not pair.startswith("ensemble|"):
            lines.append(f"Cohen kappa {pair.replace('|', ' vs ')}: " + ("not defined" if k is None else f"{k:.2f}"))
    return lines


# ----------------------------------------------------------------------------- reader ROC


def confidence_rating(read_positive: int, confidence: int) -> int:
    """A read and its confidence as one rating on :data:`RATING_LEVELS` (1-10).

    Certain benign is 1, a benign guess 5, a malignant guess 6, certain malignant 10: higher
    means "more likely positive", as a probability does, so the ratings give the reader an ROC
    curve and an AUC comparable with the model's.
    """
    levels = len(CONFIDENCE_LEVELS)
    if confidence not in CONFIDENCE_LEVELS:
        raise InputError(f"confidence must be one of {CONFIDENCE_LEVELS}, got {confidence!r}")
    if read_positive not in (0, 1):
        raise InputError(f"a read must be 0 (negative) or 1 (positive), got {read_positive!r}")
    return levels + int(confidence) if read_positive else levels + 1 - int(confidence)


def reader_ratings(
    cases: list[TeachingCase], answers: Mapping[str, Mapping[str, tuple[int, int]]], readers: list[str]
) -> dict[str, list[int]]:
    """Each (complete) reader's 1-10 ratings in the order of ``cases``."""
    return {r: [confidence_rating(*answers[r][c.case_id]) for c in cases] for r in readers}


@dataclass(frozen=True)
class RaterROC:
    """One rater's ROC on the case set: the model (``p_ensemble``) or a reader (1-10 ratings).

    ``ci`` is the DeLong 95 % interval ((nan, nan) with fewer than two cases in a class);
    ``p_vs_model`` the two-sided paired DeLong test of this reader's AUC against the model's
    on the same cases (None for the model itself; nan where the test is undefined).
    """

    rater: str
    auc: float
    ci: tuple[float, float]
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    p_vs_model: float | None = None


MODEL_RATER = "model (ensemble)"


def rater_rocs(labels: list[int], model_scores: list[float], ratings: Mapping[str, list[int]]) -> list[RaterROC]:
    """The model's ROC first, then each reader's, with DeLong CIs and paired DeLong tests.

    Raises InputError (from ``training.stats``) when the cases hold one class only.
    """
    from training import stats

    def roc(name: str, scores: list[float] | list[int], p: float | None) -> RaterROC:
        result = stats.delong_auc(labels, scores)
        fpr, tpr, _ = stats.roc_curve(labels, scores)
        return RaterROC(name, result.auc, result.ci, tuple(map(float, fpr)), tuple(map(float, tpr)), p)

    out = [roc(MODEL_RATER, model_scores, None)]
    for name, r in ratings.items():
        out.append(roc(name, r, stats.delong_test(labels, model_scores, r).p_value))
    return out


def _p_text(p: float | None) -> str:
    if p is None:
        return "-"
    if not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def roc_table(rocs: list[RaterROC]) -> pd.DataFrame:
    """AUC with its DeLong 95 % CI per rater, and the paired DeLong p against the model."""
    rows = []
    for r in rocs:
        ci = f" ({r.ci[0]:.2f}-{r.ci[1]:.2f})" if all(np.isfinite(r.ci)) else ""
        rows.append({"rater": r.rater, "AUC (DeLong 95% CI)": f"{r.auc:.2f}{ci}", "DeLong p vs model": _p_text(r.p_vs_model)})
    return pd.DataFrame(rows)


def roc_figure(rocs: list[RaterROC], title: str) -> Any:
    """Plotly ROC curves: the model and every reader (a reader's curve has one step per rating)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(color="grey", dash="dot")))
    for r in rocs:
        model = r.rater == MODEL_RATER
        fig.add_trace(
            go.Scatter(
                x=list(r.fpr),
                y=list(r.tpr),
                mode="lines" if model else "lines+markers",
                name=f"{r.rater} (AUC {r.auc:.2f})",
                line=dict(width=3 if model else 2),
            )
        )
    fig.update_layout(
        title=title,
        xaxis=dict(range=[0, 1], title="1 - specificity"),
        yaxis=dict(range=[0, 1.02], title="sensitivity", scaleanchor="x"),
        height=420,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


# ----------------------------------------------------------------------------- case-by-case reveal


@dataclass(frozen=True)
class ModelCall:
    """The model's answer on one case, framed as on the Case page.

    ``head`` is the release's call (``Zoo.call``: calibrated when the release has a calibration,
    "indeterminate" within the release's band); ``call`` is 1/0 for a class word and None when
    the framing says indeterminate (then it is neither right nor wrong).
    """

    head: Call
    call: int | None


def model_call(case: TeachingCase, zoo: Zoo) -> ModelCall:
    """The Case page's framing (``Zoo.call``) of this case. No ROI-jitter check runs in a
    reader study, so only the threshold band can make the call indeterminate."""
    head = zoo.call(case.p_ensemble)
    return ModelCall(head, None if head.indeterminate else int(head.word == zoo.positive_class))


RIGHT, WRONG, NO_CALL = "right", "wrong", "no call (indeterminate)"


def verdict(call: int | None, label: int) -> str:
    return NO_CALL if call is None else (RIGHT if int(call) == int(label) else WRONG)


@dataclass(frozen=True)
class RaterAnswer:
    rater: str
    answer: str  # a class word, or the model's framed sentence
    confidence: int | None  # readers only
    verdict: str  # RIGHT, WRONG or NO_CALL


@dataclass(frozen=True)
class CaseReveal:
    """What the reveal shows for one case: the truth, the subtype and every rater's answer."""

    case_id: str
    truth: str
    subtype: str
    age: str
    model: ModelCall
    answers: tuple[RaterAnswer, ...]  # the model first, then the readers


def case_reveal(
    case: TeachingCase, answers: Mapping[str, Mapping[str, tuple[int, int]]], readers: list[str], zoo: Zoo
) -> CaseReveal:
    """The reveal of one case for the readers given (those who read it)."""
    positive_class, negative_class = zoo.positive_class, zoo.negative_class
    model = model_call(case, zoo)
    rows = [RaterAnswer(MODEL_RATER, model.head.sentence, None, verdict(model.call, case.label))]
    for r in readers:
        read = answers.get(r, {}).get(case.case_id)
        if read is None:
            continue
        call, conf = read
        rows.append(RaterAnswer(r, positive_class if call else negative_class, int(conf), verdict(call, case.label)))
    return CaseReveal(
        case.case_id,
        positive_class if case.label else negative_class,
        case.subtype or "not given",
        format_age(case.age),
        model,
        tuple(rows),
    )


def reveal_table(reveal: CaseReveal) -> pd.DataFrame:
    """The reveal's answers as a table, each marked right or wrong."""
    mark = {RIGHT: "right", WRONG: "WRONG", NO_CALL: NO_CALL}
    return pd.DataFrame(
        [
            {
                "rater": a.rater,
                "answer": a.answer,
                "confidence": "-" if a.confidence is None else str(a.confidence),
                "": mark[a.verdict],
            }
            for a in reveal.answers
        ]
    )


# ----------------------------------------------------------------------------- export


READS_COLUMNS = ["reader", "case", "age", "sex", "site", "read", "read_positive", "confidence", "rating"]
REVEALED_COLUMNS = ["truth", "subtype", "read_correct", "p_ensemble", "model_answer", "model_correct"]


def reads_frame(
    cases: list[TeachingCase], answers: Mapping[str, Mapping[str, tuple[int, int]]], zoo: Zoo, *, revealed: bool = False
) -> pd.DataFrame:
    """The session's reads, one row per reader and case, for the CSV download.

    Blind (``revealed=False``) it holds only what the readers saw and answered; once revealed
    it adds the truth, the subtype, whether the read was right, and the model's probability and
    its answer framed as on the Case page. Age is written as on the page ("28", not "28.0").
    """
    positive_class, negative_class = zoo.positive_class, zoo.negative_class
    by_id = {c.case_id: c for c in cases}
    rows = []
    for reader, per in answers.items():
        for cid, (call, conf) in sorted(per.items()):
            case = by_id.get(cid)
            if case is None:
                continue
            row: dict[str, Any] = {
                "reader": reader,
                "case": cid,
                "age": age_text(case.age),
                "sex": case.sex or "",
                "site": case.site or "",
                "read": positive_class if call else negative_class,
                "read_positive": int(call),
                "confidence": int(conf),
                "rating": confidence_rating(call, conf),
            }
            if revealed:
                model = model_call(case, zoo)
                row.update(
                    {
                        "truth": positive_class if case.label else negative_class,
                        "subtype": case.subtype or "",
                        "read_correct": int(int(call) == case.label),
                        "p_ensemble": round(case.p_ensemble, 4),
                        "model_answer": model.head.sentence,
                        "model_correct": "" if model.call is None else int(model.call == case.label),
                    }
                )
            rows.append(row)
    return pd.DataFrame(rows, columns=READS_COLUMNS + (REVEALED_COLUMNS if revealed else []))
