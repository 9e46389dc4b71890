"""PACS connection settings: ``[pacs]`` in ``.streamlit/secrets.toml`` and/or environment variables.

```toml
[pacs]
url = "https://pacs.example-hospital.org/dicom-web"   # the DICOMweb root (QIDO/WADO/STOW)
username = "zoo-reader"      # HTTP basic auth, or ...
password = "..."
# token = "..."              # ... a bearer token (OAuth2 access token) instead
timeout = 20                 # seconds, per request
verify = true                # TLS: true, false, or the path of the hospital's CA bundle
```

Each key can also come from ``MODEL_ZOO_PACS_<KEY>`` (``MODEL_ZOO_PACS_URL``, ...); an
environment variable overrides the file. PACS is "configured" when a URL is set.

Credentials never appear in ``repr``, in log records or in error messages: the settings'
``repr`` masks them, and every message names the server by :attr:`PacsSettings.display_url`
(scheme, host, port and path only).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from model_zoo.pacs.errors import PacsConfigError

__all__ = ["ENV_PREFIX", "PacsSettings", "load_settings", "read_secrets_files"]

ENV_PREFIX = "MODEL_ZOO_PACS_"
_KEYS = ("url", "username", "password", "token", "timeout", "verify")
DEFAULT_TIMEOUT = 20.0


@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is and how to sign in. ``verify``: True, False or a CA-bundle path."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str = True

    def __post_init__(self) -> None:
        _check_url(self.url)
        if self.password is not None and self.token is not None:
            raise PacsConfigError("[pacs] has both a password and a token: keep one")
        if self.password is not None and not self.username:
            raise PacsConfigError("[pacs] has a password but no username")
        if not (isinstance(self.timeout, (int, float)) and 0 < float(self.timeout) <= 600):
            raise PacsConfigError("[pacs] timeout must be a number of seconds between 0 and 600")
        if isinstance(self.verify, str) and not Path(self.verify).expanduser().is_file():
            raise PacsConfigError(f"[pacs] verify names a CA bundle that does not exist: {self.verify}")

    def __repr__(self) -> str:  # never the password or token, only whether one is set
        return (
            f"PacsSettings(url={self.display_url!r}, auth={self.auth_kind!r}, timeout={self.timeout:g}, verify={self.verify!r})"
        )

    @property
    def auth_kind(self) -> str:
        """``basic``, ``token`` or ``none``."""
        if self.token:
            return "token"
        return "basic" if self.username else "none"

    @property
    def display_url(self) -> str:
        """The URL as shown in messages: scheme://host[:port]/path, nothing else."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def transport_warning(self) -> str | None:
        """A sentence when credentials would cross the network unencrypted (plain HTTP to a
        host other than this machine); None otherwise."""
        parts = urlsplit(self.url)
        if parts.scheme != "http" or self.auth_kind == "none" or _is_loopback(parts.hostname or ""):
            return None
        return (
            "the PACS URL is plain http to another machine: the credentials and the images cross "
            "the network unencrypted; use https"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: Any) -> None:
    if not isinstance(url, str) or not url.strip():
        raise PacsConfigError("[pacs] url must be the DICOMweb root, e.g. https://pacs.example.org/dicom-web")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise PacsConfigError("[pacs] url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsConfigError("[pacs] url must start with https:// (or http://) and name a host")
    if parts.username is not None or parts.password is not None:
        # Never echo the URL here: it holds a credential.
        raise PacsConfigError(
            "[pacs] url must not contain a user name or password; set [pacs] username and password (or token) instead"
        )
    if parts.query or parts.fragment:
        raise PacsConfigError("[pacs] url must be the DICOMweb root without a query (?...) or fragment (#...)")


def _as_bool_or_path(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    return text  # a CA bundle path


def load_settings(secrets: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> PacsSettings | None:
    """Settings from ``secrets["pacs"]`` overridden by ``MODEL_ZOO_PACS_*``; None when no URL is set.

    Raises
    ------
    PacsConfigError
        A setting is present but unusable (the message names the key, never a secret value).
    """
    env = os.environ if environ is None else environ
    section = (secrets or {}).get("pacs") or {}
    if not isinstance(section, Mapping):
        raise PacsConfigError("[pacs] in secrets.toml must be a table ([pacs] with key = value lines)")
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise PacsConfigError(f"[pacs] has unknown keys: {', '.join(unknown)} (known: {', '.join(_KEYS)})")
    values: dict[str, Any] = {k: section[k] for k in _KEYS if k in section}
    for key in _KEYS:
        raw = env.get(ENV_PREFIX + key.upper())
        if raw is not None and raw.strip() != "":
            values[key] = raw.strip()
    if not values.get("url"):
        if any(values.get(k) for k in ("username", "password", "token")):
            raise PacsConfigError("PACS credentials are set but no [pacs] url (or MODEL_ZOO_PACS_URL)")
        return None
    try:
        timeout = float(values.get("timeout", DEFAULT_TIMEOUT))
    except (TypeError, ValueError):
        raise PacsConfigError("[pacs] timeout must be a number of seconds") from None
    text = {k: (str(values[k]) if values.get(k) not in (None, "") else None) for k in ("username", "password", "token")}
    return PacsSettings(
        url=str(values["url"]).strip(),
        username=text["username"],
        password=text["password"],
        token=text["token"],
        timeout=timeout,
        verify=_as_bool_or_path(values.get("verify", True)),
    )


def read_secrets_files(paths: list[Path] | None = None) -> dict[str, Any]:
    """The merged Streamlit secrets files (``~/.streamlit/secrets.toml``, then
    ``./.streamlit/secrets.toml``), for the command line; {} when none exists.

    Raises
    ------
    PacsConfigError
        A file exists but is not valid TOML (its path is named; never its content).
    """
    if paths is None:
        paths = [Path.home() / ".streamlit" / "secrets.toml", Path.cwd() / ".streamlit" / "secrets.toml"]
    merged: dict[str, Any] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise PacsConfigError(f"could not read {path} ({type(err).__name__}); fix its TOML syntax") from None
        for key, value in data.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged
