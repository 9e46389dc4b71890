"""Writing a report folder: ``metrics.json`` and ``report.html``.

Everything is computed and rendered before anything is written, and each file is replaced
atomically (the library's :func:`model_zoo.zoo.atomic_write_text`), so a failure never
leaves a half-written report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from model_zoo.errors import InputError
from model_zoo.zoo import atomic_write_text
from training.report.extras import report_extras
from training.report.inputs import AnalysisSet, prepare, resolve_thresholds
from training.report.metrics import measure_agreement, metrics_dict
from training.report.render import INLINE_PLOTLY, render_html

METRICS_JSON = "metrics.json"
REPORT_HTML = "report.html"
REPORT_FILE_MODE = 0o644  # a report is meant to be shared (the atomic write's temp file is 0600)


def write_report(
    pred: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    thresholds: dict[str, float] | None = None,
    title: str = "Evaluation report",
    context: dict[str, Any] | None = None,
    require_readers: bool = False,
    plotly_js: str = INLINE_PLOTLY,
) -> dict[str, Any]:
    """Write ``out_dir/metrics.json`` and ``out_dir/report.html``; return the metrics dict.

    Parameters
    ----------
    pred : DataFrame
        See :func:`training.report.compute_metrics`.
    out_dir : path
        Created if missing.
    threshold, thresholds
        As in :func:`training.report.compute_metrics`.
    title : str
        Report heading.
    context : dict, optional
        Extra key/value lines shown at the top (zoo name/version, split name, ...).
    require_readers : bool
        Raise :class:`InputError` when there is no ``reader_`` column (CLI ``--readers``).
    plotly_js : str
        ``"inline"`` (default: the report is one self-contained file) or a relative path to
        a local copy of :func:`training.report.plotly_bundle` that the caller ships beside
        the report (zoo releases share one copy between their reports to stay within the
        size budget). Either way nothing is fetched from the network.
    """
    analysis = prepare(pred, require_readers=require_readers)
    return write_analysis(analysis, Path(out_dir), threshold, thresholds, title, context, plotly_js)


def write_analysis(
    analysis: AnalysisSet,
    out: Path,
    threshold: float | None,
    thresholds: dict[str, float] | None,
    title: str,
    context: dict[str, Any] | None,
    plotly_js: str = INLINE_PLOTLY,
) -> dict[str, Any]:
    """:func:`write_report` for an already checked analysis set (the CLI reports its exclusions)."""
    thr = resolve_thresholds(list(analysis.models), threshold, thresholds)
    calls = analysis.calls(thr)
    agreement = measure_agreement(analysis, calls)
    metrics = metrics_dict(analysis, thr, agreement)
    text_json = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    extras = report_extras(analysis, calls)
    text_html = render_html(analysis, metrics, agreement, extras, title, context, plotly_js)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out must be a folder, but {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / METRICS_JSON, text_json, mode=REPORT_FILE_MODE)
    atomic_write_text(out / REPORT_HTML, text_html, mode=REPORT_FILE_MODE)
    return metrics
