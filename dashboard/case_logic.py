"""Logic behind the case page, free of Streamlit so it can be tested directly.

Nothing here re-implements preprocessing or statistics: boxes go through
``model_zoo.roi``, crops through ``model_zoo.preprocess``, predictions through
``Zoo.predict`` and heatmaps through ``model_zoo.explain``. What is here is presentation:
display scaling, overlays, the input quality gate, DICOM -> form pre-fills, wording.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from model_zoo import gate, imaging, roi
from model_zoo.framing import JitterSummary
from model_zoo.imaging import ImageMeta
from model_zoo.manifest import Manifest

if TYPE_CHECKING:  # pragma: no cover - the page imports stay light; Zoo pulls in the models' code
    from model_zoo.ensemble import Prediction, Zoo

Box = tuple[float, float, float, float]

ROI_MODES = ("Draw on the image", "Enter coordinates", "Auto-crop", "Whole image")
SEX_OPTIONS = ("not given", "F", "M")
SITE_OPTIONS = ("not given", "appendicular", "axial")

# The quality gate's limits (documented in the page's warnings). The ROI limits and the
# DICOM header checks (modality, body part, age) live in ``model_zoo.gate``.
MAX_ASPECT = 4.0  # long side / short side; radiographs are rarely more elongated
MIN_CONTRAST = 0.05  # p99 - p1 of the [0, 1] pixels: below this the image is near-constant


# ----------------------------------------------------------------------------- pre-fills


@dataclass(frozen=True)
class Prefill:
    """Age, sex and site suggested for the clinical inputs, and where each came from."""

    age: float | None
    sex: str | None
    site: str | None
    notes: tuple[str, ...]


def prefill(meta: ImageMeta, header_gate: gate.GateResult | None = None) -> Prefill:
    """Age, sex and site suggestions from an image's header, with where each came from.

    Age and site come through ``model_zoo.gate.check_header``: no site for a region that is
    not bone/limb/pelvis, no age for a placeholder or implausible PatientAge.
    """
    g = header_gate if header_gate is not None else gate.check_header(meta)
    notes = []
    if meta.source_format == "dicom":
        notes.append(g.age_note)
        notes.append(f"sex {meta.sex} from PatientSex" if meta.sex else "no PatientSex in the header")
        notes.append(g.site_note)
    else:
        notes.append(f"{meta.source_format.upper()} files carry no clinical tags")
    return Prefill(age=g.age, sex=meta.sex, site=g.site, notes=tuple(notes))


# ----------------------------------------------------------------------------- quality gate


@dataclass(frozen=True)
class Quality:
    """``blocking``: problems that must be acknowledged before predicting; ``notes``: FYI."""

    blocking: tuple[str, ...]
    notes: tuple[str, ...]


# Loader warnings that mean "this may not be a radiograph as the models know it".
_SERIOUS = ("colour image", "palette colour", "constant image", "cmyk")


def image_quality(pixels: np.ndarray, meta: ImageMeta) -> Quality:
    """Does the input look like a radiograph the models can read? (image-level checks)"""
    blocking: list[str] = []
    notes: list[str] = []
    for w in meta.warnings:
        if any(s in w.lower() for s in _SERIOUS):
            if "colour" in w.lower() or "cmyk" in w.lower():
                blocking.append(f"{w}: radiographs are greyscale - is this a photo, a screenshot or an annotated image?")
            else:
                blocking.append(w)
        else:
            notes.append(w)
    h, w_ = pixels.shape[:2]
    aspect = max(w_, h) / max(1, min(w_, h))
    if aspect > MAX_ASPECT:
        blocking.append(f"extreme aspect ratio {w_}x{h} (more than {MAX_ASPECT:g}:1): not a typical radiograph")
    lo, hi = np.percentile(pixels, [1, 99]) if pixels.size else (0.0, 0.0)
    if hi - lo < MIN_CONTRAST and not any("constant image" in b for b in blocking):
        blocking.append(f"near-constant image: 98 % of pixels lie within {hi - lo:.3f} of each other")
    saturated = float(np.mean((pixels <= 0.0) | (pixels >= 1.0))) if pixels.size else 0.0
    if saturated > 0.6:
        notes.append(f"{saturated:.0%} of pixels are pure black or white (heavy windowing or a mask?)")
    return Quality(tuple(blocking), tuple(notes))


# ----------------------------------------------------------------------------- the case record


SAMPLE_LABEL = "sample case (RG3)"


@dataclass(frozen=True, eq=False)  # eq=False: it holds arrays; two loads of one file are two records
class CaseState:
    """The Case page's record of the open image: the one thing the page keeps about it in
    session state (under ``CASE_KEY``), made only by :func:`load_case`.

    Everything here must survive reruns: the decoded image and what was derived from it once
    (hashes, header gate, quality, pre-fills, window presets) and the ROI the user is working
    on. Display copies (the image at screen size, heatmaps, crops) are not kept: each run
    derives them (the page caches them by ``pixels_hash``). The ROI fields change through
    ``dataclasses.replace`` only (the page's ``_update``), so one object is never half-updated.
    """

    sha256: str  # of the file's bytes (audit log, PACS write-back)
    pixels_hash: str  # of the decoded pixels (cache keys)
    label: str  # what the page calls the image: "uploaded image", "sample case (RG3)", ...
    description: str
    image: imaging.LoadedImage
    size: tuple[int, int]  # (width, height) in stored pixels
    presets: tuple[imaging.WindowPreset, ...]
    prefill: Prefill
    header_gate: gate.GateResult
    quality: Quality
    initial_box: Box | None  # the ROI that came with the image (the sample case's), else None
    box: Box  # the ROI in force (stored pixels); the whole image until one is chosen
    drawn_box: Box | None = None  # the last rectangle drawn on the canvas
    # ((canvas width, height, view window), initial drawing): one canvas per on-screen size and
    # zoom/pan window, started from the box drawn before so resizing or zooming keeps the ROI.
    canvas_initial: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    auto_accepted: Box | None = None  # the auto-crop proposal the user accepted (rounded, box_key)

    @property
    def start_mode(self) -> str:
        """The ROI mode a newly opened image starts in."""
        return ROI_MODES[1] if self.initial_box is not None else ROI_MODES[0]


def _as_box(box: Sequence[float]) -> Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0, y0, x1, y1)


def box_key(box: Sequence[float]) -> Box:
    """A box rounded to 0.1 px: the form in which boxes are compared and used in keys."""
    x0, y0, x1, y1 = (round(float(v), 1) for v in box)
    return (x0, y0, x1, y1)


def load_case(data: bytes, name: str, *, sample: Mapping[str, Any] | None = None, label: str | None = None) -> CaseState:
    """Decode an upload (or the sample case, with its description, ROI and clinical values)
    into a :class:`CaseState`. Raises ``InputError`` for a file that cannot be read."""
    from model_zoo.zoo import sha256_bytes

    image = imaging.load_image(data, name=name)
    h, w = image.pixels.shape
    header = gate.check_header(image.meta)  # modality / body part / age (model_zoo.gate)
    pre = prefill(image.meta, header)
    initial: Box | None = None
    if sample is not None:
        pre = Prefill(
            age=sample["age"],
            sex=sample["sex"],
            site=sample["site"],
            notes=pre.notes + ("sample case: clinical values from its description",),
        )
        x0, y0, x1, y1 = (float(v) for v in sample["roi_box"])
        initial = (x0, y0, x1, y1)
    full = roi.full_image_box((w, h))
    return CaseState(
        sha256=sha256_bytes(data),
        pixels_hash=imaging.image_hash(image.pixels),
        label=label or (SAMPLE_LABEL if sample is not None else "uploaded image"),
        description=str(sample["description"]) if sample is not None else "",
        image=image,
        size=(w, h),
        presets=window_presets(image.pixels, image.meta),
        prefill=pre,
        header_gate=header,
        quality=image_quality(image.pixels, image.meta),
        initial_box=initial,
        box=initial if initial is not None else (float(full[0]), float(full[1]), float(full[2]), float(full[3])),
    )


# ----------------------------------------------------------------------------- widget state
#
# One rule for every Case-page widget: its value lives in an explicit session-state key
# (``key=``, never ``value=``). Defaults are written once - per image for the per-image
# widgets (:func:`case_widget_defaults`, when the image is loaded), per session for the viewer
# settings (``dashboard.viewer``) - and every run writes each key back before any widget is
# drawn (:func:`keep_widgets`), because Streamlit drops a widget's value on any run that does
# not draw it (the page stops early without an ROI, or the user visits another page).


def case_widget_defaults(case: CaseState) -> dict[str, Any]:
    """Every per-image widget key of the Case page with its starting value for ``case``."""
    pre = case.prefill
    center, width, _, _, _ = window_units(case.image.meta)
    values: dict[str, Any] = {
        "case_age": None if pre.age is None else float(round(pre.age, 1)),
        "case_sex": pre.sex if pre.sex in SEX_OPTIONS else SEX_OPTIONS[0],
        "case_site": pre.site if pre.site in SITE_OPTIONS else SITE_OPTIONS[0],
        "case_confirm": False,
        "case_override": False,
        "case_ood_override": False,
        "case_roi_mode": case.start_mode,
        # Window/level has two widgets per value (slider for the mouse, number for the keyboard).
        "case_wc": float(center),
        "case_wc_num": float(center),
        "case_ww": float(width),
        "case_ww_num": float(width),
    }
    values.update(box_widget_values(case.box))
    return values


BOX_KEYS = ("case_x0", "case_y0", "case_x1", "case_y1")


def box_widget_values(box: Sequence[float]) -> dict[str, float]:
    """The coordinate fields' values for ``box`` (whole pixels)."""
    return {k: float(round(float(v))) for k, v in zip(BOX_KEYS, box, strict=True)}


def keep_widgets(state: MutableMapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Each key in ``defaults``: set to its default when absent, else written back unchanged
    (a written key survives a run that does not draw its widget)."""
    for key, default in defaults.items():
        state[key] = state[key] if key in state else default


# ----------------------------------------------------------------------------- display


def display_size(
    width: int, height: int, max_width: int = 640, max_height: int = 640, min_side: int = 320
) -> tuple[int, int, float]:
    """(display_w, display_h, scale) fitting an image into a box; scale = display / stored.

    Large images shrink to fit; small ones grow until their long side reaches ``min_side``
    (still inside the box), so a rectangle can be drawn on them.
    """
    grow = max(1.0, min_side / max(width, height))
    scale = min(max_width / width, max_height / height, grow)
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def downscale(pixels: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize for display (area averaging when shrinking) via ``model_zoo.roi.resize``."""
    if (pixels.shape[1], pixels.shape[0]) == tuple(size_wh):
        return pixels
    return roi.resize(np.ascontiguousarray(pixels, dtype=np.float32), size_wh)


def window_units(meta: ImageMeta) -> tuple[float, float, float, float, str]:
    """Default (center, width) and slider range (lo, hi) for display windowing, plus units.

    DICOM with a header window: the header's units, limited to the header window's range
    (the loaded pixels hold only that range). Otherwise the 0-255 display scale.
    """
    if meta.window is not None:
        c, w = (float(v) for v in meta.window)
        return c, w, c - w / 2.0, c + w / 2.0, "header units"
    return 127.5, 256.0, 0.0, 255.0, "display grey levels 0-255"


def window_values(pixels: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """The loaded pixels in the units of :func:`window_units` (float64).

    The loaded pixels are the header window's output (MONOCHROME1 already inverted), so the
    header-unit value of each pixel is recovered by inverting the LINEAR VOI ramp. Values the
    header window clipped stay clipped, which is why the slider range is the header window's
    range. Without a header window the units are display grey levels 0-255.
    """
    p = np.asarray(pixels, dtype=np.float64)
    if meta.window is not None:
        hc, hw = (float(v) for v in meta.window)
        y = 1.0 - p if _high_is_dark(meta) else p
        return hc - 0.5 + (y - 0.5) * max(hw - 1.0, 1.0)
    return p * 255.0


def _high_is_dark(meta: ImageMeta) -> bool:
    """In MONOCHROME1 header units a higher value displays darker."""
    return meta.window is not None and meta.photometric.upper() == "MONOCHROME1"


def rewindow(pixels: np.ndarray, meta: ImageMeta, center: float, width: float, *, invert: bool = False) -> np.ndarray:
    """Display-only window/level on loaded pixels, in the units of :func:`window_units`;
    ``invert`` swaps black and white after windowing. The models never see this: they use
    the pixels as loaded.
    """
    out = imaging.apply_window(window_values(pixels, meta), center, max(float(width), 1.0))
    if _high_is_dark(meta):
        out = 1.0 - out
    return (1.0 - out) if invert else out


def window_presets(pixels: np.ndarray, meta: ImageMeta) -> tuple[imaging.WindowPreset, ...]:
    """``imaging.window_presets`` of an image in the units of :func:`window_units`, plus the
    starting window ("Header window" for DICOM with one, else "Default"), each limited to the
    sliders' range."""
    c0, w0, lo, hi, _ = window_units(meta)
    start = imaging.WindowPreset(
        "Header window" if meta.window is not None else "Default", c0, w0, "the window the image opened with"
    )
    found = imaging.window_presets(window_values(pixels, meta), bright_is_high=not _high_is_dark(meta))
    max_width = max(hi - lo, w0, 2.0)
    return (start,) + tuple(
        imaging.WindowPreset(p.name, float(np.clip(p.center, lo, hi)), float(np.clip(p.width, 1.0, max_width)), p.note)
        for p in found
    )


def overlay(gray: np.ndarray, heat: np.ndarray, opacity: float) -> np.ndarray:
    """Blend a [0, 1] heatmap (jet colours) onto a greyscale image; returns (H, W, 3) uint8.

    The blend weight is ``opacity * heat`` per pixel, so regions without evidence (and the
    area outside the crop, where full-image maps are zero) keep the plain radiograph.
    """
    import cv2

    g = np.asarray(gray, dtype=np.float32)
    if g.dtype != np.uint8 and g.max() > 1.0:
        g = g / 255.0
    h = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    if h.shape != g.shape:
        h = roi.resize(h, (g.shape[1], g.shape[0]))
    colour = cv2.applyColorMap(np.rint(h * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    colour = colour.astype(np.float32) / 255.0
    a = (float(np.clip(opacity, 0.0, 1.0)) * h)[:, :, None]
    rgb = (1.0 - a) * g[:, :, None] + a * colour
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def draw_box(gray: np.ndarray, box: Sequence[float], scale: float, colour=(255, 40, 40)) -> np.ndarray:
    """A display image (float [0, 1] or uint8) as RGB with a stored-pixel box drawn on it."""
    from PIL import Image, ImageDraw

    g = np.asarray(gray)
    u8 = g if g.dtype == np.uint8 else imaging.to_uint8(g)
    img = Image.fromarray(u8).convert("RGB")
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    ImageDraw.Draw(img).rectangle(
        [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=max(2, round(max(img.size) / 250))
    )
    return np.asarray(img)


# ----------------------------------------------------------------------------- canvas


_ORIGIN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


def canvas_rect(json_data: Mapping[str, Any] | None) -> Box | None:
    """The last rectangle drawn on the canvas, in canvas pixels (None if none); not clamped.

    Fabric.js reports each object's ``left/top`` at its origin and its unscaled
    ``width/height`` plus ``scaleX/scaleY`` (set when the user resizes the box), so the
    displayed size is ``width * scaleX``.
    """
    if not json_data:
        return None
    rects = [o for o in json_data.get("objects", []) or [] if str(o.get("type", "")).lower() in ("rect", "labeledrect")]
    if not rects:
        return None
    o = rects[-1]
    w = float(o.get("width", 0.0)) * float(o.get("scaleX", 1.0) or 1.0)
    h = float(o.get("height", 0.0)) * float(o.get("scaleY", 1.0) or 1.0)
    left = float(o.get("left", 0.0)) - _ORIGIN.get(str(o.get("originX", "left")), 0.0) * w
    top = float(o.get("top", 0.0)) - _ORIGIN.get(str(o.get("originY", "top")), 0.0) * h
    if w < 0:
        left, w = left + w, -w
    if h < 0:
        top, h = top + h, -h
    return (left, top, left + w, top + h)


def canvas_box(json_data: Mapping[str, Any] | None, scale: float, image_size_wh: tuple[int, int]) -> Box | None:
    """The last rectangle drawn on the canvas (:func:`canvas_rect`), in stored-image pixels
    (None if none), for a canvas showing the whole image at ``scale`` (display / stored).
    The result is clamped to the image (``roi.clamp_box``)."""
    rect = canvas_rect(json_data)
    if rect is None:
        return None
    box = tuple(v / scale for v in rect)
    return tuple(round(v, 1) for v in roi.clamp_box(box, image_size_wh))  # type: ignore[return-value]


def canvas_drawing(box: Sequence[float] | None, scale: float, stroke: str = "#ff2828") -> dict[str, Any]:
    """An ``initial_drawing`` showing ``box`` (stored pixels) as an editable rectangle."""
    if box is None:
        return {"objects": []}
    x0, y0, x1, y1 = (float(v) * scale for v in box)
    return {
        "objects": [
            {
                "type": "rect",
                "left": x0,
                "top": y0,
                "width": x1 - x0,
                "height": y1 - y0,
                "originX": "left",
                "originY": "top",
                "scaleX": 1,
                "scaleY": 1,
                "angle": 0,
                "fill": "rgba(255, 40, 40, 0.08)",
                "stroke": stroke,
                "strokeWidth": 2,
                "strokeUniform": True,
            }
        ]
    }


# ----------------------------------------------------------------------------- results


def disagreement_sentence(disagreement: float) -> str:
    level = "low" if disagreement < 0.15 else ("moderate" if disagreement < 0.35 else "high")
    return f"Member disagreement {disagreement:.2f} (max - min of the member probabilities): {level}."


def calibration_note(manifest: Manifest) -> str:
    """What the probability means, from the zoo's own record (split sizes, stacker, threshold)."""
    thr = manifest.threshold
    val = manifest.metrics.get("val") or {}
    parts = [
        f"The ensemble probability is the output of the {manifest.stacker.chosen} stacker "
        "over the members' probabilities and age/sex/site, fitted on out-of-fold scores.",
    ]
    cal = manifest.calibration
    if cal is not None:
        parts.append(
            f"The headline probability is that output after Platt calibration, fitted on {cal.n} "
            f"internal cases ({_FIT_ON.get(cal.fit_on, cal.fit_on)}); it has not been recalibrated "
            "for your hospital, so treat values near the threshold as uncertain."
        )
    else:
        parts.append(
            "It has not been recalibrated for your population: read it as a ranking score, and treat "
            "values near the threshold as uncertain."
        )
    if thr:
        parts.append(
            f"The threshold {thr.value:.2f} was chosen by the "
            f"{thr.rule or '?'} rule on the {thr.chosen_on or '?'} split" + (f" (n = {val['n']})." if val.get("n") else ".")
        )
    parts.append("See the Zoo page for the reliability (calibration) plot.")
    return " ".join(parts)


_FIT_ON = {"oof": "out-of-fold predictions on the training split", "val": "the validation split"}


def external_validation_line(manifest: Manifest) -> str | None:
    """One line under the probability: how the release did at a hospital it never saw.

    From the first external block of ``manifest.evaluation``; a sentence saying it was not
    validated outside its training hospital when there is none; None for releases that
    predate external evaluation (no ``evaluation`` entry).
    """
    from model_zoo.validation_text import external_blocks, finite_or_none, fmt_ci

    if not isinstance(manifest.evaluation, Mapping):
        return None
    external = external_blocks(manifest.evaluation)
    if not external:
        return (
            "This release was not validated outside its training hospital: its performance at a new "
            "hospital is unknown and likely lower than its internal test numbers."
        )
    name, b = external[0]
    auc = (b.get("models") or {}).get("ensemble") or {}
    ens = b.get("ensemble") or {}
    sens, spec = finite_or_none(ens.get("sensitivity")), finite_or_none(ens.get("specificity"))
    ss = "n/a" if sens is None or spec is None else f"{sens:.2f}/{spec:.2f}"
    return (
        f"Measured on {b.get('n', '?')} cases from a hospital this model never saw ({name}): "
        f"AUC {fmt_ci(auc.get('auc'), auc.get('auc_ci'))}; sensitivity/specificity at this threshold {ss}."
    )


def times_in(x: float) -> str:
    """A proportion in words: 0.28 -> "about 1 time in 4", 0.93 -> "about 9 times in 10".

    Below one half: "about 1 time in N" (N = round(1/x)); from one half: "about K times in 10"
    (K = round(10 x)), or in 100 when that would round to 10 in 10; exactly 0 or 1: never /
    every time.
    """
    x = float(x)
    if x <= 0.0:
        return "never"
    if x >= 1.0:
        return "every time"
    if x < 0.5:
        return f"about 1 time in {round(1.0 / x)}"
    k = round(10.0 * x)
    if k >= 10:
        return f"about {min(99, round(100.0 * x))} times in 100"
    return f"about {k} times in 10"


def ppv_npv_sentence(manifest: Manifest, positive_class: str, negative_class: str) -> str | None:
    """PPV and NPV at the threshold in plain words, from the release's first external evaluation.

    None when the release has no external block or the block has no PPV/NPV.
    """
    from model_zoo.validation_text import external_blocks, finite_or_none

    if not isinstance(manifest.evaluation, Mapping):
        return None
    external = external_blocks(manifest.evaluation)
    if not external:
        return None
    name, b = external[0]
    ens = b.get("ensemble") or {}
    ppv, npv = finite_or_none(ens.get("ppv")), finite_or_none(ens.get("npv"))
    if ppv is None or npv is None:
        return None
    n, n_pos = b.get("n"), b.get("n_positive")
    mix = (
        f" (there {n_pos} of {n} tumours were {positive_class}; with a different mix these rates change)"
        if isinstance(n, int) and isinstance(n_pos, int) and n > 0
        else ""
    )
    return (
        f"At a hospital the model had not seen ({name}), a '{positive_class}' call was right {times_in(ppv)} "
        f"and a '{negative_class}' call {times_in(npv)}{mix}."
    )


def outside_members(p_ensemble: float, p_members: Mapping[str, float]) -> str | None:
    """ "above" / "below" when the ensemble lies strictly above / below every member, else None."""
    values = [float(v) for v in p_members.values()]
    if not values:
        return None
    if p_ensemble > max(values):
        return "above"
    if p_ensemble < min(values):
        return "below"
    return None


def outside_members_caption(
    p_ensemble: float, p_members: Mapping[str, float], p_clinic: float | None, positive_class: str
) -> str | None:
    """Why the ensemble can lie outside its members (None when it lies within their range)."""
    side = outside_members(p_ensemble, p_members)
    if side is None:
        return None
    edge = max(p_members.values()) if side == "above" else min(p_members.values())
    which = "highest" if side == "above" else "lowest"
    clinic = (
        f" (the clinic-only model, from age, sex and site alone, gives P({positive_class}) = {p_clinic:.2f})"
        if p_clinic is not None
        else ""
    )
    return (
        f"The ensemble ({p_ensemble:.2f}) lies {side} every image member ({which} {edge:.2f}): the stacker "
        f"also weighs age, sex and site{clinic} and is a learned combination fitted on out-of-fold scores, "
        "not an average, so it can lie outside the members' range."
    )


def localiser_caution(metrics: Mapping[str, Any] | None) -> str:
    """What to tell a clinician about an auto-crop box, from the localiser's recorded test metrics."""
    test = (metrics or {}).get("test") or {}
    hit, n = test.get("frac_iou_gt_0_3"), test.get("n_lesion")
    evidence = (
        f" On the internal test split its box overlapped the annotator's (IoU > 0.3) for {hit:.0%} of {n} lesions."
        if isinstance(hit, (int, float)) and n
        else ""
    )
    return (
        "Check the proposed box before reading the result: it should enclose the whole lesion."
        + evidence
        + ' Use "Edit this box" or draw one if it does not.'
    )


def whole_image_caution(manifest: Manifest) -> str:
    """What to tell a clinician who chose the whole image instead of a box around the lesion.

    Quotes the release's own measurement (``localiser.ensemble_auc_by_roi_source.test``: the
    ensemble's AUC on the internal test split with annotator boxes, localiser boxes and whole
    images) when it has one; a generic caution otherwise.
    """
    by_source = manifest.localiser.ensemble_auc_by_roi_source if manifest.localiser else None
    test = (by_source or {}).get("test")
    test = test if isinstance(test, Mapping) else {}

    from model_zoo.validation_text import finite_or_none

    whole, boxed, auto = (finite_or_none(test.get(k)) for k in ("whole_image", "annotator", "localiser"))
    advice = " Draw a box around the lesion for the answer the models were validated for."
    if whole is None or boxed is None:
        return (
            "Whole image: the models were trained on boxes around the lesion; on the whole image the lesion "
            "is small in what they see and the answer is less reliable. This release did not record how "
            "much less." + advice
        )
    n = test.get("n")
    on = f"{int(n)} internal test cases" if isinstance(n, (int, float)) and not isinstance(n, bool) else "its internal test split"
    also = f", {auto:.2f} with auto-crop boxes" if auto is not None else ""
    return (
        f"Whole image: this release measured a lower AUC with whole images. On {on} the ensemble's AUC was "
        f"{whole:.2f} on the whole image against {boxed:.2f} with the annotators' boxes{also}." + advice
    )


def ood_message(score: float, threshold: float) -> str:
    """What the Case page says when the release's out-of-distribution check flags the crop."""
    return (
        f"This image does not look like the radiographs the model was trained on (out-of-distribution score "
        f"{score:.2f}, above this release's threshold {threshold:.2f}). The models were fitted on crops of "
        "bone radiographs; on other images their probability means nothing, so no probability or call is "
        "shown."
    )


def ood_override_note(score: float, threshold: float) -> str:
    """The warning that goes with a result shown after the user overrode the check (page and PDF)."""
    return (
        f"Out of distribution: this image does not look like the radiographs the model was trained on "
        f"(score {score:.2f} > threshold {threshold:.2f}); the result is shown only because the user "
        "overrode the check (logged), and its probability may mean nothing."
    )


def ood_passed_note(score: float | None, threshold: float | None) -> str | None:
    """A one-line caption for a crop that passed the check (None when the release has none)."""
    if score is None or threshold is None:
        return None
    return (
        f"Out-of-distribution check passed: score {score:.2f} is within this release's threshold "
        f"{threshold:.2f} (the crop looks like the training radiographs)."
    )


def member_frame_rows(p_members: Mapping[str, float], threshold: float) -> list[dict[str, Any]]:
    return [
        {"member": mid, "probability": float(p), "call": "above" if p >= threshold else "below"} for mid, p in p_members.items()
    ]


# ----------------------------------------------------------------------------- compute (library calls)


def predict(zoo: Zoo, pixels: np.ndarray, box: Sequence[float], age: Any, sex: Any, site: Any) -> Prediction:
    """``Zoo.predict`` (kept as a function so the page can cache it by image hash)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return zoo.predict(pixels, (x0, y0, x1, y1), age=age, sex=sex, site=site)


def member_crops(zoo: Zoo, pixels: np.ndarray, box: Sequence[float]) -> dict[str, tuple[np.ndarray, Box]]:
    """Each member's model-input crop (S x S, [0, 1]) and the box it was cut from."""
    from model_zoo import preprocess

    out = {}
    for m in zoo.members:
        crop, crop_box = preprocess.member_crop(m.spec, pixels, _as_box(box))
        out[m.spec.member_id] = (crop, crop_box)
    return out


@dataclass(frozen=True)
class CamView:
    """One member's (or the ensemble's) heatmap ready for display.

    ``roi_map`` covers ``view_box`` (the union of the members' crop boxes: the region the
    models saw) and ``full_map`` the whole image, both at display resolution.
    """

    title: str
    roi_map: np.ndarray
    full_map: np.ndarray
    seconds: float
    note: str = ""


def cam_view_geometry(crops: Mapping[str, tuple[np.ndarray, Box]], side: int) -> tuple[Box, tuple[int, int]]:
    """The ROI heatmap view: the union of the members' crop boxes (what the models saw) and its
    on-screen size (long side ``side`` at most)."""
    view_box = union_box([cb for _, cb in crops.values()])
    vw, vh, _ = display_size(int(view_box[2] - view_box[0]), int(view_box[3] - view_box[1]), side, side)
    return view_box, (vw, vh)


def roi_view_gray(
    pixels: np.ndarray,
    meta: ImageMeta,
    view_box: Sequence[float],
    view_wh: tuple[int, int],
    center: float,
    width: float,
    *,
    invert: bool = False,
) -> np.ndarray:
    """The ROI view at stored resolution, shrunk to ``view_wh``, in the main view's window."""
    vx0, vy0, vx1, vy1 = (int(v) for v in view_box)
    return rewindow(downscale(np.ascontiguousarray(pixels[vy0:vy1, vx0:vx1]), view_wh), meta, center, width, invert=invert)


def union_box(boxes: Sequence[Sequence[float]]) -> Box:
    """Smallest box containing all ``boxes``."""
    xs0, ys0, xs1, ys1 = zip(*[(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in boxes], strict=True)
    return (min(xs0), min(ys0), max(xs1), max(ys1))


def paste(values: np.ndarray, box: Sequence[float], view_box: Sequence[float]) -> np.ndarray:
    """Place a map covering integer ``box`` into a zero map covering integer ``view_box``."""
    vx0, vy0, vx1, vy1 = (int(round(float(v))) for v in view_box)
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    out = np.zeros((vy1 - vy0, vx1 - vx0), dtype=np.float32)
    out[y0 - vy0 : y1 - vy0, x0 - vx0 : x1 - vx0] = values
    return out


def member_cam(
    zoo: Zoo,
    member_index: int,
    pixels: np.ndarray,
    box: Sequence[float],
    method: str,
    view_box: Sequence[float],
    view_wh: tuple[int, int],
    display_wh: tuple[int, int],
    *,
    cache: Any = None,
    pixels_hash: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CamView:
    """``explain.explain_member`` for one member, shrunk to display resolution.

    Full-image maps are 4 bytes x H x W each; only the display-size copies are kept.
    ``should_stop`` / ``progress``: ScoreCAM's cancellation check and progress report
    (``explain.explain_member``); a cancelled map raises ``model_zoo.errors.Cancelled``.
    ``view_box`` must contain the member's crop box (use :func:`union_box` of all crops).
    """
    from model_zoo import explain

    m = zoo.members[member_index]
    ex = explain.explain_member(
        m.spec,
        m.model,
        pixels,
        tuple(float(v) for v in box),
        method=method,
        cache=cache,
        pixels_hash=pixels_hash,
        should_stop=should_stop,
        progress=progress,
    )
    roi_view = downscale(paste(ex.roi_map, ex.crop_box, view_box), view_wh)
    full_small = downscale(ex.image_map, display_wh)
    note = str(ex.heatmap.details.get("blank_reason") or "")
    if not note and ex.heatmap.details.get("empty"):
        note = explain.BLANK_ZERO
    # float16 halves the cache footprint; display needs far less than its 3 significant digits.
    return CamView(
        title=f"{m.spec.member_id}: {ex.heatmap.method}",
        roi_map=roi_view.astype(np.float16),
        full_map=full_small.astype(np.float16),
        seconds=float(ex.heatmap.seconds),
        note=note,
    )


def ensemble_cam(views: Mapping[str, CamView], weights: Mapping[str, float], method_label: str) -> CamView:
    """Ensemble-weighted maps (``explain.ensemble_heatmap``) on the ROI and full-image grids."""
    from model_zoo import explain

    w = {k: weights[k] for k in views}
    full = explain.ensemble_heatmap({k: v.full_map for k, v in views.items()}, w, base_method=method_label)
    roi_e = explain.ensemble_heatmap({k: v.roi_map for k, v in views.items()}, w, base_method=method_label)
    blank = bool(views) and all(v.note for v in views.values())
    return CamView(
        title=full.method,
        roi_map=np.asarray(roi_e.values),
        full_map=np.asarray(full.values),
        seconds=sum(v.seconds for v in views.values()),
        note="every member's map is blank at its layer" if blank else "",
    )


HEATMAP_HOW_TO = (
    "**How to read a heatmap.** Colour shows where a network found evidence *for* "
    "the positive class (its logit), scaled so each map's strongest spot is red: colours compare "
    "places within one map, not maps with each other or cases with each other. A hot spot on the "
    "lesion does not prove the call is right, and one beside it does not prove it wrong; a map "
    "that is blank or flat says the layer held no usable evidence. GradCAM follows gradients "
    "(fast, coarse: one cell per 14-32 pixels of the model input); ScoreCAM scores masked inputs "
    "(slower; on these members often close to where activations are strong). Where the release "
    "quotes measured numbers, compare them with the random map's: if the maps fall in the lesion box "
    "no more often than a random map, read them as a picture of the network, not of the lesion."
)


def explain_sentence(report: Any, view: str) -> str | None:
    """One sentence with the release's measured pointing-game numbers for the Case page.

    ``report`` is ``Zoo.explain_report`` (None -> None); ``view`` is ``"roi"`` when the ROI is a
    box around the lesion, ``"image"`` when it is the whole radiograph. Quotes the headline set
    (external first): the ensemble GradCAM's hit rate with its CI, ScoreCAM's where measured,
    and a random map's.
    """
    from model_zoo.explain_report import ExplainReport

    if not isinstance(report, ExplainReport):
        return None
    s = report.headline_set()
    if s is None or view not in s.views:
        return None

    def pct(m: Any) -> str | None:
        return None if m is None or m.mean is None else f"{100 * m.mean:.0f} %"

    grad = s.metric(view, "ensemble", "gradcam", "pointing_box")
    rand = s.metric(view, "ensemble", "random", "pointing_box")
    if pct(grad) is None or pct(rand) is None:
        return None
    ci = f" [{100 * grad.ci[0]:.0f}-{100 * grad.ci[1]:.0f} %]" if grad.ci else ""
    score = pct(s.metric(view, "ensemble", "scorecam", "pointing_box"))
    where = "external" if s.kind == "external" else "internal test" if s.kind == "internal" else ""
    how = "with the ROI drawn around the lesion" if view == "roi" else "with the whole radiograph as input"
    return (
        f"Measured on {grad.n} {where + ' ' if where else ''}lesions ({s.name}), {how}: the ensemble GradCAM "
        f"peak fell inside the annotator's lesion box in {pct(grad)}{ci} of cases"
        + (f" (ScoreCAM: {score})" if score else "")
        + f"; a random map: {pct(rand)}."
    )


# ----------------------------------------------------------------------------- PDF


@dataclass(frozen=True, eq=False)
class CaseView:
    """What one run of the Case page showed, for the PDF: derived every run, never kept in
    session state.

    ``radiograph``: the main view as displayed (windowed, at screen size); ``crops``: member
    id -> (model-input crop, crop box); ``cams``: method label -> member id -> map;
    ``cam_gray``: the (ROI view, full view) greyscale images the maps are drawn on.
    """

    radiograph: np.ndarray
    crops: Mapping[str, tuple[np.ndarray, Box]] = field(default_factory=dict)
    cams: Mapping[str, Mapping[str, CamView]] = field(default_factory=dict)
    cam_gray: tuple[np.ndarray, np.ndarray] | None = None
    opacity: float = 0.5


def case_pdf(
    zoo: Zoo,
    case: CaseState,
    box: Sequence[float],
    source: str,
    inputs: Mapping[str, Any],
    pred: Prediction,
    jitter: JitterSummary | None,
    warnings: Sequence[str],
    *,
    view: CaseView | None = None,
    reference: str = "",
    include_identifiers: bool = False,
) -> bytes:
    """The PDF case report (``model_zoo.report_pdf``) from what the case page computed.

    ``view`` is what the page showed (the displayed radiograph, crops and heatmaps: the
    ensemble on the ROI and the full image, and each member on the ROI, drawn as on the
    page); without it the report shows the radiograph as loaded and no crops or heatmaps.
    """
    import datetime as _dt

    from model_zoo import report_pdf

    heatmaps = []
    opacity = view.opacity if view is not None else 0.5
    drawn = view.cams if view is not None and view.cam_gray is not None else {}
    for label, views in drawn.items():
        if view is None or view.cam_gray is None or not views:  # (for the type checker: see ``drawn``)
            continue
        roi_gray, full_gray = view.cam_gray
        ens = ensemble_cam(views, zoo.cam_weights, label)
        heatmaps.append(report_pdf.HeatmapFigure(f"{label} ensemble-weighted, ROI", overlay(roi_gray, ens.roi_map, opacity)))
        heatmaps.append(
            report_pdf.HeatmapFigure(f"{label} ensemble-weighted, full image", overlay(full_gray, ens.full_map, opacity))
        )
        for mid, v in views.items():
            heatmaps.append(report_pdf.HeatmapFigure(f"{label} {mid}, ROI", overlay(roi_gray, v.roi_map, opacity)))
    meta = case.image.meta
    call = zoo.call(pred.p_ensemble, jitter)
    rep = report_pdf.CaseReport(
        zoo_name=zoo.release_name,
        zoo_version=zoo.version,
        call=call,
        threshold_rule=zoo.threshold_rule,
        p_members=pred.p_members,
        p_clinic=pred.p_clinic,
        external_validation=external_validation_line(zoo.manifest) or "",
        disagreement=pred.disagreement,
        radiograph=view.radiograph if view is not None else case.image.pixels,
        image_size_wh=case.size,
        roi_box=tuple(box),
        roi_source=source,
        image_sha256=case.sha256,
        age=inputs.get("age"),
        sex=inputs.get("sex"),
        site=inputs.get("site"),
        crops={k: c for k, (c, _) in (view.crops if view is not None else {}).items()},
        heatmaps=heatmaps,
        jitter=jitter,
        warnings=list(warnings),
        calibration_note=calibration_note(zoo.manifest),
        zoo_files=zoo.files,
        manifest_sha256=zoo.manifest_sha256,
        intended_use=zoo.intended_use,
        image_tags={k: v for k, v in meta.display_tags.items() if k in ("Modality", "BodyPartExamined", "ViewPosition")},
        created=_dt.datetime.now(_dt.timezone.utc),
        identifiers={"Case reference": reference} if reference.strip() else None,
    )
    return report_pdf.build_case_report(rep, include_identifiers=include_identifiers)
