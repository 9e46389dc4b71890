"""Statistics for the evaluation report, as pure functions on NumPy arrays.

Everything here is deterministic (except the explicitly seeded bootstrap in
:func:`roc_band`), has no I/O and raises :class:`model_zoo.errors.InputError` with a
one-line message for unusable input (wrong shape, NaN, a label that is not 0/1).

Where a statistic is *mathematically undefined* for valid input (PPV when nothing was
called positive, kappa when both raters used a single category, a DeLong variance with
a single case in a class) the function returns ``nan`` instead of raising, so a report
can show "undefined" for one cell and carry on. Where the input makes the question
itself meaningless (an AUC with a single class, NaN scores) it raises.

Conventions
-----------
- Labels are 0/1 (or bool); 1 is the positive class.
- A score is called positive when ``score >= threshold`` (inclusive), everywhere.
- ``alpha = 0.05`` gives two-sided 95 % intervals; ``z = Phi^-1(1 - alpha/2)``.
- Interval bounds of proportions are clipped to [0, 1] and of kappas to [-1, 1].

References
----------
.. [DeLong88] DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or
   more correlated receiver operating characteristic curves: a nonparametric approach.
   Biometrics 1988;44:837-845.
.. [SunXu14] Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the
   areas under correlated receiver operating characteristic curves. IEEE Signal Process
   Lett 2014;21:1389-1393.
.. [Wilson27] Wilson EB. Probable inference, the law of succession, and statistical
   inference. J Am Stat Assoc 1927;22:209-212.
.. [Cochran50] Cochran WG. The comparison of percentages in matched samples.
   Biometrika 1950;37:256-266.
.. [Cohen60] Cohen J. A coefficient of agreement for nominal scales. Educ Psychol Meas
   1960;20:37-46.
.. [FCE69] Fleiss JL, Cohen J, Everitt BS. Large sample standard errors of kappa and
   weighted kappa. Psychol Bull 1969;72:323-327.
.. [Fleiss71] Fleiss JL. Measuring nominal scale agreement among many raters. Psychol
   Bull 1971;76:378-382.
.. [Gwet08] Gwet KL. Computing inter-rater reliability and its variance in the presence
   of high agreement. Br J Math Stat Psychol 2008;61:29-48.
.. [Brier50] Brier GW. Verification of forecasts expressed in terms of probability.
   Mon Weather Rev 1950;78:1-3.
.. [Naeini15] Naeini MP, Cooper G, Hauskrecht M. Obtaining well calibrated probabilities
   using Bayesian binning. AAAI 2015.
.. [Youden50] Youden WJ. Index for rating diagnostic tests. Cancer 1950;3:32-35.
.. [KW52] Kruskal WH, Wallis WA. Use of ranks in one-criterion variance analysis.
   J Am Stat Assoc 1952;47:583-621.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as _sps

from model_zoo.auc import roc_auc as library_roc_auc  # the one AUC of the code base
from model_zoo.errors import InputError

__all__ = [
    "AUCResult",
    "ChiSquareResult",
    "CochranQResult",
    "Confusion",
    "DeLongTest",
    "KappaResult",
    "KruskalResult",
    "OperatingPoint",
    "Proportion",
    "ReliabilityCurve",
    "brier_score",
    "chi_square_independence",
    "classification_metrics",
    "cochrans_q",
    "cohen_kappa",
    "confusion_at_threshold",
    "confusion_from_predictions",
    "delong_auc",
    "delong_covariance",
    "delong_test",
    "ece_with_bins",
    "expected_calibration_error",
    "f1_score",
    "fleiss_kappa",
    "kappa_grade",
    "kruskal_wallis",
    "midrank",
    "proportion",
    "ratings_to_counts",
    "reliability_curve",
    "roc_auc",
    "roc_band",
    "roc_curve",
    "threshold_for_sensitivity",
    "tpr_at_fpr",
    "wilson_ci",
    "youden_threshold",
    "z_critical",
]

NAN = float("nan")


# --------------------------------------------------------------------------- validation


def _labels(y: Any, name: str = "y_true") -> np.ndarray:
    """Return labels as a 1-D bool array, or raise InputError."""
    a = np.asarray(y)
    if a.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise InputError(f"{name} is empty: there are no cases to evaluate")
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{name} must be 0/1 labels, got values of type {a.dtype}")
    af = a.astype(float)
    if np.isnan(af).any():
        raise InputError(f"{name} contains NaN at case {int(np.flatnonzero(np.isnan(af))[0])}")
    bad = ~np.isin(af, (0.0, 1.0))
    if bad.any():
        raise InputError(f"{name} must be 0/1, found {a[bad][0]!r}")
    return af == 1.0


def _scores(s: Any, n: int, name: str = "y_score") -> np.ndarray:
    """Return scores as a 1-D float array of length ``n`` without NaN, or raise."""
    a = np.asarray(s)
    if a.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.shape[0] != n:
        raise InputError(f"{name} has {a.shape[0]} values but there are {n} labels")
    try:
        a = a.astype(float)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numeric") from None
    if np.isnan(a).any():
        raise InputError(f"{name} contains NaN at case {int(np.flatnonzero(np.isnan(a))[0])}")
    return a


def _probabilities(p: Any, n: int, name: str = "y_prob") -> np.ndarray:
    a = _scores(p, n, name)
    if ((a < 0.0) | (a > 1.0)).any():
        raise InputError(f"{name} must be probabilities in [0, 1]")
    return a


def _alpha(alpha: float) -> float:
    if not (0.0 < float(alpha) < 1.0):
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(alpha)


def z_critical(alpha: float = 0.05) -> float:
    """Two-sided standard-normal critical value ``Phi^-1(1 - alpha/2)`` (1.95996 for 0.05)."""
    return float(_sps.norm.isf(_alpha(alpha) / 2.0))


def _both_classes(y: np.ndarray, what: str) -> tuple[int, int]:
    m = int(y.sum())
    n = int(y.size - m)
    if m == 0 or n == 0:
        raise InputError(f"{what} is undefined with a single class ({m} positive, {n} negative cases)")
    return m, n


# --------------------------------------------------------------------------- ROC / AUC


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
    """Area under the ROC curve, i.e. the Mann-Whitney probability.

    .. math:: \\mathrm{AUC} = \\frac{1}{mn}\\sum_{i=1}^{m}\\sum_{j=1}^{n}
              \\psi(X_i, Y_j),\\quad \\psi(x, y) = [x > y] + \\tfrac12 [x = y]

    with :math:`X` the scores of the ``m`` positives and :math:`Y` of the ``n``
    negatives (by :func:`model_zoo.auc.roc_auc`, the one AUC of the code base; this adds
    the report's strict input checks). The DeLong functions below compute the same quantity
    from midranks: ``AUC = (sum of positive midranks - m(m+1)/2) / (m n)``.

    Raises
    ------
    InputError
        Single class, NaN scores or mismatched lengths.
    """
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    _both_classes(y, "AUC")
    return library_roc_auc(y, s)


@dataclass(frozen=True)
class AUCResult:
    """AUC with its DeLong variance and Wald interval (``ci`` may be ``(nan, nan)``)."""

    auc: float
    variance: float
    se: float
    ci: tuple[float, float]
    n_pos: int
    n_neg: int


@dataclass(frozen=True)
class DeLongTest:
    """Paired DeLong test of ``H0: AUC_a = AUC_b`` on the same cases."""

    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    variance: float  # Var(auc_a - auc_b)
    z: float
    p_value: float


def delong_covariance(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of ``k`` score vectors on the same cases and their DeLong covariance.

    Fast midrank algorithm of [SunXu14]_ for the estimator of [DeLong88]_. With ``m``
    positives and ``n`` negatives, for model ``r`` let :math:`T^Z` be the midranks in
    the pooled sample, :math:`T^X` within the positives and :math:`T^Y` within the
    negatives. The structural components ("placement values") are

    .. math:: V^r_{10}(X_i) = \\frac{T^Z_i - T^X_i}{n}, \\qquad
              V^r_{01}(Y_j) = 1 - \\frac{T^Z_{m+j} - T^Y_j}{m}

    (the fraction of negatives below positive ``i``, ties counted half, and the
    fraction of positives above negative ``j``). Then
    :math:`\\mathrm{AUC}_r = \\overline{V^r_{10}}` and

    .. math:: S = \\frac{S_{10}}{m} + \\frac{S_{01}}{n}

    where :math:`S_{10}`, :math:`S_{01}` are the ``k x k`` sample covariance matrices
    (denominator ``m - 1`` and ``n - 1``) of the components.

    Parameters
    ----------
    y_true : array_like, shape (N,)
        0/1 labels.
    scores : array_like, shape (k, N) or (N,)
        One row per model; higher means more likely positive.

    Returns
    -------
    auc : ndarray, shape (k,)
    cov : ndarray, shape (k, k)
        All ``nan`` when a class has fewer than two cases (sample covariance undefined).
    """
    y = _labels(y_true)
    try:
        s = np.asarray(scores, dtype=float)
    except (TypeError, ValueError):
        raise InputError("scores must be numeric") from None
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2 or s.shape[1] != y.size:
        raise InputError(f"scores must have shape (k, {y.size}), got {np.shape(scores)}")
    for r in range(s.shape[0]):
        _scores(s[r], y.size, f"scores[{r}]")
    m, n = _both_classes(y, "AUC")
    k = s.shape[0]
    # Positives first, as in Sun & Xu's layout.
    x = s[:, y]
    yy = s[:, ~y]
    tx = np.vstack([midrank(x[r]) for r in range(k)])
    ty = np.vstack([midrank(yy[r]) for r in range(k)])
    tz = np.vstack([midrank(np.r_[x[r], yy[r]]) for r in range(k)])
    # Subtract before dividing: midrank sums are exact multiples of 1/2, so AUC = 1
    # comes out as exactly 1.0 (not 0.9999999999999999).
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    if m < 2 or n < 2:
        return auc, np.full((k, k), NAN)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return auc, s10 / m + s01 / n


def delong_auc(y_true: Any, y_score: Any, alpha: float = 0.05) -> AUCResult:
    """AUC with DeLong variance and a Wald ``1 - alpha`` interval.

    ``ci = clip(AUC -/+ z * sqrt(Var), 0, 1)``, as in pROC's ``ci.auc(method="delong")``.

    Notes
    -----
    The DeLong variance is zero when the classes are perfectly separated (AUC 1 or 0)
    or when every score is tied (AUC 0.5), so the interval collapses to a point there;
    that is a property of the estimator, not a bug. With fewer than two cases in a
    class the variance is undefined and ``ci`` is ``(nan, nan)``.
    """
    a = _alpha(alpha)
    y = _labels(y_true)
    auc, cov = delong_covariance(y, _scores(y_score, y.size))
    var = float(cov[0, 0])
    if np.isfinite(var):
        var = max(var, 0.0)  # guard against -1e-18 from round-off
        se = math.sqrt(var)
        z = z_critical(a)
        ci = (float(np.clip(auc[0] - z * se, 0, 1)), float(np.clip(auc[0] + z * se, 0, 1)))
    else:
        se, ci = NAN, (NAN, NAN)
    m = int(y.sum())
    return AUCResult(float(auc[0]), var, se, ci, m, int(y.size - m))


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> DeLongTest:
    """Paired two-sided DeLong test comparing two AUCs measured on the same cases.

    .. math:: z = \\frac{\\mathrm{AUC}_a - \\mathrm{AUC}_b}
              {\\sqrt{S_{aa} + S_{bb} - 2 S_{ab}}}, \\qquad p = 2\\,(1 - \\Phi(|z|))

    with ``S`` from :func:`delong_covariance`.

    Degenerate cases: when the variance of the difference is zero and the AUCs are
    equal (e.g. identical scores, or both perfectly separating) ``z = 0, p = 1``; when it
    is zero but the AUCs differ, or a class has one case, ``z`` and ``p`` are ``nan``
    (the normal approximation says nothing there).
    """
    y = _labels(y_true)
    sa = _scores(score_a, y.size, "score_a")
    sb = _scores(score_b, y.size, "score_b")
    auc, cov = delong_covariance(y, np.vstack([sa, sb]))
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if not np.isfinite(var):
        return DeLongTest(float(auc[0]), float(auc[1]), diff, NAN, NAN, NAN)
    # Round-off can leave ~1e-17 where the exact value is 0.
    if var <= 1e-15:
        if abs(diff) <= 1e-12:
            return DeLongTest(float(auc[0]), float(auc[1]), diff, 0.0, 0.0, 1.0)
        return DeLongTest(float(auc[0]), float(auc[1]), diff, max(var, 0.0), NAN, NAN)
    z = diff / math.sqrt(var)
    return DeLongTest(float(auc[0]), float(auc[1]), diff, var, z, float(2.0 * _sps.norm.sf(abs(z))))


def roc_curve(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve at every distinct score.

    Returns
    -------
    fpr, tpr : ndarray
        Start at (0, 0) and end at (1, 1); non-decreasing.
    thresholds : ndarray
        Decreasing; ``thresholds[0] = +inf`` (nothing called positive); point ``i`` is
        the rule ``score >= thresholds[i]``. Same as scikit-learn's
        ``roc_curve(..., drop_intermediate=False)``.
    """
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    m, n = _both_classes(y, "ROC curve")
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]
    tps = np.cumsum(ys)[last_of_tie]
    fps = last_of_tie + 1 - tps
    fpr = np.r_[0.0, fps / n]
    tpr = np.r_[0.0, tps / m]
    return fpr, tpr, np.r_[np.inf, ss[last_of_tie]]


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Highest TPR reached at FPR <= each grid value (vertical reading of a step ROC).

    ``fpr``/``tpr`` as returned by :func:`roc_curve` (non-decreasing, starting at 0).
    """
    idx = np.searchsorted(fpr, grid, side="right") - 1
    return tpr[np.clip(idx, 0, None)]


def roc_band(
    y_true: Any,
    y_score: Any,
    fpr_grid: Any | None = None,
    *,
    n_boot: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise ``1 - alpha`` band of sensitivity at fixed 1 - specificity (bootstrap).

    Stratified bootstrap (positives and negatives resampled separately, so each
    replicate has the original class counts, as pROC's ``ci.se``); at each FPR in the
    grid the band is the ``alpha/2`` and ``1 - alpha/2`` percentiles of the replicate
    TPRs. Used only for drawing; deterministic for a given ``seed``.

    Returns
    -------
    grid, lower, upper : ndarray
    """
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    _both_classes(y, "ROC band")
    grid = np.linspace(0.0, 1.0, 101) if fpr_grid is None else np.asarray(fpr_grid, float)
    if n_boot < 10:
        raise InputError(f"n_boot must be at least 10, got {n_boot}")
    rng = np.random.default_rng(seed)
    pos, neg = s[y], s[~y]
    lab = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    tprs = np.empty((n_boot, grid.size))
    for b in range(n_boot):
        sb = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        f, t, _ = roc_curve(lab, sb)
        tprs[b] = tpr_at_fpr(f, t, grid)
    a = _alpha(alpha)
    lo, hi = np.quantile(tprs, [a / 2.0, 1.0 - a / 2.0], axis=0)
    return grid, lo, hi


# --------------------------------------------------------------------------- operating points


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold (call positive when ``score >= threshold``) and its rates."""

    threshold: float
    sensitivity: float
    specificity: float


def youden_threshold(y_true: Any, y_score: Any) -> OperatingPoint:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 [Youden50]_.

    Candidates are the distinct scores; among equal J the highest threshold wins
    (fewest positive calls). The ``+inf`` "call nothing" point (J = 0) is never chosen.
    """
    fpr, tpr, thr = roc_curve(y_true, y_score)
    j = tpr[1:] - fpr[1:]
    i = int(np.argmax(j)) + 1  # argmax returns the first = highest threshold on ties
    return OperatingPoint(float(thr[i]), float(tpr[i]), float(1.0 - fpr[i]))


def threshold_for_sensitivity(y_true: Any, y_score: Any, target: float) -> OperatingPoint:
    """Highest threshold whose sensitivity is at least ``target`` (best specificity).

    ``target`` in (0, 1]; the lowest score always reaches sensitivity 1.
    """
    if not (0.0 < float(target) <= 1.0):
        raise InputError(f"target sensitivity must be in (0, 1], got {target!r}")
    fpr, tpr, thr = roc_curve(y_true, y_score)
    # tpr is non-decreasing along decreasing thresholds: the first hit is the highest.
    # A tiny tolerance so that target=0.8 with 4/5 = 0.8000000000000002 still matches.
    i = int(np.flatnonzero(tpr >= float(target) - 1e-12)[0])
    return OperatingPoint(float(thr[i]), float(tpr[i]), float(1.0 - fpr[i]))


# --------------------------------------------------------------------------- confusion, proportions


@dataclass(frozen=True)
class Confusion:
    """2 x 2 confusion counts; :meth:`as_list` gives ``[[tn, fp], [fn, tp]]``."""

    tn: int
    fp: int
    fn: int
    tp: int

    @property
    def n(self) -> int:
        return self.tn + self.fp + self.fn + self.tp

    def as_list(self) -> list[list[int]]:
        """Rows = true class 0, 1; columns = predicted 0, 1 (scikit-learn's layout)."""
        return [[self.tn, self.fp], [self.fn, self.tp]]


def confusion_from_predictions(y_true: Any, y_pred: Any) -> Confusion:
    """Confusion counts of 0/1 predictions against 0/1 labels."""
    y = _labels(y_true)
    p = _labels(y_pred, "y_pred")
    if p.size != y.size:
        raise InputError(f"y_pred has {p.size} values but there are {y.size} labels")
    return Confusion(tn=int((~y & ~p).sum()), fp=int((~y & p).sum()), fn=int((y & ~p).sum()), tp=int((y & p).sum()))


def confusion_at_threshold(y_true: Any, y_score: Any, threshold: float) -> Confusion:
    """Confusion counts of the rule ``score >= threshold`` (inclusive)."""
    y = _labels(y_true)
    s = _scores(y_score, y.size)
    t = float(threshold)
    if math.isnan(t):
        raise InputError("threshold is NaN")
    return confusion_from_predictions(y, s >= t)


def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion [Wilson27]_ (no continuity correction).

    .. math:: \\frac{\\hat p + \\frac{z^2}{2n} \\pm
              z\\sqrt{\\frac{\\hat p(1-\\hat p)}{n} + \\frac{z^2}{4n^2}}}{1 + z^2/n}

    Same as ``statsmodels.stats.proportion.proportion_confint(method="wilson")``.
    Returns ``(nan, nan)`` when ``n == 0`` (no cases in the denominator).
    """
    k, n = int(successes), int(n)
    if n < 0 or k < 0 or k > n:
        raise InputError(f"need 0 <= successes <= n, got {k} of {n}")
    if n == 0:
        return (NAN, NAN)
    z = z_critical(alpha)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Proportion:
    """``successes / n`` with its Wilson interval; ``estimate`` is ``nan`` when ``n == 0``."""

    estimate: float
    ci: tuple[float, float]
    successes: int
    n: int


def proportion(successes: int, n: int, alpha: float = 0.05) -> Proportion:
    """``successes / n`` with its Wilson ``1 - alpha`` interval (``nan`` when ``n == 0``)."""
    k, n = int(successes), int(n)
    return Proportion(k / n if n else NAN, wilson_ci(k, n, alpha), k, n)


def classification_metrics(conf: Confusion, alpha: float = 0.05) -> dict[str, Proportion]:
    """Accuracy, sensitivity, specificity, PPV and NPV with Wilson intervals.

    accuracy = (TP+TN)/N, sensitivity = TP/(TP+FN), specificity = TN/(TN+FP),
    PPV = TP/(TP+FP), NPV = TN/(TN+FN). A zero denominator gives ``nan``.
    """
    c = conf
    return {
        "accuracy": proportion(c.tp + c.tn, c.n, alpha),
        "sensitivity": proportion(c.tp, c.tp + c.fn, alpha),
        "specificity": proportion(c.tn, c.tn + c.fp, alpha),
        "ppv": proportion(c.tp, c.tp + c.fp, alpha),
        "npv": proportion(c.tn, c.tn + c.fn, alpha),
    }


def f1_score(conf: Confusion) -> float:
    """F1 = 2 TP / (2 TP + FP + FN); ``nan`` when there are no positives and no positive calls.

    (scikit-learn returns 0 there with a warning; we call it undefined.)
    """
    d = 2 * conf.tp + conf.fp + conf.fn
    return 2.0 * conf.tp / d if d else NAN


# --------------------------------------------------------------------------- Cochran's Q


@dataclass(frozen=True)
class CochranQResult:
    statistic: float
    df: int
    p_value: float


def cochrans_q(x: Any) -> CochranQResult:
    """Cochran's Q test that ``k`` matched binary outcomes have equal success rates.

    ``x`` is an ``(n cases, k methods)`` 0/1 matrix (e.g. per-case correctness of the
    model and each reader). With column totals :math:`C_j`, row totals :math:`R_i` and
    grand total :math:`T` [Cochran50]_:

    .. math:: Q = (k-1)\\frac{k\\sum_j C_j^2 - T^2}{kT - \\sum_i R_i^2}
              \\sim \\chi^2_{k-1}

    For ``k = 2`` this is McNemar's test without continuity correction.

    When every case has the same outcome for all methods (no discordant case), the
    denominator and numerator are both zero; the permutation distribution of Q is then a
    point mass at 0, so we return ``Q = 0, p = 1`` (statsmodels returns ``nan``).
    """
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"Cochran's Q needs an (n, k) matrix, got shape {a.shape}")
    if a.shape[1] < 2:
        raise InputError("Cochran's Q needs at least two methods to compare")
    if a.shape[0] == 0:
        raise InputError("Cochran's Q needs at least one case")
    b = _labels(a.reshape(-1), "Cochran's Q input").reshape(a.shape).astype(float)
    k = b.shape[1]
    col = b.sum(axis=0)
    row = b.sum(axis=1)
    t = row.sum()
    den = k * t - (row**2).sum()
    if den <= 0:
        return CochranQResult(0.0, k - 1, 1.0)
    q = (k - 1) * (k * (col**2).sum() - t * t) / den
    return CochranQResult(float(q), k - 1, float(_sps.chi2.sf(q, k - 1)))


# --------------------------------------------------------------------------- kappas


@dataclass(frozen=True)
class KappaResult:
    """Kappa with its large-sample standard error and Wald interval (may be ``nan``)."""

    kappa: float
    se: float
    ci: tuple[float, float]
    n: int


def _kappa_ci(k: float, var: float, alpha: float) -> tuple[float, tuple[float, float]]:
    if not (np.isfinite(k) and np.isfinite(var)):
        return NAN, (NAN, NAN)
    se = math.sqrt(max(var, 0.0))
    z = z_critical(alpha)
    return se, (max(-1.0, k - z * se), min(1.0, k + z * se))


def _codes(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 1 or b.ndim != 1 or a.size != b.size:
        raise InputError(f"raters must be 1-D and of equal length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise InputError("kappa needs at least one case")
    both = np.r_[a, b]
    if both.dtype.kind == "f" and np.isnan(both.astype(float)).any():
        raise InputError("ratings contain NaN")
    cats, codes = np.unique(both, return_inverse=True)
    return codes[: a.size], codes[a.size :], cats.size


def cohen_kappa(rater_a: Any, rater_b: Any, alpha: float = 0.05) -> KappaResult:
    """Cohen's kappa for two raters [Cohen60]_ with the Fleiss-Cohen-Everitt SE [FCE69]_.

    With :math:`p_{ij}` the joint proportions over the categories both raters used,
    :math:`p_{i\\cdot}`, :math:`p_{\\cdot j}` the marginals,
    :math:`p_o = \\sum_i p_{ii}` and :math:`p_e = \\sum_i p_{i\\cdot}p_{\\cdot i}`:

    .. math:: \\kappa = \\frac{p_o - p_e}{1 - p_e}

    .. math:: \\widehat{\\mathrm{Var}}(\\kappa) = \\frac{1}{N(1-p_e)^2}\\Big[
              \\sum_i p_{ii}\\big(1 - (p_{i\\cdot} + p_{\\cdot i})(1-\\kappa)\\big)^2
              + (1-\\kappa)^2 \\sum_{i \\ne j} p_{ij}(p_{\\cdot i} + p_{j\\cdot})^2
              - \\big(\\kappa - p_e(1-\\kappa)\\big)^2 \\Big]

    This is the non-null large-sample variance (the one for intervals, not the null one
    for testing kappa = 0); it equals ``statsmodels.stats.inter_rater.cohens_kappa``'s
    ``std_kappa``. Interval: ``kappa -/+ z * SE`` clipped to [-1, 1].

    ``kappa`` is ``nan`` when :math:`p_e = 1` (both raters used one and the same
    category for every case).
    """
    al = _alpha(alpha)
    ca, cb, q = _codes(rater_a, rater_b)
    n = ca.size
    table = np.zeros((q, q))
    np.add.at(table, (ca, cb), 1.0)
    p = table / n
    row, col = p.sum(axis=1), p.sum(axis=0)
    po = float(np.trace(p))
    pe = float(row @ col)
    if math.isclose(pe, 1.0, rel_tol=0.0, abs_tol=1e-12):
        return KappaResult(NAN, NAN, (NAN, NAN), n)
    k = (po - pe) / (1.0 - pe)
    term_a = float((np.diag(p) * (1.0 - (row + col) * (1.0 - k)) ** 2).sum())
    off = p * (col[:, None] + row[None, :]) ** 2  # p_ij (p_.i + p_j.)^2
    np.fill_diagonal(off, 0.0)
    term_b = (1.0 - k) ** 2 * float(off.sum())
    term_c = (k - pe * (1.0 - k)) ** 2
    var = (term_a + term_b - term_c) / (n * (1.0 - pe) ** 2)
    se, ci = _kappa_ci(k, var, al)
    return KappaResult(float(k), se, ci, n)


def ratings_to_counts(ratings: Any, categories: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Turn an ``(n subjects, r raters)`` matrix of category labels into counts.

    Returns
    -------
    counts : ndarray of int, shape (n, q)
        ``counts[i, j]`` = how many raters put subject ``i`` in category ``j``.
    categories : ndarray, shape (q,)
        Sorted categories (or those given, in that order).
    """
    a = np.asarray(ratings)
    if a.ndim != 2:
        raise InputError(f"ratings must be an (n subjects, r raters) matrix, got shape {a.shape}")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise InputError("ratings contain NaN")
    cats = np.unique(a) if categories is None else np.asarray(categories)
    idx = {c: j for j, c in enumerate(cats.tolist())}
    try:
        codes = np.vectorize(idx.__getitem__, otypes=[int])(a) if a.size else np.zeros(a.shape, int)
    except KeyError as err:
        raise InputError(f"rating {err.args[0]!r} is not among the categories") from None
    counts = np.zeros((a.shape[0], cats.size), dtype=int)
    for j in range(cats.size):
        counts[:, j] = (codes == j).sum(axis=1)
    return counts, cats


def fleiss_kappa(counts: Any, alpha: float = 0.05) -> KappaResult:
    """Fleiss' kappa for ``r >= 2`` raters per subject [Fleiss71]_ with Gwet's SE [Gwet08]_.

    ``counts`` is an ``(N subjects, q categories)`` table (see :func:`ratings_to_counts`);
    every row must sum to the same ``r``. With :math:`n_{ij}` the counts,

    .. math:: p_j = \\frac{1}{Nr}\\sum_i n_{ij},\\quad
              P_i = \\frac{\\sum_j n_{ij}^2 - r}{r(r-1)},\\quad
              \\bar P = \\frac1N\\sum_i P_i,\\quad P_e = \\sum_j p_j^2,\\quad
              \\kappa = \\frac{\\bar P - P_e}{1 - P_e}

    (equal to ``statsmodels.stats.inter_rater.fleiss_kappa(counts, method="fleiss")``).

    Standard error: Fleiss' 1971 variance is only valid under ``kappa = 0`` (and
    statsmodels gives none), so we use Gwet's (2008) linearisation variance, valid for
    intervals at any kappa (Gwet, Handbook of Inter-Rater Reliability, 4th ed., ch. 5;
    irrCAC ``fleiss.kappa.raw`` with an infinite population, ``f = 0``):

    .. math:: \\kappa_i = \\frac{P_i - P_e}{1 - P_e},\\quad
              \\pi^e_i = \\sum_j p_j \\frac{n_{ij}}{r},\\quad
              \\kappa_i^\\star = \\kappa_i - 2(1-\\kappa)\\frac{\\pi^e_i - P_e}{1 - P_e}

    .. math:: \\widehat{\\mathrm{Var}}(\\kappa) = \\frac{1}{N(N-1)}
              \\sum_i (\\kappa_i^\\star - \\kappa)^2

    The interval is the normal one, ``kappa -/+ z * SE`` clipped to [-1, 1] (irrCAC uses
    a t quantile with N-1 df, which differs below N ~ 30).
    ``kappa`` is ``nan`` when every rating falls in one category (:math:`P_e = 1`);
    the SE is ``nan`` for a single subject.
    """
    al = _alpha(alpha)
    c = np.asarray(counts)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise InputError(f"counts must be a non-empty (subjects, categories) table, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.number) or (c < 0).any() or np.isnan(c.astype(float)).any():
        raise InputError("counts must be non-negative numbers")
    c = c.astype(float)
    r_i = c.sum(axis=1)
    r = r_i[0]
    if not np.allclose(r_i, r):
        raise InputError("every subject must be rated by the same number of raters")
    if r < 2:
        raise InputError(f"Fleiss' kappa needs at least two raters per subject, got {r:g}")
    big_n = c.shape[0]
    p_j = c.sum(axis=0) / (big_n * r)
    p_i = ((c**2).sum(axis=1) - r) / (r * (r - 1.0))
    pe = float((p_j**2).sum())
    if math.isclose(pe, 1.0, rel_tol=0.0, abs_tol=1e-12):
        return KappaResult(NAN, NAN, (NAN, NAN), big_n)
    k = (float(p_i.mean()) - pe) / (1.0 - pe)
    if big_n < 2:
        return KappaResult(float(k), NAN, (NAN, NAN), big_n)
    k_i = (p_i - pe) / (1.0 - pe)
    pe_i = (c / r) @ p_j
    k_star = k_i - 2.0 * (1.0 - k) * (pe_i - pe) / (1.0 - pe)
    var = float(((k_star - k) ** 2).sum()) / (big_n * (big_n - 1.0))
    se, ci = _kappa_ci(k, var, al)
    return KappaResult(float(k), se, ci, big_n)


_GRADES = ((0.2, "low"), (0.4, "general (fair)"), (0.6, "moderate"), (0.8, "high"))


def kappa_grade(kappa: float | None) -> str | None:
    """The paper's consistency grade for a kappa.

    <= 0.2 low; (0.2, 0.4] general (fair); (0.4, 0.6] moderate; (0.6, 0.8] high;
    > 0.8 extremely high. ``None`` for an undefined kappa.
    """
    if kappa is None or not np.isfinite(kappa):
        return None
    for upper, name in _GRADES:
        if kappa <= upper:
            return name
    return "extremely high"


# --------------------------------------------------------------------------- calibration


def brier_score(y_true: Any, y_prob: Any) -> float:
    """Brier score [Brier50]_: mean squared difference between probability and outcome."""
    y = _labels(y_true)
    p = _probabilities(y_prob, y.size)
    return float(np.mean((p - y) ** 2))


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin calibration; arrays have one entry per bin, ``nan`` for empty bins."""

    bin_edges: np.ndarray  # n_bins + 1 edges from 0 to 1
    mean_predicted: np.ndarray
    fraction_positive: np.ndarray
    count: np.ndarray  # int


def reliability_curve(y_true: Any, y_prob: Any, n_bins: int = 10) -> ReliabilityCurve:
    """Reliability diagram data on ``n_bins`` equal-width bins.

    Bins are ``[0, 1/B], (1/B, 2/B], ..., ((B-1)/B, 1]`` - the same assignment as
    scikit-learn's ``calibration_curve(strategy="uniform")``, which drops empty bins
    where we keep them as ``nan``.
    """
    y = _labels(y_true)
    p = _probabilities(y_prob, y.size)
    if int(n_bins) < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    ids = np.searchsorted(edges[1:-1], p, side="left")
    count = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y.astype(float), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, NAN)
        frac = np.where(count > 0, sum_y / count, NAN)
    return ReliabilityCurve(edges, mean_p, frac, count.astype(int))


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10) -> float:
    """Expected calibration error [Naeini15]_ on the bins of :func:`reliability_curve`.

    .. math:: \\mathrm{ECE} = \\sum_b \\frac{n_b}{N}\\,|\\bar p_b - \\bar y_b|
    """
    rc = reliability_curve(y_true, y_prob, n_bins)
    ok = rc.count > 0
    w = rc.count[ok] / rc.count.sum()
    return float((w * np.abs(rc.mean_predicted[ok] - rc.fraction_positive[ok])).sum())


def ece_with_bins(y_true: Any, y_prob: Any, bins: int = 10) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error and its reliability table, as plain Python values.

    Equal-width bins on [0, 1], assigned exactly as :func:`reliability_curve`
    (``[0, 1/B], (1/B, 2/B], ..., ((B-1)/B, 1]``), and

    .. math:: \\mathrm{ECE} = \\sum_{b:\\,n_b>0} \\frac{n_b}{N}\\,|\\bar y_b - \\bar p_b|

    (the same value as :func:`expected_calibration_error`).

    Returns
    -------
    ece : float
    table : list of dict
        One dict per bin, empty bins included: ``lo``, ``hi`` (the bin edges), ``n``,
        ``mean_p`` and ``frac_positive`` (``None`` for an empty bin). JSON-serialisable.
    """
    rc = reliability_curve(y_true, y_prob, bins)
    ok = rc.count > 0
    w = rc.count[ok] / rc.count.sum()
    ece = float((w * np.abs(rc.fraction_positive[ok] - rc.mean_predicted[ok])).sum())
    table = [
        {
            "lo": float(rc.bin_edges[i]),
            "hi": float(rc.bin_edges[i + 1]),
            "n": int(rc.count[i]),
            "mean_p": float(rc.mean_predicted[i]) if rc.count[i] else None,
            "frac_positive": float(rc.fraction_positive[i]) if rc.count[i] else None,
        }
        for i in range(rc.count.size)
    ]
    return ece, table


# --------------------------------------------------------------------------- Table 1 tests


@dataclass(frozen=True)
class KruskalResult:
    statistic: float
    df: int
    p_value: float


def kruskal_wallis(*groups: Any) -> KruskalResult:
    """Kruskal-Wallis H test [KW52]_ with the tie correction (for continuous variables).

    With midranks over the pooled ``N`` values, rank sums :math:`R_g` of groups of size
    :math:`n_g`, and tie blocks of sizes :math:`t`:

    .. math:: H = \\frac{\\frac{12}{N(N+1)}\\sum_g \\frac{R_g^2}{n_g} - 3(N+1)}
              {1 - \\frac{\\sum (t^3 - t)}{N^3 - N}} \\sim \\chi^2_{G-1}

    Same as ``scipy.stats.kruskal``. Empty groups are ignored; ``nan`` when every value
    is tied. Raises when fewer than two non-empty groups remain or a value is NaN.
    """
    gs = [np.asarray(g, dtype=float).ravel() for g in groups]
    gs = [g for g in gs if g.size]
    if len(gs) < 2:
        raise InputError("Kruskal-Wallis needs at least two non-empty groups")
    if any(np.isnan(g).any() for g in gs):
        raise InputError("Kruskal-Wallis input contains NaN (drop missing values first)")
    pooled = np.concatenate(gs)
    n = pooled.size
    ranks = midrank(pooled)
    _, ties = np.unique(pooled, return_counts=True)
    corr = 1.0 - float((ties.astype(float) ** 3 - ties).sum()) / (n**3 - n) if n > 1 else 0.0
    df = len(gs) - 1
    if corr <= 0:
        return KruskalResult(NAN, df, NAN)
    bounds = np.cumsum([0] + [g.size for g in gs])
    ssum = sum(ranks[bounds[i] : bounds[i + 1]].sum() ** 2 / gs[i].size for i in range(len(gs)))
    h = (12.0 / (n * (n + 1.0)) * ssum - 3.0 * (n + 1.0)) / corr
    return KruskalResult(float(h), df, float(_sps.chi2.sf(h, df)))


@dataclass(frozen=True)
class ChiSquareResult:
    statistic: float
    df: int
    p_value: float
    expected: np.ndarray


def chi_square_independence(table: Any, correction: bool = False) -> ChiSquareResult:
    """Pearson's chi-square test of independence on an ``r x c`` contingency table.

    .. math:: E_{ij} = \\frac{R_i C_j}{N},\\quad
              \\chi^2 = \\sum_{ij}\\frac{(O_{ij} - E_{ij})^2}{E_{ij}}
              \\sim \\chi^2_{(r-1)(c-1)}

    Rows or columns that are entirely zero are dropped first (a category nobody has
    carries no information). ``correction=True`` applies Yates' correction when
    ``df == 1``, exactly as ``scipy.stats.chi2_contingency`` (each ``|O - E|`` reduced by
    at most 0.5). Statistic and p are ``nan`` when fewer than two rows or columns remain.
    """
    t = np.asarray(table, dtype=float)
    if t.ndim != 2:
        raise InputError(f"contingency table must be 2-D, got shape {t.shape}")
    if np.isnan(t).any() or (t < 0).any():
        raise InputError("contingency table must hold non-negative counts")
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    if t.shape[0] < 2 or t.shape[1] < 2:
        return ChiSquareResult(NAN, 0, NAN, np.zeros_like(t))
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / t.sum()
    df = (t.shape[0] - 1) * (t.shape[1] - 1)
    obs = t
    if correction and df == 1:
        diff = expected - obs
        obs = obs + np.sign(diff) * np.minimum(0.5, np.abs(diff))
    chi2 = float(((obs - expected) ** 2 / expected).sum())
    return ChiSquareResult(chi2, df, float(_sps.chi2.sf(chi2, df)), expected)
