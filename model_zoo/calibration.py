"""Probability calibration of the ensemble: Platt scaling on the logit of the stacker output.

A tree or LR stacker trained on one hospital's out-of-fold scores is rarely calibrated, and a
clinician reads the number as a probability. The release stores a :class:`Calibration`
(two numbers, JSON in the manifest: nothing to unpickle) fitted at release time on
internal data only (``fit_on``: ``oof`` = cross-validated stacker probabilities on the
training split, or ``val``); external sets only ever measure it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Probabilities are clipped before the logit so that a stacker's hard 0/1 (trees, KNN) stays finite.
_EPS = 1e-6


def logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(q / (1 - q))


@dataclass(frozen=True)
class Calibration:
    """``p_cal = sigmoid(slope * logit(p) + intercept)``."""

    method: str  # "platt"
    slope: float
    intercept: float
    fit_on: str  # "oof" | "val": which internal predictions it was fitted on
    n: int  # cases it was fitted on
    n_positive: int

    def apply(self, p: np.ndarray | float) -> np.ndarray:
        from scipy.special import expit

        return expit(self.slope * logit(p) + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        if d.get("method") != "platt":
            raise ValueError(f"unknown calibration method {d.get('method')!r} (this version reads 'platt')")
        return cls(
            method="platt",
            slope=float(d["slope"]),
            intercept=float(d["intercept"]),
            fit_on=str(d["fit_on"]),
            n=int(d["n"]),
            n_positive=int(d["n_positive"]),
        )


def fit_platt(y: np.ndarray, p: np.ndarray, *, fit_on: str) -> Calibration:
    """Maximum-likelihood logistic fit of ``y`` on ``logit(p)`` (no regularisation)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("calibration needs both classes")
    x = logit(p).reshape(-1, 1)
    model = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(x, y)
    return Calibration(
        method="platt",
        slope=float(model.coef_[0, 0]),
        intercept=float(model.intercept_[0]),
        fit_on=fit_on,
        n=int(len(y)),
        n_positive=int(y.sum()),
    )
