"""Append-only audit log of what the dashboard computed (JSON lines, one event per line).

Each event records when a prediction was made, on which image (its sha256, never the
pixels), with which zoo release, ROI and clinical inputs, and what came out. It never holds
patient identifiers: keys that name one are refused (:data:`FORBIDDEN_KEYS`), so a caller
cannot log a name or an ID by accident.

Why ``os.O_APPEND`` and one ``write`` per event: with ``O_APPEND`` the kernel moves to the
end of the file and writes in one step, so lines from concurrent dashboard sessions (or
processes) never overwrite each other, and an existing line is never rewritten. The file
is created with mode 0600 (the log says who looked at which image when).

The log location is ``$MODEL_ZOO_AUDIT_LOG`` if set, else ``~/.cache/bone-zoo/audit.jsonl``
(outside the repository, so it is never committed).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "AUDIT_ENV",
    "FORBIDDEN_KEYS",
    "append_event",
    "default_audit_path",
    "gate_refusal_event",
    "ood_override_event",
    "prediction_event",
    "read_events",
]

AUDIT_ENV = "MODEL_ZOO_AUDIT_LOG"

# Lower-cased key names that identify a person, an accession or an institution. Checked
# at every nesting level. File names are included: uploads are often named after the
# patient. (A bare "name" is allowed: the zoo release has one.)
FORBIDDEN_KEYS = frozenset(
    {
        "patient_name",
        "patientname",
        "patient_id",
        "patientid",
        "mrn",
        "accession",
        "accession_number",
        "accessionnumber",
        "birth_date",
        "birthdate",
        "patient_birth_date",
        "patientbirthdate",
        "address",
        "phone",
        "institution",
        "institution_name",
        "institutionname",
        "referring_physician",
        "identifiers",
        "identifier",
        "file_name",
        "filename",
    }
)


def default_audit_path() -> Path:
    """``$MODEL_ZOO_AUDIT_LOG`` if set (and non-empty), else ``~/.cache/bone-zoo/audit.jsonl``."""
    env = os.environ.get(AUDIT_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "bone-zoo" / "audit.jsonl"


def _clean(value: Any, where: str) -> Any:
    """JSON-safe copy: NaN/inf -> None, tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = str(k)
            if key.strip().lower() in FORBIDDEN_KEYS:
                raise ValueError(f"audit event must not contain identifier field {where}{key!r}")
            out[key] = _clean(v, f"{where}{key}.")
        return out
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_clean(v, where) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"audit event field {where.rstrip('.') or 'value'} has unsupported type {type(value).__name__}")


def append_event(path: str | os.PathLike[str] | None, event: Mapping[str, Any]) -> dict[str, Any]:
    """Append one event as one JSON line; return the dict actually written.

    Parameters
    ----------
    path : log file (created with its folder if missing); None = :func:`default_audit_path`.
    event : JSON-able mapping. ``time`` (UTC, ISO 8601) is added when absent.

    Raises
    ------
    ValueError
        The event has an identifier key (:data:`FORBIDDEN_KEYS`) or is not a mapping.
    TypeError
        A value cannot be represented in JSON.
    OSError
        The log cannot be written (the caller decides whether that stops the action).
    """
    if not isinstance(event, Mapping):
        raise ValueError("audit event must be a mapping")
    record = _clean(event, "")
    record.setdefault("time", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    line = (json.dumps(record, sort_keys=True, allow_nan=False, ensure_ascii=True) + "\n").encode("ascii")
    target = Path(path) if path is not None else default_audit_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(fd, line)
        # A regular-file write is not split in practice; loop for the pathological case.
        while written < len(line):
            written += os.write(fd, line[written:])
    finally:
        os.close(fd)
    return record


def read_events(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """All events of a log (oldest first); a missing file is an empty log.

    Raises
    ------
    ValueError
        A line is not valid JSON (the message names the line number).
    """
    target = Path(path) if path is not None else default_audit_path()
    if not target.is_file():
        return []
    events = []
    with open(target, encoding="ascii") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"audit log {target}: line {number} is not JSON ({err.msg})") from None
    return events


def _box(box: Sequence[float] | None) -> list[float] | None:
    return None if box is None else [round(float(v), 2) for v in box]


def prediction_event(
    *,
    image_sha256: str,
    zoo_name: str,
    zoo_version: str,
    roi_box: Sequence[float] | None,
    roi_source: str,
    age: float | None,
    sex: str | None,
    site: str | None,
    p_ensemble: float,
    p_members: Mapping[str, float],
    p_clinic: float | None,
    threshold: float,
    label: str,
    source: str = "dashboard",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The standard ``case_prediction`` event (no identifiers by construction)."""
    event: dict[str, Any] = {
        "event": "case_prediction",
        "source": source,
        "image_sha256": image_sha256,
        "zoo": {"name": zoo_name, "version": zoo_version},
        "roi": _box(roi_box),
        "roi_source": roi_source,
        "inputs": {"age": age, "sex": sex, "site": site},
        "outputs": {
            "p_ensemble": float(p_ensemble),
            "p_members": {k: float(v) for k, v in p_members.items()},
            "p_clinic": None if p_clinic is None else float(p_clinic),
            "threshold": float(threshold),
            "label": label,
        },
    }
    if extra:
        event.update(dict(extra))
    return event


def ood_override_event(
    *,
    image_sha256: str,
    zoo_name: str,
    zoo_version: str,
    roi_box: Sequence[float] | None,
    roi_source: str,
    ood_score: float,
    ood_threshold: float,
    source: str = "dashboard",
) -> dict[str, Any]:
    """The ``ood_override`` event: a user chose to see the result for an image the release's
    out-of-distribution check flagged (no identifiers by construction)."""
    return {
        "event": "ood_override",
        "source": source,
        "image_sha256": image_sha256,
        "zoo": {"name": zoo_name, "version": zoo_version},
        "roi": _box(roi_box),
        "roi_source": roi_source,
        "ood": {"score": float(ood_score), "threshold": float(ood_threshold), "flagged": True},
    }


def gate_refusal_event(
    *,
    image_sha256: str,
    zoo_name: str,
    zoo_version: str,
    reason: str,
    source: str = "dashboard",
) -> dict[str, Any]:
    """The ``gate_refusal`` event: the input gate (``model_zoo.gate``) refused an image, so no
    prediction was made. ``reason`` is the gate's own sentence (it names the modality, never
    a person)."""
    return {
        "event": "gate_refusal",
        "source": source,
        "image_sha256": image_sha256,
        "zoo": {"name": zoo_name, "version": zoo_version},
        "reason": reason,
    }
