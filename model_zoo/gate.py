"""Input gate: is this input something the models were trained to read?

Pure functions over what the loader found (``imaging.ImageMeta``) and the ROI, shared by
the Case page, the Batch page and ``python -m model_zoo predict``:

* :func:`check_modality` - DICOM Modality. Projection radiographs (CR, DX, DR, RF) pass;
  RG (film/screen) and OT (other, often a scanned film or secondary capture) pass with a
  warning; anything else (CT, MR, US, MG, NM, ...) is refused with the reason.
* :func:`check_body_part` - DICOM BodyPartExamined. A bone/limb/pelvis region gives a site
  suggestion (appendicular/axial); a region that is not (CHEST, HEAD, BRAIN, ABDOMEN, ...)
  or one this gate does not recognise gives a loud warning (to be acknowledged before a
  probability is shown) and no site suggestion.
* :func:`check_age` - DICOM PatientAge. Placeholders ("000Y"), ages above
  :data:`MAX_PLAUSIBLE_AGE` and unreadable values are not offered as a pre-fill.
* :func:`check_header` - all three as one :class:`GateResult`.
* :func:`roi_quality` - blocking problems with an ROI (tiny or featureless).

PNG/JPEG files carry none of these tags: they pass the header checks untouched (the
image-level checks on the Case page still apply to them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_zoo.imaging import ImageMeta, parse_dicom_age

__all__ = [
    "ACCEPTED_MODALITIES",
    "MAX_PLAUSIBLE_AGE",
    "MIN_ROI_CONTRAST",
    "MIN_ROI_SIDE",
    "WARN_MODALITIES",
    "GateResult",
    "check_age",
    "check_body_part",
    "check_header",
    "check_modality",
    "roi_quality",
]

# ----------------------------------------------------------------------------- modality

ACCEPTED_MODALITIES = frozenset({"CR", "DX", "DR", "RF"})
WARN_MODALITIES = {
    "RG": "DICOM Modality RG (film/screen radiograph, often a digitised film): the models were trained on "
    "digital radiographs; check the image quality",
    "OT": "DICOM Modality OT ('other', often a scanned film or a screenshot): check that this is a bone "
    "radiograph before reading the result",
}
_MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "MG": "mammography",
    "XA": "X-ray angiography",
    "IO": "intra-oral X-ray",
    "PX": "panoramic dental X-ray",
    "DG": "diaphanography",
    "ES": "endoscopy",
    "XC": "external camera photo",
    "SM": "slide microscopy",
    "OP": "ophthalmic photo",
    "SR": "structured report",
    "DOC": "document",
    "SEG": "segmentation",
    "RTIMAGE": "radiotherapy image",
    "BMD": "bone densitometry",
}


def check_modality(modality: str | None, *, source_format: str = "dicom") -> tuple[str | None, str | None]:
    """(refusal, warning) for a DICOM Modality; both None when it is a projection radiograph.

    PNG/JPEG (``source_format`` other than "dicom") carry no modality: (None, None).
    """
    if source_format != "dicom":
        return None, None
    m = str(modality or "").strip().upper()
    if not m:
        return None, (
            "the DICOM header has no Modality: check that this is a projection radiograph of bone before reading the result"
        )
    if m in ACCEPTED_MODALITIES:
        return None, None
    if m in WARN_MODALITIES:
        return None, WARN_MODALITIES[m]
    what = f" ({_MODALITY_NAMES[m]})" if m in _MODALITY_NAMES else ""
    return (
        f"DICOM Modality {m}{what} is not a projection radiograph: the models were trained on bone "
        f"radiographs ({', '.join(sorted(ACCEPTED_MODALITIES))}) only, so no prediction is made"
    ), None


# ----------------------------------------------------------------------------- body part

# DICOM BodyPartExamined (PS3.16 CID 4031 defined terms, concatenated as in the standard,
# and common free-text variants) -> site. The demo task's "axial" is the pelvis/spine/trunk
# skeleton; limbs and girdles are appendicular. Matching is on upper-case substrings with
# spaces and underscores removed.
_AXIAL_TERMS = (
    "PELVIS",
    "SACRUM",
    "COCCYX",
    "SPINE",
    "VERTEBRA",
    "RIB",
    "STERNUM",
    "HIPBONE",
    "ILIUM",
    "ISCHIUM",
    "PUBIS",
    "ACETABUL",
    "SIJOINT",
    "SACROILIAC",
)
_APPENDICULAR_TERMS = (
    "EXTREMITY",
    "ARM",
    "LEG",
    "KNEE",
    "ANKLE",
    "FOOT",
    "TOE",
    "HAND",
    "FINGER",
    "THUMB",
    "WRIST",
    "ELBOW",
    "SHOULDER",
    "HUMER",
    "FOREARM",
    "RADIUS",
    "ULNA",
    "FEMUR",
    "FEMOR",
    "THIGH",
    "TIBIA",
    "FIBULA",
    "CALCANEUS",
    "HEEL",
    "CLAVICLE",
    "SCAPULA",
    "LIMB",
    "PATELLA",
    "METACARP",
    "METATARS",
    "CARPUS",
    "TARSUS",
    "PHALANX",
)
# Regions that are not a bone/limb/pelvis film (chest, head, abdomen and their organs) or
# not a patient at all: a loud warning and no site suggestion.
_NOT_BONE_TERMS = (
    "CHEST",
    "THORAX",
    "LUNG",
    "HEART",
    "BREAST",
    "MAMMA",
    "HEAD",
    "BRAIN",
    "SKULL",
    "FACE",
    "ORBIT",
    "SINUS",
    "SELLA",
    "TMJ",
    "JAW",
    "MANDIBLE",
    "MAXILLA",
    "ZYGOMA",
    "NOSE",
    "NECK",
    "ABDOMEN",
    "ABD",
    "KIDNEY",
    "LIVER",
    "BLADDER",
    "PROSTATE",
    "UTERUS",
    "COLON",
    "BOWEL",
    "STOMACH",
    "KUB",
    "DENTAL",
    "TOOTH",
    "TEETH",
    "WHOLEBODY",
    "PHANTOM",
)
# "<bone> head/neck" names a part of a bone, not the head or neck.
_BONE_PART = re.compile(
    r"(FEMOR(AL)?|FEMUR|HUMER(AL|US)|RADI(AL|US)|FIBUL(AR|A)|METACARPAL|METATARSAL|RIB|TALAR|"
    r"TALUS)(HEAD|NECK)"
)


def check_body_part(body_part: str | None) -> tuple[str | None, str, str | None]:
    """(site suggestion, reason, warning) from DICOM BodyPartExamined.

    ``HIP`` maps to axial (the demo data's pelvis group holds the hip bone) with a note,
    because a proximal-femur lesion seen on a hip film is appendicular. A region that is
    not bone/limb/pelvis, or one not recognised, gives no suggestion and a warning.
    """
    if not body_part or not str(body_part).strip():
        return None, "no BodyPartExamined in the header", None
    shown = str(body_part).strip()
    bp = shown.upper().replace(" ", "").replace("_", "").replace("-", "")
    if any(term in _BONE_PART.sub("", bp) for term in _NOT_BONE_TERMS):
        return (
            None,
            f"BodyPartExamined {shown} is not a bone, limb or pelvis region: site not pre-filled",
            (
                f"BodyPartExamined is {shown}: the models were trained on radiographs of bone lesions in the limbs "
                "and pelvis, not on this region. A probability for this image means little."
            ),
        )
    if bp == "HIP" or bp.startswith("HIP") and not bp.startswith("HIPBONE"):
        return (
            "axial",
            (f"BodyPartExamined {shown} suggests axial (pelvis); choose appendicular if the lesion is in the femur"),
            None,
        )
    for term in _AXIAL_TERMS:
        if term in bp:
            return "axial", f"BodyPartExamined {shown} suggests axial", None
    for term in _APPENDICULAR_TERMS:
        if term in bp:
            return "appendicular", f"BodyPartExamined {shown} suggests appendicular", None
    return (
        None,
        f"BodyPartExamined {shown} is not a recognised bone region: site not pre-filled",
        (
            f"BodyPartExamined is {shown}, not a recognised bone, limb or pelvis region: check that this is a "
            "radiograph of a bone lesion before reading the result."
        ),
    )


# ----------------------------------------------------------------------------- age

MAX_PLAUSIBLE_AGE = 110.0  # years


def check_age(raw: str | None, parsed: float | None = None) -> tuple[float | None, str]:
    """(age to pre-fill or None, reason) from DICOM PatientAge (``raw``, as stored).

    ``parsed`` is ``ImageMeta.age`` when the raw value is unknown (then only the range is
    checked). A zero age ("000Y", "000D": the usual placeholder), more than
    :data:`MAX_PLAUSIBLE_AGE` years, or an unreadable value is not pre-filled.
    """
    if raw is None or not str(raw).strip():
        if parsed is None:
            return None, "no PatientAge in the header"
        years = float(parsed)
        shown = f"{years:g} years"
    else:
        shown = f"'{str(raw).strip()}'"
        parsed_age = parse_dicom_age(raw)
        if parsed_age is None:
            return None, f"PatientAge {shown} is not a DICOM age (e.g. 045Y): not pre-filled"
        years = parsed_age
    if not math.isfinite(years) or years <= 0.0:
        return None, f"PatientAge {shown} is a placeholder (zero age): not pre-filled"
    if years > MAX_PLAUSIBLE_AGE:
        return None, f"PatientAge {shown} is implausible (over {MAX_PLAUSIBLE_AGE:g} years): not pre-filled"
    return years, f"age {years:.0f} y from PatientAge" if years >= 1 else f"age {years:.2f} y from PatientAge"


# ----------------------------------------------------------------------------- header


@dataclass(frozen=True)
class GateResult:
    """What the header gate decided about one image.

    refusal : why no prediction may be made (None when the image passes).
    blocking : loud warnings that must be acknowledged before a probability is shown (a
        region that is not bone/limb/pelvis); ``predict`` records them in ``warning``.
    warnings : loud cautions shown beside the result (RG/OT or missing modality).
    age, site : the values that may be pre-filled (None: leave the field empty).
    age_note, site_note : where the pre-fill came from, or why there is none.
    """

    refusal: str | None = None
    blocking: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    age: float | None = None
    age_note: str = ""
    site: str | None = None
    site_note: str = ""

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def check_header(meta: ImageMeta) -> GateResult:
    """Modality, body part and age checks for one loaded image (PNG/JPEG: nothing to check)."""
    if meta.source_format != "dicom":
        return GateResult()
    refusal, modality_warning = check_modality(meta.modality, source_format=meta.source_format)
    site, site_note, site_warning = check_body_part(meta.body_part)
    age, age_note = check_age(meta.age_raw, None if meta.age_raw else meta.age)
    return GateResult(
        refusal=refusal,
        blocking=(site_warning,) if site_warning else (),
        warnings=(modality_warning,) if modality_warning else (),
        age=age,
        age_note=age_note,
        site=site,
        site_note=site_note,
    )


# ----------------------------------------------------------------------------- ROI

MIN_ROI_SIDE = 16  # px in the stored image: below this a crop is mostly upsampled noise/margin
MIN_ROI_CONTRAST = 0.02  # max - min of the [0, 1] pixels inside the ROI


def roi_quality(pixels: np.ndarray, box: Sequence[float]) -> list[str]:
    """Blocking problems with an ROI: tiny (< MIN_ROI_SIDE px a side) or featureless."""
    x0, y0, x1, y1 = (float(v) for v in box)
    out = []
    if (x1 - x0) < MIN_ROI_SIDE or (y1 - y0) < MIN_ROI_SIDE:
        out.append(
            f"the ROI is tiny ({x1 - x0:.0f} x {y1 - y0:.0f} px; at least {MIN_ROI_SIDE} px a side "
            "is needed): the models would mostly see upsampled margin"
        )
        return out
    ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    ix1, iy1 = min(pixels.shape[1], math.ceil(x1)), min(pixels.shape[0], math.ceil(y1))
    patch = pixels[iy0:iy1, ix0:ix1]
    if patch.size and float(patch.max() - patch.min()) < MIN_ROI_CONTRAST:
        out.append("the ROI is featureless (nearly one grey value): is it on the background?")
    return out
