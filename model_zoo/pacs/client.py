"""DICOMweb client: QIDO-RS search, WADO-RS retrieval of one instance, STOW-RS storage.

A thin layer over ``dicomweb-client`` that

- turns every transport failure into a one-line :class:`~model_zoo.pacs.errors.PacsError`
  (stopped server, refused credentials, timeout, server error) that names the server by its
  display URL and never carries a credential, a UID or a search term;
- returns typed results (:class:`StudyResult`, :class:`SeriesResult`, :class:`InstanceResult`)
  whose ``repr`` holds no identifier, so an accidental log line leaks nothing;
- sends QIDO query values with only the necessary percent-encoding: Orthanc 1.10 with the
  DICOMweb plugin 1.7 matches the raw query text, so ``PatientName=Doe%2A`` (what
  ``urllib.parse.quote_plus`` makes of ``Doe*``) finds nothing while ``Doe*`` works;
- does not retry: ``dicomweb-client`` retries every exception five times with exponential
  back-off by default, which turns a stopped server into a 30 s hang;
- keeps ``dicomweb-client``'s INFO/DEBUG records (they hold UIDs) and urllib3's request
  lines (their paths hold UIDs and search terms) out of the logs (:func:`install_log_redaction`).
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar
from urllib.parse import quote

from model_zoo.errors import InputError
from model_zoo.pacs.errors import PacsAuthError, PacsError, PacsNotFound, PacsRefused, PacsTimeout, PacsUnavailable
from model_zoo.pacs.settings import PacsSettings

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "InstanceResult",
    "PacsClient",
    "SeriesResult",
    "StoreOutcome",
    "StudyQuery",
    "StudyResult",
    "install_log_redaction",
    "modality_reason",
    "radiograph_series",
]

LOG = logging.getLogger("model_zoo.pacs")
T = TypeVar("T")

# Projection radiography: computed (CR), digital (DX; "DR" is a common vendor spelling) and
# radiofluoroscopy (RF) images. Everything else is listed but not opened.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RF")
_OTHER_MODALITIES = {
    "CT": "CT is cross-sectional imaging",
    "MR": "MR is cross-sectional imaging",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "PET",
    "MG": "mammography",
    "XA": "angiography",
    "SR": "a structured report, not an image",
    "DOC": "a document, not an image",
    "PR": "a presentation state, not an image",
    "KO": "a key-object selection, not an image",
    "SEG": "a segmentation, not an image",
    "OT": "'other' (often a screenshot or secondary capture)",
}


def modality_reason(modality: str | None) -> str | None:
    """None for a radiograph modality; else a short reason why the models cannot read it."""
    mod = (modality or "").strip().upper()
    if mod in RADIOGRAPH_MODALITIES:
        return None
    what = _OTHER_MODALITIES.get(mod, f"modality {mod or 'not given'}")
    return f"not a radiograph ({what}); the models read projection radiographs ({'/'.join(RADIOGRAPH_MODALITIES)})"


# ----------------------------------------------------------------------------- log redaction

_PATH_RE = re.compile(r"(/(?:studies|series|instances)\b[^\s\"']*|\?[^\s\"']*)")


class _RedactFilter(logging.Filter):
    """Drops dicomweb-client's INFO/DEBUG records and strips DICOMweb paths/queries from the rest
    (and from urllib3's request lines)."""

    def __init__(self, drop_below: int) -> None:
        super().__init__()
        self.drop_below = drop_below

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.drop_below:
            return False
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        redacted = _PATH_RE.sub("/<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTION_INSTALLED = False


def install_log_redaction() -> None:
    """Idempotent: attach the redacting filters to dicomweb-client's and urllib3's loggers."""
    global _REDACTION_INSTALLED
    if _REDACTION_INSTALLED:
        return
    for name in ("dicomweb_client.web", "dicomweb_client.session_utils", "dicomweb_client.api"):
        logging.getLogger(name).addFilter(_RedactFilter(logging.WARNING))
    logging.getLogger("urllib3.connectionpool").addFilter(_RedactFilter(logging.NOTSET))
    _REDACTION_INSTALLED = True


# ----------------------------------------------------------------------------- typed results


def _first(item: Mapping[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _text(item: Mapping[str, Any], tag: str) -> str:
    value = _first(item, tag)
    if isinstance(value, Mapping):  # PN in DICOM JSON: {"Alphabetic": "Doe^Jane"}
        value = value.get("Alphabetic") or value.get("Ideographic") or ""
    return "" if value is None else str(value)


def _int(item: Mapping[str, Any], tag: str) -> int | None:
    value = _first(item, tag)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _all(item: Mapping[str, Any], tag: str) -> tuple[str, ...]:
    return tuple(str(v) for v in (item.get(tag) or {}).get("Value") or [] if v is not None)


@dataclass(frozen=True, repr=False)
class StudyResult:
    """One study from a QIDO search. Holds identifiers (for display); its repr does not."""

    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    accession: str = ""
    study_date: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()
    n_series: int | None = None
    n_instances: int | None = None

    @property
    def has_radiograph(self) -> bool:
        return any(m.upper() in RADIOGRAPH_MODALITIES for m in self.modalities)

    def __repr__(self) -> str:
        return f"StudyResult(<identifiers hidden>, modalities={self.modalities}, n_series={self.n_series})"

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> StudyResult:
        return cls(
            study_uid=_text(item, "0020000D"),
            patient_id=_text(item, "00100020"),
            patient_name=_text(item, "00100010").replace("^", " ").strip(),
            birth_date=_text(item, "00100030"),
            accession=_text(item, "00080050"),
            study_date=_text(item, "00080020"),
            description=_text(item, "00081030"),
            modalities=_all(item, "00080061"),
            n_series=_int(item, "00201206"),
            n_instances=_int(item, "00201208"),
        )


@dataclass(frozen=True, repr=False)
class SeriesResult:
    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    n_instances: int | None = None
    body_part: str = ""

    @property
    def reason_not_readable(self) -> str | None:
        return modality_reason(self.modality)

    def __repr__(self) -> str:
        return f"SeriesResult(<identifiers hidden>, modality={self.modality!r}, n_instances={self.n_instances})"

    @classmethod
    def from_json(cls, item: Mapping[str, Any], study_uid: str) -> SeriesResult:
        return cls(
            study_uid=_text(item, "0020000D") or study_uid,
            series_uid=_text(item, "0020000E"),
            modality=_text(item, "00080060"),
            description=_text(item, "0008103E"),
            number=_int(item, "00200011"),
            n_instances=_int(item, "00201209"),
            body_part=_text(item, "00180015"),
        )


@dataclass(frozen=True, repr=False)
class InstanceResult:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""
    number: int | None = None
    rows: int | None = None
    columns: int | None = None
    modality: str = ""

    def __repr__(self) -> str:
        return f"InstanceResult(<identifiers hidden>, modality={self.modality!r}, number={self.number})"

    @classmethod
    def from_json(cls, item: Mapping[str, Any], study_uid: str, series_uid: str | None = None) -> InstanceResult:
        return cls(
            study_uid=_text(item, "0020000D") or study_uid,
            series_uid=_text(item, "0020000E") or (series_uid or ""),
            sop_uid=_text(item, "00080018"),
            sop_class_uid=_text(item, "00080016"),
            number=_int(item, "00200013"),
            rows=_int(item, "00280010"),
            columns=_int(item, "00280011"),
            modality=_text(item, "00080060"),
        )


@dataclass(frozen=True)
class StoreOutcome:
    """What STOW-RS answered: counts only (the UIDs stay with the caller)."""

    accepted: int
    failed: int
    http_status: int
    failed_reasons: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------- query


_FORBIDDEN_CHARS = re.compile(r"[\\\x00-\x1f\x7f&#=]")


def _clean_term(value: str, what: str) -> str:
    value = (value or "").strip()
    if _FORBIDDEN_CHARS.search(value):
        raise InputError(f"the {what} may not contain a backslash, control characters or & # =")
    if len(value) > 64:
        raise InputError(f"the {what} is longer than 64 characters")
    return value


@dataclass(frozen=True, repr=False)
class StudyQuery:
    """A QIDO-RS study search. Empty fields do not filter.

    ``patient_name`` matches name parts in order, case-insensitively on most servers
    ("doe jane" -> ``doe*jane*``). ``modality``: ``radiographs`` (CR/DX/DR/RF),
    one modality code, or ``any``.
    """

    patient_id: str = ""
    patient_name: str = ""
    accession: str = ""
    date_from: _dt.date | None = None
    date_to: _dt.date | None = None
    modality: str = "radiographs"
    limit: int = 50

    def __repr__(self) -> str:
        return f"StudyQuery(<terms hidden>, modality={self.modality!r}, limit={self.limit})"

    def params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        pid = _clean_term(self.patient_id, "patient ID")
        if pid:
            out["PatientID"] = pid
        name = _clean_term(self.patient_name, "patient name")
        if name:
            parts = [p for p in re.split(r"[\s^,]+", name) if p]
            pattern = "*".join(parts)
            out["PatientName"] = pattern if pattern.endswith("*") else pattern + "*"
        acc = _clean_term(self.accession, "accession number")
        if acc:
            out["AccessionNumber"] = acc
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise InputError("the study date range ends before it starts")
        if self.date_from or self.date_to:
            lo = self.date_from.strftime("%Y%m%d") if self.date_from else ""
            hi = self.date_to.strftime("%Y%m%d") if self.date_to else ""
            out["StudyDate"] = lo if lo == hi else f"{lo}-{hi}"
        mod = (self.modality or "any").strip()
        if mod.lower() == "radiographs":
            out["ModalitiesInStudy"] = ",".join(RADIOGRAPH_MODALITIES)
        elif mod.lower() != "any":
            if not re.fullmatch(r"[A-Za-z0-9]{1,16}", mod):
                raise InputError("the modality must be a DICOM modality code such as CR or DX")
            out["ModalitiesInStudy"] = mod.upper()
        return out


# ----------------------------------------------------------------------------- the client


def _query_string(params: Mapping[str, Any]) -> str:
    """Percent-encode only what must be: DICOM wildcards (* ?) and commas stay literal."""
    parts = []
    for key, value in params.items():
        for item in value if isinstance(value, (list, tuple, set)) else [value]:
            parts.append(f"{quote(str(key), safe='')}={quote(str(item), safe='*?,-._:')}")
    return "&".join(parts)


def _make_dicomweb_client(settings: PacsSettings, session: Any = None) -> Any:
    import requests
    from dicomweb_client.api import DICOMwebClient

    class _Client(DICOMwebClient):  # only the query encoding differs (see the module docstring)
        def _http_get(self, url, params=None, headers=None, stream=False):
            if params:
                url = f"{url}?{_query_string(params)}"
            return super()._http_get(url, None, headers, stream)

    if session is None:
        session = requests.Session()
    session.verify = settings.verify if isinstance(settings.verify, bool) else str(settings.verify)
    headers = {}
    if settings.auth_kind == "basic":
        session.auth = (settings.username or "", settings.password or "")
    elif settings.auth_kind == "token":
        headers["Authorization"] = f"Bearer {settings.token}"
    timeout = float(settings.timeout)
    client = _Client(settings.base_url, session=session, headers=headers or None, timeout=(min(timeout, 10.0), timeout))
    client.set_http_retry_params(retry=False)
    return client


class PacsClient:
    """QIDO/WADO/STOW against one DICOMweb server. Every method raises only
    :class:`~model_zoo.pacs.errors.PacsError` (or :class:`~model_zoo.errors.InputError` for
    a bad query)."""

    def __init__(self, settings: PacsSettings, *, session: Any = None) -> None:
        install_log_redaction()
        self.settings = settings
        self._client = _make_dicomweb_client(settings, session)

    def __repr__(self) -> str:
        return f"PacsClient({self.settings!r})"

    # -- error mapping -----------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request; translate every failure into a PacsError without identifiers."""
        import requests

        where = self.settings.display_url
        try:
            return fn()
        except requests.exceptions.SSLError:
            raise PacsUnavailable(
                f"TLS verification failed for the PACS at {where} while trying to {what}; "
                "set [pacs] verify to the hospital's CA bundle"
            ) from None
        except (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout, requests.exceptions.Timeout):
            raise PacsTimeout(
                f"the PACS at {where} did not answer within {self.settings.timeout:g} s while trying to {what}"
            ) from None
        except requests.exceptions.ConnectionError:
            raise PacsUnavailable(
                f"the PACS at {where} is not reachable (is it running? is the URL right?); could not {what}"
            ) from None
        except requests.exceptions.HTTPError as err:
            status = getattr(err.response, "status_code", None)
            raise _http_error(status, what, where) from None
        except requests.exceptions.RequestException as err:
            raise PacsError(f"the request to the PACS at {where} failed ({type(err).__name__}) while trying to {what}") from None
        except (PacsError, InputError):
            raise
        except Exception as err:  # noqa: BLE001 - a malformed answer (HTML, bad JSON, bad multipart)
            raise PacsError(
                f"the PACS at {where} sent an answer that could not be read ({type(err).__name__}) while trying to {what}"
            ) from None

    # -- QIDO-RS -----------------------------------------------------------------------------
    def check(self) -> float:
        """One tiny QIDO search; returns the seconds it took."""
        start = time.perf_counter()
        self._call("search for studies", lambda: self._client.search_for_studies(limit=1, fields=["StudyDate"]))
        return time.perf_counter() - start

    def search_studies(self, query: StudyQuery) -> list[StudyResult]:
        params = query.params()
        found = self._call(
            "search for studies",
            lambda: self._client.search_for_studies(
                search_filters=params,
                limit=int(query.limit),
                fields=[
                    "ModalitiesInStudy",
                    "StudyDescription",
                    "NumberOfStudyRelatedSeries",
                    "NumberOfStudyRelatedInstances",
                    "PatientBirthDate",
                ],
            ),
        )
        studies = [StudyResult.from_json(item) for item in found or []]
        return sorted(studies, key=lambda s: s.study_date, reverse=True)

    def list_series(self, study_uid: str) -> list[SeriesResult]:
        found = self._call(
            "list the series of a study",
            lambda: self._client.search_for_series(
                study_uid, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances", "BodyPartExamined"]
            ),
        )
        series = [SeriesResult.from_json(item, study_uid) for item in found or []]
        return sorted(series, key=lambda s: (s.number is None, s.number or 0))

    def list_instances(
        self, study_uid: str, series_uid: str | None = None, *, sop_uid: str | None = None
    ) -> list[InstanceResult]:
        filters = {"SOPInstanceUID": sop_uid} if sop_uid else None
        found = self._call(
            "list the images of a series",
            lambda: self._client.search_for_instances(
                study_uid, series_uid, search_filters=filters, fields=["Rows", "Columns", "Modality"]
            ),
        )
        instances = [InstanceResult.from_json(item, study_uid, series_uid) for item in found or []]
        return sorted(instances, key=lambda i: (i.number is None, i.number or 0))

    def instance_exists(self, study_uid: str, sop_uid: str) -> bool:
        """Is this SOP instance in the study? (a QIDO re-query, not the STOW answer)."""
        return any(i.sop_uid == sop_uid for i in self.list_instances(study_uid, sop_uid=sop_uid))

    # -- WADO-RS -----------------------------------------------------------------------------
    def retrieve_instance(self, instance: InstanceResult) -> bytes:
        """The instance as a DICOM Part 10 file, in the transfer syntax it is stored in."""
        from pydicom import dcmwrite

        ds = self._call(
            "retrieve the image",
            lambda: self._client.retrieve_instance(
                instance.study_uid, instance.series_uid, instance.sop_uid, media_types=(("application/dicom", "*"),)
            ),
        )
        buf = io.BytesIO()
        try:
            dcmwrite(buf, ds, enforce_file_format=False)
        except Exception as err:  # noqa: BLE001
            raise InputError(f"the image from the PACS could not be re-encoded ({type(err).__name__})") from None
        return buf.getvalue()

    def thumbnail(self, instance: InstanceResult) -> bytes | None:
        """A rendered JPEG of the instance (WADO-RS /rendered), or None where the server has none."""
        try:
            return self._call(
                "render a thumbnail",
                lambda: self._client.retrieve_instance_rendered(
                    instance.study_uid, instance.series_uid, instance.sop_uid, media_types=("image/jpeg",)
                ),
            )
        except PacsError:
            return None

    # -- STOW-RS -----------------------------------------------------------------------------
    def store(self, datasets: Sequence[Any], study_uid: str) -> StoreOutcome:
        """Store datasets into ``study_uid``. Raises PacsRefused when the server says no."""
        import requests

        def run() -> StoreOutcome:
            try:
                response = self._client.store_instances(list(datasets), study_instance_uid=study_uid)
            except requests.exceptions.HTTPError as err:
                status = getattr(err.response, "status_code", 0) or 0
                if status in (401, 403, 404) or status >= 500:
                    raise
                # 400/409/413/415: the server refused (some or all) objects.
                raise PacsRefused(
                    f"the PACS at {self.settings.display_url} refused to store the result (HTTP {status}); nothing was saved"
                ) from None
            failed = list(getattr(response, "FailedSOPSequence", []) or [])
            referenced = list(getattr(response, "ReferencedSOPSequence", []) or [])
            reasons = tuple(
                f"failure reason {int(item.FailureReason):#06x}" if "FailureReason" in item else "no reason given"
                for item in failed
            )
            return StoreOutcome(accepted=len(referenced), failed=len(failed), http_status=200, failed_reasons=reasons)

        return self._call("store the result", run)


def _http_error(status: int | None, what: str, where: str) -> PacsError:
    if status == 401:
        return PacsAuthError(f"PACS refused the credentials (HTTP 401) at {where}; check [pacs] username and password (or token)")
    if status == 403:
        return PacsAuthError(f"PACS refused the credentials (HTTP 403: this account may not {what}) at {where}")
    if status == 404:
        return PacsNotFound(f"the PACS at {where} has no such object (HTTP 404) - could not {what}")
    if status in (408, 504):
        return PacsTimeout(f"the PACS at {where} timed out (HTTP {status}) while trying to {what}")
    if status == 503:
        return PacsUnavailable(f"the PACS at {where} is unavailable (HTTP 503); could not {what}")
    return PacsError(f"the PACS at {where} answered HTTP {status} while trying to {what}")


def radiograph_series(series: Iterable[SeriesResult]) -> list[SeriesResult]:
    return [s for s in series if s.reason_not_readable is None]
