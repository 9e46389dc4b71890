"""The Case page's viewer settings and heatmap legend, free of Streamlit so they can be tested.

Streamlit drops a widget's value on any run that does not draw the widget (and then hands
back whatever the script last wrote to that key), and the Case page stops early for a new
image (no ROI yet), so the heatmap opacity, ScoreCAM and jitter choices fell back to their
defaults with every upload. The user's choices live in one :class:`ViewerSettings` record
in session state, under a key that has nothing to do with the image: each widget's
``on_change`` writes its value into the record (:func:`remember`), and every run writes the
record back into the widget keys before the widgets are drawn (:func:`seed_widgets`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from dashboard import case_logic as cl

SETTINGS_KEY = "case_viewer_settings"
DISPLAY_SIZES = (320, 400, 520, 640, 800, 1024)  # px, long side of the image on screen


@dataclass(frozen=True)
class ViewerSettings:
    """Per-session viewer choices, kept across images."""

    display_px: int = 520  # fits the content column at 1024 px beside the sidebar (564 px wide, measured)
    invert: bool = False
    opacity: float = 0.5
    scorecam: bool = True
    jitter: bool = True


# The widget that edits each setting.
WIDGET_KEYS: dict[str, str] = {
    "display_px": "case_display_px",
    "invert": "case_invert",
    "opacity": "case_opacity",
    "scorecam": "case_scorecam",
    "jitter": "case_jitter",
}


def current(state: MutableMapping[str, Any]) -> ViewerSettings:
    """The settings in force (the defaults until the user changes one)."""
    stored = state.get(SETTINGS_KEY)
    return stored if isinstance(stored, ViewerSettings) else ViewerSettings()


def seed_widgets(state: MutableMapping[str, Any]) -> ViewerSettings:
    """Write the settings into every widget key; returns them. Call once per run before any
    of the widgets is drawn (the widgets then take their value from ``state`` and must not be
    given a default of their own). Unconditional: a key Streamlit dropped may still read as
    an old value."""
    settings = current(state)
    state[SETTINGS_KEY] = settings
    for f in fields(ViewerSettings):
        state[WIDGET_KEYS[f.name]] = getattr(settings, f.name)
    return settings


def remember(state: MutableMapping[str, Any], name: str) -> ViewerSettings:
    """A widget's ``on_change``: keep its new value (in the setting's own type) in the record."""
    settings = current(state)
    value = type(getattr(settings, name))(state[WIDGET_KEYS[name]])
    state[SETTINGS_KEY] = settings = replace(settings, **{name: value})
    return settings


# ----------------------------------------------------------------------------- legend

LEGEND_BACKGROUND = 0.5  # mid grey: what a heatmap is blended onto, on average
LEGEND_WIDTH = 400  # px on screen: fits a 768-px tablet
LEGEND_CAPTION = ("Colour scale at this opacity: grey (left) = no evidence, then blue, green, yellow, red (right) = "
                  "the strongest evidence in that map (each map is scaled to its own maximum).")


def heat_legend(opacity: float, width: int = 256, height: int = 18) -> np.ndarray:
    """The heatmaps' colour scale as an (height, width, 3) uint8 bar: heat 0 at the left to 1
    at the right, blended onto mid grey by the very function that draws the heatmaps
    (:func:`dashboard.case_logic.overlay`), so the legend cannot drift from the maps."""
    if width < 2 or height < 1:
        raise ValueError(f"legend size {width}x{height} is too small")
    ramp = np.repeat(np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :], height, axis=0)
    grey = np.full((height, width), LEGEND_BACKGROUND, np.float32)
    return cl.overlay(grey, ramp, opacity)
