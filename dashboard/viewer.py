"""The Case page's viewer settings and heatmap legend, free of Streamlit so they can be tested.

Streamlit drops a widget's value on any run that does not draw the widget (and then hands
back whatever the script last wrote to that key), and the Case page stops early for a new
image (no ROI yet), so the heatmap opacity, ScoreCAM and jitter choices fell back to their
defaults with every upload. The user's choices live in one :class:`ViewerSettings` record
in session state, under a key that has nothing to do with the image: each widget's
``on_change`` writes its value into the record (:func:`remember`), and every run writes the
record back into the widget keys before the widgets are drawn (:func:`seed_widgets`).

Zoom and pan (issue 17): the canvas shows a window of the stored image
(:func:`model_zoo.roi.view_window`) stretched over the canvas, so a small lesion on a
1760-px radiograph can be boxed precisely. The zoom is a widget like the others; the pan
centre is kept as fractions of the image's width and height (so it carries over to the
next image) and moved by buttons (:func:`pan`, :func:`reset_view`, :func:`zoom_to_box`).
Boxes stay in stored-image pixels: the canvas's rectangle is mapped back through the
window (:func:`canvas_image_box`), and a box drawn earlier is redrawn at its place in a
new window (:func:`canvas_drawing`).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dashboard import case_logic as cl
from model_zoo import roi
from model_zoo.roi import Box

SETTINGS_KEY = "case_viewer_settings"
DISPLAY_SIZES = (320, 400, 520, 640, 800, 1024)  # px, long side of the image on screen
ZOOM_LEVELS = (1.0, 1.5, 2.0, 3.0, 4.0)  # 4x: a 440-px window of a 1760-px radiograph
PAN_STEP = 0.5  # one pan button press moves the view by half its own width or height
OVERVIEW_PX = 120  # long side of the overview thumbnail that frames the zoomed view


@dataclass(frozen=True)
class ViewerSettings:
    """Per-session viewer choices, kept across images."""

    display_px: int = 520  # fits the content column at 1024 px beside the sidebar (564 px wide, measured)
    invert: bool = False
    opacity: float = 0.5
    scorecam: bool = True
    jitter: bool = True
    zoom: float = 1.0  # one of ZOOM_LEVELS
    pan_x: float = 0.5  # view centre, as a fraction of the image width (0 left, 1 right)
    pan_y: float = 0.5  # ... and of its height (0 top, 1 bottom)


# The widget that edits each setting (the pan centre has buttons, not a widget value).
WIDGET_KEYS: dict[str, str] = {
    "zoom": "case_zoom",
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
    for name, key in WIDGET_KEYS.items():
        state[key] = getattr(settings, name)
    return settings


def remember(state: MutableMapping[str, Any], name: str) -> ViewerSettings:
    """A widget's ``on_change``: keep its new value (in the setting's own type) in the record."""
    settings = current(state)
    value = type(getattr(settings, name))(state[WIDGET_KEYS[name]])
    state[SETTINGS_KEY] = settings = replace(settings, **{name: value})
    return settings


# ----------------------------------------------------------------------------- zoom / pan


def view_window(settings: ViewerSettings, image_size_wh: tuple[int, int]) -> Box:
    """The stored-image window the canvas shows under these settings (whole pixels)."""
    w, h = image_size_wh
    return roi.view_window((w, h), settings.zoom, (settings.pan_x * w, settings.pan_y * h))


def _clamp_pan(value: float, zoom: float) -> float:
    """A pan fraction kept where the window still fits (at the edge, further presses do nothing)."""
    half = 0.5 / max(float(zoom), 1.0)
    return min(max(float(value), half), 1.0 - half)


def pan(state: MutableMapping[str, Any], dx: int, dy: int) -> ViewerSettings:
    """A pan button's ``on_click``: move the view by ``PAN_STEP`` of its own size per step
    (``dx`` +1 right / -1 left, ``dy`` +1 down / -1 up), stopping at the image's edge."""
    s = current(state)
    step = PAN_STEP / s.zoom
    state[SETTINGS_KEY] = s = replace(
        s, pan_x=_clamp_pan(s.pan_x + dx * step, s.zoom), pan_y=_clamp_pan(s.pan_y + dy * step, s.zoom)
    )
    return s


def reset_view(state: MutableMapping[str, Any]) -> ViewerSettings:
    """The 'whole image' button: zoom 1x, centred."""
    state[SETTINGS_KEY] = s = replace(current(state), zoom=1.0, pan_x=0.5, pan_y=0.5)
    state[WIDGET_KEYS["zoom"]] = s.zoom
    return s


def zoom_for_box(box: Sequence[float], image_size_wh: tuple[int, int], context: float = 2.0) -> float:
    """The largest of :data:`ZOOM_LEVELS` whose window still holds the box ``context`` times
    over each way (room to redraw it a little larger)."""
    x0, y0, x1, y1 = roi.as_box(box)
    w, h = image_size_wh
    bw, bh = max(x1 - x0, 1.0) * context, max(y1 - y0, 1.0) * context
    fits = [z for z in ZOOM_LEVELS if bw <= w / z and bh <= h / z]
    return max(fits) if fits else ZOOM_LEVELS[0]


def zoom_to_box(state: MutableMapping[str, Any], box: Sequence[float], image_size_wh: tuple[int, int]) -> ViewerSettings:
    """The 'zoom to the ROI' button: the largest zoom that shows the box with room around it
    (:func:`zoom_for_box`), centred on the box."""
    x0, y0, x1, y1 = roi.as_box(box)
    w, h = image_size_wh
    z = zoom_for_box((x0, y0, x1, y1), (w, h))
    state[SETTINGS_KEY] = s = replace(
        current(state), zoom=z, pan_x=_clamp_pan((x0 + x1) / 2.0 / w, z), pan_y=_clamp_pan((y0 + y1) / 2.0 / h, z)
    )
    state[WIDGET_KEYS["zoom"]] = s.zoom
    return s


def view_pixels(pixels: np.ndarray, window: Sequence[float], view_wh: tuple[int, int]) -> np.ndarray:
    """The stored pixels inside ``window`` resized to the canvas (``view_wh`` = width, height),
    so canvas pixel edges match :func:`model_zoo.roi.box_view_to_image`."""
    return cl.downscale(np.ascontiguousarray(roi.crop(pixels, window)), view_wh)


def canvas_image_box(
    json_data: Mapping[str, Any] | None, window: Sequence[float], view_wh: tuple[int, int], image_size_wh: tuple[int, int]
) -> Box | None:
    """The canvas's last rectangle in stored-image pixels (None if none), for a canvas of
    ``view_wh`` showing ``window``: clamped to the image (not to the window: a box that
    runs past the view keeps the part the user cannot see) and rounded to 0.1 px."""
    rect = cl.canvas_rect(json_data)
    if rect is None:
        return None
    box = roi.clamp_box(roi.box_view_to_image(rect, window, view_wh), image_size_wh)
    return (round(box[0], 1), round(box[1], 1), round(box[2], 1), round(box[3], 1))


def canvas_drawing(box: Sequence[float] | None, window: Sequence[float], view_wh: tuple[int, int]) -> dict[str, Any]:
    """An ``initial_drawing`` that shows ``box`` (stored pixels) at its place in ``window``
    as an editable rectangle (partly or wholly off the canvas when it lies outside the view)."""
    if box is None:
        return cl.canvas_drawing(None, 1.0)
    return cl.canvas_drawing(roi.box_image_to_view(box, window, view_wh), 1.0)


def overview(display: np.ndarray, window: Sequence[float], image_size_wh: tuple[int, int], side: int = OVERVIEW_PX) -> np.ndarray:
    """A thumbnail of the whole (display) image, long side ``side``, with ``window`` framed
    in red: where the zoomed view is. Drawn at thumbnail size so the frame stays visible."""
    w, h = image_size_wh
    tw, th, _ = cl.display_size(w, h, side, side, min_side=side)
    return cl.draw_box(cl.downscale(display, (tw, th)), roi.box_image_to_view(window, roi.full_image_box((w, h)), (tw, th)), 1.0)


def view_caption(settings: ViewerSettings, window: Sequence[float]) -> str:
    """Under a zoomed canvas: what part of the stored image it shows."""
    x0, y0, x1, y1 = window
    return (
        f"Zoom {settings.zoom:g}x: showing x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f} of the stored image "
        f"(the red frame on the overview)."
    )


# ----------------------------------------------------------------------------- legend

LEGEND_BACKGROUND = 0.5  # mid grey: what a heatmap is blended onto, on average
LEGEND_WIDTH = 400  # px on screen: fits a 768-px tablet
LEGEND_CAPTION = (
    "Colour scale at this opacity: grey (left) = no evidence, then blue, green, yellow, red (right) = "
    "the strongest evidence in that map (each map is scaled to its own maximum)."
)


def heat_legend(opacity: float, width: int = 256, height: int = 18) -> np.ndarray:
    """The heatmaps' colour scale as an (height, width, 3) uint8 bar: heat 0 at the left to 1
    at the right, blended onto mid grey by the very function that draws the heatmaps
    (:func:`dashboard.case_logic.overlay`), so the legend cannot drift from the maps."""
    if width < 2 or height < 1:
        raise ValueError(f"legend size {width}x{height} is too small")
    ramp = np.repeat(np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :], height, axis=0)
    grey = np.full((height, width), LEGEND_BACKGROUND, np.float32)
    return cl.overlay(grey, ramp, opacity)


# ----------------------------------------------------------------------------- tap two corners
# Touch screens: streamlit-drawable-canvas draws a rectangle only for a mouse drag (its rect tool
# requires ``event.button === 0``, which a TouchEvent lacks), but a tap on an image is a click.
# So the touch way to box a lesion is two taps on opposite corners (streamlit-image-coordinates
# reports each click in displayed-image pixels and repeats its last value on every rerun).

TAP_KEY = "case_tap_corners"


@dataclass(frozen=True)
class TapCorners:
    """Progress of a two-tap box: the first corner (stored pixels) once tapped, and the time
    stamp of the last click handled, so a click the component repeats is not taken twice."""

    first: tuple[float, float] | None = None
    last_click: int | None = None


def tap_point(
    click: Mapping[str, Any], window: Sequence[float], view_wh: tuple[int, int], image_size_wh: tuple[int, int]
) -> tuple[float, float]:
    """A click on the shown view (``x, y`` in pixels of the image as displayed, ``width`` x
    ``height``) as a stored-image point, clamped to the image."""
    vw, vh = view_wh
    shown_w = float(click.get("width") or vw)
    shown_h = float(click.get("height") or vh)
    vx = float(click["x"]) * vw / shown_w
    vy = float(click["y"]) * vh / shown_h
    x, y, _, _ = roi.clamp_box(roi.box_view_to_image((vx, vy, vx, vy), window, view_wh), image_size_wh)
    return (x, y)


def tap_corners(
    state: TapCorners,
    click: Mapping[str, Any] | None,
    window: Sequence[float],
    view_wh: tuple[int, int],
    image_size_wh: tuple[int, int],
) -> tuple[TapCorners, Box | None]:
    """(new state, the box once two corners are tapped, else None). The first tap sets a
    corner; the second closes the box (either diagonal, stored pixels rounded to 0.1 px) and
    starts over; a second tap on the first corner's row or column moves the corner instead."""
    if not click or "x" not in click:
        return state, None
    stamp = int(click.get("unix_time") or 0)
    if state.last_click is not None and stamp == state.last_click:
        return state, None
    point = tap_point(click, window, view_wh, image_size_wh)
    if state.first is None:
        return TapCorners(first=point, last_click=stamp), None
    (ax, ay), (bx, by) = state.first, point
    box = (round(min(ax, bx), 1), round(min(ay, by), 1), round(max(ax, bx), 1), round(max(ay, by), 1))
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:  # no area: take the tap as a new first corner
        return TapCorners(first=point, last_click=stamp), None
    return TapCorners(first=None, last_click=stamp), box
