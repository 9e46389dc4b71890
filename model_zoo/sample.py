"""The bundled sample case: a real computed radiograph from ``pydicom-data``.

``RG3_UNCR.dcm`` is a 1760 x 1760 MONOCHROME1 CR of a distal tibia and fibula (AP view)
with a benign, lobulated lucent lesion of the distal tibial metaphysis (non-ossifying
fibroma). It ships in the PyPI package ``pydicom-data``, so the dashboard can offer a real
DICOM without any patient data in the repository.

The default ROI was chosen by eye on the loaded image (pixels as ``imaging.load_image``
returns them, 1 = bright bone): the lucent lesion spans roughly x 795-910, y 1000-1195;
the box adds a few pixels of cortex around it. Each member adds its own context margin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_zoo.errors import InputError

__all__ = ["SAMPLE_FILE", "SAMPLE_ROI", "sample_case"]

SAMPLE_FILE = "RG3_UNCR.dcm"
# (x0, y0, x1, y1) in stored-image pixels of the 1760 x 1760 image, x1/y1 exclusive.
SAMPLE_ROI: tuple[float, float, float, float] = (780.0, 985.0, 925.0, 1205.0)


def sample_case() -> dict[str, Any]:
    """Path, default ROI and clinical values of the sample radiograph.

    Returns
    -------
    dict
        ``path`` (Path to the DICOM), ``roi_box`` (x0, y0, x1, y1), ``age`` (None: the
        header has no PatientAge), ``sex`` ("F", from PatientSex), ``site``
        ("appendicular": distal tibia), ``description`` (one line).

    Raises
    ------
    InputError
        When ``pydicom-data`` (or its RG3 file) is not installed.
    """
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(SAMPLE_FILE)
    except Exception:  # noqa: BLE001 - any failure means "sample not available"
        found = None
    if not found or not Path(found).is_file():
        raise InputError(f"sample case {SAMPLE_FILE} not found: install the 'pydicom-data' package")
    return {
        "path": Path(found),
        "roi_box": SAMPLE_ROI,
        "age": None,
        "sex": "F",
        "site": "appendicular",
        "description": (
            "pydicom-data RG3: computed radiograph (AP) of a distal tibia with a benign "
            "lucent metaphyseal lesion (non-ossifying fibroma); age not recorded in the header"
        ),
    }
