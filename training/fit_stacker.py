"""Stacker selection on out-of-fold member scores + age, sex, site.

The paper compared RF, AdaBoost, GBDT, LightGBM, DT, LR, XGBoost and KNN and kept the best
by cross-validated AUC. We do the same, without its leak: the member scores the stacker
sees for a training case come from members that never trained on that case (out-of-fold),
and the cross-validation that ranks the candidates is grouped, so near-duplicate images of
one patient never sit on both sides of a fold.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

from model_zoo.auc import roc_auc
from model_zoo.errors import InputError


def candidate_factories(seed: int, member_logits: int = 0) -> dict[str, Callable[[], Any]]:
    """Name -> estimator factory. LightGBM/XGBoost only when installed. ``member_logits > 0``:
    each candidate first turns the first ``member_logits`` columns (member probabilities) into
    log-odds (``stacker.member_scores: logit``; see ``model_zoo.stacker_inputs``)."""
    from sklearn.ensemble import (
        AdaBoostClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    out: dict[str, Callable[[], Any]] = {
        "rf": lambda: RandomForestClassifier(n_estimators=300, min_samples_leaf=3, random_state=seed, n_jobs=1),
        "adaboost": lambda: AdaBoostClassifier(n_estimators=100, random_state=seed),
        "gbdt": lambda: GradientBoostingClassifier(n_estimators=100, max_depth=2, random_state=seed),
        "hgb": lambda: HistGradientBoostingClassifier(max_depth=3, random_state=seed),
        "dt": lambda: DecisionTreeClassifier(max_depth=4, min_samples_leaf=5, random_state=seed),
        "lr": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "knn": lambda: make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=15)),
    }
    try:
        import lightgbm  # noqa: F401
        from lightgbm import LGBMClassifier

        out["lightgbm"] = lambda: LGBMClassifier(n_estimators=100, num_leaves=7, random_state=seed, verbose=-1, n_jobs=1)
    except ImportError:
        pass
    try:
        from xgboost import XGBClassifier

        out["xgboost"] = lambda: XGBClassifier(n_estimators=100, max_depth=2, random_state=seed, n_jobs=1)
    except ImportError:
        pass
    if member_logits > 0:
        from model_zoo.stacker_inputs import MemberLogits

        return {name: (lambda f=f: make_pipeline(MemberLogits(member_logits), f())) for name, f in out.items()}
    return out


def _grouped_splits(X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int, seed: int) -> list:
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = min(folds, int(min(np.bincount(y.astype(int)))))
    if n_splits < 2:
        raise InputError("too few cases of one class to cross-validate the stacker (need >= 2 per class)")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in cv.split(X, y, groups) if len(np.unique(y[te])) == 2 and len(np.unique(y[tr])) == 2]


def _fit_quietly(factory: Callable[[], Any], X: np.ndarray, y: np.ndarray) -> Any:
    model = factory()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, y)
    return model


def cross_val_auc(
    factory: Callable[[], Any], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int, seed: int
) -> tuple[float, float]:
    """Mean and std of grouped, stratified k-fold ROC AUC."""
    scores = [
        roc_auc(y[te], _fit_quietly(factory, X[tr], y[tr]).predict_proba(X[te])[:, 1])
        for tr, te in _grouped_splits(X, y, groups, folds=folds, seed=seed)
    ]
    if not scores:
        return float("nan"), float("nan")
    return float(np.mean(scores)), float(np.std(scores))


def cross_val_probabilities(
    name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int, seed: int, member_logits: int = 0
) -> np.ndarray:
    """Out-of-fold probabilities of one stacker candidate on its own training rows (the same
    grouped folds as its CV AUC): what calibration is fitted on, since the refitted stacker's
    in-sample probabilities are over-confident. Rows left out by every split stay NaN."""
    factory = candidate_factories(seed, member_logits)[name]
    out = np.full(len(y), np.nan)
    for tr, te in _grouped_splits(X, y, groups, folds=folds, seed=seed):
        out[te] = _fit_quietly(factory, X[tr], y[tr]).predict_proba(X[te])[:, 1]
    return out


def choose_candidate(ranked: list[dict[str, Any]], prefer: str | None, prefer_within: float) -> str:
    """The best candidate by CV AUC, unless ``prefer`` scored within ``prefer_within`` of it
    (pure; ``ranked`` is sorted best first). Why a preference: candidates a few thousandths
    apart in CV AUC are tied at this sample size, and a monotone stacker (LR) moves smoothly
    with its inputs where a tree ensemble can jump on small shifts of the member scores."""
    best = ranked[0]
    if prefer and prefer_within > 0:
        for row in ranked:
            if row["name"] == prefer and best["cv_auc"] - row["cv_auc"] <= prefer_within + 1e-12:
                return str(row["name"])
    return str(best["name"])


def select_stacker(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    candidates: list[str],
    folds: int,
    seed: int,
    prefer: str | None = None,
    prefer_within: float = 0.0,
    member_logits: int = 0,
) -> tuple[str, Any, list[dict[str, Any]]]:
    """Compare candidates by CV AUC; refit the chosen one (the best, or ``prefer`` when it is
    within ``prefer_within`` of the best) on all rows.

    Returns (name, fitted estimator, comparison table rows sorted best first). Requested
    candidates that are not installed are listed with ``available: False``.
    """
    factories = candidate_factories(seed, member_logits)
    table = []
    for name in candidates:
        if name not in factories:
            table.append({"name": name, "available": False, "cv_auc": None, "cv_auc_std": None})
            continue
        mean, std = cross_val_auc(factories[name], X, y, groups, folds=folds, seed=seed)
        table.append(
            {
                "name": name,
                "available": True,
                "cv_auc": None if np.isnan(mean) else mean,
                "cv_auc_std": None if np.isnan(std) else std,
            }
        )
    ranked = [row for row in table if row["cv_auc"] is not None]
    if not ranked:
        raise InputError("no stacker candidate could be scored (check the class balance of the training cases)")
    ranked.sort(key=lambda row: -row["cv_auc"])
    best_name = choose_candidate(ranked, prefer, prefer_within)
    best = factories[best_name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best.fit(X, y)
    table.sort(key=lambda row: -(row["cv_auc"] if row["cv_auc"] is not None else -1))
    return best_name, best, table


def fit_clinic_only(X_clinical: np.ndarray, y: np.ndarray) -> Any:
    """Logistic regression on age/sex/site alone: the baseline the images must beat."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X_clinical, y)


def member_cam_weights(estimator: Any, X: np.ndarray, y: np.ndarray, member_ids: list[str], seed: int) -> dict[str, float]:
    """Weights for the ensemble-weighted heatmap: permutation importance of each member score.

    Tree stackers have no linear weights; how much the ensemble's AUC drops when one
    member's score is shuffled is an honest, model-agnostic measure of its contribution.
    Negative importances are clipped to 0; all-zero falls back to equal weights.
    """
    from sklearn.inspection import permutation_importance

    result = permutation_importance(estimator, X, y, scoring="roc_auc", n_repeats=5, random_state=seed)
    raw = np.clip(result.importances_mean[: len(member_ids)], 0, None)
    if raw.sum() <= 0:
        raw = np.ones(len(member_ids))
    raw = raw / raw.sum()
    return {mid: float(w) for mid, w in zip(member_ids, raw)}
