"""Stacker selection: the paper's best-CV-AUC rule and the optional preference within a tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from training.fit import selection_rule
from training.fit_stacker import choose_candidate, select_stacker

RANKED = [{"name": "gbdt", "cv_auc": 0.951}, {"name": "rf", "cv_auc": 0.9505}, {"name": "lr", "cv_auc": 0.950},
          {"name": "knn", "cv_auc": 0.932}]


def test_best_wins_without_a_preference() -> None:
    assert choose_candidate(RANKED, None, 0.0) == "gbdt"
    assert choose_candidate(RANKED, "lr", 0.0) == "gbdt"


def test_preferred_candidate_kept_only_within_the_tolerance() -> None:
    assert choose_candidate(RANKED, "lr", 0.001) == "lr"      # 0.001 behind: boundary counts as within
    assert choose_candidate(RANKED, "lr", 0.0009) == "gbdt"
    assert choose_candidate(RANKED, "knn", 0.005) == "gbdt"    # 0.019 behind
    assert choose_candidate(RANKED, "missing", 0.5) == "gbdt"


def test_select_stacker_refits_the_preferred_candidate() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)
    groups = np.arange(120)
    name, model, table = select_stacker(X, y, groups, candidates=["dt", "lr"], folds=3, seed=0,
                                        prefer="dt", prefer_within=1.0)
    assert name == "dt" and type(model).__name__ == "DecisionTreeClassifier"
    assert [r["name"] for r in table] == sorted(["dt", "lr"], key=lambda n: -next(r["cv_auc"] for r in table if r["name"] == n))
    name, _, _ = select_stacker(X, y, groups, candidates=["dt", "lr"], folds=3, seed=0)
    assert name == max(table, key=lambda r: r["cv_auc"])["name"]


@pytest.mark.parametrize("cfg, words", [
    ({}, "best grouped-CV ROC AUC"),
    ({"prefer": "lr", "prefer_within": 0.005}, "best grouped-CV ROC AUC, except lr when its CV AUC is within 0.005 of the best"),
])
def test_selection_rule_in_words(cfg: dict, words: str) -> None:
    assert selection_rule(cfg) == words
