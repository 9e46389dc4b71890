"""``python -m training report --predictions PRED.csv --out DIR [--threshold T] [--readers]
[--title TITLE]`` (wired by ``training/__main__.py`` to :func:`main`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from model_zoo.cli_logging import setup_cli_logging
from model_zoo.errors import InputError
from training.report.inputs import prepare, read_predictions
from training.report.writer import METRICS_JSON, REPORT_HTML, write_analysis

LOG = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training report",
        description="Evaluation report: DIR/metrics.json (README: Training, report) and DIR/report.html (offline).",
    )
    p.add_argument(
        "--predictions",
        required=True,
        metavar="PRED.csv",
        help="CSV with label, p_* and optional reader_* columns",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="operating threshold for every model, p >= T is positive (default 0.5)",
    )
    p.add_argument(
        "--readers",
        action="store_true",
        help="require reader_* columns (they are always included when present; with this flag their absence is an error)",
    )
    p.add_argument("--title", default="Evaluation report", help="report heading")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 unusable input or arguments, 1 write failure)."""
    setup_cli_logging()
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage message
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        analysis = prepare(read_predictions(args.predictions), require_readers=args.readers)
        context = {"predictions": str(Path(args.predictions))}
        metrics = write_analysis(analysis, Path(args.out), args.threshold, None, args.title, context)
    except InputError as err:
        LOG.error("error: %s", err)
        return 2
    except OSError as err:
        LOG.error("error: cannot write the report to %s: %s", args.out, err.strerror or err)
        return 1
    excluded = sum(analysis.excluded.values())
    if excluded:
        LOG.warning("note: %d row(s) excluded (no label, or a missing score/read)", excluded)
    LOG.info(
        "wrote %s and %s (n=%d, models=%d, readers=%d)",
        Path(args.out) / METRICS_JSON,
        Path(args.out) / REPORT_HTML,
        metrics["n"],
        len(metrics["models"]),
        len(metrics["readers"]),
    )
    return 0
