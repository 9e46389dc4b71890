"""Tests for model_zoo.roi: property tests (hypothesis) plus hand-computed references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_zoo import roi
from model_zoo.errors import InputError

# ----------------------------------------------------------------------------- strategies

sizes = st.tuples(st.integers(1, 4000), st.integers(1, 4000))


@st.composite
def size_and_box(draw, inside: bool = True):
    """An image size and a positive-area box (inside the image, or anywhere near it)."""
    w, h = draw(sizes)
    if inside:
        x0 = draw(st.floats(0, w, allow_nan=False))
        y0 = draw(st.floats(0, h, allow_nan=False))
        x1 = draw(st.floats(0, w, allow_nan=False))
        y1 = draw(st.floats(0, h, allow_nan=False))
    else:
        x0 = draw(st.floats(-w, 2 * w, allow_nan=False))
        y0 = draw(st.floats(-h, 2 * h, allow_nan=False))
        x1 = draw(st.floats(-w, 2 * w, allow_nan=False))
        y1 = draw(st.floats(-h, 2 * h, allow_nan=False))
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    # Keep a sensible minimum size relative to the coordinates so float maths stays exact
    # enough for the 1e-6 round-trip tolerance.
    if x1 - x0 < 1e-3 or y1 - y0 < 1e-3:
        x1, y1 = x0 + 1.0, y0 + 1.0
        if inside:
            x0, y0 = min(x0, w - 1.0), min(y0, h - 1.0)
            x1, y1 = x0 + 1.0, y0 + 1.0
    return (w, h), (x0, y0, x1, y1)


coords = st.floats(-1e4, 1e4, allow_nan=False)
any_box = st.tuples(coords, coords, coords, coords)


def _close(a, b, tol=1e-6):
    return all(abs(p - q) <= tol * max(1.0, abs(p), abs(q)) for p, q in zip(a, b))


def _contains(outer, inner, tol=0.0):
    return outer[0] <= inner[0] + tol and outer[1] <= inner[1] + tol and outer[2] >= inner[2] - tol and outer[3] >= inner[3] - tol


# ----------------------------------------------------------------------------- round trips


@given(size_and_box(inside=False), size_and_box(inside=True))
def test_image_crop_image_round_trip(sb, crop_sb):
    _, box = sb
    _, crop_box = crop_sb
    back = roi.box_crop_to_image(roi.box_image_to_crop(box, crop_box), crop_box)
    assert _close(back, box)


@given(size_and_box(inside=False), size_and_box(inside=True), st.integers(1, 1024), st.integers(1, 1024))
def test_crop_input_crop_round_trip(sb, crop_sb, iw, ih):
    _, box = sb
    _, crop_box = crop_sb
    back = roi.box_input_to_crop(roi.box_crop_to_input(box, crop_box, (iw, ih)), crop_box, (iw, ih))
    assert _close(back, box)


def test_crop_to_input_hand_computed():
    # Crop 100 px wide, 50 px tall resized to 224 x 224: x scale 2.24, y scale 4.48.
    got = roi.box_crop_to_input((10, 5, 60, 25), (300, 200, 400, 250), 224)
    assert got == pytest.approx((22.4, 22.4, 134.4, 112.0))
    # Image -> crop subtracts the crop's corner.
    assert roi.box_image_to_crop((310, 205, 360, 225), (300, 200, 400, 250)) == (10, 5, 60, 25)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "box, message",
    [
        ((10, 10, 10, 20), "zero or negative area"),
        ((10, 10, 20, 10), "zero or negative area"),
        ((30, 10, 20, 20), "zero or negative area"),
        ((float("nan"), 0, 10, 10), "NaN"),
        ((0, 0, float("inf"), 10), "NaN or infinite"),
        ((200, 10, 300, 20), "entirely outside the 100x50 image"),
        ((-30, -30, 0, 0), "entirely outside"),
        ((10, 50, 20, 60), "entirely outside"),
        ((1, 2, 3), "expected x0, y0, x1, y1"),
        (("a", 2, 3, 4), "not four numbers"),
    ],
)
def test_validate_box_refuses(box, message):
    with pytest.raises(InputError, match=message):
        roi.validate_box(box, (100, 50))


def test_validate_box_clamps_partial_overlap():
    assert roi.validate_box((-5, 10, 120, 60), (100, 50)) == (0, 10, 100, 50)


@given(any_box, sizes)
def test_degenerate_boxes_refused(box, size):
    x0, y0, x1, y1 = box
    if x1 > x0 and y1 > y0:
        return
    with pytest.raises(InputError):
        roi.validate_box(box, size)
    with pytest.raises(InputError):
        roi.roi_crop_box(box, size, 0.1)


@given(size_and_box(inside=False))
def test_validate_result_inside_and_positive(sb):
    size, box = sb
    w, h = size
    try:
        v = roi.validate_box(box, size)
    except InputError:
        # Only a box with no overlap may be refused here.
        assert box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h
        return
    assert 0 <= v[0] < v[2] <= w and 0 <= v[1] < v[3] <= h


# ----------------------------------------------------------------------------- geometry


def test_expand_box_hand_computed():
    # 0.1 per side on a 100 x 40 box: +10 px left/right, +4 px top/bottom.
    assert roi.expand_box((50, 60, 150, 100), 0.1) == pytest.approx((40, 56, 160, 104))
    with pytest.raises(InputError, match="margin"):
        roi.expand_box((0, 0, 1, 1), -0.5)


@given(size_and_box(inside=False))
def test_square_box_equal_sides_and_contains(sb):
    _, box = sb
    s = roi.square_box(box)
    side = max(box[2] - box[0], box[3] - box[1])
    assert math.isclose(s[2] - s[0], s[3] - s[1], rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(s[2] - s[0], side, rel_tol=1e-9, abs_tol=1e-9)
    assert _contains(s, box)
    # Centre unchanged.
    assert math.isclose(s[0] + s[2], box[0] + box[2], rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(s[1] + s[3], box[1] + box[3], rel_tol=1e-9, abs_tol=1e-6)


@given(size_and_box(inside=False), st.floats(0, 3))
def test_fit_box_inside_stays_inside_and_keeps_size(sb, margin):
    size, box = sb
    w, h = size
    b = roi.expand_box(box, margin)
    f = roi.fit_box_inside(b, size)
    assert 0 <= f[0] <= f[2] <= w and 0 <= f[1] <= f[3] <= h
    # Shift, not shrink, where the box fits along an axis.
    bw, bh = b[2] - b[0], b[3] - b[1]
    assert math.isclose(f[2] - f[0], min(bw, w), rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(f[3] - f[1], min(bh, h), rel_tol=1e-9, abs_tol=1e-6)


def test_fit_box_inside_edges_hand_computed():
    # Hanging off the left/top: shifted right/down by the overhang.
    assert roi.fit_box_inside((-10, -5, 30, 15), (100, 50)) == (0, 0, 40, 20)
    # Hanging off the right/bottom.
    assert roi.fit_box_inside((80, 40, 120, 60), (100, 50)) == (60, 30, 100, 50)
    # Wider than the image: clamped on x, untouched on y.
    assert roi.fit_box_inside((-10, 10, 130, 20), (100, 50)) == (0, 10, 100, 20)


@given(size_and_box(inside=True), st.floats(0, 1), st.floats(0, 1), st.booleans())
def test_roi_crop_box_properties(sb, m1, m2, square):
    size, box = sb
    w, h = size
    c = roi.roi_crop_box(box, size, m1, square=square)
    # Integer aligned, inside, at least one pixel.
    assert all(v == int(v) for v in c)
    assert 0 <= c[0] < c[2] <= w and 0 <= c[1] < c[3] <= h
    assert c[2] - c[0] >= 1 and c[3] - c[1] >= 1
    # The crop covers the (clamped) ROI itself unless the expanded box had to be
    # shifted... it is only shifted when the ROI was near an edge, and shifting inside the
    # image never uncovers an ROI that was already inside.
    v = roi.validate_box(box, size)
    assert _contains(c, v, tol=1e-6)
    # Area is monotone in the margin.
    lo, hi = sorted((m1, m2))
    a_lo = roi.roi_crop_box(box, size, lo, square=square)
    a_hi = roi.roi_crop_box(box, size, hi, square=square)
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    assert area(a_lo) <= area(a_hi)


def test_roi_crop_box_hand_computed():
    # ROI 40 x 20 at (100, 100): margin 0.25 -> 60 x 30 at (90, 95); square -> 60 x 60 at
    # (90, 80); inside a 512 x 512 image nothing moves.
    assert roi.roi_crop_box((100, 100, 140, 120), (512, 512), 0.25) == (90, 80, 150, 140)
    # Same ROI at the top-left corner of a small image: shifted to start at 0.
    assert roi.roi_crop_box((0, 0, 40, 20), (100, 100), 0.25) == (0, 0, 60, 60)
    # Fractional coordinates are rounded outward.
    assert roi.roi_crop_box((10.2, 10.7, 20.3, 20.1), (100, 100), 0.0, square=False) == (10, 10, 21, 21)


def test_scale_box_btxrd_256():
    # BTXRD: box on the 256 x 256 stored image -> original 3213 x 2397 radiograph.
    got = roi.scale_box((128, 64, 256, 256), (256, 256), (3213, 2397))
    assert got == pytest.approx((1606.5, 599.25, 3213, 2397))


# ----------------------------------------------------------------------------- iou


@given(any_box, any_box)
def test_iou_symmetric_and_bounded(a, b):
    v = roi.iou(a, b)
    assert 0.0 <= v <= 1.0
    assert v == roi.iou(b, a)


@given(size_and_box(inside=False))
def test_iou_identity(sb):
    _, box = sb
    assert roi.iou(box, box) == pytest.approx(1.0)


def test_iou_hand_computed():
    # Two 10 x 10 squares overlapping in a 5 x 10 strip: 50 / 150.
    assert roi.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert roi.iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


# ----------------------------------------------------------------------------- jitter


def test_jitter_boxes_deterministic_and_bounded():
    box, size = (100, 100, 200, 160), (300, 250)
    a = roi.jitter_boxes(box, size, 20, shift=0.1, scale=0.1, seed=3)
    b = roi.jitter_boxes(box, size, 20, shift=0.1, scale=0.1, seed=3)
    c = roi.jitter_boxes(box, size, 20, shift=0.1, scale=0.1, seed=4)
    assert a == b and a != c and len(a) == 20
    for j in a:
        assert 0 <= j[0] < j[2] <= 300 and 0 <= j[1] < j[3] <= 250
        # Sizes within +-10 %, centres within +-10 % of the box size (box is well inside,
        # so fit_box_inside never moves these).
        assert 90 - 1e-9 <= j[2] - j[0] <= 110 + 1e-9
        assert 54 - 1e-9 <= j[3] - j[1] <= 66 + 1e-9
        assert abs((j[0] + j[2]) / 2 - 150) <= 10 + 1e-9
        assert abs((j[1] + j[3]) / 2 - 130) <= 6 + 1e-9
        assert roi.iou(j, box) > 0.6
    # Not all identical to the input (it actually jitters).
    assert any(roi.iou(j, box) < 0.99 for j in a)


def test_jitter_near_edge_stays_inside():
    for j in roi.jitter_boxes((0, 0, 50, 50), (60, 60), 30, shift=0.5, scale=0.5, seed=1):
        assert 0 <= j[0] < j[2] <= 60 and 0 <= j[1] < j[3] <= 60


# ----------------------------------------------------------------------------- arrays


def test_crop_extracts_the_right_pixels():
    img = np.arange(12 * 10).reshape(12, 10)
    c = roi.crop(img, (2.0, 3.0, 5.0, 7.0))
    assert c.shape == (4, 3)
    assert c[0, 0] == img[3, 2] and c[-1, -1] == img[6, 4]
    rgb = np.dstack([img, img + 1, img + 2])
    assert roi.crop(rgb, (2, 3, 5, 7)).shape == (4, 3, 3)
    with pytest.raises(InputError, match="integer"):
        roi.crop(img, (2.5, 3, 5, 7))
    with pytest.raises(InputError, match="outside"):
        roi.crop(img, (0, 0, 11, 5))
    with pytest.raises(InputError, match="zero or negative"):
        roi.crop(img, (3, 3, 3, 5))


def test_resize_interpolation_and_dtype():
    import cv2

    rng = np.random.default_rng(0)
    img = rng.random((40, 60), dtype=np.float32)
    small = roi.resize(img, (30, 20))  # (width, height)
    assert small.shape == (20, 30) and small.dtype == np.float32
    # Shrinking by exactly 2 with INTER_AREA is a 2 x 2 block mean (independent reference).
    block_mean = img.reshape(20, 2, 30, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(small, block_mean, rtol=1e-5, atol=1e-6)
    big = roi.resize(img, 120)
    assert big.shape == (120, 120) and big.dtype == np.float32
    np.testing.assert_array_equal(big, cv2.resize(img, (120, 120), interpolation=cv2.INTER_LINEAR))
    u8 = (img * 255).astype(np.uint8)
    assert roi.resize(u8, 16).dtype == np.uint8
    one = roi.resize(img[:, :, None], 16)
    assert one.shape == (16, 16, 1)
    rgb = roi.resize(np.dstack([img] * 3), (10, 12))
    assert rgb.shape == (12, 10, 3)
    assert roi.resize(img.astype(np.float16), 8).dtype == np.float32


def test_heatmap_to_image_peak_hand_computed():
    # 7 x 7 heatmap, single peak at row 2, column 5, stretched over a 63 x 63 crop at
    # (40, 20): scale 9, and cv2's pixel-centre mapping puts source index c at destination
    # (c + 0.5) * 9 - 0.5 = 9c + 4. Peak: x = 40 + 49 = 89, y = 20 + 22 = 42.
    hm = np.zeros((7, 7), dtype=np.float32)
    hm[2, 5] = 1.0
    out = roi.heatmap_to_image(hm, (40, 20, 103, 83), (200, 150))
    assert out.shape == (150, 200) and out.dtype == np.float32
    assert np.unravel_index(np.argmax(out), out.shape) == (42, 89)
    assert out[42, 89] == pytest.approx(1.0)
    # Zero outside the crop box.
    mask = np.zeros_like(out, dtype=bool)
    mask[20:83, 40:103] = True
    assert not out[~mask].any()


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(1, 8),  # heatmap grid
    st.integers(0, 7),
    st.integers(0, 7),  # peak cell (clipped below)
    st.integers(0, 3),
    st.integers(0, 3),  # odd scale factor 2k+1
    st.integers(0, 50),
    st.integers(0, 50),  # crop corner
)
def test_heatmap_peak_location_property(gh, gw, pr, pc, kx, ky, x0, y0):
    pr, pc = min(pr, gh - 1), min(pc, gw - 1)
    sx, sy = 2 * kx + 1, 2 * ky + 1
    hm = np.zeros((gh, gw), dtype=np.float32)
    hm[pr, pc] = 1.0
    crop_box = (x0, y0, x0 + gw * sx, y0 + gh * sy)
    out = roi.heatmap_to_image(hm, crop_box, (x0 + gw * sx + 5, y0 + gh * sy + 5))
    # Centre of the peak cell's block of pixels.
    ey, ex = y0 + pr * sy + sy // 2, x0 + pc * sx + sx // 2
    assert out[ey, ex] == pytest.approx(1.0)
    assert out.max() == pytest.approx(1.0)


def test_heatmap_crop_over_edge_is_clipped():
    # Heatmap already at crop resolution (8 x 8 over an 8 x 8 crop): resizing is the
    # identity, so image pixel (y, x) must hold heatmap cell (y + 2, x + 2).
    hm = np.arange(64, dtype=np.float32).reshape(8, 8) + 1
    out = roi.heatmap_to_image(hm, (-2, -2, 6, 6), (8, 8))
    assert out.shape == (8, 8)
    np.testing.assert_array_equal(out[:6, :6], hm[2:, 2:])
    assert not out[6:, :].any() and not out[:, 6:].any()


def test_full_image_box():
    assert roi.full_image_box((640, 480)) == (0, 0, 640, 480)
    with pytest.raises(InputError, match="positive"):
        roi.full_image_box((0, 480))


# ----------------------------------------------------------------------------- viewer zoom / pan


def test_view_window_hand_computed():
    # 2x on the 1760-px RG3 radiograph, centred: the middle 880 px.
    assert roi.view_window((1760, 1760), 2, (880, 880)) == (440, 440, 1320, 1320)
    assert roi.view_window((1760, 1760), 2) == (440, 440, 1320, 1320)  # default: the image centre
    # 3x: 1760 / 3 = 586.67 -> 587 px; 880 - 293.5 = 586.5 rounds half up to 587.
    assert roi.view_window((1760, 1760), 3, (880, 880)) == (587, 587, 1174, 1174)
    # 4x near the bottom-left corner: 440 px, pushed inside at both edges.
    assert roi.view_window((1760, 1760), 4, (100, 1700)) == (0, 1320, 440, 1760)
    # 1.5x of a landscape image: 1173 x 800 px about the centre (880, 600).
    assert roi.view_window((1760, 1200), 1.5) == (294, 200, 1467, 1000)
    # 1x is the whole image wherever the centre is.
    assert roi.view_window((640, 480), 1, (0, 0)) == (0, 0, 640, 480)
    # Past every edge: the window stops at the edge.
    assert roi.view_window((1000, 500), 4, (5000, -300)) == (750, 0, 1000, 125)
    # A zoom beyond the pixel count still shows one pixel.
    assert roi.view_window((3, 2), 100, (2.9, 1.9)) == (2, 1, 3, 2)


@pytest.mark.parametrize(
    "zoom, center, message",
    [
        (0.5, None, "zoom 0.5 must be"),
        (math.nan, None, "zoom nan"),
        (math.inf, None, "zoom inf"),
        (2, (math.nan, 3), "NaN or infinite"),
        (2, "middle", "not an \\(x, y\\) pair"),
    ],
)
def test_view_window_refuses(zoom, center, message):
    with pytest.raises(InputError, match=message):
        roi.view_window((100, 100), zoom, center)


def test_view_image_mapping_hand_computed():
    # 2x on RG3 with a 520-px canvas: canvas px * 880/520 + 440.
    win = (440, 440, 1320, 1320)
    assert roi.box_view_to_image((130, 52, 390, 104), win, (520, 520)) == pytest.approx((660, 528, 1100, 616))
    assert roi.box_view_to_image((0, 0, 520, 520), win, (520, 520)) == pytest.approx(win)
    # Each axis on its own scale: a 250 x 125 window on a 400 x 200 canvas (0.625 px per canvas px).
    win = (750, 0, 1000, 125)
    assert roi.box_view_to_image((100, 40, 300, 120), win, (400, 200)) == pytest.approx((812.5, 25, 937.5, 75))
    assert roi.box_image_to_view((812.5, 25, 937.5, 75), win, (400, 200)) == pytest.approx((100, 40, 300, 120))
    # Off the canvas is not clamped: it is the image beyond the window's edge.
    assert roi.box_view_to_image((-40, -20, 0, 0), win, (400, 200)) == pytest.approx((725, -12.5, 750, 0))
    with pytest.raises(InputError, match="zero or negative area"):
        roi.box_view_to_image((0, 0, 1, 1), (5, 5, 5, 9), (400, 200))
    with pytest.raises(InputError, match="view size"):
        roi.box_image_to_view((0, 0, 1, 1), win, (0, 200))


zooms = st.floats(1.0, 64.0, allow_nan=False)
centres = st.tuples(st.floats(-5000, 9000, allow_nan=False), st.floats(-5000, 9000, allow_nan=False))


@given(sizes, zooms, centres)
def test_view_window_properties(size, zoom, centre):
    w, h = size
    x0, y0, x1, y1 = win = roi.view_window(size, zoom, centre)
    assert all(v == int(v) for v in win), "whole pixels: a crop box"
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, "inside the image"
    assert x1 - x0 == min(w, max(1, math.floor(w / zoom + 0.5)))
    assert y1 - y0 == min(h, max(1, math.floor(h / zoom + 0.5)))
    # The requested centre, clipped to the image, is shown ...
    cx, cy = min(max(centre[0], 0.0), w), min(max(centre[1], 0.0), h)
    assert x0 <= cx <= x1 and y0 <= cy <= y1
    # ... and where no edge got in the way, the window is centred on it to within half a pixel.
    if 0 < x0 and x1 < w:
        assert abs((x0 + x1) / 2 - centre[0]) <= 0.5
    if 0 < y0 and y1 < h:
        assert abs((y0 + y1) / 2 - centre[1]) <= 0.5
    assert roi.view_window(size, 1.0, centre) == (0, 0, w, h)


@given(
    sizes,
    zooms,
    centres,
    st.tuples(st.integers(1, 2048), st.integers(1, 2048)),
    st.tuples(*[st.floats(-1.5, 2.5, allow_nan=False)] * 4),
)
def test_view_image_round_trip(size, zoom, centre, view, frac):
    """Canvas -> image -> canvas and image -> canvas -> image give the box back (float rounding only)."""
    win = roi.view_window(size, zoom, centre)
    vw, vh = view
    canvas_box = (frac[0] * vw, frac[1] * vh, frac[2] * vw, frac[3] * vh)
    back = roi.box_image_to_view(roi.box_view_to_image(canvas_box, win, view), win, view)
    assert _close(back, canvas_box, 1e-9)
    image_box = roi.box_view_to_image(canvas_box, win, view)
    again = roi.box_view_to_image(roi.box_image_to_view(image_box, win, view), win, view)
    assert _close(again, image_box, 1e-9)


@given(
    st.integers(50, 3000),
    st.integers(50, 3000),
    st.sampled_from([1.5, 2.0, 3.0, 4.0]),
    centres,
    st.tuples(*[st.floats(0.0, 1.0, allow_nan=False)] * 4),
    st.integers(200, 1024),
)
def test_zoomed_and_unzoomed_drawings_mark_the_same_pixels(w, h, zoom, centre, frac, display_px):
    """A region of the image drawn on the zoomed canvas and the same region drawn on the
    unzoomed canvas give the same stored-image box; on the zoomed canvas it is drawn
    (image width / window width) times larger, i.e. the zoom magnifies by what it says."""
    dw = max(1, round(w * display_px / max(w, h)))
    dh = max(1, round(h * display_px / max(w, h)))
    full = roi.full_image_box((w, h))
    win = roi.view_window((w, h), zoom, centre)
    # A region inside the window, in image pixels.
    fx0, fx1 = sorted(frac[0::2])
    fy0, fy1 = sorted(frac[1::2])
    region = (
        win[0] + fx0 * (win[2] - win[0]),
        win[1] + fy0 * (win[3] - win[1]),
        win[0] + fx1 * (win[2] - win[0]),
        win[1] + fy1 * (win[3] - win[1]),
    )
    on_zoomed = roi.box_image_to_view(region, win, (dw, dh))
    on_full = roi.box_image_to_view(region, full, (dw, dh))
    assert all(-1e-6 <= v <= s + 1e-6 for v, s in zip(on_zoomed, (dw, dh, dw, dh))), "inside the zoomed canvas"
    from_zoomed = roi.box_view_to_image(on_zoomed, win, (dw, dh))
    from_full = roi.box_view_to_image(on_full, full, (dw, dh))
    assert _close(from_zoomed, region, 1e-9) and _close(from_full, region, 1e-9)
    assert _close(from_zoomed, from_full, 1e-9)
    mag_x, mag_y = w / (win[2] - win[0]), h / (win[3] - win[1])
    assert on_zoomed[2] - on_zoomed[0] == pytest.approx((on_full[2] - on_full[0]) * mag_x, rel=1e-9, abs=1e-9)
    assert on_zoomed[3] - on_zoomed[1] == pytest.approx((on_full[3] - on_full[1]) * mag_y, rel=1e-9, abs=1e-9)
