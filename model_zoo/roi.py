"""Box maths for regions of interest (ROIs): validate, clamp, margin, square, crop, map.

Conventions used throughout this module
---------------------------------------
* A box is ``(x0, y0, x1, y1)`` in floats, in pixel coordinates of the *stored* image
  (the array as read from the file, before any resize). ``x0, y0`` is the top-left pixel
  edge and ``x1, y1`` is exclusive, so ``width = x1 - x0``; the full image is
  ``(0, 0, W, H)``. Coordinates are pixel *edges*, which is why mapping between grids is
  a plain scale: edge 0 maps to edge 0 and edge W to edge W'.
* Every size is ``(width, height)`` - ``image_size_wh``, ``input_size``, and the tuple form
  of :func:`resize`'s ``size`` - matching how boxes are written (x first). Numpy arrays
  are ``(H, W)`` or ``(H, W, C)`` as usual.
* Four coordinate frames appear: *image* (stored image), *crop* (origin at the crop
  box's top-left, same pixel scale), *input* (the crop resized to the network's input
  size) and *view* (a viewer's zoomed/panned window of the image, stretched over the
  viewer's canvas; see :func:`view_window`).

Everything here is pure (no I/O). Bad user input raises :class:`model_zoo.errors.InputError`
with a one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from model_zoo.errors import InputError

Box = tuple[float, float, float, float]

# Where a case's ROI comes from, in the batch CLI and pages: the table's ROI columns (the
# localiser where a row has none), the localiser, or the whole image.
ROI_MODES = ("given", "auto", "full")

__all__ = [
    "Box",
    "as_box",
    "box_crop_to_image",
    "box_crop_to_input",
    "box_image_to_view",
    "box_image_to_crop",
    "box_input_to_crop",
    "box_view_to_image",
    "clamp_box",
    "crop",
    "expand_box",
    "fit_box_inside",
    "full_image_box",
    "heatmap_to_image",
    "iou",
    "jitter_boxes",
    "resize",
    "roi_crop_box",
    "scale_box",
    "square_box",
    "validate_box",
    "view_window",
]

# Values this close to an integer are treated as that integer when aligning crop boxes to
# pixels, so float noise (99.99999999 from a margin computation) does not add a pixel.
_SNAP_EPS = 1e-6


# ----------------------------------------------------------------------------- helpers


def fmt_box(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in box) + ")"


def _as_box(box: Sequence[float]) -> Box:
    """Coerce to a 4-tuple of finite floats, or raise InputError."""
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"ROI {box!r} is not four numbers (x0, y0, x1, y1)") from None
    if len(values) != 4:
        raise InputError(f"ROI {box!r} has {len(values)} values; expected x0, y0, x1, y1")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"ROI {fmt_box(values)} has a NaN or infinite coordinate")
    return values


def as_box(box: Sequence[float]) -> Box:
    """Coerce to a 4-tuple of finite floats (:data:`Box`), or raise InputError."""
    return _as_box(box)


def _size_wh(size: Sequence[int] | int, what: str = "image size") -> tuple[int, int]:
    """Coerce ``int`` or ``(w, h)`` to a pair of positive ints, or raise InputError."""
    if isinstance(size, (int, np.integer)):
        pair = (int(size), int(size))
    else:
        try:
            w, h = size
            if float(w) != int(w) or float(h) != int(h):
                raise ValueError
            pair = (int(w), int(h))
        except (TypeError, ValueError):
            raise InputError(f"{what} {size!r} is not a (width, height) pair of integers") from None
    if pair[0] <= 0 or pair[1] <= 0:
        raise InputError(f"{what} {pair[0]}x{pair[1]} must be positive")
    return pair


def _snap(v: float) -> float:
    r = round(v)
    return float(r) if abs(v - r) < _SNAP_EPS else v


def _int_box(box: Sequence[float], what: str = "crop box") -> tuple[int, int, int, int]:
    """Integer-valued box (after snapping float noise) with positive area, or InputError."""
    b = _as_box(box)
    snapped = tuple(_snap(v) for v in b)
    if any(v != int(v) for v in snapped):
        raise InputError(f"{what} {fmt_box(b)} must have integer coordinates")
    x0, y0, x1, y1 = (int(v) for v in snapped)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{what} {fmt_box(b)} has zero or negative area")
    return x0, y0, x1, y1


# ----------------------------------------------------------------------------- boxes


def full_image_box(image_size_wh: Sequence[int]) -> Box:
    """The box covering the whole image, ``(0, 0, W, H)``."""
    w, h = _size_wh(image_size_wh)
    return (0.0, 0.0, float(w), float(h))


def clamp_box(box: Sequence[float], image_size_wh: Sequence[int]) -> Box:
    """Clip each coordinate to the image. A box entirely outside collapses to zero area.

    Pure clipping: use :func:`validate_box` when the result must be usable.
    """
    x0, y0, x1, y1 = _as_box(box)
    w, h = _size_wh(image_size_wh)
    return (
        min(max(x0, 0.0), float(w)),
        min(max(y0, 0.0), float(h)),
        min(max(x1, 0.0), float(w)),
        min(max(y1, 0.0), float(h)),
    )


def validate_box(box: Sequence[float], image_size_wh: Sequence[int]) -> Box:
    """Check a user ROI and return it clamped to the image.

    Raises
    ------
    InputError
        NaN/infinite coordinates, zero or negative area (``x1 <= x0`` or ``y1 <= y0``), or
        a box that does not overlap the image at all. A box that overlaps the image only
        partly is accepted and clamped (a lesion at the film edge is common).
    """
    x0, y0, x1, y1 = b = _as_box(box)
    w, h = _size_wh(image_size_wh)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"ROI {fmt_box(b)} has zero or negative area (needs x1 > x0 and y1 > y0)")
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise InputError(f"ROI {fmt_box(b)} lies entirely outside the {w}x{h} image")
    return clamp_box(b, (w, h))


def expand_box(box: Sequence[float], margin: float) -> Box:
    """Grow a box by ``margin`` times its width/height on EACH side.

    ``margin=0.1`` makes the box 20 % wider and 20 % taller, centre unchanged. Negative
    margins shrink, down to (but excluding) -0.5, which would leave nothing.
    """
    x0, y0, x1, y1 = _as_box(box)
    margin = float(margin)
    if not math.isfinite(margin) or margin <= -0.5:
        raise InputError(f"ROI margin {margin:g} must be a number above -0.5")
    dx = (x1 - x0) * margin
    dy = (y1 - y0) * margin
    return (x0 - dx, y0 - dy, x1 + dx, y1 + dy)


def square_box(box: Sequence[float]) -> Box:
    """Grow the shorter side symmetrically about the centre so both sides are equal.

    The longer side's coordinates are returned unchanged, so the result always contains
    the input exactly (no float drift on the long axis).
    """
    x0, y0, x1, y1 = _as_box(box)
    w, h = x1 - x0, y1 - y0
    if w < h:
        d = (h - w) / 2.0
        return (x0 - d, y0, x1 + d, y1)
    if h < w:
        d = (w - h) / 2.0
        return (x0, y0 - d, x1, y1 + d)
    return (x0, y0, x1, y1)


def _fit_axis(lo: float, hi: float, limit: float) -> tuple[float, float]:
    if hi - lo >= limit:
        return 0.0, limit
    if lo < 0.0:
        lo, hi = 0.0, hi - lo
    elif hi > limit:
        lo, hi = lo - (hi - limit), limit
    # Clip float noise from the shift (e.g. hi a hair above the limit).
    return max(lo, 0.0), min(hi, limit)


def fit_box_inside(box: Sequence[float], image_size_wh: Sequence[int]) -> Box:
    """Shift (not shrink) a box so it lies inside the image, per axis.

    Along an axis where the box is longer than the image it is clamped to the full
    extent instead, so the result is always inside ``(0, 0, W, H)``. Shifting keeps a
    margin-expanded crop the same size near the film edge, which keeps the lesion's scale
    consistent between cases.
    """
    x0, y0, x1, y1 = _as_box(box)
    w, h = _size_wh(image_size_wh)
    nx0, nx1 = _fit_axis(x0, x1, float(w))
    ny0, ny1 = _fit_axis(y0, y1, float(h))
    return (nx0, ny0, nx1, ny1)


def roi_crop_box(box: Sequence[float], image_size_wh: Sequence[int], margin: float, square: bool = True) -> Box:
    """The crop actually cut from the image for an ROI (paper-style context crop).

    Steps: validate (and clamp) the ROI, add ``margin`` per side, make it square (optional),
    shift it inside the image (clamping an axis longer than the image), then align it to
    whole pixels outward (floor ``x0, y0``; ceil ``x1, y1``). The result has integer-valued
    float coordinates, lies inside the image and is at least 1 px each way. Near the
    image edge or for boxes larger than the image the result may not be exactly square.
    """
    w, h = _size_wh(image_size_wh)
    b = validate_box(box, (w, h))
    b = expand_box(b, margin)
    if square:
        b = square_box(b)
    x0, y0, x1, y1 = fit_box_inside(b, (w, h))
    ix0 = max(0, math.floor(_snap(x0)))
    iy0 = max(0, math.floor(_snap(y0)))
    ix1 = min(w, math.ceil(_snap(x1)))
    iy1 = min(h, math.ceil(_snap(y1)))
    # Guard against a sliver that snapped to zero width (validate_box ensures x1 > x0, but a
    # box narrower than _SNAP_EPS on an integer would collapse).
    if ix1 <= ix0:
        ix1 = min(w, ix0 + 1)
        ix0 = ix1 - 1
    if iy1 <= iy0:
        iy1 = min(h, iy0 + 1)
        iy0 = iy1 - 1
    return (float(ix0), float(iy0), float(ix1), float(iy1))


def scale_box(box: Sequence[float], from_size_wh: Sequence[int], to_size_wh: Sequence[int]) -> Box:
    """Map a box between two resolutions of the same picture (per-axis scale).

    E.g. BTXRD boxes are given on the 256 x 256 stored image; ``scale_box(b, (256, 256),
    (W, H))`` maps them onto an original ``W x H`` radiograph.
    """
    x0, y0, x1, y1 = _as_box(box)
    fw, fh = _size_wh(from_size_wh, "from size")
    tw, th = _size_wh(to_size_wh, "to size")
    sx, sy = tw / fw, th / fh
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes; 0.0 when both have zero area."""
    ax0, ay0, ax1, ay1 = _as_box(a)
    bx0, by0, bx1, by1 = _as_box(b)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    area_a = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0)
    area_b = max(0.0, bx1 - bx0) * max(0.0, by1 - by0)
    union = area_a + area_b - inter
    if union <= 0.0:
        return 0.0
    return float(min(1.0, max(0.0, inter / union)))


def jitter_boxes(
    box: Sequence[float],
    image_size_wh: Sequence[int],
    n: int,
    shift: float = 0.1,
    scale: float = 0.1,
    seed: int = 0,
) -> list[Box]:
    """``n`` randomly perturbed copies of an ROI, for checking a prediction's ROI sensitivity.

    Each copy moves the centre by up to ``shift`` times the box width/height and scales
    width and height independently by a factor in ``[1 - scale, 1 + scale]`` (uniform), then
    is shifted inside the image (:func:`fit_box_inside`). Deterministic for a given seed.
    """
    w, h = _size_wh(image_size_wh)
    x0, y0, x1, y1 = validate_box(box, (w, h))
    if n < 0:
        raise InputError(f"number of jittered boxes {n} must be >= 0")
    if not (0.0 <= shift) or not (0.0 <= scale < 1.0):
        raise InputError(f"jitter shift {shift:g} must be >= 0 and scale {scale:g} in [0, 1)")
    rng = np.random.default_rng(seed)
    bw, bh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    out: list[Box] = []
    for _ in range(int(n)):
        dx, dy = rng.uniform(-shift, shift, size=2)
        sw, sh = rng.uniform(1.0 - scale, 1.0 + scale, size=2)
        nw, nh = bw * sw, bh * sh
        ncx, ncy = cx + dx * bw, cy + dy * bh
        jb = (ncx - nw / 2.0, ncy - nh / 2.0, ncx + nw / 2.0, ncy + nh / 2.0)
        out.append(fit_box_inside(jb, (w, h)))
    return out


# ----------------------------------------------------------------------------- frames


def box_image_to_crop(box: Sequence[float], crop_box: Sequence[float]) -> Box:
    """Image coordinates -> coordinates relative to the crop's top-left corner."""
    x0, y0, x1, y1 = _as_box(box)
    cx0, cy0, _, _ = _as_box(crop_box)
    return (x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0)


def box_crop_to_image(box: Sequence[float], crop_box: Sequence[float]) -> Box:
    """Crop coordinates -> image coordinates (inverse of :func:`box_image_to_crop`)."""
    x0, y0, x1, y1 = _as_box(box)
    cx0, cy0, _, _ = _as_box(crop_box)
    return (x0 + cx0, y0 + cy0, x1 + cx0, y1 + cy0)


def _crop_scale(crop_box: Sequence[float], input_size: Sequence[int] | int) -> tuple[float, float]:
    cx0, cy0, cx1, cy1 = c = _as_box(crop_box)
    if cx1 <= cx0 or cy1 <= cy0:
        raise InputError(f"crop box {fmt_box(c)} has zero or negative area")
    iw, ih = _size_wh(input_size, "input size")
    return iw / (cx1 - cx0), ih / (cy1 - cy0)


def box_crop_to_input(box: Sequence[float], crop_box: Sequence[float], input_size: Sequence[int] | int) -> Box:
    """Crop coordinates -> network-input coordinates after resizing the crop.

    ``input_size`` is an int (square) or ``(width, height)``.
    """
    x0, y0, x1, y1 = _as_box(box)
    sx, sy = _crop_scale(crop_box, input_size)
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def box_input_to_crop(box: Sequence[float], crop_box: Sequence[float], input_size: Sequence[int] | int) -> Box:
    """Network-input coordinates -> crop coordinates (inverse of :func:`box_crop_to_input`)."""
    x0, y0, x1, y1 = _as_box(box)
    sx, sy = _crop_scale(crop_box, input_size)
    return (x0 / sx, y0 / sy, x1 / sx, y1 / sy)


# ----------------------------------------------------------------------------- viewer


def _round_half_up(v: float) -> int:
    return math.floor(v + 0.5)  # not round(): banker's rounding would move a window by parity


def view_window(image_size_wh: Sequence[int], zoom: float, center: Sequence[float] | None = None) -> Box:
    """The part of the stored image a viewer shows at ``zoom`` around ``center``.

    ``zoom >= 1`` is the magnification over the whole image: the window is
    ``round(W / zoom) x round(H / zoom)`` whole pixels (at least 1 x 1). It is centred on
    ``center`` (image pixels; default the image centre) as nearly as whole pixels allow,
    then shifted (not shrunk) to lie inside the image, so panning past an edge stops at
    the edge. The result has integer-valued coordinates (a crop box for :func:`crop`);
    ``zoom == 1`` gives the whole image whatever the centre.
    """
    w, h = _size_wh(image_size_wh)
    z = float(zoom)
    if not math.isfinite(z) or z < 1.0:
        raise InputError(f"zoom {z:g} must be a number >= 1")
    if center is None:
        cx, cy = w / 2.0, h / 2.0
    else:
        try:
            cx, cy = (float(v) for v in center)
        except (TypeError, ValueError):
            raise InputError(f"view centre {center!r} is not an (x, y) pair of numbers") from None
        if not (math.isfinite(cx) and math.isfinite(cy)):
            raise InputError(f"view centre ({cx:g}, {cy:g}) has a NaN or infinite coordinate")
    vw = min(w, max(1, _round_half_up(w / z)))
    vh = min(h, max(1, _round_half_up(h / z)))
    x0 = min(max(_round_half_up(cx - vw / 2.0), 0), w - vw)
    y0 = min(max(_round_half_up(cy - vh / 2.0), 0), h - vh)
    return (float(x0), float(y0), float(x0 + vw), float(y0 + vh))


def _view_axes(window: Sequence[float], view_size_wh: Sequence[int]) -> tuple[Box, tuple[int, int]]:
    wx0, wy0, wx1, wy1 = win = _as_box(window)
    if wx1 <= wx0 or wy1 <= wy0:
        raise InputError(f"view window {fmt_box(win)} has zero or negative area")
    return win, _size_wh(view_size_wh, "view size")


def box_view_to_image(box: Sequence[float], window: Sequence[float], view_size_wh: Sequence[int]) -> Box:
    """A box on a viewer canvas -> stored-image pixels.

    The canvas (``view_size_wh`` = (width, height) px) shows the image ``window`` stretched
    over it, each axis on its own scale (pixel edges to pixel edges, as everywhere in this
    module): canvas x maps to ``wx0 + x * (wx1 - wx0) / width``. No clamping: a box that
    runs off the canvas maps to the image pixels beyond the window's edge.
    """
    x0, y0, x1, y1 = _as_box(box)
    (wx0, wy0, wx1, wy1), (vw, vh) = _view_axes(window, view_size_wh)
    ww, wh = wx1 - wx0, wy1 - wy0
    return (wx0 + x0 * ww / vw, wy0 + y0 * wh / vh, wx0 + x1 * ww / vw, wy0 + y1 * wh / vh)


def box_image_to_view(box: Sequence[float], window: Sequence[float], view_size_wh: Sequence[int]) -> Box:
    """Stored-image pixels -> a viewer canvas (inverse of :func:`box_view_to_image`)."""
    x0, y0, x1, y1 = _as_box(box)
    (wx0, wy0, wx1, wy1), (vw, vh) = _view_axes(window, view_size_wh)
    ww, wh = wx1 - wx0, wy1 - wy0
    return ((x0 - wx0) * vw / ww, (y0 - wy0) * vh / wh, (x1 - wx0) * vw / ww, (y1 - wy0) * vh / wh)


# ----------------------------------------------------------------------------- arrays

# dtypes cv2.resize handles natively; anything else is computed in float32.
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Cut an integer box out of an ``(H, W)`` or ``(H, W, C)`` array (returns a view).

    The box must have integer-valued coordinates (as :func:`roi_crop_box` returns) and lie
    inside the image.
    """
    if image.ndim not in (2, 3):
        raise InputError(f"image must be 2-D (H, W) or 3-D (H, W, C), got shape {image.shape}")
    x0, y0, x1, y1 = _int_box(box)
    h, w = image.shape[:2]
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise InputError(f"crop box {fmt_box(box)} extends outside the {w}x{h} image")
    return image[y0:y1, x0:x1]


def resize(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resize an ``(H, W)`` or ``(H, W, C)`` array to ``size`` (int, or ``(width, height)``).

    Uses ``cv2.INTER_AREA`` when neither axis grows (it averages source pixels, avoiding
    aliasing), otherwise ``cv2.INTER_LINEAR``. The dtype is preserved for uint8, uint16,
    int16, float32 and float64; other dtypes (bool, int64, float16 ...) come back float32.
    A single channel axis ``(H, W, 1)`` is kept (cv2 would drop it).
    """
    import cv2  # lazy: keeps `import model_zoo.roi` cheap

    if image.ndim not in (2, 3):
        raise InputError(f"image must be 2-D (H, W) or 3-D (H, W, C), got shape {image.shape}")
    tw, th = _size_wh(size, "resize target")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"cannot resize an empty image of shape {image.shape}")
    src = image if image.dtype in _CV2_DTYPES else image.astype(np.float32)
    if (tw, th) == (w, h):
        return src.copy()
    interp = cv2.INTER_AREA if (tw <= w and th <= h) else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(src), (tw, th), interpolation=interp)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def heatmap_to_image(heatmap: np.ndarray, crop_box: Sequence[float], image_size_wh: Sequence[int]) -> np.ndarray:
    """Place a heatmap defined over a crop into a full-image float32 map (zeros elsewhere).

    The ``(h, w)`` heatmap may be on any grid (a 7 x 7 CAM, the 224 x 224 input); it is
    stretched over the crop box with bilinear interpolation (``cv2.INTER_LINEAR``,
    pixel-centre aligned), so heatmap cell ``(r, c)`` lands at the centre of the matching
    block of crop pixels. ``crop_box`` must have integer coordinates; parts of it outside
    the image are dropped.
    """
    import cv2

    hm = np.asarray(heatmap)
    if hm.ndim != 2 or hm.shape[0] == 0 or hm.shape[1] == 0:
        raise InputError(f"heatmap must be a non-empty 2-D array, got shape {hm.shape}")
    w, h = _size_wh(image_size_wh)
    x0, y0, x1, y1 = _int_box(crop_box)
    cw, ch = x1 - x0, y1 - y0
    up = cv2.resize(np.ascontiguousarray(hm, dtype=np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((h, w), dtype=np.float32)
    # Intersect the crop with the image so a crop hanging over an edge still places the
    # visible part at the right pixels.
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 > ix0 and iy1 > iy0:
        out[iy0:iy1, ix0:ix1] = up[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    return out
