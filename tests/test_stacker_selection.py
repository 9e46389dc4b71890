"""Stacker selection: the paper's best-CV-AUC rule and the optional preference within a tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from training.config import StackerConfig
from training.release import selection_rule
from training.fit_stacker import choose_candidate, select_stacker

RANKED = [
    {"name": "gbdt", "cv_auc": 0.951},
    {"name": "rf", "cv_auc": 0.9505},
    {"name": "lr", "cv_auc": 0.950},
    {"name": "knn", "cv_auc": 0.932},
]


def test_best_wins_without_a_preference() -> None:
    assert choose_candidate(RANKED, None, 0.0) == "gbdt"
    assert choose_candidate(RANKED, "lr", 0.0) == "gbdt"


def test_preferred_candidate_kept_only_within_the_tolerance() -> None:
    assert choose_candidate(RANKED, "lr", 0.001) == "lr"  # 0.001 behind: boundary counts as within
    assert choose_candidate(RANKED, "lr", 0.0009) == "gbdt"
    assert choose_candidate(RANKED, "knn", 0.005) == "gbdt"  # 0.019 behind
    assert choose_candidate(RANKED, "missing", 0.5) == "gbdt"


def test_select_stacker_refits_the_preferred_candidate() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)
    groups = np.arange(120)
    name, model, table = select_stacker(X, y, groups, candidates=["dt", "lr"], folds=3, seed=0, prefer="dt", prefer_within=1.0)
    assert name == "dt" and type(model).__name__ == "DecisionTreeClassifier"
    assert [r["name"] for r in table] == sorted(["dt", "lr"], key=lambda n: -next(r["cv_auc"] for r in table if r["name"] == n))
    name, _, _ = select_stacker(X, y, groups, candidates=["dt", "lr"], folds=3, seed=0)
    assert name == max(table, key=lambda r: r["cv_auc"])["name"]


@pytest.mark.parametrize(
    "cfg, words",
    [
        ({}, "best grouped-CV ROC AUC"),
        (
            {"prefer": "lr", "prefer_within": 0.005},
            "best grouped-CV ROC AUC, except lr when its CV AUC is within 0.005 of the best",
        ),
    ],
)
def test_selection_rule_in_words(cfg: dict, words: str) -> None:
    assert selection_rule(StackerConfig(**cfg)) == words


def test_member_logits_transforms_only_the_member_columns() -> None:
    from scipy.special import logit

    from model_zoo.stacker_inputs import MemberLogits

    X = np.array([[0.2, 0.9, 35.0, 1.0], [0.5, 0.01, 70.0, 0.0], [1.0, 0.0, 12.0, 1.0]])
    out = MemberLogits(n_members=2).fit(X).transform(X)
    np.testing.assert_allclose(out[:2, :2], logit(X[:2, :2]), rtol=1e-12)
    np.testing.assert_array_equal(out[:, 2:], X[:, 2:])  # clinical columns untouched
    assert np.all(np.isfinite(out)) and abs(out[2, 0]) == pytest.approx(logit(1 - 1e-6))  # clipped, not inf
    assert X[0, 0] == 0.2  # input not modified
    with pytest.raises(ValueError, match="stacker features"):
        MemberLogits(n_members=5).transform(X)


def test_logit_stacker_weighs_confident_members_and_survives_a_joblib_round_trip(tmp_path) -> None:
    """Log-odds inputs let a linear stacker tell 0.99 from 0.99999; the release pickles the
    whole pipeline, so loading it needs only model_zoo."""
    import joblib

    from training.fit_stacker import select_stacker as select

    rng = np.random.default_rng(1)
    z = rng.normal(size=(400, 2)) * [6.0, 1.5]  # two members: one often near-certain
    y = (rng.random(400) < 1 / (1 + np.exp(-(z[:, 0] + z[:, 1])))).astype(int)
    X = np.column_stack([1 / (1 + np.exp(-z)), rng.normal(size=400)])
    groups = np.arange(400)
    _, _, table_p = select(X, y, groups, candidates=["lr"], folds=4, seed=0)
    name, model, table_l = select(X, y, groups, candidates=["lr"], folds=4, seed=0, member_logits=2)
    assert name == "lr" and type(model.steps[0][1]).__name__ == "MemberLogits"
    assert table_l[0]["cv_auc"] > table_p[0]["cv_auc"] + 0.005
    joblib.dump(model, tmp_path / "s.joblib")
    again = joblib.load(tmp_path / "s.joblib")
    np.testing.assert_array_equal(again.predict_proba(X)[:, 1], model.predict_proba(X)[:, 1])


def test_member_scores_config_is_checked() -> None:
    from model_zoo.errors import InputError
    from training.fit import member_logit_columns

    X = np.zeros((3, 3 + 6))
    assert member_logit_columns(StackerConfig(), X) == 0
    assert member_logit_columns(StackerConfig(member_scores="logit"), X) == 3
    with pytest.raises(InputError, match="member_scores"):
        member_logit_columns(StackerConfig(member_scores="odds"), X)
