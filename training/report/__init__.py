"""Evaluation report: ``metrics.json`` (README: Training, report) and an offline ``report.html``.

Input is a predictions table (the output of ``python -m model_zoo predict`` or any CSV)
with ``label`` (0/1), one or more ``p_<model>`` score columns (``p_ensemble`` is the
ensemble), optional ``reader_<name>`` 0/1 reads, an optional ``tumor_subtype`` /
``subtype`` column and optional clinical columns ``age``, ``sex``, ``site``.

Rules the numbers follow (also printed in the report's Methods section):

- Analysis set: rows with a label and every score and read present. Rows without a
  label, or with a missing score/read (e.g. a failed prediction), are excluded and
  counted, so every paired statistic is computed on the same cases.
- A model calls a case positive when ``p >= threshold`` (0.5 unless given; per-model
  thresholds override).
- AUC with a DeLong 95 % CI; paired DeLong test of each model against ``p_ensemble``.
- Proportions with Wilson 95 % CIs. Cochran's Q on per-case correctness. Cohen's kappa
  between every pair of readers and between the ensemble's calls and each reader;
  Fleiss' kappa over the readers.
- A statistic that is undefined on the data (AUC with one class, PPV with no positive
  call, kappa with a constant rater) is JSON ``null``; CIs are always two-element lists
  whose bounds may be ``null``. ``metrics.json`` is strict JSON (no NaN).

Modules: ``inputs`` (reading and checking the table: the analysis set), ``metrics`` (pure:
the contract's dictionary and the agreement statistics, computed once), ``extras``
(statistics shown in the HTML only), ``render`` (HTML and plotly figures), ``writer``
(the two files, written atomically) and ``cli`` (``python -m training report``).
"""

from __future__ import annotations

from training.report.cli import main
from training.report.inputs import read_predictions
from training.report.metrics import compute_metrics
from training.report.render import plotly_bundle
from training.report.writer import write_report

__all__ = ["compute_metrics", "main", "plotly_bundle", "read_predictions", "write_report"]
