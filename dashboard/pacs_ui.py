"""The Case page's PACS parts: "Open from PACS" and "Write back to the PACS".

Shown only when a PACS is configured (``[pacs]`` in ``.streamlit/secrets.toml`` or
``MODEL_ZOO_PACS_URL``; see ``model_zoo.pacs.settings``). All PACS logic lives in
``model_zoo.pacs``; this module is the Streamlit glue. A chosen image goes through the page's
own upload path (``load_case(bytes, name)``), so DICOM tags pre-fill age/sex/site as for an
upload. Any PACS failure is shown as one line and leaves the page usable for uploads.

Session state used here (all ``pacs_`` prefixed): ``pacs_studies`` (last search),
``pacs_series`` (study UID -> series), ``pacs_instance_cache``/``pacs_thumb_cache`` (per series / image), ``pacs_pick`` (chosen study/series), ``pacs_source``
(the opened image's header - it holds the patient's identifiers, kept in memory only, for
the write-back into the same study - and the sha256 of its bytes), ``pacs_written``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from typing import TYPE_CHECKING, Protocol

import streamlit as st

from dashboard import common
from model_zoo import audit
from model_zoo.errors import InputError
from model_zoo.framing import JitterSummary
from model_zoo.pacs import (
    InstanceResult,
    PacsClient,
    PacsError,
    PacsSettings,
    SeriesResult,
    StudyQuery,
    StudyResult,
    load_settings,
    open_instance,
    prepare_writeback,
    write_back,
)
from model_zoo.pacs.writeback import manifest_sha256, result_key

if TYPE_CHECKING:  # pragma: no cover
    from dashboard.case_logic import CaseState, CaseView
    from model_zoo.ensemble import Prediction, Zoo


class CaseLoader(Protocol):
    """The Case page's loader: decodes the bytes into the session's case (``label`` names its origin)."""

    def __call__(self, data: bytes, name: str, *, label: str | None = None) -> None: ...


MODALITY_CHOICES = {
    "Radiographs (CR/DX/DR/RF)": "radiographs",
    "CR": "CR",
    "DX": "DX",
    "DR": "DR",
    "RF": "RF",
    "Any modality": "any",
}
PACS_FILE_NAME = "pacs.dcm"  # the name handed to the loader: never a patient's file name


# ----------------------------------------------------------------------------- settings


def pacs_settings(*, quiet: bool = False) -> PacsSettings | None:
    """The configured PACS, or None (not configured, or misconfigured: then an error is shown)."""
    try:
        return load_settings(common.secrets_dict())
    except (PacsError, InputError) as err:
        if not quiet:
            st.error(f"PACS settings: {err}. Opening from the PACS is off; uploads still work.")
        return None


def _client(settings: PacsSettings) -> PacsClient:
    return PacsClient(settings)


# ----------------------------------------------------------------------------- labels


def _date(text: str) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else (text or "no date")


def study_label(s: StudyResult) -> str:
    parts = [_date(s.study_date), s.patient_name or "(no name)", f"ID {s.patient_id or '-'}"]
    if s.accession:
        parts.append(f"acc. {s.accession}")
    parts.append("/".join(s.modalities) or "?")
    if s.description:
        parts.append(s.description)
    if not s.has_radiograph and s.modalities:
        parts.append("(no radiograph)")
    return " - ".join(parts)


def series_label(s: SeriesResult) -> str:
    bits = [f"#{s.number}" if s.number is not None else "#?", s.modality or "?"]
    if s.description:
        bits.append(s.description)
    if s.body_part:
        bits.append(s.body_part)
    if s.n_instances is not None:
        bits.append(f"{s.n_instances} image{'s' if s.n_instances != 1 else ''}")
    return " - ".join(bits)


# ----------------------------------------------------------------------------- open from PACS


def open_from_pacs_panel(load_case: CaseLoader) -> None:
    """Search -> study -> series -> image -> ``load_case(dicom_bytes, name)``. No-op when no PACS."""
    settings = pacs_settings()
    if settings is None:
        return
    with st.expander("Open from PACS", expanded=st.session_state.get("pacs_studies") is not None):
        st.caption(
            f"PACS: {settings.display_url} (DICOMweb). Radiographs (CR/DX/DR/RF) open as a case; "
            "other modalities are listed but cannot be opened."
        )
        if settings.transport_warning:
            st.warning(f"Note: {settings.transport_warning}.")
        try:
            _search(settings)
            _results(settings, load_case)
        except (PacsError, InputError) as err:
            st.error(f"{err}. Uploads and the sample case still work.")


def _search(settings: PacsSettings) -> None:
    with st.form("pacs_search_form"):
        c1, c2, c3 = st.columns(3)
        pid = c1.text_input("Patient ID", key="pacs_q_pid")
        name = c2.text_input("Patient name", key="pacs_q_name", help="Name parts in order, e.g. 'doe jane'")
        acc = c3.text_input("Accession number", key="pacs_q_acc")
        d1, d2, d3 = st.columns(3)
        lo = d1.date_input("Study date from", value=None, min_value=_dt.date(1900, 1, 1), key="pacs_q_from")
        hi = d2.date_input("Study date to", value=None, min_value=_dt.date(1900, 1, 1), key="pacs_q_to")
        modality = d3.selectbox("Modality", list(MODALITY_CHOICES), key="pacs_q_mod")
        submitted = st.form_submit_button("Search the PACS")
    if not submitted:
        return
    query = StudyQuery(
        patient_id=pid, patient_name=name, accession=acc, date_from=lo, date_to=hi, modality=MODALITY_CHOICES[modality]
    )
    for k in ("pacs_studies", "pacs_series", "pacs_pick", "pacs_study_idx", "pacs_instance_cache", "pacs_thumb_cache"):
        st.session_state.pop(k, None)
    with st.spinner("Searching the PACS ..."):
        st.session_state["pacs_studies"] = _client(settings).search_studies(query)


def _results(settings: PacsSettings, load_case: CaseLoader) -> None:
    studies: list[StudyResult] | None = st.session_state.get("pacs_studies")
    if studies is None:
        return
    if not studies:
        st.info("No study matches this search.")
        return
    st.caption(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} found (newest first).")
    idx = st.selectbox("Study", list(range(len(studies))), format_func=lambda i: study_label(studies[i]), key="pacs_study_idx")
    study = studies[int(idx)]
    cache: dict[str, list[SeriesResult]] = st.session_state.setdefault("pacs_series", {})
    if study.study_uid not in cache:
        with st.spinner("Listing the series ..."):
            cache[study.study_uid] = _client(settings).list_series(study.study_uid)
    series = cache[study.study_uid]
    if not series:
        st.info("This study has no series.")
        return
    if not any(s.reason_not_readable is None for s in series):
        st.warning("This study has no radiograph: nothing here can be opened as a case.")
    pick = st.session_state.get("pacs_pick")
    for i, s in enumerate(series):
        reason = s.reason_not_readable
        c_text, c_button = st.columns([5, 1])
        with c_text:
            if reason is None:
                st.markdown(series_label(s))
            else:
                st.markdown(f":gray[{series_label(s)} - {reason}]")
        with c_button:
            if st.button(
                "Choose", key=f"pacs_series_{i}", disabled=reason is not None, help=reason or "List the images of this series"
            ):
                pick = st.session_state["pacs_pick"] = (study.study_uid, s.series_uid)
    if not pick or pick[0] != study.study_uid:
        return
    chosen = next((s for s in series if s.series_uid == pick[1]), None)
    if chosen is None:
        return
    _images(settings, chosen, load_case)


def _short(uid: str) -> str:
    """A widget-key suffix for a UID that does not contain the UID (keys reach the browser)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def _images(settings: PacsSettings, series: SeriesResult, load_case: CaseLoader) -> None:
    client = _client(settings)
    # The panel reruns with every widget on the Case page: ask the PACS once per series and once
    # per preview, not on every rerun (kept in this session only, like the series list).
    cache = st.session_state.setdefault("pacs_instance_cache", {})
    key = _short(series.series_uid)
    if key not in cache:
        cache[key] = client.list_instances(series.study_uid, series.series_uid)
    instances: list[InstanceResult] = cache[key]
    if not instances:
        st.info("This series has no images.")
        return

    def label(i: int) -> str:
        inst = instances[i]
        size = f" ({inst.columns} x {inst.rows} px)" if inst.rows and inst.columns else ""
        return f"Image {inst.number if inst.number is not None else i + 1}{size}"

    c_pick, c_thumb = st.columns([3, 1])
    with c_pick:
        i = (
            st.selectbox(
                f"Image in series #{series.number}",
                list(range(len(instances))),
                format_func=label,
                key=f"pacs_instance_{_short(series.series_uid)}",
            )
            if len(instances) > 1
            else 0
        )
        clicked = st.button("Open this image as the case", key="pacs_open", type="primary")
    with c_thumb:
        thumbs = st.session_state.setdefault("pacs_thumb_cache", {})
        sop_key = _short(instances[int(i)].sop_uid)
        if sop_key not in thumbs:
            thumbs[sop_key] = client.thumbnail(instances[int(i)])
        thumb = thumbs[sop_key]
        if thumb:
            st.image(thumb, width=120, caption="preview")
    if clicked:
        _open(client, instances[int(i)], load_case)


def _open(client: PacsClient, instance: InstanceResult, load_case: CaseLoader) -> None:
    with st.spinner("Retrieving the image ..."):
        try:
            opened = open_instance(client, instance)
        except InputError as err:
            st.error(f"This image could not be opened: {err}")
            return
    load_case(opened.data, PACS_FILE_NAME, label="image from the PACS")
    st.session_state["pacs_source"] = {"header": opened.header, "sha256": opened.sha256}
    try:
        audit.append_event(
            None,
            {"event": "pacs_open", "source": "dashboard", "image_sha256": opened.sha256, "modality": opened.image.meta.modality},
        )
    except OSError as err:
        st.warning(f"The audit log could not be written ({err.strerror or type(err).__name__}).")
    st.success("Opened from the PACS. Check the ROI and clinical inputs below.")


# ----------------------------------------------------------------------------- write back


def write_back_panel(
    zoo: Zoo,
    case: CaseState,
    box: tuple,
    source: str,
    inputs: dict,
    pred: Prediction,
    jitter: JitterSummary | None,
    warnings: list[str],
    view: CaseView | None = None,
) -> None:
    """Button: SR + PDF into the case's own study. Shown only for a case opened from the PACS."""
    settings = pacs_settings(quiet=True)
    src = st.session_state.get("pacs_source")
    if settings is None or not src or src.get("sha256") != case.sha256:
        return
    st.subheader("6. Write back to the PACS")
    st.caption(
        "Stores a DICOM Structured Report (probabilities, the call, the ROI on this image, the zoo "
        "release) and the PDF report above in this patient's study, each as a new series. "
        "Writing the same result again does not create a duplicate."
    )
    key = result_key(
        str(src["header"].SOPInstanceUID), manifest_sha256(zoo), box, inputs.get("age"), inputs.get("sex"), inputs.get("site")
    )
    done: dict[str, str] = st.session_state.setdefault("pacs_written", {})
    if not st.button("Write the result to the PACS", key="pacs_write"):
        if key in done:
            st.success(f"Written earlier in this session: {done[key]}.")
        return
    from dashboard import case_logic as cl

    with st.spinner("Writing to the PACS and confirming ..."):
        try:
            pdf = cl.case_pdf(zoo, case, box, source, inputs, pred, jitter, warnings, view=view)
            objects, key = prepare_writeback(
                src["header"],
                zoo,
                pred,
                box=box,
                roi_source=source,
                inputs=inputs,
                pdf=pdf,
                call=zoo.call(pred.p_ensemble, jitter),
            )
            result = write_back(_client(settings), objects, key=key)
        except PacsError as err:
            st.error(f"PACS write-back: {err}.")
            return
    done[key] = result.message
    st.success(f"PACS: {result.message}.")
    try:
        audit.append_event(
            None,
            {
                "event": "pacs_write",
                "source": "dashboard",
                "image_sha256": case.sha256,
                "result_key": key,
                "written": list(result.written),
                "already_present": list(result.already_present),
            },
        )
    except OSError as err:
        st.warning(f"The audit log could not be written ({err.strerror or type(err).__name__}).")
