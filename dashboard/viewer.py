"""The Case page's viewer settings and heatmap legend, free of Streamlit so they can be tested.

Streamlit drops a widget's value on any run that does not draw the widget, and the Case page
stops early for a new image (no ROI yet), so the heatmap opacity, ScoreCAM and jitter
choices used to fall back to their defaults with every upload. The user's choices live in
one :class:`ViewerSettings` record in session state, under a key that has nothing to do
with the image; each run reads the widgets back into it and seeds any widget Streamlit
forgot from it.
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

    display_px: int = 520  # fits a 768-px tablet in portrait beside nothing, and 1024 px beside the sidebar
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


def sync_settings(state: MutableMapping[str, Any]) -> ViewerSettings:
    """Read the widgets present in ``state`` into the stored settings, then seed every
    widget key that is missing from them; returns the settings now in force.

    Call once per run before any of the widgets is drawn (the widgets then take their value
    from ``state`` and must not be given a default of their own).
    """
    current = state.get(SETTINGS_KEY)
    settings = current if isinstance(current, ViewerSettings) else ViewerSettings()
    changed = {}
    for f in fields(ViewerSettings):
        key = WIDGET_KEYS[f.name]
        if key in state and state[key] is not None:
            changed[f.name] = type(getattr(settings, f.name))(state[key])
    settings = replace(settings, **changed)
    state[SETTINGS_KEY] = settings
    for f in fields(ViewerSettings):
        state.setdefault(WIDGET_KEYS[f.name], getattr(settings, f.name))
    return settings


# ----------------------------------------------------------------------------- legend

LEGEND_BACKGROUND = 0.5  # mid grey: what a heatmap is blended onto, on average
LEGEND_CAPTION = ("Colour scale at the current opacity: grey (left) = no evidence, then blue, green, yellow "
                  "and red (right) = the strongest evidence in that map. Each map is scaled to its own "
                  "maximum, so colours compare places within one map, not maps or cases.")


def heat_legend(opacity: float, width: int = 256, height: int = 18) -> np.ndarray:
    """The heatmaps' colour scale as an (height, width, 3) uint8 bar: heat 0 at the left to 1
    at the right, blended onto mid grey by the very function that draws the heatmaps
    (:func:`dashboard.case_logic.overlay`), so the legend cannot drift from the maps."""
    if width < 2 or height < 1:
        raise ValueError(f"legend size {width}x{height} is too small")
    ramp = np.repeat(np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :], height, axis=0)
    grey = np.full((height, width), LEGEND_BACKGROUND, np.float32)
    return cl.overlay(grey, ramp, opacity)
