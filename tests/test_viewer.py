"""The Case page's viewer helpers (no Streamlit): settings kept across images, the heatmap
legend, window presets in the sliders' units, invert. The page itself is exercised in
tests/test_dashboard_apptest.py and, in a real browser, tests/test_browser.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard import case_logic as cl
from dashboard import viewer
from model_zoo import roi
from model_zoo.imaging import ImageMeta


# ----------------------------------------------------------------------------- settings


def test_settings_seed_the_widgets_with_defaults():
    state: dict = {}
    settings = viewer.seed_widgets(state)
    assert settings == viewer.ViewerSettings() and state[viewer.SETTINGS_KEY] == settings
    assert state["case_display_px"] == 520 and state["case_opacity"] == 0.5
    assert state["case_scorecam"] is True and state["case_jitter"] is True and state["case_invert"] is False


def test_settings_survive_streamlit_dropping_the_widgets():
    """After a run that did not draw a widget (a new image stops the page before the
    heatmaps) Streamlit hands back the value the script last wrote to its key, here the
    default: the next run must restore the user's choice."""
    state: dict = {}
    viewer.seed_widgets(state)
    chosen = {"opacity": 0.8, "scorecam": False, "jitter": False, "invert": True, "display_px": 640, "zoom": 2.0}
    for name, value in chosen.items():  # the user moves each widget; its on_change runs
        state[viewer.WIDGET_KEYS[name]] = value
        viewer.remember(state, name)
    expected = viewer.ViewerSettings(**chosen)  # type: ignore[arg-type]
    assert viewer.current(state) == expected
    for name in chosen:  # the run for the next image drew none of them
        state[viewer.WIDGET_KEYS[name]] = getattr(viewer.ViewerSettings(), name)
    state["case"] = {"sha256": "another image"}
    assert viewer.seed_widgets(state) == expected
    assert state["case_opacity"] == 0.8 and state["case_scorecam"] is False and state["case_display_px"] == 640
    assert state["case_zoom"] == 2.0


def test_pan_and_zoom_survive_a_new_image():
    """The pan centre has buttons, not a widget: it lives only in the record, as fractions of
    the image, so it carries over to the next image whatever its size."""
    state: dict = {}
    viewer.seed_widgets(state)
    state["case_zoom"] = 4.0
    viewer.remember(state, "zoom")
    viewer.pan(state, 1, 0)
    viewer.pan(state, 0, -1)
    expected = viewer.ViewerSettings(zoom=4.0, pan_x=0.5 + 0.125, pan_y=0.5 - 0.125)
    assert viewer.current(state) == expected
    state["case_zoom"] = 1.0  # a run that did not draw the zoom widget
    state["case"] = {"sha256": "another image"}
    assert viewer.seed_widgets(state) == expected and state["case_zoom"] == 4.0
    # 4x, centre at 62.5 % / 37.5 %: a 440-px window of RG3 centred on (1100, 660); of a 1000 x 600 image,
    # 250 x 150 px centred on (625, 225).
    assert viewer.view_window(expected, (1760, 1760)) == (880, 440, 1320, 880)
    assert viewer.view_window(expected, (1000, 600)) == (500, 150, 750, 300)


def test_settings_keep_their_types():
    state = {"case_display_px": 800.0, "case_opacity": 1}
    assert viewer.remember(state, "display_px").display_px == 800
    s = viewer.remember(state, "opacity")
    assert s.display_px == 800 and isinstance(s.display_px, int)
    assert s.opacity == 1.0 and isinstance(s.opacity, float)
    assert viewer.ViewerSettings().display_px in viewer.DISPLAY_SIZES


# ----------------------------------------------------------------------------- legend


def test_legend_shows_the_colours_the_heatmaps_get():
    legend = viewer.heat_legend(0.6, width=101, height=4)
    assert legend.shape == (4, 101, 3) and legend.dtype == np.uint8
    assert (legend[:, 0] == 128).all(), "no evidence: the plain (mid-grey) image"
    # A heatmap pixel with heat 0.7 on a mid-grey radiograph has the legend's colour at 70 %.
    grey = np.full((3, 3), viewer.LEGEND_BACKGROUND, np.float32)
    heat = np.zeros((3, 3), np.float32)
    heat[1, 1] = 0.7
    assert (cl.overlay(grey, heat, 0.6)[1, 1] == legend[0, 70]).all()
    # Low to high evidence runs from blue to red (jet), and the legend fades with the opacity.
    assert legend[0, 25, 2] > legend[0, 25, 0] and legend[0, 100, 0] > legend[0, 100, 2]
    assert (viewer.heat_legend(0.0, width=50) == 128).all()
    with pytest.raises(ValueError, match="too small"):
        viewer.heat_legend(0.5, width=1)


# ----------------------------------------------------------------------------- window / invert


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_window_presets_in_slider_units_stretch_their_range(photometric):
    """The presets are computed in the sliders' units (header units, where MONOCHROME1 runs
    dark-to-bright downwards); applied with rewindow, 'Bone' stretches the bright half."""
    rng = np.random.default_rng(0)
    pixels = (
        np.clip(np.concatenate([rng.normal(0.1, 0.02, 2000), rng.normal(0.45, 0.05, 9000), rng.normal(0.8, 0.05, 9000)]), 0, 1)
        .astype(np.float32)
        .reshape(100, 200)
    )
    meta = ImageMeta(source_format="dicom", original_size=(200, 100), photometric=photometric, window=(550.0, 1024.0))
    presets = {p.name: p for p in cl.window_presets(pixels, meta)}
    assert list(presets) == ["Header window", "Full range", "Bone", "Soft tissue"]
    assert (presets["Header window"].center, presets["Header window"].width) == (550.0, 1024.0)
    bone = presets["Bone"]
    shown = cl.rewindow(pixels, meta, bone.center, bone.width)
    median = np.median(pixels)
    assert shown[pixels < median - 0.05].max() < 0.05, "below the bright half: black"
    assert np.ptp(shown[pixels > median]) > 0.9, "the bright half fills the grey scale"
    c0, w0, lo, hi, _ = cl.window_units(meta)
    assert all(lo <= p.center <= hi and 1.0 <= p.width <= max(hi - lo, w0) for p in presets.values())


def test_window_presets_of_a_png_and_invert():
    pixels = np.linspace(0, 1, 256, dtype=np.float32)[None, :].repeat(8, 0)
    meta = ImageMeta(source_format="png", original_size=(256, 8))
    presets = {p.name: p for p in cl.window_presets(pixels, meta)}
    assert presets["Default"].center == 127.5
    assert presets["Full range"].center == pytest.approx(127.5) and presets["Full range"].width == pytest.approx(255.0)
    c, w, *_ = cl.window_units(meta)
    shown = cl.rewindow(pixels, meta, c, w)
    np.testing.assert_allclose(cl.rewindow(pixels, meta, c, w, invert=True), 1.0 - shown)
    dicom = ImageMeta(source_format="dicom", original_size=(256, 8), photometric="MONOCHROME1", window=(550.0, 1024.0))
    shown = cl.rewindow(pixels, dicom, 550.0, 1024.0)
    np.testing.assert_allclose(shown, pixels, atol=2e-3)  # MONOCHROME1 is already inverted on load
    np.testing.assert_allclose(cl.rewindow(pixels, dicom, 550.0, 1024.0, invert=True), 1.0 - shown)


# ----------------------------------------------------------------------------- zoom / pan


def test_pan_steps_half_a_view_and_stops_at_the_edge():
    state: dict = {"case_zoom": 2.0}
    viewer.remember(state, "zoom")
    assert viewer.pan(state, -1, 0).pan_x == 0.25  # 2x: the view is half the image; half of that
    assert viewer.pan(state, -1, 0).pan_x == 0.25  # the left edge: no further
    for _ in range(5):
        s = viewer.pan(state, 1, 1)
    assert (s.pan_x, s.pan_y) == (0.75, 0.75)
    assert viewer.view_window(s, (1760, 1760)) == (880, 880, 1760, 1760)
    s = viewer.reset_view(state)
    assert (s.zoom, s.pan_x, s.pan_y) == (1.0, 0.5, 0.5) and state["case_zoom"] == 1.0
    assert viewer.pan(state, 1, 0).pan_x == 0.5  # at 1x the whole image is shown: nothing to pan


def test_zoom_to_box_hand_computed():
    # A 240 x 160 box on RG3: twice that (480 x 320) fits in 1760 / z for z <= 3.67 -> 3x,
    # centred on (520, 280) = (0.295, 0.159) of the image; at 3x the centre cannot be above 1/6.
    state: dict = {}
    s = viewer.zoom_to_box(state, (400, 200, 640, 360), (1760, 1760))
    assert s.zoom == 3.0 and state["case_zoom"] == 3.0
    assert s.pan_x == pytest.approx(520 / 1760) and s.pan_y == pytest.approx(1 / 6)
    x0, y0, x1, y1 = viewer.view_window(s, (1760, 1760))
    assert (x0, y0, x1, y1) == (227, 0, 814, 587) and x0 <= 400 and 640 <= x1 and 360 <= y1
    assert viewer.zoom_for_box((0, 0, 1760, 1760), (1760, 1760)) == 1.0  # the whole image
    assert viewer.zoom_for_box((800, 800, 820, 830), (1760, 1760)) == 4.0  # the largest level


def test_view_pixels_are_where_the_box_maths_says():
    """Independent check of the picture against the maths: on an image whose pixel value is its
    own x (or y) index, the canvas pixel whose centre is at canvas x shows image x
    box_view_to_image(x) (a pixel's value sits at its centre, index + 0.5)."""
    h, w = 300, 500
    xs = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    ys = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    for window, view in (((100, 60, 300, 180), (520, 312)), ((0, 0, 500, 300), (250, 150)), ((375, 225, 500, 300), (400, 240))):
        vx, vy = viewer.view_pixels(xs, window, view), viewer.view_pixels(ys, window, view)
        assert vx.shape == (view[1], view[0])
        for cx in (3, view[0] // 2, view[0] - 4):
            img_x = roi.box_view_to_image((cx + 0.5, 0, cx + 0.5, 0), window, view)[0]
            assert vx[view[1] // 2, cx] == pytest.approx(img_x - 0.5, abs=0.51), (window, cx)
        for cy in (3, view[1] // 2, view[1] - 4):
            img_y = roi.box_view_to_image((0, cy + 0.5, 0, cy + 0.5), window, view)[1]
            assert vy[cy, view[0] // 2] == pytest.approx(img_y - 0.5, abs=0.51), (window, cy)


def _rect(left, top, width, height, **extra):
    return {"objects": [{"type": "rect", "left": left, "top": top, "width": width, "height": height, **extra}]}


def test_canvas_box_on_a_zoomed_canvas_hand_computed():
    # RG3 at 2x on a 520-px canvas: window (440, 440, 1320, 1320), 880/520 stored px per canvas px.
    win, view = (440, 440, 1320, 1320), (520, 520)
    assert viewer.canvas_image_box(_rect(130, 52, 260, 52), win, view, (1760, 1760)) == (660.0, 528.0, 1100.0, 616.0)
    # The same region drawn at 1x (1760/520 stored px per canvas px): corner (195, 156), 130 x 26 canvas px.
    full = (0, 0, 1760, 1760)
    assert viewer.canvas_image_box(_rect(195, 156, 130, 26), full, view, (1760, 1760)) == (660.0, 528.0, 1100.0, 616.0)
    # Resized by its handle (scaleX) and running off the canvas (x -300..-100): clamped to the image,
    # not to the view: x 440 - 300 * 880/520 = -67.7 -> 0 and 440 - 100 * 880/520 = 270.8; y 440 + 500 *
    # 880/520 = 1286.2 and 440 + 510 * 880/520 = 1303.1.
    assert viewer.canvas_image_box(_rect(-300, 500, 100, 10, scaleX=2), win, view, (1760, 1760)) == (0.0, 1286.2, 270.8, 1303.1)
    assert viewer.canvas_image_box({"objects": []}, win, view, (1760, 1760)) is None
    assert viewer.canvas_image_box(None, win, view, (1760, 1760)) is None


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(viewer.ZOOM_LEVELS),
    st.floats(0, 1),
    st.floats(0, 1),
    st.tuples(st.integers(0, 1700), st.integers(0, 1700), st.integers(2, 400), st.integers(2, 400)),
)
def test_a_drawn_box_keeps_its_stored_pixels_through_zoom_and_pan(zoom, px, py, b):
    """A box drawn earlier is redrawn on the new view's canvas (canvas_drawing) and, untouched,
    reads back as the same stored pixels (canvas_image_box), whether or not the view shows it."""
    size, view = (1760, 1760), (520, 520)
    box = (float(b[0]), float(b[1]), float(min(b[0] + b[2], 1760)), float(min(b[1] + b[3], 1760)))
    s = viewer.ViewerSettings(zoom=zoom, pan_x=px, pan_y=py)
    window = viewer.view_window(s, size)
    drawing = viewer.canvas_drawing(box, window, view)
    assert viewer.canvas_image_box(drawing, window, view, size) == box


def test_tap_two_corners_builds_a_box_in_stored_pixels():
    """Touch drawing: two taps on the zoomed view (2x on a 1760-px image shown 440 px wide,
    displayed at 220 px) give the box between them in stored pixels, in either order; a
    repeated click is not taken twice; a tap in line with the first corner moves it."""
    from dashboard.viewer import TapCorners, tap_corners

    window, view_wh, size = (440.0, 440.0, 1320.0, 1320.0), (440, 440), (1760, 1760)
    click = {"x": 55, "y": 55, "width": 220, "height": 220, "unix_time": 1}  # a quarter in: 440 + 880/4
    state, box = tap_corners(TapCorners(), click, window, view_wh, size)
    assert box is None and state.first == (660.0, 660.0)
    assert tap_corners(state, click, window, view_wh, size) == (state, None)  # the same click, repeated
    state2, box = tap_corners(state, {**click, "x": 110, "y": 165, "unix_time": 2}, window, view_wh, size)
    assert box == (660.0, 660.0, 880.0, 1100.0) and state2.first is None
    # the opposite diagonal (second tap up and to the left) gives the same box
    s, _ = tap_corners(TapCorners(), {**click, "x": 110, "y": 165, "unix_time": 3}, window, view_wh, size)
    assert tap_corners(s, {**click, "unix_time": 4}, window, view_wh, size)[1] == (660.0, 660.0, 880.0, 1100.0)
    # in line with the first corner: no box, the corner moves
    s2, box = tap_corners(s, {**click, "x": 110, "unix_time": 5}, window, view_wh, size)
    assert box is None and s2.first == (880.0, 660.0)
    assert tap_corners(TapCorners(), None, window, view_wh, size) == (TapCorners(), None)
