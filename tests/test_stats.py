"""training.stats against independent references.

References: scikit-learn (AUC, ROC, confusion, F1, Cohen's kappa, Brier, calibration
curve), statsmodels (Wilson, Cochran's Q, McNemar, Cohen's kappa SE, Fleiss' kappa),
SciPy (ranks, Kruskal-Wallis, chi-square), a brute-force O(m n) DeLong written from the
1988 paper's definitions, hand-computed small cases, and Monte-Carlo / bootstrap /
jackknife checks of the variances. Tolerances: 1e-6 for statistics, 1e-4 for CI bounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from statsmodels.stats.contingency_tables import cochrans_q as sm_cochrans_q
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.inter_rater import cohens_kappa as sm_cohens_kappa
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

from model_zoo.errors import InputError
from training import stats as st

STAT_TOL = 1e-6
CI_TOL = 1e-4


def _binormal(rng, m, n, shift=1.0, rounding=None):
    """m positives ~ N(shift, 1), n negatives ~ N(0, 1); optional rounding creates ties."""
    y = np.r_[np.ones(m, int), np.zeros(n, int)]
    s = np.r_[rng.normal(shift, 1, m), rng.normal(0, 1, n)]
    if rounding is not None:
        s = np.round(s, rounding)
    perm = rng.permutation(m + n)
    return y[perm], s[perm]


def _delong_bruteforce(y, scores):
    """DeLong et al. (1988) straight from the kernel psi: O(k m n), no ranks."""
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, float))
    x, z = scores[:, y], scores[:, ~y]
    m, n = x.shape[1], z.shape[1]
    psi = (x[:, :, None] > z[:, None, :]) + 0.5 * (x[:, :, None] == z[:, None, :])
    auc = psi.mean(axis=(1, 2))
    v10 = psi.mean(axis=2)  # (k, m)
    v01 = psi.mean(axis=1)  # (k, n)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return auc, s10 / m + s01 / n


# ------------------------------------------------------------------ AUC and ranks


@pytest.mark.parametrize("seed", range(5))
def test_midrank_matches_scipy_rankdata(seed):
    x = np.random.default_rng(seed).integers(0, 8, size=40).astype(float)
    np.testing.assert_allclose(st.midrank(x), sps.rankdata(x, method="average"), atol=0)


@pytest.mark.parametrize("seed,rounding", [(0, None), (1, 1), (2, 0), (3, None), (4, 1)])
def test_auc_matches_sklearn(seed, rounding):
    rng = np.random.default_rng(seed)
    y, s = _binormal(rng, 37, 53, shift=0.8, rounding=rounding)
    assert st.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=STAT_TOL)
    assert st.delong_auc(y, s).auc == pytest.approx(skm.roc_auc_score(y, s), abs=STAT_TOL)


def test_auc_fixed_cases():
    assert st.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert st.roc_auc([0, 1], [0.2, 0.9]) == 1.0  # n = 1 per class
    assert st.roc_auc([0, 1], [0.9, 0.2]) == 0.0
    assert st.roc_auc([True, False, True], [3, 3, 3]) == 0.5  # all tied


@pytest.mark.parametrize(
    "y,s,msg",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "single class"),
        ([1], [0.5], "single class"),  # n = 1
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "0/1"),
        ([0, 1], [0.1, 0.2, 0.3], "3 values"),
        ([], [], "empty"),
    ],
)
def test_auc_bad_input_raises_clear_error(y, s, msg):
    with pytest.raises(InputError, match=msg):
        st.roc_auc(y, s)


@pytest.mark.parametrize("seed,rounding", [(0, None), (2, 0)])
def test_library_auc_is_the_report_auc(seed, rounding):
    """model_zoo.auc.roc_auc is the one AUC: training's numbers (member/stacker selection) and the
    report's agree to the last bit, and with the DeLong (midrank) estimate."""
    from model_zoo.auc import roc_auc

    y, s = _binormal(np.random.default_rng(seed), 23, 31, shift=0.8, rounding=rounding)
    assert roc_auc(y, s) == st.roc_auc(y, s)
    assert roc_auc(y.astype(bool), s) == pytest.approx(st.delong_auc(y, s).auc, abs=STAT_TOL)


def test_library_auc_is_nan_for_a_single_class_and_refuses_bad_input():
    """A training loop's small validation split may hold one class: NaN, not an error."""
    from model_zoo.auc import roc_auc

    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    for y, s, msg in [
        ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "0/1"),
        ([0, 1], [0.1, 0.2, 0.3], "one length"),
    ]:
        with pytest.raises(InputError, match=msg):
            roc_auc(y, s)


# ------------------------------------------------------------------ DeLong


def test_delong_hand_computed_small_case():
    # Positives X = .9 .8 .4, negatives Y = .5 .3.
    # psi rows: .9 -> (1, 1), .8 -> (1, 1), .4 -> (0, 1): AUC = 5/6.
    # V10 = (1, 1, 1/2): s10 = 1/12; V01 = (2/3, 1): s01 = 1/18.
    # Var = (1/12)/3 + (1/18)/2 = 1/18.
    r = st.delong_auc([1, 1, 1, 0, 0], [0.9, 0.8, 0.4, 0.5, 0.3])
    assert r.auc == pytest.approx(5 / 6, abs=1e-12)
    assert r.variance == pytest.approx(1 / 18, abs=1e-12)
    z = sps.norm.ppf(0.975)
    assert r.ci[0] == pytest.approx(5 / 6 - z * math.sqrt(1 / 18), abs=1e-9)
    assert r.ci[1] == 1.0  # clipped


def test_delong_hand_computed_with_tie():
    # X = .7 .5, Y = .5 .2: psi = [[1, 1], [1/2, 1]] -> AUC 7/8; V10 = (1, 3/4),
    # V01 = (3/4, 1): s10 = s01 = 1/32; Var = 1/64 + 1/64 = 1/32.
    r = st.delong_auc([1, 1, 0, 0], [0.7, 0.5, 0.5, 0.2])
    assert r.auc == pytest.approx(7 / 8, abs=1e-12)
    assert r.variance == pytest.approx(1 / 32, abs=1e-12)


@pytest.mark.parametrize("seed,rounding", [(10, None), (11, 1), (12, 0)])
def test_delong_covariance_matches_bruteforce_definition(seed, rounding):
    rng = np.random.default_rng(seed)
    y, s1 = _binormal(rng, 23, 31, rounding=rounding)
    s2 = s1 + rng.normal(0, 0.8, y.size)
    s3 = rng.normal(0, 1, y.size) + 0.3 * y
    if rounding is not None:
        s2, s3 = np.round(s2, rounding), np.round(s3, rounding)
    scores = np.vstack([s1, s2, s3])
    auc, cov = st.delong_covariance(y, scores)
    auc_ref, cov_ref = _delong_bruteforce(y, scores)
    np.testing.assert_allclose(auc, auc_ref, atol=STAT_TOL)
    np.testing.assert_allclose(cov, cov_ref, atol=1e-10)

    t = st.delong_test(y, s1, s2)
    var_ref = cov_ref[0, 0] + cov_ref[1, 1] - 2 * cov_ref[0, 1]
    z_ref = (auc_ref[0] - auc_ref[1]) / math.sqrt(var_ref)
    assert t.z == pytest.approx(z_ref, abs=STAT_TOL)
    assert t.p_value == pytest.approx(2 * sps.norm.sf(abs(z_ref)), abs=STAT_TOL)
    # Symmetric in the order of the models.
    assert st.delong_test(y, s2, s1).p_value == pytest.approx(t.p_value, abs=1e-12)


def test_delong_variance_matches_monte_carlo():
    # Binormal model, AUC = Phi(1/sqrt 2) ~ 0.76: the spread of AUC over 1500 fresh
    # samples must agree with the average DeLong variance (within ~10 %).
    rng = np.random.default_rng(2024)
    aucs, variances, diffs, dvars, rejects = [], [], [], [], 0
    for _ in range(1500):
        y, s = _binormal(rng, 40, 60)
        other = s + rng.normal(0, 1.0, y.size)  # correlated, lower AUC
        auc, cov = st.delong_covariance(y, np.vstack([s, other]))
        aucs.append(auc[0])
        variances.append(cov[0, 0])
        diffs.append(auc[0] - auc[1])
        dvars.append(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
        # Null: two exchangeable noisy copies of the same signal.
        t = st.delong_test(y, s + rng.normal(0, 1, y.size), s + rng.normal(0, 1, y.size))
        rejects += t.p_value < 0.05
    assert np.mean(aucs) == pytest.approx(sps.norm.cdf(1 / math.sqrt(2)), abs=0.005)
    assert np.mean(variances) == pytest.approx(np.var(aucs, ddof=1), rel=0.10)
    assert np.mean(dvars) == pytest.approx(np.var(diffs, ddof=1), rel=0.12)
    assert 0.03 <= rejects / 1500 <= 0.07  # type-I error of the paired test


def test_delong_variance_agrees_with_stratified_bootstrap():
    rng = np.random.default_rng(7)
    y, s = _binormal(rng, 90, 110, shift=1.2, rounding=1)
    r = st.delong_auc(y, s)
    pos, neg = s[y == 1], s[y == 0]
    lab = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    boot = [st.roc_auc(lab, np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]) for _ in range(2000)]
    assert r.variance == pytest.approx(np.var(boot, ddof=1), rel=0.15)


def test_delong_edge_cases():
    # Perfect separation: AUC 1 and a zero variance, so the CI collapses to [1, 1].
    r = st.delong_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert (r.auc, r.variance, r.ci) == (1.0, 0.0, (1.0, 1.0))
    # All ties: AUC 0.5, zero variance.
    r = st.delong_auc([0, 0, 1, 1], [0.5] * 4)
    assert (r.auc, r.variance, r.ci) == (0.5, 0.0, (0.5, 0.5))
    # One case per class: AUC defined, variance undefined.
    r = st.delong_auc([0, 1], [0.2, 0.7])
    assert r.auc == 1.0 and math.isnan(r.variance) and all(math.isnan(v) for v in r.ci)
    # Identical models: p = 1.
    y, s = _binormal(np.random.default_rng(0), 10, 10)
    t = st.delong_test(y, s, s.copy())
    assert (t.difference, t.z, t.p_value) == (0.0, 0.0, 1.0)
    # Both perfectly separating (var 0, equal AUC): p = 1; single class: clear error.
    t = st.delong_test([0, 0, 1, 1], [0, 1, 2, 3], [0, 0.1, 5, 6])
    assert t.p_value == 1.0
    with pytest.raises(InputError, match="single class"):
        st.delong_test([1, 1], [0.1, 0.2], [0.3, 0.4])
    with pytest.raises(InputError, match="NaN"):
        st.delong_test([0, 1], [0.1, 0.2], [0.3, np.nan])


# ------------------------------------------------------------------ ROC curve, operating points


@pytest.mark.parametrize("seed,rounding", [(0, None), (1, 1)])
def test_roc_curve_matches_sklearn(seed, rounding):
    y, s = _binormal(np.random.default_rng(seed), 30, 45, rounding=rounding)
    fpr, tpr, thr = st.roc_curve(y, s)
    fpr_r, tpr_r, thr_r = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_r, atol=STAT_TOL)
    np.testing.assert_allclose(tpr, tpr_r, atol=STAT_TOL)
    np.testing.assert_array_equal(thr[1:], thr_r[1:])
    assert np.isinf(thr[0])


@pytest.mark.parametrize("seed,rounding", [(3, None), (4, 1), (5, 0)])
def test_operating_points_match_sklearn_roc(seed, rounding):
    y, s = _binormal(np.random.default_rng(seed), 40, 50, rounding=rounding)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    i = int(np.argmax(j))
    op = st.youden_threshold(y, s)
    assert op.threshold == thr[i]
    assert op.sensitivity == pytest.approx(tpr[i], abs=STAT_TOL)
    assert op.specificity == pytest.approx(1 - fpr[i], abs=STAT_TOL)
    # Recomputing the rates at the returned threshold gives the same point.
    c = st.confusion_at_threshold(y, s, op.threshold)
    assert c.tp / (c.tp + c.fn) == pytest.approx(op.sensitivity, abs=STAT_TOL)

    for target in (0.5, 0.8, 0.9, 1.0):
        op = st.threshold_for_sensitivity(y, s, target)
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
        assert op.threshold == thr[i]
        assert op.sensitivity >= target - 1e-12
        assert op.specificity == pytest.approx(1 - fpr[i], abs=STAT_TOL)
    with pytest.raises(InputError):
        st.threshold_for_sensitivity(y, s, 0.0)


def test_youden_tie_prefers_highest_threshold():
    # J = 0.5 at thresholds 0.4 (sens .5, spec 1) and 0.2 (sens 1, spec .5).
    op = st.youden_threshold([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])
    assert (op.threshold, op.sensitivity, op.specificity) == (0.4, 0.5, 1.0)


def test_roc_band_brackets_the_curve_and_is_reproducible():
    y, s = _binormal(np.random.default_rng(9), 60, 80)
    grid, lo, hi = st.roc_band(y, s, n_boot=200, seed=1)
    assert np.all(lo <= hi) and lo.min() >= 0 and hi.max() <= 1
    fpr, tpr, _ = st.roc_curve(y, s)
    inside = (st.tpr_at_fpr(fpr, tpr, grid) >= lo - 1e-12) & (st.tpr_at_fpr(fpr, tpr, grid) <= hi + 1e-12)
    assert inside.mean() > 0.9
    _, lo2, hi2 = st.roc_band(y, s, n_boot=200, seed=1)
    np.testing.assert_array_equal(lo, lo2)
    np.testing.assert_array_equal(hi, hi2)
    # Width near the middle is of the order of a binomial SE of TPR (0.06 at n=60).
    mid = np.searchsorted(grid, 0.3)
    assert 0.05 < hi[mid] - lo[mid] < 0.5


# ------------------------------------------------------------------ confusion and proportions


@pytest.mark.parametrize("seed", range(3))
def test_confusion_and_rates_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 2)
    for t in (0.3, 0.5, s[17]):  # s[17] checks that the threshold is inclusive
        c = st.confusion_at_threshold(y, s, t)
        pred = (s >= t).astype(int)
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (c.tn, c.fp, c.fn, c.tp) == (tn, fp, fn, tp)
        assert c.as_list() == [[tn, fp], [fn, tp]]
        m = st.classification_metrics(c)
        assert m["accuracy"].estimate == pytest.approx(skm.accuracy_score(y, pred), abs=STAT_TOL)
        assert m["sensitivity"].estimate == pytest.approx(skm.recall_score(y, pred), abs=STAT_TOL)
        assert m["specificity"].estimate == pytest.approx(skm.recall_score(y, pred, pos_label=0), abs=STAT_TOL)
        assert m["ppv"].estimate == pytest.approx(skm.precision_score(y, pred), abs=STAT_TOL)
        assert m["npv"].estimate == pytest.approx(skm.precision_score(y, pred, pos_label=0), abs=STAT_TOL)
        assert st.f1_score(c) == pytest.approx(skm.f1_score(y, pred), abs=STAT_TOL)
        for name, prop in m.items():
            lo, hi = proportion_confint(prop.successes, prop.n, method="wilson")
            assert prop.ci == pytest.approx((lo, hi), abs=CI_TOL), name


def test_undefined_proportions_are_nan_not_errors():
    # Nothing called positive: PPV and F1 undefined; sensitivity 0 of 3.
    c = st.confusion_at_threshold([0, 1, 1, 1, 0], [0.1] * 5, 0.5)
    m = st.classification_metrics(c)
    assert math.isnan(m["ppv"].estimate) and all(math.isnan(v) for v in m["ppv"].ci)
    assert m["sensitivity"].estimate == 0.0
    assert math.isnan(st.f1_score(st.Confusion(tn=5, fp=0, fn=0, tp=0)))
    # Single class: specificity undefined, accuracy fine; n = 1 works.
    m = st.classification_metrics(st.confusion_at_threshold([1], [0.9], 0.5))
    assert m["accuracy"].estimate == 1.0 and math.isnan(m["specificity"].estimate)
    with pytest.raises(InputError, match="NaN"):
        st.confusion_at_threshold([0, 1], [0.2, np.nan], 0.5)


@pytest.mark.parametrize("n", [1, 2, 5, 17, 100, 1000])
def test_wilson_matches_statsmodels(n):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        if 0 <= k <= n:
            for alpha in (0.05, 0.01):
                ref = proportion_confint(k, n, alpha=alpha, method="wilson")
                assert st.wilson_ci(k, n, alpha) == pytest.approx(ref, abs=CI_TOL)


def test_wilson_edges():
    assert all(math.isnan(v) for v in st.wilson_ci(0, 0))
    assert st.wilson_ci(0, 10)[0] == 0.0 and st.wilson_ci(10, 10)[1] == 1.0
    with pytest.raises(InputError):
        st.wilson_ci(5, 3)


# ------------------------------------------------------------------ Cochran's Q


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 4), (3, 5)])
def test_cochrans_q_matches_statsmodels(seed, k):
    rng = np.random.default_rng(seed)
    x = (rng.random((80, k)) < np.linspace(0.55, 0.8, k)).astype(int)
    r = st.cochrans_q(x)
    ref = sm_cochrans_q(x)
    assert r.statistic == pytest.approx(ref.statistic, abs=STAT_TOL)
    assert r.p_value == pytest.approx(ref.pvalue, abs=STAT_TOL)
    assert r.df == ref.df
    if k == 2:  # Q with two methods is McNemar's chi-square without correction
        table = np.array([[np.sum((x[:, 0] == a) & (x[:, 1] == b)) for b in (1, 0)] for a in (1, 0)])
        mc = sm_mcnemar(table, exact=False, correction=False)
        assert r.statistic == pytest.approx(mc.statistic, abs=STAT_TOL)


def test_cochrans_q_fixed_and_edges():
    # Hand calc: columns C = (2, 2, 4), rows R = (2, 1, 3, 2), T = 8, k = 3:
    # Q = 2 (3*24 - 64) / (24 - 18) = 8/3.
    x = [[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 1]]
    assert st.cochrans_q(x).statistic == pytest.approx(8 / 3, abs=STAT_TOL)
    # No discordant case: Q = 0, p = 1 (statsmodels gives nan here).
    r = st.cochrans_q([[1, 1, 1], [0, 0, 0]])
    assert (r.statistic, r.p_value) == (0.0, 1.0)
    with pytest.raises(InputError, match="two methods"):
        st.cochrans_q([[1], [0]])
    with pytest.raises(InputError):
        st.cochrans_q([[1, 2], [0, 1]])


# ------------------------------------------------------------------ kappas


@pytest.mark.parametrize("seed,q", [(0, 2), (1, 2), (2, 3), (3, 4)])
def test_cohen_kappa_matches_sklearn_and_statsmodels(seed, q):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, q, 150)
    a = np.where(rng.random(150) < 0.75, truth, rng.integers(0, q, 150))
    b = np.where(rng.random(150) < 0.65, truth, rng.integers(0, q, 150))
    r = st.cohen_kappa(a, b)
    assert r.kappa == pytest.approx(skm.cohen_kappa_score(a, b), abs=STAT_TOL)
    table = np.array([[np.sum((a == i) & (b == j)) for j in range(q)] for i in range(q)])
    ref = sm_cohens_kappa(table)
    assert r.kappa == pytest.approx(ref.kappa, abs=STAT_TOL)
    assert r.se == pytest.approx(ref.std_kappa, abs=STAT_TOL)
    assert r.ci == pytest.approx((ref.kappa_low, ref.kappa_upp), abs=CI_TOL)


def test_cohen_kappa_fixed_and_edges():
    # 2x2 table [[20, 5], [10, 15]]: po = .7, pe = .5*.6 + .5*.4 = .5, kappa = .4.
    a = [0] * 25 + [1] * 25
    b = [0] * 20 + [1] * 5 + [0] * 10 + [1] * 15
    assert st.cohen_kappa(a, b).kappa == pytest.approx(0.4, abs=1e-12)
    # Labels of any type, different category sets per rater.
    assert st.cohen_kappa(["M", "B", "M"], ["M", "B", "B"]).kappa == pytest.approx(
        skm.cohen_kappa_score(["M", "B", "M"], ["M", "B", "B"]), abs=STAT_TOL
    )
    # Perfect agreement: kappa 1, SE 0.
    r = st.cohen_kappa([0, 1, 1, 0], [0, 1, 1, 0])
    assert (r.kappa, r.se, r.ci) == (1.0, 0.0, (1.0, 1.0))
    # Both raters constant on the same category: undefined (nan), not an error.
    assert math.isnan(st.cohen_kappa([1, 1, 1], [1, 1, 1]).kappa)
    # n = 1 with different reads: pe = 0, kappa = 0 (as scikit-learn).
    assert st.cohen_kappa([0], [1]).kappa == skm.cohen_kappa_score([0], [1]) == 0.0
    with pytest.raises(InputError):
        st.cohen_kappa([0, 1], [0, 1, 1])
    with pytest.raises(InputError, match="NaN"):
        st.cohen_kappa([0.0, 1.0], [0.0, np.nan])


def _simulate_reads(rng, n_subjects, accuracies, prevalence=0.4):
    truth = rng.random(n_subjects) < prevalence
    right = rng.random((n_subjects, len(accuracies))) < np.asarray(accuracies)
    return np.where(right, truth[:, None], ~truth[:, None]).astype(int)


def test_fleiss_kappa_wikipedia_example_and_statsmodels():
    # Fleiss (1971)-style worked example (10 subjects, 14 raters, 5 categories) as on
    # Wikipedia's "Fleiss' kappa" page: kappa = 0.210.
    table = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    r = st.fleiss_kappa(table)
    assert r.kappa == pytest.approx(sm_fleiss_kappa(table, method="fleiss"), abs=STAT_TOL)
    assert round(r.kappa, 3) == 0.210


@pytest.mark.parametrize("seed,raters", [(0, 3), (1, 4), (2, 6)])
def test_fleiss_kappa_matches_statsmodels_random(seed, raters):
    rng = np.random.default_rng(seed)
    reads = _simulate_reads(rng, 120, np.linspace(0.7, 0.9, raters))
    counts, cats = st.ratings_to_counts(reads)
    assert list(cats) == [0, 1]
    assert st.fleiss_kappa(counts).kappa == pytest.approx(sm_fleiss_kappa(counts, method="fleiss"), abs=STAT_TOL)


def test_fleiss_kappa_se_matches_jackknife():
    # The linearisation (Gwet) variance and the delete-one-subject jackknife estimate
    # the same quantity and differ by O(1/N). A rare positive class makes Gwet's
    # correction term matter: dropping it (or halving it) moves the SE by 4-7 % here,
    # while the correct formula is within 0.5 % of the jackknife.
    rng = np.random.default_rng(5)
    reads = _simulate_reads(rng, 1000, [0.95, 0.9, 0.85], prevalence=0.1)
    counts, _ = st.ratings_to_counts(reads)
    r = st.fleiss_kappa(counts)
    n = counts.shape[0]
    loo = np.array([st.fleiss_kappa(np.delete(counts, i, axis=0)).kappa for i in range(n)])
    jack_var = (n - 1) / n * ((loo - loo.mean()) ** 2).sum()
    assert r.se == pytest.approx(math.sqrt(jack_var), rel=0.015)
    z = sps.norm.ppf(0.975)
    assert r.ci == pytest.approx((r.kappa - z * r.se, r.kappa + z * r.se), abs=1e-12)


def test_fleiss_kappa_se_matches_monte_carlo():
    rng = np.random.default_rng(11)
    ks, ses = [], []
    for _ in range(600):
        counts, _ = st.ratings_to_counts(_simulate_reads(rng, 100, [0.85, 0.8, 0.75, 0.7]), [0, 1])
        r = st.fleiss_kappa(counts)
        ks.append(r.kappa)
        ses.append(r.se)
    assert np.mean(ses) == pytest.approx(np.std(ks, ddof=1), rel=0.12)


def test_fleiss_kappa_edges():
    assert math.isnan(st.fleiss_kappa([[3, 0], [3, 0]]).kappa)  # one category only
    assert st.fleiss_kappa([[3, 0], [0, 3]]).kappa == pytest.approx(1.0)
    r = st.fleiss_kappa([[2, 1]])  # one subject: kappa defined, SE not
    assert np.isfinite(r.kappa) and math.isnan(r.se)
    with pytest.raises(InputError, match="same number of raters"):
        st.fleiss_kappa([[2, 1], [1, 1]])
    with pytest.raises(InputError, match="two raters"):
        st.fleiss_kappa([[1, 0], [0, 1]])
    with pytest.raises(InputError, match="NaN"):
        st.ratings_to_counts(np.array([[0.0, np.nan]]))


@pytest.mark.parametrize(
    "k,grade",
    [
        (-0.1, "low"),
        (0.2, "low"),
        (0.2001, "general (fair)"),
        (0.4, "general (fair)"),
        (0.5, "moderate"),
        (0.6, "moderate"),
        (0.61, "high"),
        (0.8, "high"),
        (0.81, "extremely high"),
        (1.0, "extremely high"),
        (float("nan"), None),
        (None, None),
    ],
)
def test_kappa_grade_boundaries(k, grade):
    assert st.kappa_grade(k) == grade


# ------------------------------------------------------------------ calibration


@pytest.mark.parametrize("seed", range(3))
def test_calibration_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(300), 2)  # rounding puts values exactly on bin edges
    y = (rng.random(300) < p**1.3).astype(int)
    assert st.brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=STAT_TOL)
    rc = st.reliability_curve(y, p, 10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    ok = rc.count > 0
    np.testing.assert_allclose(rc.fraction_positive[ok], prob_true, atol=STAT_TOL)
    np.testing.assert_allclose(rc.mean_predicted[ok], prob_pred, atol=STAT_TOL)
    # ECE from an independent binning (pandas.cut with the same right-closed bins).
    import pandas as pd

    bins = pd.cut(p, np.linspace(0, 1, 11), right=True, include_lowest=True)
    g = pd.DataFrame({"p": p, "y": y, "b": bins}).groupby("b", observed=True)
    ece = (g.size() / len(p) * (g["p"].mean() - g["y"].mean()).abs()).sum()
    assert st.expected_calibration_error(y, p) == pytest.approx(ece, abs=STAT_TOL)


def test_calibration_hand_case_and_errors():
    # Bins [0,.1]: p .05, y 0 -> .05; (.1,.2]: p .15 .15, y 1 0 -> .35; (.9,1]: .05.
    # ECE = (1*.05 + 2*.35 + 1*.05) / 4 = 0.2.
    y, p = [0, 1, 0, 1], [0.05, 0.15, 0.15, 0.95]
    assert st.expected_calibration_error(y, p) == pytest.approx(0.2, abs=1e-12)
    assert st.brier_score(y, p) == pytest.approx((0.05**2 + 0.85**2 + 0.15**2 + 0.05**2) / 4)
    assert st.reliability_curve(y, p).count.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        st.brier_score([0, 1], [0.5, 1.5])


def _ece_brute_force(y, p, bins):
    """ECE by an explicit loop over cases: bin b holds (e_b, e_b+1], bin 0 also holds 0.

    The edges are np.linspace's (k/B and linspace's k*(1/B) can differ in the last bit)."""
    edges = np.linspace(0, 1, bins + 1).tolist()
    sums = [[0, 0.0, 0.0] for _ in range(bins)]  # n, sum p, sum y
    for yi, pi in zip(y, p):
        b = 0
        while b < bins - 1 and pi > edges[b + 1]:
            b += 1
        sums[b][0] += 1
        sums[b][1] += pi
        sums[b][2] += yi
    ece = sum(n / len(p) * abs(sy / n - sp / n) for n, sp, sy in sums if n)
    return ece, sums


@pytest.mark.parametrize("seed,bins", [(0, 10), (1, 10), (2, 7), (3, 1), (4, 20)])
def test_ece_with_bins_matches_brute_force(seed, bins):
    rng = np.random.default_rng(seed)
    n = 257
    p = rng.random(n) ** 2
    p[:20] = np.linspace(0, 1, bins + 1)[rng.integers(0, bins + 1, 20)]  # exactly on bin edges
    p[20], p[21] = 0.0, 1.0
    y = (rng.random(n) < np.sqrt(p)).astype(int)  # deliberately miscalibrated
    ece, table = st.ece_with_bins(y, p, bins=bins)
    ref, sums = _ece_brute_force(y.tolist(), p.tolist(), bins)
    assert ece == pytest.approx(ref, abs=1e-12)
    assert ece == pytest.approx(st.expected_calibration_error(y, p, bins), abs=1e-12)
    assert len(table) == bins and sum(b["n"] for b in table) == n
    for b, (cnt, sp, sy) in zip(table, sums):
        assert b["n"] == cnt
        assert b["hi"] - b["lo"] == pytest.approx(1 / bins)
        if cnt:
            assert b["mean_p"] == pytest.approx(sp / cnt, abs=1e-12)
            assert b["frac_positive"] == pytest.approx(sy / cnt, abs=1e-12)
        else:
            assert b["mean_p"] is None and b["frac_positive"] is None
    import json

    json.dumps(table, allow_nan=False)  # plain Python values


def test_ece_with_bins_hand_case():
    # [0,.1]: p .05, y 0 -> |0 - .05|; (.1,.2]: p .15 .15, y 1 0 -> |.5 - .15| = .35;
    # (.9,1]: p .95, y 1 -> .05.  ECE = (.05 + 2 * .35 + .05) / 4 = 0.2.
    ece, table = st.ece_with_bins([0, 1, 0, 1], [0.05, 0.15, 0.15, 0.95])
    assert ece == pytest.approx(0.2, abs=1e-12)
    assert [b["n"] for b in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table[1] == {"lo": 0.1, "hi": 0.2, "n": 2, "mean_p": pytest.approx(0.15), "frac_positive": 0.5}
    # Perfectly confident and right: ECE 0; confident and wrong: ECE 1.
    assert st.ece_with_bins([0, 1], [0.0, 1.0])[0] == 0.0
    assert st.ece_with_bins([1, 0], [0.0, 1.0])[0] == 1.0
    with pytest.raises(InputError):
        st.ece_with_bins([0, 1], [0.2, 1.2])
    with pytest.raises(InputError):
        st.ece_with_bins([0, 1], [0.2, 0.3], bins=0)


def test_ece_with_bins_near_zero_when_calibrated():
    """y ~ Bernoulli(p) is calibrated by construction; ECE shrinks like 1/sqrt(N per bin)."""
    rng = np.random.default_rng(7)
    n = 200_000
    p = rng.random(n)
    y = (rng.random(n) < p).astype(int)
    ece, table = st.ece_with_bins(y, p)
    assert ece < 0.005
    # The leftover is binning noise: each bin's |frac - mean_p| is within ~4 binomial SEs.
    for b in table:
        se = math.sqrt(b["mean_p"] * (1 - b["mean_p"]) / b["n"])
        assert abs(b["frac_positive"] - b["mean_p"]) < 4 * se + 1e-9
    # The same probabilities pushed towards 0.5 are miscalibrated, and ECE sees it.
    assert st.ece_with_bins(y, 0.5 + (p - 0.5) / 2)[0] > 0.1


# ------------------------------------------------------------------ Table 1 tests


@pytest.mark.parametrize("seed", range(3))
def test_kruskal_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    groups = [np.round(rng.normal(mu, 10, n)) for mu, n in ((40, 30), (45, 25), (38, 12))]
    r = st.kruskal_wallis(*groups)
    ref = sps.kruskal(*groups)
    assert r.statistic == pytest.approx(ref.statistic, abs=STAT_TOL)
    assert r.p_value == pytest.approx(ref.pvalue, abs=STAT_TOL)
    r2 = st.kruskal_wallis(groups[0], groups[1])
    assert r2.p_value == pytest.approx(sps.kruskal(groups[0], groups[1]).pvalue, abs=STAT_TOL)


def test_kruskal_edges():
    assert math.isnan(st.kruskal_wallis([1, 1], [1, 1]).p_value)  # all tied
    with pytest.raises(InputError, match="two non-empty groups"):
        st.kruskal_wallis([1, 2, 3], [])
    with pytest.raises(InputError, match="NaN"):
        st.kruskal_wallis([1, np.nan], [2, 3])


@pytest.mark.parametrize(
    "table",
    [
        [[12, 5], [7, 14]],
        [[30, 10, 5], [20, 25, 9]],
        [[3, 1], [1, 4]],  # small counts: the Yates correction matters
        [[40, 2, 11, 7], [22, 9, 4, 13], [5, 5, 5, 5]],
    ],
)
def test_chi_square_matches_scipy(table):
    for corr in (False, True):
        r = st.chi_square_independence(table, correction=corr)
        chi2, p, dof, expected = sps.chi2_contingency(table, correction=corr)
        assert r.statistic == pytest.approx(chi2, abs=STAT_TOL)
        assert r.p_value == pytest.approx(p, abs=STAT_TOL)
        assert r.df == dof
        np.testing.assert_allclose(r.expected, expected)


def test_chi_square_edges():
    # An all-zero category is dropped instead of dividing by zero.
    r = st.chi_square_independence([[12, 5, 0], [7, 14, 0]])
    assert r.p_value == pytest.approx(sps.chi2_contingency([[12, 5], [7, 14]], correction=False).pvalue)
    assert math.isnan(st.chi_square_independence([[5, 3]]).p_value)  # one group only
