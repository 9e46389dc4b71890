"""The Case page's viewer helpers (no Streamlit): settings kept across images, the heatmap
legend, window presets in the sliders' units, invert. The page itself is exercised in
tests/test_dashboard_apptest.py and, in a real browser, tests/test_browser.py."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard import case_logic as cl
from dashboard import viewer
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
    chosen = {"opacity": 0.8, "scorecam": False, "jitter": False, "invert": True, "display_px": 640}
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
    pixels = np.clip(np.concatenate([rng.normal(0.1, 0.02, 2000), rng.normal(0.45, 0.05, 9000),
                                     rng.normal(0.8, 0.05, 9000)]), 0, 1).astype(np.float32).reshape(100, 200)
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
