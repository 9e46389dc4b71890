"""Teaching page logic (issue 17): reader ROC from read + confidence ratings, the case-by-case
reveal with the model's answer framed as on the Case page, and the CSV export of the reads.

The AUCs, CIs and DeLong tests are checked against scikit-learn and against a brute-force
DeLong written here from the definition (O(m n) placement values), not against
``training.stats`` itself.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from dashboard import teaching_logic as tl
from model_zoo.errors import InputError
from model_zoo.framing import frame_call

POS, NEG = "malignant", "benign"


def _zoo(threshold: float = 0.4, calibrated_threshold: float | None = None, calibrate=None):
    """A stand-in release: its threshold, class names and ``call`` (the one framing rule,
    model_zoo.framing, with the default band); ``calibrate`` maps a raw probability."""

    def call(p_raw: float, jitter=None):
        return frame_call(
            p_raw,
            threshold,
            POS,
            NEG,
            p_calibrated=calibrate(p_raw) if calibrate else None,
            threshold_calibrated=calibrated_threshold,
            jitter=jitter,
        )

    return SimpleNamespace(threshold=threshold, positive_class=POS, negative_class=NEG, call=call)


def _case(cid: str, label: int, p: float, **kw) -> tl.TeachingCase:
    fields = dict(case_id=cid, png=b"", label=label, p_ensemble=p, age=28.0, sex="F", site="appendicular")
    fields.update(kw)
    return tl.TeachingCase(**fields)


# ----------------------------------------------------------------------------- ratings


def test_confidence_rating_is_one_ordinal_scale():
    ratings = {(call, conf): tl.confidence_rating(call, conf) for call in (0, 1) for conf in tl.CONFIDENCE_LEVELS}
    assert ratings[(0, 5)] == 1 and ratings[(0, 1)] == 5 and ratings[(1, 1)] == 6 and ratings[(1, 5)] == 10
    assert sorted(ratings.values()) == list(tl.RATING_LEVELS) == list(range(1, 11))
    # more confident benign -> lower, more confident malignant -> higher
    assert [ratings[(0, c)] for c in (5, 4, 3, 2, 1)] + [ratings[(1, c)] for c in (1, 2, 3, 4, 5)] == list(range(1, 11))
    for bad in ((0, 0), (1, 6), (2, 3)):
        with pytest.raises(InputError):
            tl.confidence_rating(*bad)


# ----------------------------------------------------------------------------- ROC vs references


def _delong_reference(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance from the definition: psi placements over every pair."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    v10, v01 = [], []
    for s in scores:
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    auc = np.array([v.mean() for v in v10])
    cov = np.cov(np.array(v10), ddof=1) / m + np.cov(np.array(v01), ddof=1) / n
    return auc, np.atleast_2d(cov)


def _study(seed: int = 3, n: int = 40):
    rng = np.random.default_rng(seed)
    y = np.r_[0, 1, (rng.random(n - 2) < 0.4).astype(int)]
    model = np.clip(0.3 * y + rng.normal(0.35, 0.2, n), 0, 1)
    reads = {}
    for name, skill in (("ann", 1.5), ("bob", 0.4)):
        evidence = skill * (2 * y - 1) + rng.normal(0, 1, n)
        calls = (evidence > 0).astype(int)
        confs = np.clip(np.ceil(np.abs(evidence) * 2), 1, 5).astype(int)
        reads[name] = [tl.confidence_rating(int(c), int(k)) for c, k in zip(calls, confs)]
    return y, model, reads


def test_rater_rocs_match_sklearn_and_a_brute_force_delong():
    from sklearn.metrics import roc_auc_score, roc_curve

    y, model, reads = _study()
    rocs = tl.rater_rocs(list(y), list(model), reads)
    assert [r.rater for r in rocs] == [tl.MODEL_RATER, "ann", "bob"]
    assert rocs[0].p_vs_model is None
    z = 1.959963984540054
    for r, scores in zip(rocs, [model, np.array(reads["ann"]), np.array(reads["bob"])]):
        assert r.auc == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
        fpr, tpr, _ = roc_curve(y, scores, drop_intermediate=False)
        assert np.allclose(r.fpr, fpr) and np.allclose(r.tpr, tpr)
        auc, cov = _delong_reference(y, [scores])
        se = math.sqrt(cov[0, 0])
        assert r.ci == pytest.approx((max(0.0, auc[0] - z * se), min(1.0, auc[0] + z * se)), abs=1e-9)
        if r.rater != tl.MODEL_RATER:  # paired DeLong: model vs this reader on the same cases
            auc2, cov2 = _delong_reference(y, [model, scores])
            zstat = (auc2[0] - auc2[1]) / math.sqrt(cov2[0, 0] + cov2[1, 1] - 2 * cov2[0, 1])
            assert r.p_vs_model == pytest.approx(math.erfc(abs(zstat) / math.sqrt(2)), rel=1e-9)
    # the ratings are ties-heavy (10 levels): a reader's curve has at most 10 steps
    assert len(rocs[1].fpr) <= 11


def test_roc_table_words():
    y, model, reads = _study()
    rocs = tl.rater_rocs(list(y), list(model), reads)
    table = tl.roc_table(rocs).set_index("rater")
    ann = rocs[1]
    assert table.loc["ann", "AUC (DeLong 95% CI)"] == f"{ann.auc:.2f} ({ann.ci[0]:.2f}-{ann.ci[1]:.2f})"
    assert table.loc[tl.MODEL_RATER, "DeLong p vs model"] == "-"
    p = ann.p_vs_model
    assert table.loc["ann", "DeLong p vs model"] == ("< 0.001" if p < 0.001 else f"{p:.3f}")
    one_positive = tl.rater_rocs([0, 0, 1], [0.1, 0.2, 0.9], {"ann": [1, 2, 10]})
    assert tl.roc_table(one_positive).iloc[0]["AUC (DeLong 95% CI)"] == "1.00"  # no CI with one positive
    assert tl.roc_table(one_positive).iloc[1]["DeLong p vs model"] == "n/a"
    with pytest.raises(InputError):
        tl.rater_rocs([1, 1], [0.2, 0.3], {"ann": [6, 7]})
    assert len(tl.roc_figure(rocs, "t").data) == 1 + len(rocs)


# ----------------------------------------------------------------------------- the model's answer


@pytest.mark.parametrize(
    "p, label, call, verdict",
    [
        (0.90, 1, 1, tl.RIGHT),
        (0.90, 0, 1, tl.WRONG),
        (0.10, 0, 0, tl.RIGHT),
        (0.10, 1, 0, tl.WRONG),
        (0.43, 1, None, tl.NO_CALL),
        (0.37, 0, None, tl.NO_CALL),
    ],
)
def test_model_call_is_framed_as_on_the_case_page(p, label, call, verdict):
    zoo = _zoo(0.4)
    case = _case("C1", label, p)
    model = tl.model_call(case, zoo)
    assert model.call == call
    assert (model.head.p, model.head.threshold, model.head.calibrated) == (p, 0.4, False)  # raw scale, no calibrator
    assert ("indeterminate" in model.head.sentence) == (call is None)
    assert tl.verdict(model.call, label) == verdict


def test_model_call_uses_the_calibrated_probability_like_the_case_page():
    zoo = _zoo(0.4, calibrated_threshold=0.5, calibrate=lambda p: 0.81 if p == 0.7 else p)
    case = _case("C1", 1, 0.7)
    model = tl.model_call(case, zoo)
    assert model.head.calibrated and model.head.scale_note
    assert (model.head.p, model.head.threshold, model.head.p_raw) == (0.81, 0.5, 0.7)  # shown on the calibrated scale
    assert "0.81" in model.head.sentence and model.head.word == POS
    assert model.call == 1


# ----------------------------------------------------------------------------- reveal and export


def _answers():
    return {"ann": {"C1": (1, 5), "C2": (0, 2)}, "bob": {"C1": (0, 3)}}


def test_case_reveal_marks_every_answer():
    zoo = _zoo(0.4)
    c1 = _case("C1", 1, 0.9, subtype="osteosarcoma")
    reveal = tl.case_reveal(c1, _answers(), ["ann", "bob", "carl"], zoo)
    assert reveal.truth == POS and reveal.subtype == "osteosarcoma" and reveal.age == "28 y"
    by = {a.rater: a for a in reveal.answers}
    assert list(by) == [tl.MODEL_RATER, "ann", "bob"], "carl did not read C1"
    assert by[tl.MODEL_RATER].verdict == tl.RIGHT and by[tl.MODEL_RATER].answer == reveal.model.head.sentence
    assert (by["ann"].answer, by["ann"].confidence, by["ann"].verdict) == (POS, 5, tl.RIGHT)
    assert (by["bob"].answer, by["bob"].confidence, by["bob"].verdict) == (NEG, 3, tl.WRONG)
    table = tl.reveal_table(reveal)
    assert list(table[""]) == ["right", "right", "WRONG"]
    c2 = _case("C2", 0, 0.41)
    r2 = tl.case_reveal(c2, _answers(), ["ann"], zoo)
    assert r2.subtype == "not given" and r2.answers[0].verdict == tl.NO_CALL


def test_reads_frame_blind_then_revealed():
    zoo = _zoo(0.4)
    cases = [_case("C1", 1, 0.9, subtype="osteosarcoma"), _case("C2", 0, 0.41, age=2.5)]
    blind = tl.reads_frame(cases, _answers(), zoo)
    assert list(blind.columns) == tl.READS_COLUMNS and len(blind) == 3
    assert not {"truth", "label", "p_ensemble", "subtype", "model_answer"} & set(blind.columns)
    text = blind.to_csv(index=False)
    assert "osteosarcoma" not in text and "0.9" not in text
    ann_c1 = blind[(blind.reader == "ann") & (blind.case == "C1")].iloc[0]
    assert (ann_c1["age"], ann_c1["read"], ann_c1["confidence"], ann_c1["rating"]) == ("28", POS, 5, 10)
    assert blind[blind.case == "C2"].iloc[0]["age"] == "2.5"
    assert "28.0" not in text
    full = tl.reads_frame(cases, _answers(), zoo, revealed=True)
    assert list(full.columns) == tl.READS_COLUMNS + tl.REVEALED_COLUMNS
    bob = full[full.reader == "bob"].iloc[0]
    assert (bob["truth"], bob["subtype"], bob["read_correct"], bob["model_correct"]) == (POS, "osteosarcoma", 0, 1)
    assert bob["model_answer"] == tl.model_call(cases[0], zoo).head.sentence
    c2 = full[full.case == "C2"].iloc[0]
    assert c2["model_correct"] == "" and "indeterminate" in c2["model_answer"]


def test_age_text_is_an_integer_when_whole():
    assert tl.age_text(28.0) == "28" and tl.age_text(2.5) == "2.5" and tl.age_text(None) == ""
    assert tl.age_text(float("nan")) == "" and tl.format_age(28.0) == "28 y"
