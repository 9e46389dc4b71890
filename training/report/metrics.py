"""``metrics.json`` of ``python -m training report`` (GUIDE.md section 2.3): pure functions
of the analysis set and the thresholds, nothing rendered or written here.

- A model calls a case positive when ``p >= threshold``.
- AUC with a DeLong 95 % CI; paired DeLong test of each model against ``p_ensemble``.
- Proportions with Wilson 95 % CIs. Cochran's Q on per-case correctness. Cohen's kappa
  between every pair of readers and between the ensemble's calls and each reader;
  Fleiss' kappa over the readers.
- A statistic that is undefined on the data (AUC with one class, PPV with no positive
  call, kappa with a constant rater) is ``None`` (JSON ``null``); CIs are always
  two-element lists whose bounds may be ``None``, so the dict serialises as strict JSON.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from training import stats as st
from training.report.inputs import ENSEMBLE, AnalysisSet, prepare, resolve_thresholds

PROPORTIONS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
PAIR_SEPARATOR = "|"  # cohen_kappa keys are "<a>|<b>"


def finite_or_none(x: Any) -> float | None:
    """A finite float, or None for NaN/inf/None (JSON null)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _ci(ci: Sequence[float]) -> list[float | None]:
    return [finite_or_none(ci[0]), finite_or_none(ci[1])]


def _correct(y: np.ndarray, calls: np.ndarray) -> np.ndarray:
    return (calls == y).astype(int)


@dataclass(frozen=True)
class CochranOverAll:
    """Cochran's Q on per-case correctness over ``raters`` (the ensemble first, if any)."""

    raters: list[str]
    result: st.CochranQResult


@dataclass(frozen=True)
class Agreement:
    """The agreement statistics, computed once for both ``metrics.json`` and the HTML."""

    cohen: dict[str, st.KappaResult]  # "<a>|<b>": reader pairs, then "ensemble|<reader>"
    fleiss: st.KappaResult | None  # over the readers; None with fewer than two
    cochran: CochranOverAll | None  # None with fewer than two raters
    cochran_vs_ensemble: dict[str, st.CochranQResult]  # reader -> ensemble vs that reader


def measure_agreement(analysis: AnalysisSet, calls: dict[str, np.ndarray]) -> Agreement:
    """Cohen's and Fleiss' kappas and Cochran's Q tests of the readers and the ensemble."""
    y, readers = analysis.y, analysis.readers
    cohen: dict[str, st.KappaResult] = {}
    for (a, ra), (b, rb) in itertools.combinations(readers.items(), 2):
        cohen[f"{a}{PAIR_SEPARATOR}{b}"] = st.cohen_kappa(ra, rb)
    if analysis.has_ensemble:
        for name, r in readers.items():
            cohen[f"{ENSEMBLE}{PAIR_SEPARATOR}{name}"] = st.cohen_kappa(calls[ENSEMBLE], r)

    fleiss = None
    if len(readers) >= 2:
        counts, _ = st.ratings_to_counts(np.column_stack(list(readers.values())).astype(int), [0, 1])
        fleiss = st.fleiss_kappa(counts)

    correct = {}
    if analysis.has_ensemble:
        correct[ENSEMBLE] = _correct(y, calls[ENSEMBLE])
    correct.update({name: _correct(y, r) for name, r in readers.items()})
    cochran = None
    if len(correct) >= 2:
        cochran = CochranOverAll(list(correct), st.cochrans_q(np.column_stack(list(correct.values()))))
    vs_ensemble = {}
    if analysis.has_ensemble:
        for name in readers:
            vs_ensemble[name] = st.cochrans_q(np.column_stack([correct[ENSEMBLE], correct[name]]))
    return Agreement(cohen=cohen, fleiss=fleiss, cochran=cochran, cochran_vs_ensemble=vs_ensemble)


def _proportion_entries(conf: st.Confusion) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, prop in st.classification_metrics(conf).items():
        out[name] = finite_or_none(prop.estimate)
        out[f"{name}_ci"] = _ci(prop.ci)
    return out


def _model_entry(analysis: AnalysisSet, name: str, calls: np.ndarray, threshold: float) -> dict[str, Any]:
    y, s = analysis.y, analysis.models[name]
    conf = st.confusion_from_predictions(y, calls)
    if analysis.both_classes:
        a = st.delong_auc(y, s)
        auc, auc_ci = finite_or_none(a.auc), _ci(a.ci)
    else:
        auc, auc_ci = None, [None, None]
    p_vs = None
    if analysis.has_ensemble and name != ENSEMBLE and analysis.both_classes:
        p_vs = finite_or_none(st.delong_test(y, analysis.models[ENSEMBLE], s).p_value)
    entry: dict[str, Any] = {"auc": auc, "auc_ci": auc_ci}
    entry.update(_proportion_entries(conf))
    entry.update(
        {
            "f1": finite_or_none(st.f1_score(conf)),
            "threshold": threshold,
            "confusion": conf.as_list(),
            "delong_p_vs_ensemble": p_vs,
        }
    )
    return entry


def _reader_entry(analysis: AnalysisSet, name: str, vs_ensemble: st.CochranQResult | None) -> dict[str, Any]:
    conf = st.confusion_from_predictions(analysis.y, analysis.readers[name])
    entry = _proportion_entries(conf)
    entry["confusion"] = conf.as_list()
    entry["cochran_q_p_vs_ensemble"] = finite_or_none(vs_ensemble.p_value) if vs_ensemble else None
    return entry


def metrics_dict(analysis: AnalysisSet, thresholds: dict[str, float], agreement: Agreement) -> dict[str, Any]:
    """The contract's dictionary, keys in the contract's order."""
    calls = analysis.calls(thresholds)
    fleiss = agreement.fleiss
    return {
        "n": int(analysis.y.size),
        "models": {name: _model_entry(analysis, name, calls[name], thresholds[name]) for name in analysis.models},
        "readers": {name: _reader_entry(analysis, name, agreement.cochran_vs_ensemble.get(name)) for name in analysis.readers},
        "cochran_q_p": finite_or_none(agreement.cochran.result.p_value) if agreement.cochran else None,
        "fleiss_kappa": finite_or_none(fleiss.kappa) if fleiss else None,
        "fleiss_kappa_ci": _ci(fleiss.ci) if fleiss else [None, None],
        "cohen_kappa": {pair: finite_or_none(k.kappa) for pair, k in agreement.cohen.items()},
    }


def compute_metrics(
    pred: pd.DataFrame,
    *,
    threshold: float | None = None,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` dictionary (README: Training, report) for a predictions table.

    Parameters
    ----------
    pred : DataFrame
        ``label`` (0/1), ``p_<model>`` columns, optional ``reader_<name>`` columns.
    threshold : float, optional
        Operating threshold in [0, 1] for every model (default 0.5); a case is called
        positive when ``p >= threshold``.
    thresholds : dict, optional
        Per-model thresholds keyed by model name (``"ensemble"``, or ``"p_ensemble"``);
        they override ``threshold``.

    Returns
    -------
    dict
        Exactly the contract's keys; undefined statistics are ``None``. Serialise it with
        ``json.dumps(..., allow_nan=False)``.

    Raises
    ------
    InputError
        Missing ``label`` or ``p_`` columns, non-0/1 labels or reads, non-numeric scores,
        no usable rows, a threshold outside [0, 1] or for an unknown model.
    """
    analysis = prepare(pred)
    thr = resolve_thresholds(list(analysis.models), threshold, thresholds)
    return metrics_dict(analysis, thr, measure_agreement(analysis, analysis.calls(thr)))
