"""ROC AUC, once for the whole code base: the Mann-Whitney probability from midranks.

Used by training (member and head validation AUC, stacker selection, localiser and ROI-source
measurements) and by the evaluation report's statistics (``training.stats.roc_auc`` adds the
report's strict input checks and DeLong intervals on top). Pure NumPy, no scikit-learn: the
same number wherever an AUC is shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model_zoo.errors import InputError

__all__ = ["midrank", "roc_auc"]


def midrank(x: Any) -> np.ndarray:
    """Ranks 1..n with ties given the mean of the ranks they span ("midranks").

    Parameters
    ----------
    x : array_like, shape (n,)

    Returns
    -------
    ndarray of float, shape (n,)
        Equal to ``scipy.stats.rankdata(x, method="average")``.
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    # A tie block at sorted positions s..e-1 holds ranks s+1..e; their mean is (s+1+e)/2.
    mids = (starts + 1 + ends) / 2.0
    out = np.empty(n, dtype=float)
    out[order] = np.repeat(mids, ends - starts)
    return out


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve of 0/1 (or bool) labels and scores; NaN with a single class.

    The Mann-Whitney probability ``P(score+ > score-) + P(tie) / 2``, computed in
    O(N log N) from midranks: ``AUC = (sum of positive midranks - m(m+1)/2) / (m n)`` with
    ``m`` positives and ``n`` negatives. A single class (a small validation split, a fold)
    has no AUC: NaN, so a training loop can go on; callers that must have one check.

    Raises
    ------
    InputError
        Labels other than 0/1, NaN scores, or labels and scores of different shapes.
    """
    labels = np.asarray(y_true).astype(float)
    scores = np.asarray(y_score, dtype=float)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise InputError(f"AUC needs labels and scores of one length, got shapes {labels.shape} and {scores.shape}")
    if np.isnan(scores).any():
        raise InputError(f"AUC scores contain NaN at case {int(np.flatnonzero(np.isnan(scores))[0])}")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise InputError("AUC labels must be 0/1")
    positive = labels == 1.0
    m = int(positive.sum())
    n = int(positive.size - m)
    if m == 0 or n == 0:
        return float("nan")
    return float((midrank(scores)[positive].sum() - m * (m + 1) / 2.0) / (m * n))
