"""PACS in and out over DICOMweb: search (QIDO-RS), open one image (WADO-RS), write the result
back into the same study (STOW-RS) as a DICOM Comprehensive SR plus the PDF report.

Pure logic, no Streamlit: ``dashboard/pacs_ui.py`` and ``python -m model_zoo pacs`` both use it.
Heavy imports (dicomweb-client, highdicom) happen on first use.
"""

from model_zoo.pacs.client import (
    RADIOGRAPH_MODALITIES,
    InstanceResult,
    PacsClient,
    SeriesResult,
    StoreOutcome,
    StudyQuery,
    StudyResult,
    modality_reason,
)
from model_zoo.pacs.errors import (
    NoRadiograph,
    PacsAuthError,
    PacsConfigError,
    PacsError,
    PacsNotFound,
    PacsRefused,
    PacsTimeout,
    PacsUnavailable,
)
from model_zoo.pacs.settings import PacsSettings, load_settings, read_secrets_files
from model_zoo.pacs.study import OpenedImage, first_radiograph, open_instance, prepare_writeback, simple_case_pdf
from model_zoo.pacs.writeback import WriteBackResult, write_back

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "InstanceResult",
    "NoRadiograph",
    "OpenedImage",
    "PacsAuthError",
    "PacsClient",
    "PacsConfigError",
    "PacsError",
    "PacsNotFound",
    "PacsRefused",
    "PacsSettings",
    "PacsTimeout",
    "PacsUnavailable",
    "SeriesResult",
    "StoreOutcome",
    "StudyQuery",
    "StudyResult",
    "WriteBackResult",
    "first_radiograph",
    "load_settings",
    "modality_reason",
    "open_instance",
    "prepare_writeback",
    "read_secrets_files",
    "simple_case_pdf",
    "write_back",
]
