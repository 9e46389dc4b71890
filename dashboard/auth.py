"""Optional access control for the dashboard: none, a shared password, or OIDC (``st.login``).

Which one applies is read from Streamlit secrets (``.streamlit/secrets.toml``, never
committed) or the environment, in this order:

1. ``[auth]`` section (Streamlit's own OIDC settings: ``redirect_uri``, ``cookie_secret``,
   ``client_id``, ``client_secret``, ``server_metadata_url``, or named providers such as
   ``[auth.microsoft]``) -> OIDC sign-in through ``st.login``.
2. ``[dashboard] password_hash = "pbkdf2_sha256$..."`` or ``$DASHBOARD_PASSWORD_HASH`` ->
   one shared password (make the hash with ``python -m dashboard.auth``; the password
   itself is never stored).
3. Neither -> open, which is only safe because the server binds to localhost by default
   (``.streamlit/config.toml``).

Pure functions here (tested without Streamlit); the page gate is ``common.require_access``.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model_zoo.errors import InputError

PASSWORD_ENV = "DASHBOARD_PASSWORD_HASH"
SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000  # OWASP 2023 guidance for PBKDF2-HMAC-SHA256


@dataclass(frozen=True)
class AccessPolicy:
    mode: str  # "none" | "password" | "oidc"
    password_hash: str | None = None
    provider: str | None = None  # OIDC provider name for st.login (None = the [auth] defaults)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>`` for ``password``."""
    if not password:
        raise InputError("the password must not be empty")
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, int(iterations))
    return f"{SCHEME}${int(iterations)}${salt.hex()}${digest.hex()}"


def parse_password_hash(encoded: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, digest) of an encoded hash; InputError saying what is wrong otherwise."""
    parts = str(encoded).strip().split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise InputError(
            f"the configured dashboard password hash is not of the form "
            f"{SCHEME}$<iterations>$<salt>$<hash>; make one with `python -m dashboard.auth`"
        )
    try:
        iterations, salt, digest = int(parts[1]), bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
    except ValueError:
        raise InputError(
            "the configured dashboard password hash has a non-numeric iteration count "
            "or non-hex salt/hash; make a new one with `python -m dashboard.auth`"
        ) from None
    if iterations < 1 or not salt or len(digest) != 32:
        raise InputError("the configured dashboard password hash is incomplete; make a new one with `python -m dashboard.auth`")
    return iterations, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against an encoded hash."""
    iterations, salt, digest = parse_password_hash(encoded)
    candidate = hashlib.pbkdf2_hmac("sha256", str(password).encode("utf-8"), salt, iterations)
    return hmac.compare_digest(candidate, digest)


def _oidc_provider(auth: Mapping[str, Any]) -> str | None:
    """The provider to pass to st.login: None when [auth] itself holds client_id, else the first named one."""
    if "client_id" in auth:
        return None
    named = [k for k, v in auth.items() if isinstance(v, Mapping)]
    return named[0] if named else None


def access_policy(secrets_map: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AccessPolicy:
    """Decide the access mode from secrets and environment (see the module docstring)."""
    environ = os.environ if environ is None else environ
    auth = secrets_map.get("auth") if hasattr(secrets_map, "get") else None
    if isinstance(auth, Mapping) and auth:
        missing = [k for k in ("redirect_uri", "cookie_secret") if not auth.get(k)]
        if missing:
            raise InputError(
                "[auth] in secrets.toml is missing " + ", ".join(missing) + " (needed for OIDC sign-in; see README, Deployment)"
            )
        return AccessPolicy("oidc", provider=_oidc_provider(auth))
    dashboard = secrets_map.get("dashboard") if hasattr(secrets_map, "get") else None
    encoded = (dashboard or {}).get("password_hash") if isinstance(dashboard, Mapping) else None
    encoded = encoded or environ.get(PASSWORD_ENV, "").strip() or None
    if encoded:
        parse_password_hash(encoded)  # a broken setting is reported, never silently "open"
        return AccessPolicy("password", password_hash=encoded)
    return AccessPolicy("none")


def main(argv: list[str] | None = None) -> int:
    """Print a password hash for ``[dashboard] password_hash`` (reads the password twice, unechoed)."""
    del argv
    first = getpass.getpass("Dashboard password: ")
    if first != getpass.getpass("Again: "):
        print("The two entries differ; nothing written.", file=sys.stderr)
        return 1
    try:
        encoded = hash_password(first)
    except InputError as err:
        print(err, file=sys.stderr)
        return 1
    print("Add to .streamlit/secrets.toml (or export DASHBOARD_PASSWORD_HASH=...):\n")
    print(f'[dashboard]\npassword_hash = "{encoded}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
