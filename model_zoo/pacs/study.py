"""From a study on the PACS to a prediction and back: the steps the CLI and the dashboard share."""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model_zoo import imaging
from model_zoo.errors import InputError
from model_zoo.framing import Call, JitterSummary
from model_zoo.pacs.client import InstanceResult, PacsClient, SeriesResult
from model_zoo.pacs.errors import NoRadiograph, PacsNotFound
from model_zoo.pacs.writeback import build_encapsulated_pdf, build_sr, manifest_sha256, result_key

__all__ = ["OpenedImage", "first_radiograph", "open_instance", "prepare_writeback", "simple_case_pdf"]

_UID_RE = re.compile(r"(?=.{1,64}$)[0-9]+(\.[0-9]+)*")
IMAGE_NAME = "PACS image"  # what loader messages call the image (never a file name or UID)


@dataclass(frozen=True, repr=False)
class OpenedImage:
    """One instance from the PACS: its bytes, decoded image, and header (identifiers: kept
    in memory for the write-back only)."""

    data: bytes
    image: imaging.LoadedImage
    header: Any  # pydicom Dataset without pixel data
    sha256: str

    def __repr__(self) -> str:
        return f"OpenedImage(<identifiers hidden>, sha256={self.sha256[:12]}..., size={self.image.pixels.shape})"


def first_radiograph(client: PacsClient, study_uid: str) -> tuple[InstanceResult, list[SeriesResult]]:
    """The first image of the first radiograph series of a study, and all its series.

    Raises
    ------
    NoRadiograph
        No CR/DX/DR/RF series (the message lists the modalities found, nothing else).
    """
    if not _UID_RE.fullmatch(study_uid or ""):
        raise InputError("a Study Instance UID is digits and dots, at most 64 characters")
    series = client.list_series(study_uid)
    if not series:
        raise PacsNotFound("the PACS has no study with this Study Instance UID (or the study is empty)")
    readable = [s for s in series if s.reason_not_readable is None]
    for s in readable:
        instances = client.list_instances(study_uid, s.series_uid)
        if instances:
            return instances[0], series
    found = sorted({s.modality or "?" for s in series})
    raise NoRadiograph(
        "this study has no radiograph to read (series found: "
        + (", ".join(found) if found else "none")
        + "); the models read CR/DX/DR/RF images only"
    )


def open_instance(client: PacsClient, instance: InstanceResult) -> OpenedImage:
    """Retrieve and decode one instance. InputError when it cannot be decoded."""
    from pydicom import dcmread

    data = client.retrieve_instance(instance)
    image = imaging.load_image(data, name=IMAGE_NAME)
    try:
        header = dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception as err:  # noqa: BLE001 - decoded above, so this is unexpected
        raise InputError(f"{IMAGE_NAME}: its header could not be read ({type(err).__name__})") from None
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID"):
        if not str(header.get(keyword, "")).strip():
            raise InputError(f"{IMAGE_NAME}: the header has no {keyword}, so no result can be linked to it")
    return OpenedImage(data=data, image=image, header=header, sha256=hashlib.sha256(data).hexdigest())


def simple_case_pdf(
    zoo: Any,
    image: imaging.LoadedImage,
    box: Sequence[float],
    roi_source: str,
    inputs: Mapping[str, Any],
    pred: Any,
    image_sha256: str,
    call: Call,
    jitter: JitterSummary | None = None,
    warnings: Sequence[str] = (),
) -> bytes:
    """The PDF case report without heatmaps (the command line's; the dashboard adds its CAMs).

    ``call`` is ``zoo.call(pred.p_ensemble, jitter)``, framed once by the caller and shared with
    the SR (:func:`prepare_writeback`); ``jitter`` is the summary it was framed with (printed)."""
    from model_zoo import report_pdf

    h, w = image.pixels.shape
    rep = report_pdf.CaseReport(
        zoo_name=zoo.release_name,
        zoo_version=zoo.version,
        call=call,
        threshold_rule=zoo.threshold_rule,
        p_members=pred.p_members,
        p_clinic=pred.p_clinic,
        jitter=jitter,
        warnings=list(warnings),
        disagreement=pred.disagreement,
        radiograph=image.pixels,
        image_size_wh=(w, h),
        roi_box=tuple(box),
        roi_source=roi_source,
        image_sha256=image_sha256,
        age=inputs.get("age"),
        sex=inputs.get("sex"),
        site=inputs.get("site"),
        zoo_files=zoo.files,
        manifest_sha256=manifest_sha256(zoo),
        intended_use=zoo.intended_use,
        image_tags={k: v for k, v in image.meta.display_tags.items() if k in ("Modality", "BodyPartExamined", "ViewPosition")},
        created=_dt.datetime.now(_dt.timezone.utc),
    )
    return report_pdf.build_case_report(rep, include_identifiers=False)


def prepare_writeback(
    header: Any,
    zoo: Any,
    pred: Any,
    *,
    box: Sequence[float],
    roi_source: str,
    inputs: Mapping[str, Any],
    pdf: bytes | None,
    call: Call,
) -> tuple[dict[str, Any], str]:
    """The objects to store ({"SR": ds, "PDF": ds}) and the result key that names them; ``call``
    is ``zoo.call(pred.p_ensemble, jitter)``, the same call the PDF was made with."""
    key = result_key(
        str(header.SOPInstanceUID), manifest_sha256(zoo), box, inputs.get("age"), inputs.get("sex"), inputs.get("site")
    )
    objects = {"SR": build_sr(header, zoo, pred, box=box, roi_source=roi_source, inputs=inputs, key=key, call=call)}
    if pdf is not None:
        objects["PDF"] = build_encapsulated_pdf(header, pdf, key=key)
    return objects, key
