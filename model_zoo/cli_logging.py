"""One logging set-up for both command lines (``python -m model_zoo``, ``python -m training``).

The commands report through ``logging`` (module loggers under ``model_zoo`` and ``training``);
this prints each record as its bare message, the lines the commands always printed: INFO
(progress steps, what was written) to stdout, WARNING and above (notes, errors) to stderr.
The stream is looked up per message, so a redirected ``sys.stdout`` / ``sys.stderr`` (a
caller's ``contextlib.redirect_stdout``, pytest's capture) receives the lines. Results that
are the command's output (a table, JSON) are still printed; progress bars stay tqdm's.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LOGGER_NAMES", "setup_cli_logging"]

# "__main__": a module run as a script (``python -m training.evaluation``) logs under that name.
LOGGER_NAMES = ("model_zoo", "training", "__main__")


class _StandardStreams(logging.Handler):
    """INFO and below to the current sys.stdout, WARNING and above to the current sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)


def setup_cli_logging(level: int = logging.INFO) -> None:
    """Route the packages' log records to stdout/stderr as bare messages.

    Idempotent (each command's ``main`` calls it; a process may run several). Records still
    propagate to the root logger, so an application's or a test's own handlers see them too.
    """
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, _StandardStreams) for h in logger.handlers):
            logger.addHandler(_StandardStreams())
