"""PACS errors: one line each, meant to be shown as is.

No message carries a credential, a UID, a search term or any other identifier: the server
is named by its display URL (scheme, host, port, path) and everything else is described.
"""

from __future__ import annotations

from model_zoo.errors import ZooError


class PacsError(ZooError):
    """Base class: the PACS could not do what was asked."""


class PacsConfigError(PacsError):
    """The ``[pacs]`` settings are unusable."""


class PacsUnavailable(PacsError):
    """The server could not be reached (stopped, wrong host/port, TLS failure)."""


class PacsAuthError(PacsError):
    """The server refused the credentials (HTTP 401/403)."""


class PacsTimeout(PacsError):
    """The server did not answer in time."""


class PacsNotFound(PacsError):
    """The study/series/instance asked for does not exist on the server."""


class PacsRefused(PacsError):
    """The server did not keep what was written (error answer, failed SOP, or absent on re-query)."""


class NoRadiograph(PacsError):
    """A study holds no series the models can read."""
