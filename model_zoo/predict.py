"""Batch prediction over a case table (README: Batch prediction).

Every input column is kept; added: ``p_ensemble``, ``calibrated_p_ensemble`` (when the release
has a calibration), one ``p_<member_id>`` per member,
``p_clinic``, ``prediction`` (the framed call, ``Zoo.call``: the word the Case page shows -
the positive or negative class name, or ``indeterminate`` when the probability lies within the
release's indeterminate band of the threshold on the shown scale; the batch runs no ROI-jitter
check, so only the band makes a row indeterminate), ``call_basis`` (what the word was decided
on: ``calibrated`` or ``raw`` scale, then ``; <reason>`` when indeterminate, e.g.
``calibrated; lies at the threshold``), the ROI actually used
(``roi_x0..roi_y1`` in stored-image pixels), ``roi_source``, ``warning`` (empty, or what the
input gate flagged: a region that is not bone/limb/pelvis, a tiny or featureless ROI, an RG/OT
modality) and ``error`` (empty on success, a one-line message otherwise). A DICOM whose
Modality is not a projection radiograph (``model_zoo.gate``) is a row error. With
``block_flagged`` (the Batch page's default) flagged rows are errors too, as the Case page
withholds them until acknowledged. When the release has an out-of-distribution model
(``model_zoo.ood``) two more columns follow ``prediction``: ``ood_score`` and ``ood`` (True when the
crop does not look like the training radiographs); an ``ood`` row keeps its probabilities but
gets no ``prediction`` word (and no ``call_basis``) unless ``allow_ood`` (``--allow-ood``), and its
``warning`` says why.
Releases without one write exactly the columns they always did. A bad row never stops the batch. The output is rewritten
atomically every ``flush_every`` rows, so a crashed run leaves a valid partial CSV and
``resume=True`` fills only the rows still missing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from model_zoo import gate, imaging, roi
from model_zoo.cases import read_case_table
from model_zoo.clinical import is_missing
from model_zoo.ensemble import Zoo
from model_zoo.errors import InputError, ZooError
from model_zoo.framing import Call
from model_zoo.zoo import atomic_write_bytes

ROI_COLUMNS = ("roi_x0", "roi_y0", "roi_x1", "roi_y1")


def _given_box(row: pd.Series) -> roi.Box | None:
    if all(c in row and pd.notna(row[c]) and str(row[c]).strip() != "" for c in ROI_COLUMNS):
        return tuple(float(row[c]) for c in ROI_COLUMNS)  # type: ignore[return-value]
    return None


def propose_roi(zoo: Zoo, pixels: np.ndarray) -> tuple[roi.Box, str]:
    """Auto-crop: the zoo localiser's box, or the whole image when the zoo has none."""
    h, w = pixels.shape
    localiser = getattr(zoo, "localiser", None)
    if localiser is None:
        return roi.full_image_box((w, h)), "full (zoo has no localiser)"
    proposal = localiser.propose(pixels)
    note = "" if proposal.found else ", no region above threshold"
    return proposal.box, f"auto (confidence {proposal.confidence:.2f}{note})"


def choose_box(zoo: Zoo, pixels: np.ndarray, row: pd.Series, mode: str) -> tuple[roi.Box, str]:
    """The ROI for one row and where it came from ('given', 'auto', 'full', 'full (no localiser)')."""
    h, w = pixels.shape
    if mode == "given":
        box = _given_box(row)
        if box is not None:
            return roi.validate_box(box, (w, h)), "given"
        mode = "auto"
    if mode == "auto":
        return propose_roi(zoo, pixels)
    return roi.full_image_box((w, h)), "full"


def has_ood(zoo: Any) -> bool:
    """Does this release carry an out-of-distribution model?"""
    return getattr(zoo, "ood", None) is not None


def ood_warning(score: float, threshold: float, allowed: bool) -> str:
    from model_zoo.ood import OOD_MESSAGE

    return f"out of distribution: {OOD_MESSAGE} (OOD score {score:.2f} > threshold {threshold:.2f}); " + (
        "predicted anyway (allow-ood)" if allowed else "no prediction word given"
    )


def call_basis(call: Call) -> str:
    """What a call's word was decided on: ``"calibrated"`` or ``"raw"`` (the shown scale; ``"raw
    (the calibration disagrees with the zoo's call)"`` when a calibration is not shown because it
    would flip the call), then ``"; "`` and the reasons when it is indeterminate
    (``"raw; lies at the threshold"``)."""
    scale = call.scale
    if not call.calibrated and call.scale_note:  # the release has a calibration, but it would flip the call
        scale += " (the calibration disagrees with the zoo's call)"
    return "; ".join([scale, *call.reasons])


def call_columns(zoo: Zoo, p_ensemble: float) -> dict[str, str]:
    """``prediction`` and ``call_basis`` for a row's raw ensemble probability: the Case page's
    framed call (``Zoo.call``: the release's scale and band; no ROI-jitter check in a batch)."""
    call = zoo.call(float(p_ensemble))
    return {"prediction": call.word, "call_basis": call_basis(call)}


def predict_row(zoo: Zoo, row: pd.Series, mode: str, *, block_flagged: bool = False, allow_ood: bool = False) -> dict[str, Any]:
    """One row's results; raises InputError for a refused modality (and, with ``block_flagged``,
    for input the gate flags). An out-of-distribution crop gets ``ood`` True and an empty
    ``prediction`` unless ``allow_ood``."""
    image = imaging.load_image(row["image_path"])
    header = gate.check_header(image.meta)
    if header.refusal:
        raise InputError(header.refusal)
    box, source = choose_box(zoo, image.pixels, row, mode)
    flagged = [*header.blocking, *gate.roi_quality(image.pixels, box)]
    if flagged and block_flagged:
        raise InputError("input needs checking, no prediction made: " + "; ".join(flagged))
    pred = zoo.predict(image.pixels, box, age=row.get("age"), sex=row.get("sex"), site=row.get("site"))
    out: dict[str, Any] = {"p_ensemble": pred.p_ensemble}
    if pred.p_calibrated is not None:
        out["calibrated_p_ensemble"] = pred.p_calibrated
    out.update({f"p_{mid}": p for mid, p in pred.p_members.items()})
    out["p_clinic"] = pred.p_clinic
    out.update(call_columns(zoo, pred.p_ensemble))
    notes = [*flagged, *header.warnings]
    if has_ood(zoo) and pred.ood_score is not None:
        out["ood_score"], out["ood"] = pred.ood_score, bool(pred.ood)
        if pred.ood:
            assert zoo.ood is not None  # has_ood(zoo) above
            notes.append(ood_warning(pred.ood_score, zoo.ood.threshold, allow_ood))
            if not allow_ood:
                out["prediction"] = out["call_basis"] = ""
    out.update(dict(zip(ROI_COLUMNS, pred.roi_box)))
    out["roi_source"] = source
    out["warning"] = "; ".join(notes)
    return out


def _same_inputs(prev: dict[str, Any], row: pd.Series, mode: str) -> bool:
    """Would ``row`` under ``mode`` be predicted from exactly what produced ``prev``?"""

    def num(v: Any) -> float | None:
        return None if is_missing(v) else round(float(v), 6)

    def text(v: Any) -> str:
        return "" if is_missing(v) else str(v).strip()

    if text(prev.get("image_path")) != text(row.get("image_path")):
        return False
    try:
        if num(prev.get("age")) != num(row.get("age")):
            return False
    except (TypeError, ValueError):
        return False
    if any(text(prev.get(c)) != text(row.get(c)) for c in ("sex", "site")):
        return False
    source = text(prev.get("roi_source"))
    given = all(not is_missing(row.get(c)) for c in ROI_COLUMNS)
    if mode == "given" and given:  # the output's ROI columns hold the box actually used
        try:
            return source == "given" and all(num(prev.get(c)) == num(row.get(c)) for c in ROI_COLUMNS)
        except (TypeError, ValueError):
            return False
    return source == "full" if mode == "full" else source != "given"


def predict_cases(
    zoo: Zoo,
    cases_path: Path,
    out_path: Path,
    *,
    roi_mode: str = "given",
    resume: bool = False,
    flush_every: int = 25,
    progress: Callable[[int, int], None] | None = None,
    block_flagged: bool = False,
    allow_ood: bool = False,
) -> pd.DataFrame:
    """Predict every row of a case table into ``out_path``; returns the output frame.

    ``block_flagged``: rows the input gate flags get an ``error`` instead of a prediction.
    ``allow_ood``: out-of-distribution rows get their ``prediction`` word too (releases with an
    OOD model; they are still marked in ``ood``).
    """
    table = read_case_table(cases_path, label_map=zoo.task.label_map, check_files=True)
    frame = table.frame.copy()
    result_cols = (
        ["p_ensemble"]
        + (["calibrated_p_ensemble"] if zoo.calibration else [])
        + [f"p_{m}" for m in zoo.member_ids]
        + ["p_clinic", "prediction"]
        + (["ood_score", "ood"] if has_ood(zoo) else [])
        + ["call_basis", *ROI_COLUMNS, "roi_source", "warning", "error"]
    )
    # Resume: a finished row is reused only at the same position with the same inputs (image,
    # age, sex, site, and the ROI this mode would use), so duplicated paths, an edited table
    # or another --roi mode are recomputed, not mixed up.
    done: dict[int, dict[str, Any]] = {}
    if resume and Path(out_path).is_file():
        previous = pd.read_csv(out_path, keep_default_na=False)
        if "image_path" in previous and "p_ensemble" in previous:
            for pos, prev in enumerate(previous.to_dict("records")):
                # Out-of-distribution rows are recomputed: whether they get a word depends on allow_ood.
                if (
                    str(prev.get("error", "")) == ""
                    and str(prev["p_ensemble"]) != ""
                    and str(prev.get("ood", "")).strip().lower() != "true"
                ):
                    done[pos] = prev
    rows = []
    for i, (_, row) in enumerate(frame.iterrows()):
        base = {c: row[c] for c in frame.columns if c != "row_error"}
        result: dict[str, Any] = {c: None for c in result_cols}
        if i in done and not row.get("row_error") and _same_inputs(done[i], row, roi_mode):
            result.update({c: done[i][c] for c in result_cols if c in done[i]})
            # The word is framed again from the kept probability: an output written before the
            # framing (a bare class word) or by another release's band reads as this run's would.
            result.update(call_columns(zoo, float(done[i]["p_ensemble"])))
        elif row.get("row_error"):
            result["error"] = str(row["row_error"])
        else:
            try:
                result.update(predict_row(zoo, row, roi_mode, block_flagged=block_flagged, allow_ood=allow_ood))
                result["error"] = ""
            except ZooError as err:
                result["error"] = str(err)
            except Exception as err:  # noqa: BLE001 - a batch must survive one bad row
                result["error"] = f"unexpected error: {type(err).__name__}: {err}".splitlines()[0]
        base.update(result)
        rows.append(base)
        if progress:
            progress(i + 1, len(frame))
        if flush_every and (i + 1) % flush_every == 0:
            _write_csv(pd.DataFrame(rows), out_path)
    input_cols = [c for c in frame.columns if c != "row_error"]
    out = pd.DataFrame(rows, columns=input_cols + [c for c in result_cols if c not in input_cols])
    out["error"] = out["error"].fillna("").astype(str)
    out["warning"] = out["warning"].fillna("").astype(str)
    _write_csv(out, out_path)
    return out


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    atomic_write_bytes(Path(path), buf.getvalue().encode("utf-8"))
