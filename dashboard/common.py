"""Streamlit glue shared by the pages: which zoo, loading it once, and the error guard.

Everything that can be computed without Streamlit lives in the other ``dashboard/*.py``
modules (or in ``model_zoo``); this module is the only one besides the pages that imports
``streamlit``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from model_zoo.errors import InputError, ZooError
from model_zoo.zoo import BUNDLED_ZOO_PARENT, ZOO_ENV, default_zoo_dir, list_releases

if TYPE_CHECKING:  # pragma: no cover - importing them costs seconds (torch, timm); loaded lazily below
    from model_zoo.ensemble import Zoo
    from model_zoo.explain import CamCache

LOG = logging.getLogger("dashboard")

SESSION_ZOO_KEY = "zoo_dir"  # a release the user picked on the Zoo page (this session only)


# ----------------------------------------------------------------------------- zoo choice


def available_releases() -> list[Path]:
    """Releases the user may pick: the bundled ones, plus ``$MODEL_ZOO_DIR`` if set."""
    found = list_releases(BUNDLED_ZOO_PARENT)
    env = os.environ.get(ZOO_ENV, "").strip()
    if env and Path(env) not in found:
        found.append(Path(env))
    return found


def default_release() -> Path | None:
    """``$MODEL_ZOO_DIR`` if set, else the newest bundled release (``model_zoo``'s
    :func:`~model_zoo.zoo.default_zoo_dir`), else None: the pages explain a missing zoo."""
    try:
        return default_zoo_dir(BUNDLED_ZOO_PARENT)  # the module attribute: tests point it elsewhere
    except InputError:
        return None


def chosen_release() -> Path | None:
    """The release this session uses: the user's pick if any, else :func:`default_release`."""
    picked = st.session_state.get(SESSION_ZOO_KEY)
    if picked:
        return Path(picked)
    return default_release()


@st.cache_resource(show_spinner="Verifying and loading the model zoo ...", max_entries=2)
def _load_zoo(path: str) -> Zoo:
    """Load (and hash-verify) a release once per process; shared by all sessions.

    Keyed by the resolved path: releases are immutable, so a path names one content.
    """
    from model_zoo.ensemble import load_zoo

    return load_zoo(Path(path))


@st.cache_resource(show_spinner=False)
def cam_cache() -> CamCache:
    """One CAM cache for the process (explain.CamCache is thread-safe, shares read-only maps)."""
    from model_zoo.explain import CamCache

    return CamCache(maxsize=96)


def get_zoo(*, show_missing: bool = True) -> Zoo | None:
    """The session's zoo, loaded once; None (after explaining why on the page) if none exists."""
    path = chosen_release()
    if path is None:
        if show_missing:
            no_zoo_message()
        return None
    if not path.exists():
        if show_missing:
            st.error(
                f"The model zoo folder {path} does not exist. Set {ZOO_ENV} to a release "
                "folder, or put a release under assets/zoo."
            )
        return None
    return _load_zoo(str(path.resolve()))


def no_zoo_message() -> None:
    st.warning("No model zoo is installed, so nothing can be predicted yet.")
    st.markdown(
        f"The dashboard looks for a release in **`${ZOO_ENV}`** or, if that is not set, "
        f"for the newest release folder under **`{BUNDLED_ZOO_PARENT}`**; neither exists.\n\n"
        "Train one (`python -m training fit --config cpu ...`) or copy a release folder "
        f"there, or start the dashboard with `{ZOO_ENV}=/path/to/release streamlit run dashboard/app.py`."
    )


# ----------------------------------------------------------------------------- error guard


def show_error(err: BaseException) -> None:
    """User errors as their one-line message; anything else as a short note with a reference."""
    if isinstance(err, (InputError, ZooError)):
        st.error(str(err))
        return
    ref = uuid.uuid4().hex[:8]
    LOG.error("dashboard error [ref %s]", ref, exc_info=(type(err), err, err.__traceback__))
    st.error(
        f"Something went wrong ({type(err).__name__}). Reference {ref}: the details are in "
        "the server log. Please try again or report the reference."
    )


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>#|~$])")


def plain_text(text: str) -> str:
    """``text`` escaped so Streamlit's markdown shows it as typed (file names such as
    ``__cases__.csv`` would otherwise turn bold; ``$`` would start LaTeX)."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", str(text))


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run a page (or part of one) so no exception reaches the browser as a traceback.

    Streamlit's own control flow (st.rerun, st.stop) uses BaseException subclasses and
    passes through untouched.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the point of the guard
            show_error(err)
            return None

    return wrapper


def disclaimer() -> None:
    st.caption("Research and teaching only; not a medical device. Not for diagnosis or treatment decisions.")


# ----------------------------------------------------------------------------- access

ACCESS_KEY = "_access_granted"
FAILED_KEY = "_access_failures"


def secrets_dict() -> dict[str, Any]:
    """Streamlit secrets as a plain dict; {} only when no secrets file exists.

    Streamlit raises the same error for a missing and a malformed file; a malformed one
    must block the app (InputError), never read as "not configured" (= open).
    """
    try:
        return st.secrets.to_dict()
    except Exception as err:  # noqa: BLE001 - told apart below by whether a file exists
        present = [str(f) for f in st.get_option("secrets.files") if Path(f).exists()]
        if not present:
            return {}
        raise InputError(f"could not read {', '.join(present)} ({type(err).__name__}); fix its TOML syntax") from None


def require_access() -> bool:
    """Gate the app per ``dashboard.auth.access_policy``; renders the sign-in view and returns
    False when this session may not proceed (the caller stops the script)."""
    import time

    from dashboard import auth

    try:
        policy = auth.access_policy(secrets_dict())
    except InputError as err:  # fail closed: a broken setting never means "open"
        st.error(f"Access control is misconfigured: {err}")
        return False
    if policy.mode == "none":
        return True
    if policy.mode == "oidc":
        if getattr(st.user, "is_logged_in", False):  # absent outside a served session
            with st.sidebar:
                st.caption(f"Signed in as {st.user.get('name') or st.user.get('email') or 'user'}")
                st.button("Sign out", on_click=st.logout)
            return True
        st.title("Bone radiograph model zoo")
        st.info("Sign in with your organisation account to use this dashboard.")
        st.button("Sign in", type="primary", on_click=st.login, args=(policy.provider,) if policy.provider else ())
        return False
    if st.session_state.get(ACCESS_KEY):
        with st.sidebar:
            if st.button("Sign out"):
                st.session_state.clear()
                st.rerun()
        return True
    st.title("Bone radiograph model zoo")
    with st.form("sign_in"):
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        if auth.verify_password(password, policy.password_hash or ""):
            st.session_state[ACCESS_KEY] = True
            st.session_state.pop(FAILED_KEY, None)
            st.rerun()
        failures = int(st.session_state.get(FAILED_KEY, 0)) + 1
        st.session_state[FAILED_KEY] = failures
        time.sleep(min(0.5 * failures, 5.0))  # slows guessing within a session
        st.error("Wrong password.")
    return False
