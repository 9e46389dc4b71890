"""ROC AUC, once for the whole code base.

scikit-learn's ``roc_auc_score`` behind one set of input checks, used by training (member,
head and tail validation AUC and so checkpoint selection, stacker selection, localiser and
ROI-source measurements) and by the report's statistics (``training.stats.roc_auc`` adds
the report's stricter checks; its DeLong intervals compute the same AUC from midranks).
Training always selected with scikit-learn's number, so keeping it keeps a retrained
release identical to the bit, ties between epochs included.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model_zoo.errors import InputError

__all__ = ["roc_auc"]


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve of 0/1 (or bool) labels and scores; NaN with a single class.

    The Mann-Whitney probability ``P(score+ > score-) + P(tie) / 2``. A single class (a
    small validation split, a fold) has no AUC: NaN, so a training loop can go on; callers
    that must have one check.

    Raises
    ------
    InputError
        Labels other than 0/1, NaN scores, or labels and scores of different shapes.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(y_true).astype(float)
    scores = np.asarray(y_score, dtype=float)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise InputError(f"AUC needs labels and scores of one length, got shapes {labels.shape} and {scores.shape}")
    if np.isnan(scores).any():
        raise InputError(f"AUC scores contain NaN at case {int(np.flatnonzero(np.isnan(scores))[0])}")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise InputError("AUC labels must be 0/1")
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))
