"""How member scores enter the stacker. Pickled inside a release's stacker, so it lives in the
library that loads releases (never in ``training``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class MemberLogits(TransformerMixin, BaseEstimator):
    """Replace the first ``n_members`` columns (member probabilities) by their log-odds; the
    clinical columns after them pass through unchanged.

    Why: a linear stacker on probabilities sees a confident member's scores squeezed against 0
    and 1 (0.99 and 0.99999 are 4.6 and 11.5 logits apart), so it cannot weigh how sure each
    member is; stacking on log-odds is the usual remedy. Tree stackers are unaffected (the
    transform is monotone). ``eps`` clips probabilities first, bounding a logit at about +-13.8.
    """

    def __init__(self, n_members: int = 1, eps: float = 1e-6) -> None:
        self.n_members = n_members
        self.eps = eps

    def fit(self, X: Any, y: Any = None) -> MemberLogits:
        return self

    def transform(self, X: Any) -> np.ndarray:
        out = np.array(X, dtype=np.float64, copy=True)
        if out.ndim != 2 or out.shape[1] < self.n_members:
            raise ValueError(f"expected (n, >= {self.n_members}) stacker features, got shape {out.shape}")
        p = np.clip(out[:, : self.n_members], self.eps, 1.0 - self.eps)
        out[:, : self.n_members] = np.log(p) - np.log1p(-p)
        return out
