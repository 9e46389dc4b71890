"""Case page: one radiograph -> ROI -> ensemble probability, member view, heatmaps, PDF.

Thin: loading, boxes, prediction, CAMs and the report all come from ``model_zoo`` (via
``dashboard.case_logic``). The uploaded file stays in memory (session state), never on disk.

State: the open image is one :class:`~dashboard.case_logic.CaseState` under ``CASE_KEY``,
made by ``case_logic.load_case`` and changed only through :func:`_update`. Widgets follow one
rule (``case_logic``, "widget state"): explicit keys, defaults written once, every key
written back at the start of each run. Display copies are derived per run, not stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import case_logic as cl
from dashboard import cam_job, common, pacs_ui, viewer
from model_zoo import audit, framing, gate, imaging, roi
from model_zoo.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from model_zoo.ensemble import Prediction, Zoo

CASE_KEY = "case"  # the session's CaseState
ROI_MODES = cl.ROI_MODES
SEX_OPTIONS = cl.SEX_OPTIONS
SITE_OPTIONS = cl.SITE_OPTIONS
VIEW_SIDE = 300
JITTER_N = framing.JITTER_BOXES  # the PACS command line checks the same boxes
ROI_NEEDED = (
    "No probability yet: draw a box around the lesion, enter its coordinates, accept the auto-crop "
    "box, or choose 'Whole image' (less accurate)."
)


# ----------------------------------------------------------------------------- cached compute


@st.cache_data(show_spinner=False, max_entries=64)
def _predict(
    zoo_key: str, pixels_hash: str, box: tuple, age: Any, sex: Any, site: Any, _zoo: Zoo, _pixels: np.ndarray
) -> Prediction:
    return cl.predict(_zoo, _pixels, box, age, sex, site)


@st.cache_data(show_spinner=False, max_entries=32)
def _jitter(
    zoo_key: str, pixels_hash: str, box: tuple, age: Any, sex: Any, site: Any, n: int, _zoo: Zoo, _pixels: np.ndarray
) -> list[float]:
    return _zoo.jitter_probs(_pixels, box, age=age, sex=sex, site=site, n=n)


@st.cache_data(show_spinner=False, max_entries=64)  # ~1 MB per entry at display resolution
def _member_cam(
    zoo_key: str,
    pixels_hash: str,
    box: tuple,
    member_index: int,
    method: str,
    view_box: tuple,
    view_wh: tuple,
    display_wh: tuple,
    _zoo: Zoo,
    _pixels: np.ndarray,
) -> cl.CamView:
    return cl.member_cam(
        _zoo, member_index, _pixels, box, method, view_box, view_wh, display_wh, cache=common.cam_cache(), pixels_hash=pixels_hash
    )


@st.cache_data(show_spinner=False, max_entries=8)  # a few images x sizes of one session's work
def _display_copy(pixels_hash: str, size: tuple[int, int], px: int, _pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """The image at the chosen on-screen size (long side ``px``; small images grow to it) and
    its scale (display / stored)."""
    dw, dh, scale = cl.display_size(size[0], size[1], px, px, min_side=px)
    return cl.downscale(_pixels, (dw, dh)), scale


@dataclass(frozen=True, eq=False)
class _Shown:
    """The main view as displayed in this run."""

    gray: np.ndarray  # windowed (and inverted if chosen), at screen size
    scale: float  # display px / stored px

    @property
    def size(self) -> tuple[int, int]:
        return int(self.gray.shape[1]), int(self.gray.shape[0])


# ----------------------------------------------------------------------------- loading


def _load_case(data: bytes, name: str, *, sample: dict | None = None, label: str | None = None) -> None:
    """Decode an image into the session's CaseState and reset the per-image widgets."""
    _cancel_scorecam()  # the old image's maps are of no use now (also when the new file fails to load)
    case = cl.load_case(data, name, sample=sample, label=label)
    st.session_state[CASE_KEY] = case
    st.session_state.update(cl.case_widget_defaults(case))  # before the widgets exist in this run


def _update(**changes: Any) -> cl.CaseState:
    """Change the session's CaseState (its ROI fields); returns the new record."""
    case = replace(st.session_state[CASE_KEY], **changes)
    st.session_state[CASE_KEY] = case
    return case


def _set_window(center: float, width: float) -> None:
    """Window/level has two widgets per value (slider for the mouse, number field for the
    keyboard); presets set both."""
    for key, value in (("case_wc", center), ("case_ww", width)):
        st.session_state[key] = st.session_state[f"{key}_num"] = float(value)


def _copy_widget(src: str, dst: str) -> None:
    st.session_state[dst] = st.session_state[src]


def _set_box_widgets(box: tuple) -> None:
    st.session_state.update(cl.box_widget_values(box))


def _accept_proposal(box: tuple) -> None:
    _update(auto_accepted=cl.box_key(box))


def _edit_proposal(box: tuple) -> None:
    """Auto-crop proposals are editable: copy into the coordinate fields and switch mode."""
    _set_box_widgets(box)
    st.session_state["case_roi_mode"] = "Enter coordinates"


def _input_section() -> None:
    st.subheader("1. Radiograph")
    col_a, col_b = st.columns([3, 2])
    with col_a:
        up = st.file_uploader(
            "Upload a DICOM, PNG or JPEG radiograph",
            type=None,
            key="case_upload",
            help="Kept in memory for this session only; never written to disk.",
        )
    with col_b:
        st.write("")
        sample_clicked = st.button(
            "Load sample case (RG3 DICOM)",
            key="case_load_sample",
            help="pydicom-data RG3: CR of a distal tibia with a benign lesion",
        )
    if sample_clicked:
        from model_zoo.sample import sample_case

        s = sample_case()
        _load_case(s["path"].read_bytes(), s["path"].name, sample=s)
        st.session_state["case_upload_id"] = getattr(up, "file_id", None)
    elif up is not None and st.session_state.get("case_upload_id") != up.file_id:
        st.session_state["case_upload_id"] = up.file_id
        st.session_state.pop(CASE_KEY, None)
        _load_case(up.getvalue(), up.name)


# ----------------------------------------------------------------------------- ROI


def _roi_section(case: cl.CaseState, zoo: Zoo, settings: viewer.ViewerSettings) -> tuple[tuple | None, str, bool, _Shown]:
    """(box, where it came from, ready, the main view): ``ready`` once the ROI was chosen
    explicitly (drawn, entered, accepted from auto-crop, or 'Whole image'); box None when the
    box is invalid.

    Every control sits above the image and the image has the page width to itself, so a
    canvas of the chosen size never lands on the controls (it used to sit in a 3/5 column
    beside them and cover them on a 1024-px screen).
    """
    image = case.image
    w, h = case.size
    display_pixels, scale = _display_copy(case.pixels_hash, case.size, settings.display_px, image.pixels)
    dh, dw = display_pixels.shape[:2]

    mode = st.radio(
        "ROI",
        ROI_MODES,
        key="case_roi_mode",
        horizontal=True,
        help="The region the models classify (each adds its own context margin).",
    )
    c_size, c_invert = st.columns([3, 1], vertical_alignment="bottom")
    with c_size:
        st.select_slider(
            "Image size on screen (px, long side)",
            viewer.DISPLAY_SIZES,
            key="case_display_px",
            on_change=viewer.remember,
            args=(st.session_state, "display_px"),
            help="Kept for the next images. Pick a size that fits your screen; the ROI is "
            "always in stored pixels, whatever the size.",
        )
    with c_invert:
        st.toggle(
            "Invert",
            key="case_invert",
            on_change=viewer.remember,
            args=(st.session_state, "invert"),
            help="Swap black and white (display only); kept for the next images.",
        )
    _window_panel(case)
    if image.meta.display_tags:  # full width: in a half column long values were cut off at 1024 px
        with st.expander("Image header (non-identifying tags)", expanded=False):
            # st.table wraps long values (st.dataframe truncated them at the column width)
            st.table(
                pd.DataFrame({"tag": list(image.meta.display_tags), "value": list(image.meta.display_tags.values())}),
                hide_index=True,
            )
    display = cl.rewindow(
        display_pixels, image.meta, st.session_state["case_wc"], st.session_state["case_ww"], invert=settings.invert
    )
    shown = _Shown(display, scale)
    window, view = _zoom_view(case, settings, display)

    box = tuple(case.box)
    source = "drawn"
    full = tuple(float(v) for v in roi.full_image_box((w, h)))
    ready = False
    if mode == "Draw on the image":
        drawn = _draw_roi(case, view, window)
        if drawn is not None:
            box, ready = drawn, True
        elif case.initial_box is not None:  # the sample's ROI, shown on the canvas
            box, ready = tuple(case.initial_box), True
        source = "drawn on the image"
    elif mode == "Enter coordinates":
        cols = st.columns(4)
        labels = ("x0 (left)", "y0 (top)", "x1 (right, exclusive)", "y1 (bottom, exclusive)")
        limits = (w, h, w, h)
        vals = []
        for col, key, label, lim in zip(cols, ("case_x0", "case_y0", "case_x1", "case_y1"), labels, limits, strict=True):
            with col:
                vals.append(st.number_input(label, min_value=0.0, max_value=float(lim), step=1.0, format="%.0f", key=key))
        box = tuple(float(v) for v in vals)
        ready = box != full  # the fields start at the whole image: that is not an entered ROI
        source = "entered coordinates" if case.initial_box is None else "entered coordinates / sample ROI"
    elif mode == "Auto-crop":
        from model_zoo.predict import propose_roi

        box, source = propose_roi(zoo, image.pixels)
        if zoo.localiser is None:
            st.info(
                "This zoo has no localiser (auto-crop model), so the whole image is used. "
                "Draw or enter a box for a lesion-level answer."
            )
        else:
            st.warning(cl.localiser_caution(zoo.localiser.metrics))
        ready = case.auto_accepted == cl.box_key(box)
        c_use, c_edit = st.columns(2)
        with c_use:
            st.button(
                "Use this box",
                key="case_accept_auto",
                on_click=_accept_proposal,
                args=(box,),
                disabled=ready,
                type="primary",
                help="Accept the proposal as the ROI (check it on the image first).",
            )
        with c_edit:
            st.button(
                "Edit this box",
                key="case_edit_auto",
                on_click=_edit_proposal,
                args=(box,),
                help="Copy the proposal into the coordinate fields to adjust it.",
            )
    else:
        box, source, ready = full, "whole image", True
    try:
        box = roi.validate_box(box, (w, h))
    except InputError as err:
        st.error(f"{err}. Fix the box to continue.")
        return None, source, False, shown
    if mode != "Draw on the image":
        st.image(cl.draw_box(view, roi.box_image_to_view(box, window, (dw, dh)), 1.0), caption=f"ROI {source}", width=dw)
    if ready and tuple(box) == full:
        st.warning(cl.whole_image_caution(zoo.manifest))
    _update(box=box)
    st.caption(
        f"ROI in stored pixels: x {box[0]:.0f}-{box[2]:.0f}, y {box[1]:.0f}-{box[3]:.0f} "
        f"({box[2] - box[0]:.0f} x {box[3] - box[1]:.0f} px of a {w} x {h} image)"
    )
    return box, source, ready, shown


def _zoom_to_roi() -> None:
    """The 'Zoom to ROI' button: reads the case's box when clicked (the box may have changed
    since the button was drawn)."""
    case: cl.CaseState = st.session_state[CASE_KEY]
    viewer.zoom_to_box(st.session_state, case.box, case.size)


@st.cache_data(show_spinner=False, max_entries=8)
def _view_copy(pixels_hash: str, window: tuple, view_wh: tuple[int, int], _pixels: np.ndarray) -> np.ndarray:
    """The stored-image ``window`` at the canvas size (zoomed view), before windowing."""
    return viewer.view_pixels(_pixels, window, view_wh)


def _zoom_view(case: cl.CaseState, settings: viewer.ViewerSettings, display: np.ndarray) -> tuple[tuple, np.ndarray]:
    """Zoom and pan controls (issue 17); returns the stored-image window the viewer shows and
    that window windowed for display at the canvas size. Display only: boxes stay in stored
    pixels (``viewer.canvas_image_box``)."""
    w, h = case.size
    dh, dw = display.shape[:2]
    zoomed = settings.zoom > 1.0
    c_zoom, c_pan, c_overview = st.columns([2, 3, 1], vertical_alignment="bottom")
    with c_zoom:
        st.select_slider(
            "Zoom",
            viewer.ZOOM_LEVELS,
            key="case_zoom",
            format_func=lambda z: f"{z:g}x",
            on_change=viewer.remember,
            args=(st.session_state, "zoom"),
            help="Magnify part of the image to box a small lesion; kept for the next images. "
            "The ROI is always in stored pixels, whatever the zoom.",
        )
    with c_pan, st.container(horizontal=True):
        for name, icon, dx, dy in (
            ("left", "arrow_back", -1, 0),
            ("right", "arrow_forward", 1, 0),
            ("up", "arrow_upward", 0, -1),
            ("down", "arrow_downward", 0, 1),
        ):
            st.button(
                name.capitalize(),
                key=f"case_pan_{name}",
                icon=f":material/{icon}:",
                disabled=not zoomed,
                on_click=viewer.pan,
                args=(st.session_state, dx, dy),
                help=f"Move the view {name} by half its size",
            )
        st.button(
            "Zoom to ROI",
            key="case_zoom_roi",
            icon=":material/center_focus_strong:",
            on_click=_zoom_to_roi,
            help="Zoom in on the current ROI, centred",
        )
        st.button(
            "Reset view",
            key="case_zoom_reset",
            icon=":material/fit_screen:",
            disabled=not zoomed,
            on_click=viewer.reset_view,
            args=(st.session_state,),
            help="The whole image at 1x",
        )
    window = viewer.view_window(settings, (w, h))
    if not zoomed:
        return window, display
    raw = _view_copy(case.pixels_hash, tuple(window), (dw, dh), case.image.pixels)
    view = cl.rewindow(raw, case.image.meta, st.session_state["case_wc"], st.session_state["case_ww"], invert=settings.invert)
    with c_overview:  # where the view is, on the whole image
        st.image(viewer.overview(display, window, (w, h)), width=viewer.OVERVIEW_PX)
    st.caption(viewer.view_caption(settings, window))
    return window, view


def _draw_roi(case: cl.CaseState, view: np.ndarray, window: tuple) -> tuple | None:
    """Rectangle drawn on a streamlit-drawable-canvas that shows ``window`` of the stored image;
    canvas px -> stored px through the window (``viewer.canvas_image_box``)."""
    try:  # the component registers itself on import, which needs a running Streamlit
        from streamlit_drawable_canvas import st_canvas
    except Exception as err:  # noqa: BLE001
        st.info(f"Drawing is unavailable here ({type(err).__name__}); use 'Enter coordinates'.")
        return None
    from PIL import Image

    dh, dw = view.shape[:2]
    if st.toggle(
        "Touch screen: tap two corners",
        key="case_tap_mode",
        help="On a tablet a finger drag does not draw a rectangle; tap one corner of the lesion's box, then the opposite corner.",
    ):
        return _tap_roi(case, view, window)
    # One canvas per on-screen size and view window (its coordinates are canvas pixels); a new
    # size, zoom or pan starts from the box drawn before, redrawn at its place in the new view,
    # so the ROI stays on the same stored pixels.
    view_key = (dw, dh, tuple(int(v) for v in window))
    if case.canvas_initial is None or case.canvas_initial[0] != view_key:
        case = _update(canvas_initial=(view_key, viewer.canvas_drawing(case.drawn_box or case.initial_box, window, (dw, dh))))
    assert case.canvas_initial is not None
    st.caption("Drag a rectangle around the lesion; the last rectangle counts. Use the toolbar to undo.")
    result = st_canvas(
        fill_color="rgba(255, 40, 40, 0.08)",
        stroke_width=2,
        stroke_color="#ff2828",
        background_image=Image.fromarray(imaging.to_uint8(view)),
        drawing_mode="rect",
        initial_drawing=case.canvas_initial[1],
        height=dh,
        width=dw,
        update_streamlit=True,
        key=f"case_canvas_{case.sha256[:12]}_{dw}_" + "_".join(map(str, view_key[2])),
    )
    box = viewer.canvas_image_box(getattr(result, "json_data", None), window, (dw, dh), case.size)
    if box is None:
        st.caption("No rectangle yet: drag one around the lesion.")
        return None
    if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
        return None
    _set_box_widgets(box)
    _update(drawn_box=box)
    return box


def _tap_roi(case: cl.CaseState, view: np.ndarray, window: tuple) -> tuple | None:
    """Touch drawing: two taps on opposite corners (``viewer.tap_corners``) on the shown view;
    returns the box once both are tapped, else the box drawn before (or None)."""
    try:
        from streamlit_image_coordinates import streamlit_image_coordinates
    except Exception as err:  # noqa: BLE001
        st.info(f"Tapping is unavailable here ({type(err).__name__}); use 'Enter coordinates'.")
        return None
    dh, dw = view.shape[:2]
    state = st.session_state.get(viewer.TAP_KEY) or viewer.TapCorners()
    current = case.drawn_box or case.initial_box
    shown = cl.draw_box(view, roi.box_image_to_view(current, window, (dw, dh)), 1.0) if current else view
    if state.first is not None:  # mark the first corner
        shown = cl.draw_box(
            shown, roi.box_image_to_view((*state.first, *state.first), window, (dw, dh)), 1.0, colour=(40, 200, 255)
        )
    click = streamlit_image_coordinates(
        imaging.to_uint8(shown) if shown.dtype != np.uint8 else shown,
        width=dw,
        key=f"case_tap_{case.sha256[:12]}_{dw}_" + "_".join(str(int(v)) for v in window),
    )
    state, box = viewer.tap_corners(state, click, window, (dw, dh), case.size)
    st.session_state[viewer.TAP_KEY] = state
    if state.first is not None:
        st.caption(f"First corner at x {state.first[0]:.0f}, y {state.first[1]:.0f}: tap the opposite corner.")
    elif box is None:
        st.caption("Tap one corner of the lesion's box, then the opposite corner.")
    if box is None:
        return tuple(case.drawn_box) if case.drawn_box else None
    _set_box_widgets(box)
    _update(drawn_box=box, canvas_initial=None)  # the canvas starts from this box if the toggle is turned off
    return box


def _window_panel(case: cl.CaseState) -> None:
    """Window/level: presets from the image's own values, and each value as a slider (mouse)
    and a number field (keyboard), kept in step."""
    meta = case.image.meta
    c0, w0, lo, hi, units = cl.window_units(meta)
    max_width = float(max(hi - lo, w0, 2.0))
    with st.expander("Window / level (display only)", expanded=False):
        with st.container(horizontal=True):  # wraps on narrow screens instead of truncating the names
            for i, p in enumerate(case.presets):
                st.button(
                    p.name,
                    key=f"case_wl_preset_{i}",
                    on_click=_set_window,
                    args=(p.center, p.width),
                    help=f"{p.note}: centre {p.center:.0f}, width {p.width:.0f}",
                )
        for key, label, low, high in (
            ("case_wc", f"Window centre ({units})", lo, hi),
            ("case_ww", "Window width", 1.0, max_width),
        ):
            c_slide, c_type = st.columns([3, 1], vertical_alignment="bottom")
            with c_slide:
                st.slider(
                    label, float(low), float(high), key=key, format="%.0f", on_change=_copy_widget, args=(key, f"{key}_num")
                )
            with c_type:
                st.number_input(
                    f"{label}, typed",
                    float(low),
                    float(high),
                    step=1.0,
                    format="%.0f",
                    key=f"{key}_num",
                    label_visibility="collapsed",
                    on_change=_copy_widget,
                    args=(f"{key}_num", key),
                )
        src = "from the DICOM header" if meta.window is not None else "default"
        st.caption(
            f"Starts {src} ({c0:g} / {w0:g}); presets come from this image's own grey values. "
            "The models always see the image as loaded."
        )


# ----------------------------------------------------------------------------- inputs


def _clinical_section(case: cl.CaseState) -> dict[str, Any]:
    st.subheader("2. Clinical inputs")
    st.caption("Pre-filled from the header where present: " + "; ".join(case.prefill.notes))
    c1, c2, c3 = st.columns(3)
    with c1:
        age = st.number_input("Age (years)", min_value=0.0, max_value=120.0, step=1.0, key="case_age", placeholder="not given")
    with c2:
        sex = st.selectbox("Sex", SEX_OPTIONS, key="case_sex")
    with c3:
        site = st.selectbox("Lesion site", SITE_OPTIONS, key="case_site", help="axial = pelvis/spine/trunk; appendicular = limbs")
    confirmed = st.checkbox("I have checked age, sex and site", key="case_confirm")
    from model_zoo.clinical import validate_clinical

    a, s, t = validate_clinical(age, None if sex == "not given" else sex, None if site == "not given" else site)
    return {"age": a, "sex": s, "site": t, "confirmed": confirmed}


def _quality_gate(case: cl.CaseState, box: tuple | None) -> tuple[bool, list[str]]:
    """Warn (and withhold the prediction until acknowledged) when the input looks wrong:
    image-level problems, a header that names a region other than bone/limb/pelvis, and (once
    an ROI is chosen, ``box``) a tiny or featureless ROI."""
    q = case.quality
    problems = list(q.blocking) + list(case.header_gate.blocking)
    if box is not None:
        problems += gate.roi_quality(case.image.pixels, box)
    for note in q.notes:
        st.info(f"Note: {note}")
    if not problems:
        return True, []
    st.warning("**This input may not suit the models:**\n\n" + "\n".join(f"- {p}" for p in problems))
    return st.checkbox("Predict anyway (I have checked the input)", key="case_override"), problems


# ----------------------------------------------------------------------------- results


def _result_section(
    zoo: Zoo, case: cl.CaseState, box: tuple, source: str, inputs: dict
) -> tuple[Prediction, dict[str, tuple[np.ndarray, cl.Box]]] | None:
    """The prediction and the members' crops; None when the OOD gate withholds the result."""
    pixels = case.image.pixels
    zkey = str(zoo.root)
    with st.spinner("Running the ensemble ..."):
        pred = _predict(zkey, case.pixels_hash, box, inputs["age"], inputs["sex"], inputs["site"], zoo, pixels)
    st.subheader("3. Result")
    if not _ood_gate(zoo, case, box, source, pred):
        return None
    # The jitter check runs later in the page; on reruns its (cached) result is already known.
    last = st.session_state.get("case_jitter_last")
    jitter = last[1] if last and last[0] == _jitter_key(zoo, case, box, inputs) else None
    head = zoo.call(pred.p_ensemble, jitter)
    st.markdown(f"#### {head.sentence}")
    if head.scale_note:
        st.caption(head.scale_note)
    ppv_npv = cl.ppv_npv_sentence(zoo.manifest, zoo.positive_class, zoo.negative_class)
    if ppv_npv:
        st.markdown(ppv_npv)
    external = cl.external_validation_line(zoo.manifest)
    if external:
        st.markdown(external)
    _audit_once(zoo, case, box, source, inputs, pred)

    col_chart, col_text = st.columns([3, 2])
    with col_chart:
        import plotly.graph_objects as go

        names = list(pred.p_members)
        fig = go.Figure(
            go.Bar(
                x=names,
                y=[pred.p_members[n] for n in names],
                name="members",
                marker_color="#4a78c2",
                text=[f"{pred.p_members[n]:.2f}" for n in names],
                textposition="outside",
            )
        )
        fig.add_hline(y=pred.threshold, line_dash="dash", line_color="#c0392b", annotation_text=f"threshold {pred.threshold:.2f}")
        ens_label = "ensemble (raw)" if head.calibrated else "ensemble"
        fig.add_hline(
            y=pred.p_ensemble,
            line_color="#2e8b57",
            annotation_text=f"{ens_label} {pred.p_ensemble:.2f}",
            annotation_position="bottom right",
        )
        fig.update_layout(
            yaxis=dict(range=[0, 1.08], title=f"P({zoo.positive_class})"),
            height=320,
            margin=dict(l=10, r=10, t=30, b=10),
            title="Member probabilities",
        )
        st.plotly_chart(fig, key="case_member_chart")
    with col_text:
        st.markdown(cl.disagreement_sentence(pred.disagreement))
        if pred.p_clinic is not None:
            st.markdown(f"Clinic-only model (age, sex, site; no image): P({zoo.positive_class}) = **{pred.p_clinic:.2f}**.")
        outside = cl.outside_members_caption(pred.p_ensemble, pred.p_members, pred.p_clinic, zoo.positive_class)
        if outside:
            st.caption(outside)
        st.dataframe(pd.DataFrame(cl.member_frame_rows(pred.p_members, pred.threshold)), hide_index=True, key="case_member_table")
        with st.expander("Calibration note"):
            st.write(cl.calibration_note(zoo.manifest))

    st.markdown("**What the models see** (each member's input crop: ROI + margin, squared, resized)")
    crops = cl.member_crops(zoo, pixels, box)
    cols = st.columns(len(crops))
    for col, (mid, (crop, cbox)) in zip(cols, crops.items(), strict=True):
        with col:
            st.image(
                imaging.to_uint8(crop),
                caption=f"{mid} ({crop.shape[1]} px; crop x {cbox[0]:.0f}-{cbox[2]:.0f}, y {cbox[1]:.0f}-{cbox[3]:.0f})",
                width="stretch",
            )
    return pred, crops


def _ood_gate(zoo: Zoo, case: cl.CaseState, box: tuple, source: str, pred: Prediction) -> bool:
    """Releases with an out-of-distribution model: a flagged crop shows the reason and no probability
    or call until the user overrides (the override is logged in the audit, once per image and box)."""
    threshold = zoo.ood.threshold if zoo.ood is not None else None
    if not pred.ood:
        note = cl.ood_passed_note(pred.ood_score, threshold)
        if note:
            st.caption(note)
        return True
    assert pred.ood_score is not None and threshold is not None  # flagged: the release has an OOD model
    st.error(cl.ood_message(pred.ood_score, threshold))
    if not st.checkbox(
        "Show the result anyway (I have checked that this is a radiograph of a bone lesion; the override is logged)",
        key="case_ood_override",
    ):
        return False
    key = ("ood", str(zoo.root), case.sha256, cl.box_key(box))
    logged = st.session_state.setdefault("case_audited", set())
    if key not in logged:
        try:
            audit.append_event(
                None,
                audit.ood_override_event(
                    image_sha256=case.sha256,
                    zoo_name=zoo.release_name,
                    zoo_version=zoo.version,
                    roi_box=box,
                    roi_source=source,
                    ood_score=pred.ood_score,
                    ood_threshold=threshold,
                ),
            )
        except OSError as err:
            st.warning(f"The audit log could not be written ({err.strerror or err}); the result is shown anyway.")
        logged.add(key)
    st.warning(cl.ood_override_note(pred.ood_score, threshold))
    return True


def _audit_once(zoo: Zoo, case: cl.CaseState, box: tuple, source: str, inputs: dict, pred: Prediction) -> None:
    key = (str(zoo.root), case.sha256, cl.box_key(box), inputs["age"], inputs["sex"], inputs["site"])
    logged = st.session_state.setdefault("case_audited", set())
    if key in logged:
        return
    event = audit.prediction_event(
        image_sha256=case.sha256,
        zoo_name=zoo.release_name,
        zoo_version=zoo.version,
        roi_box=box,
        roi_source=source,
        age=inputs["age"],
        sex=inputs["sex"],
        site=inputs["site"],
        p_ensemble=pred.p_ensemble,
        p_members=pred.p_members,
        p_clinic=pred.p_clinic,
        threshold=pred.threshold,
        label=pred.label,
        extra=None
        if pred.ood_score is None or zoo.ood is None
        else {
            "ood": {
                "score": pred.ood_score,
                "threshold": zoo.ood.threshold,
                "flagged": bool(pred.ood),
                "overridden": bool(pred.ood),
            }
        },
    )
    try:
        audit.append_event(None, event)
    except OSError as err:
        st.warning(f"The audit log could not be written ({err.strerror or err}); the result is shown anyway.")
    logged.add(key)


def _jitter_key(zoo: Zoo, case: cl.CaseState, box: tuple, inputs: dict) -> tuple:
    return (str(zoo.root), case.pixels_hash, cl.box_key(box), inputs["age"], inputs["sex"], inputs["site"])


def _jitter_section(zoo: Zoo, case: cl.CaseState, box: tuple, inputs: dict, pred: Prediction) -> framing.JitterSummary | None:
    st.markdown("**ROI-jitter check**")
    if not st.checkbox(
        f"Re-run with {JITTER_N} slightly shifted/resized boxes",
        key="case_jitter",
        on_change=viewer.remember,
        args=(st.session_state, "jitter"),
    ):
        st.session_state.pop("case_jitter_last", None)
        return None
    with st.spinner("ROI-jitter check ..."):
        probs = _jitter(
            str(zoo.root), case.pixels_hash, box, inputs["age"], inputs["sex"], inputs["site"], JITTER_N, zoo, case.image.pixels
        )
    j = framing.jitter_summary(pred.p_ensemble, probs, pred.threshold)
    (st.warning if j.n_flips else st.success)(framing.jitter_sentence(j))
    note = framing.jitter_note(zoo.call(pred.p_ensemble, j), j)
    if note:
        st.warning(note)
    st.session_state["case_jitter_last"] = (_jitter_key(zoo, case, box, inputs), j)
    return j


def _heatmaps(
    zoo: Zoo,
    case: cl.CaseState,
    box: tuple,
    crops: dict[str, tuple[np.ndarray, cl.Box]],
    shown: _Shown,
    jitter_slot: Any,
    jitter_args: tuple,
    settings: viewer.ViewerSettings,
) -> tuple[framing.JitterSummary | None, cl.CaseView]:
    """GradCAM first (fast); then the ROI-jitter check is filled into its slot above; then
    ScoreCAM with a progress indicator. Returns the jitter summary and what was shown (for the PDF).

    Every heavy step is cached (st.cache_data + the shared CamCache), so a rerun from the
    opacity slider only redraws overlays.
    """
    st.subheader("4. Heatmaps")
    st.caption(
        "Where each network found evidence for the positive class (target: the member's logit). "
        "Heatmaps show what drove a model, not where the lesion is."
    )
    whole = tuple(float(v) for v in box) == (0.0, 0.0, float(case.size[0]), float(case.size[1]))
    measured = cl.explain_sentence(zoo.explain_report, "image" if whole else "roi")
    if measured:
        st.markdown(measured)
    if st.toggle("Teaching mode: how to read a heatmap", key="case_teaching"):
        st.info(cl.HEATMAP_HOW_TO)
    c1, c2 = st.columns(2)
    with c1:
        opacity = st.slider(
            "Heatmap opacity",
            0.0,
            1.0,
            step=0.05,
            key="case_opacity",
            on_change=viewer.remember,
            args=(st.session_state, "opacity"),
        )
    with c2:
        run_score = st.checkbox(
            "Also compute ScoreCAM (slower)", key="case_scorecam", on_change=viewer.remember, args=(st.session_state, "scorecam")
        )
    pixels = case.image.pixels
    view_box, (vw, vh) = cl.cam_view_geometry(crops, VIEW_SIDE)
    roi_gray = cl.roi_view_gray(
        pixels,
        case.image.meta,
        view_box,
        (vw, vh),
        st.session_state["case_wc"],
        st.session_state["case_ww"],
        invert=settings.invert,
    )
    full_gray = shown.gray

    results: dict[str, dict[str, cl.CamView]] = {}
    with st.spinner("GradCAM ..."):
        results["GradCAM"] = _all_members(
            zoo, "gradcam", case=case, box=box, view_box=view_box, view_wh=(vw, vh), display_wh=shown.size
        )
    _show_cams("GradCAM", results["GradCAM"], zoo, roi_gray, full_gray, opacity)

    with jitter_slot:
        jitter = _jitter_section(*jitter_args)

    if run_score:
        job = _scorecam_job(zoo, case, box, view_box, (vw, vh), shown.size)
        views = _scorecam_panel(zoo, job, roi_gray, full_gray, opacity)
        if views is not None:
            results["ScoreCAM"] = views
    else:
        _cancel_scorecam()
    view = cl.CaseView(radiograph=full_gray, crops=crops, cams=results, cam_gray=(roi_gray, full_gray), opacity=opacity)
    return jitter, view


# ----------------------------------------------------------------------------- ScoreCAM job
#
# ScoreCAM takes 20-30 s per case (minutes under load), so it runs in a background thread
# (dashboard.cam_job), one job per session under SCORECAM_JOB_KEY. A polling fragment shows
# its progress and a Cancel button; a new image, ROI or display size cancels the stale job.


SCORECAM_JOB_KEY = "case_scorecam_job"
SCORECAM_POLL_S = 1.0  # progress refresh while a job runs
SCORECAM_GRACE_S = 0.5  # a job that ends this fast (cached maps) is shown without a progress step


def _scorecam_key(zoo: Zoo, case: cl.CaseState, box: tuple, view_box: tuple, view_wh: tuple, display_wh: tuple) -> tuple:
    return (str(zoo.root), case.pixels_hash, cl.box_key(box), cl.box_key(view_box), tuple(view_wh), tuple(display_wh))


def _cancel_scorecam(keep: Any = None) -> None:
    """Cancel the session's ScoreCAM job unless its key is ``keep`` (then it is still current)."""
    job = st.session_state.get(SCORECAM_JOB_KEY)
    if job is not None and (keep is None or job.key != keep):
        job.cancel()
        st.session_state.pop(SCORECAM_JOB_KEY, None)


def _cancel_stale_scorecam(case: cl.CaseState, box: tuple | None) -> None:
    """A job for another image or ROI is stale as soon as the ROI changes, also on runs that stop
    before the heatmaps (a new box not yet confirmed)."""
    job = st.session_state.get(SCORECAM_JOB_KEY)
    if job is not None and (box is None or job.key[1:3] != (case.pixels_hash, cl.box_key(box))):
        _cancel_scorecam()


def _scorecam_job(
    zoo: Zoo, case: cl.CaseState, box: tuple, view_box: tuple, view_wh: tuple, display_wh: tuple
) -> cam_job.MemberJob[cl.CamView]:
    """The session's ScoreCAM job for these inputs: the running or finished one, else a new one."""
    key = _scorecam_key(zoo, case, box, view_box, view_wh, display_wh)
    _cancel_scorecam(keep=key)
    job = st.session_state.get(SCORECAM_JOB_KEY)
    if job is not None:
        return job
    cache, pixels, pixels_hash = common.cam_cache(), case.image.pixels, case.pixels_hash

    def task(index: int) -> cam_job.Task[cl.CamView]:
        def run(should_stop: Any, progress: Any) -> cl.CamView:
            return cl.member_cam(
                zoo,
                index,
                pixels,
                box,
                "scorecam",
                view_box,
                view_wh,
                display_wh,
                cache=cache,
                pixels_hash=pixels_hash,
                should_stop=should_stop,
                progress=progress,
            )

        return run

    job = cam_job.MemberJob(key, [(m.spec.member_id, task(i)) for i, m in enumerate(zoo.members)]).start()
    st.session_state[SCORECAM_JOB_KEY] = job
    job.join(SCORECAM_GRACE_S)
    return job


def _restart_scorecam() -> None:
    st.session_state.pop(SCORECAM_JOB_KEY, None)  # the next run starts a fresh job


def _scorecam_panel(
    zoo: Zoo, job: cam_job.MemberJob[cl.CamView], roi_gray: np.ndarray, full_gray: np.ndarray, opacity: float
) -> dict[str, cl.CamView] | None:
    """ScoreCAM's maps when the job is done (None otherwise); while it runs, a fragment that
    refreshes its progress every SCORECAM_POLL_S and reruns the page once the job ends."""
    status = job.status()
    if status.state == "done":
        views = dict(status.results)
        _show_cams("ScoreCAM", views, zoo, roi_gray, full_gray, opacity)
        return views
    if status.state == "running":
        # guarded: a fragment rerun runs outside main's guard, and must not show a traceback either
        st.fragment(common.guarded(_scorecam_progress), run_every=SCORECAM_POLL_S)(job)
        return None
    (st.info if status.state == "cancelled" else st.error)(status.message)
    st.button("Compute ScoreCAM again", key="case_scorecam_restart", on_click=_restart_scorecam)
    return None


def _scorecam_progress(job: cam_job.MemberJob[cl.CamView]) -> None:
    """The polling part: progress and Cancel; a finished job reruns the whole page to show it."""
    status = job.status()
    if status.finished:
        st.rerun()  # the page draws the maps (or the message) and stops polling
    label = (
        f"ScoreCAM {min(status.done + 1, status.total)}/{status.total}: {status.member or ''} "
        "(runs in the background; the rest of the page is ready)"
    )
    if job.should_stop():
        label = "Cancelling ScoreCAM (stops after the current batch) ..."
    st.progress(status.fraction, text=label)
    st.button("Cancel ScoreCAM", key="case_scorecam_cancel", on_click=job.cancel, disabled=job.should_stop())


def _all_members(
    zoo: Zoo, method: str, *, case: cl.CaseState, box: tuple, view_box: tuple, view_wh: tuple, display_wh: tuple
) -> dict[str, cl.CamView]:
    return {
        m.spec.member_id: _member_cam(
            str(zoo.root), case.pixels_hash, box, i, method, view_box, view_wh, display_wh, zoo, case.image.pixels
        )
        for i, m in enumerate(zoo.members)
    }


def _show_cams(
    label: str, views: dict[str, cl.CamView], zoo: Zoo, roi_gray: np.ndarray, full_gray: np.ndarray, opacity: float
) -> None:
    ens = cl.ensemble_cam(views, zoo.cam_weights, label)
    st.markdown(f"**{label}** - per member and {ens.title[:1].lower()}{ens.title[1:]}")
    items = list(views.items()) + [("ensemble", ens)]
    tab_roi, tab_full = st.tabs([f"{label} on the ROI", f"{label} on the full radiograph"])
    with tab_roi:
        cols = st.columns(len(items))
        for col, (mid, v) in zip(cols, items, strict=True):
            with col:
                st.image(
                    cl.overlay(roi_gray, v.roi_map, opacity),
                    width="stretch",
                    caption=("ensemble-weighted" if mid == "ensemble" else v.title) + (f" - {v.note}" if v.note else ""),
                )
    with tab_full:
        cols = st.columns(3)
        for i, (mid, v) in enumerate(items):
            with cols[i % 3]:
                st.image(
                    cl.overlay(full_gray, v.full_map, opacity),
                    width="stretch",
                    caption=("ensemble-weighted" if mid == "ensemble" else v.title) + (f" - {v.note}" if v.note else ""),
                )
    st.image(viewer.heat_legend(opacity, width=viewer.LEGEND_WIDTH), width=viewer.LEGEND_WIDTH, caption=viewer.LEGEND_CAPTION)
    weights = ", ".join(f"{k} {w:.2f}" for k, w in zoo.cam_weights.items())
    st.caption(
        f"{label}: {sum(v.seconds for v in views.values()):.2f} s of compute. "
        f"Ensemble weights ({zoo.cam_weights_rule}): {weights}."
    )


# ----------------------------------------------------------------------------- PDF


def _pdf_section(
    zoo: Zoo,
    case: cl.CaseState,
    box: tuple,
    source: str,
    inputs: dict,
    pred: Prediction,
    jitter: framing.JitterSummary | None,
    warnings: list[str],
    view: cl.CaseView,
) -> None:
    st.subheader("5. Case report (PDF)")
    c1, c2 = st.columns([2, 1])
    with c1:
        ref = st.text_input("Case reference (optional; printed only if you tick the box)", key="case_reference")
    with c2:
        include = st.checkbox(
            "Include the case reference in the PDF",
            key="case_include_ids",
            help="Off by default: the report carries no identifiers.",
        )

    def build() -> bytes:  # deferred: runs only when the user clicks the download button
        return cl.case_pdf(
            zoo, case, box, source, inputs, pred, jitter, warnings, view=view, reference=ref, include_identifiers=include
        )

    st.download_button(
        "Download the PDF case report",
        data=build,
        file_name="case-report.pdf",
        mime="application/pdf",
        key="case_pdf",
        on_click="ignore",
    )
    st.caption(
        "The report holds the images, ROI, heatmaps shown above, probabilities, inputs, the zoo "
        "release with its file hashes, the date and the disclaimer; no identifiers unless ticked."
    )


# ----------------------------------------------------------------------------- page


def main() -> None:
    settings = viewer.seed_widgets(st.session_state)  # before any widget: restores the ones Streamlit dropped
    st.title("Case")
    common.disclaimer()
    zoo = common.get_zoo()
    if zoo is None:
        return
    st.caption(f"Model zoo: **{zoo.name}** - {zoo.positive_class} vs {zoo.negative_class}, threshold {zoo.threshold:.2f}")
    if isinstance(st.session_state.get(CASE_KEY), cl.CaseState):  # before any per-image widget
        cl.keep_widgets(st.session_state, cl.case_widget_defaults(st.session_state[CASE_KEY]))
    try:
        _input_section()
    except InputError as err:
        st.error(str(err))
    pacs_ui.open_from_pacs_panel(_load_case)  # only when a PACS is configured ([pacs] / MODEL_ZOO_PACS_URL)
    case = st.session_state.get(CASE_KEY)
    if case is None:
        st.info("Upload a radiograph or load the sample case to begin.")
        return
    st.caption(
        f"Loaded: {case.label} - {case.size[0]} x {case.size[1]} px "
        f"{case.image.meta.source_format.upper()}" + (f". {case.description}" if case.description else "")
    )
    header = case.header_gate
    if header.refusal:
        st.error(f"Refused: {header.refusal}.")
        return
    for note in header.warnings:
        st.warning(f"**Check the input:** {note}.")
    box, source, ready, shown = _roi_section(case, zoo, settings)
    _cancel_stale_scorecam(case, box if ready else None)
    if box is None:
        return
    inputs = _clinical_section(case)
    ok_quality, warnings = _quality_gate(case, box if ready else None)
    warnings += list(header.warnings)
    if not ready:
        st.info(ROI_NEEDED)
        return
    if not inputs["confirmed"]:
        st.info("Check the clinical inputs and tick the box to see the prediction.")
        return
    if not ok_quality:
        st.info("Prediction withheld until you fix the input or tick 'Predict anyway'.")
        return
    result = _result_section(zoo, case, box, source, inputs)
    if result is None:  # out of distribution and not overridden: nothing more to show
        return
    pred, crops = result
    if pred.ood and pred.ood_score is not None and zoo.ood is not None:
        warnings.append(cl.ood_override_note(pred.ood_score, zoo.ood.threshold))
    jitter_slot = st.container()  # filled after GradCAM, so the heatmaps are not kept waiting
    jitter, view = _heatmaps(zoo, case, box, crops, shown, jitter_slot, (zoo, case, box, inputs, pred), settings)
    _pdf_section(zoo, case, box, source, inputs, pred, jitter, warnings, view)
    pacs_ui.write_back_panel(zoo, case, box, source, inputs, pred, jitter, warnings, view)  # PACS cases only


common.guarded(main)()
