"""Exception types shared by the library.

Every error a user can cause (a bad file, a bad CSV row, a tampered zoo) is raised as one
of these with a one-line, human-readable message, so callers (CLI, dashboard, batch jobs)
can show ``str(err)`` and carry on instead of printing a traceback.
"""


class ZooError(Exception):
    """Base class for all errors raised deliberately by model_zoo."""


class InputError(ZooError, ValueError):
    """The user's input (image, case row, ROI, clinical value) cannot be used."""


class IntegrityError(ZooError):
    """A zoo release failed verification (hash mismatch, missing/extra file, bad path)."""


class Cancelled(Exception):
    """A long computation stopped early because its caller asked it to (its ``should_stop``
    returned True). Not a ZooError: nothing is wrong with the input, and nothing was kept."""
