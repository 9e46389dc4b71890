"""Statistics shown in ``report.html`` only (not part of the ``metrics.json`` contract):
calibration, ROC curves with a bootstrap band, accuracy by subtype (Table 3) and the
clinical characteristics by label (Table 1). Pure functions of the analysis set.

Table 1: Kruskal-Wallis for continuous and Pearson chi-square (no continuity correction)
for categorical characteristics; missing values excluded per characteristic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training import stats as st
from training.report.inputs import AnalysisSet
from training.report.metrics import finite_or_none

SUBTYPE_COLUMNS = ("tumor_subtype", "subtype")
CLINICAL_CONTINUOUS = ("age",)
CLINICAL_CATEGORICAL = ("sex", "site")
CALIBRATION_BINS = 10
ROC_BAND_BOOTSTRAPS = 300


@dataclass(frozen=True)
class Calibration:
    brier: float
    ece: float  # over CALIBRATION_BINS equal-width bins
    curve: st.ReliabilityCurve


@dataclass(frozen=True)
class RocWithBand:
    fpr: np.ndarray
    tpr: np.ndarray
    grid: np.ndarray  # false-positive rates of the band
    lo: np.ndarray  # bootstrap 95 % band of sensitivity on the grid
    hi: np.ndarray


@dataclass(frozen=True)
class SubtypeRow:
    subtype: str
    n: int
    positives: int
    accuracy: dict[str, st.Proportion]  # rater -> accuracy with its Wilson CI


@dataclass(frozen=True)
class SubtypeTable:
    column: str  # the predictions column the subtypes came from
    raters: list[str]  # model names, then "reader <name>"
    rows: list[SubtypeRow]  # largest subtype first


@dataclass(frozen=True)
class Table1Row:
    label: str
    overall: str
    groups: list[str]  # one cell per label group (GROUPS order)
    p: float | None
    test: str
    indent: bool  # a category under its characteristic's row


@dataclass(frozen=True)
class ReportExtras:
    calibration: dict[str, Calibration]  # models whose scores lie in [0, 1]
    roc: dict[str, RocWithBand]  # empty with one class
    reader_f1: dict[str, float]
    subtype: SubtypeTable | None
    table1: list[Table1Row] | None


def label_groups(analysis: AnalysisSet) -> list[tuple[str, np.ndarray]]:
    """Table 1's columns: (heading, row mask) per label."""
    return [("Label 0 (negative)", ~analysis.y), ("Label 1 (positive)", analysis.y)]


def report_extras(analysis: AnalysisSet, calls: dict[str, np.ndarray]) -> ReportExtras:
    y = analysis.y
    calibration: dict[str, Calibration] = {}
    roc: dict[str, RocWithBand] = {}
    for name, s in analysis.models.items():
        if np.all((s >= 0) & (s <= 1)):
            calibration[name] = Calibration(
                brier=st.brier_score(y, s),
                ece=st.expected_calibration_error(y, s, CALIBRATION_BINS),
                curve=st.reliability_curve(y, s, CALIBRATION_BINS),
            )
        if analysis.both_classes:
            fpr, tpr, _ = st.roc_curve(y, s)
            grid, lo, hi = st.roc_band(y, s, n_boot=ROC_BAND_BOOTSTRAPS, seed=0)
            roc[name] = RocWithBand(fpr=fpr, tpr=tpr, grid=grid, lo=lo, hi=hi)
    reader_f1 = {name: st.f1_score(st.confusion_from_predictions(y, r)) for name, r in analysis.readers.items()}
    return ReportExtras(
        calibration=calibration,
        roc=roc,
        reader_f1=reader_f1,
        subtype=subtype_table(analysis, calls),
        table1=table1(analysis),
    )


def subtype_table(analysis: AnalysisSet, calls: dict[str, np.ndarray]) -> SubtypeTable | None:
    """Accuracy of every model and reader per subtype (Wilson CIs); None without a subtype column."""
    col = next((c for c in SUBTYPE_COLUMNS if c in analysis.frame.columns), None)
    if col is None:
        return None
    values = analysis.frame[col].astype("string").fillna("(missing)").str.strip().replace("", "(missing)")
    raters = {**calls, **{f"reader {n}": r for n, r in analysis.readers.items()}}
    rows = []
    for sub in values.unique():
        m = (values == sub).to_numpy(dtype=bool)
        n = int(m.sum())
        accuracy = {}
        for name, c in raters.items():
            k = int((c[m] == analysis.y[m]).sum())
            accuracy[name] = st.proportion(k, n, 0.05)
        rows.append(SubtypeRow(subtype=str(sub), n=n, positives=int(analysis.y[m].sum()), accuracy=accuracy))
    rows.sort(key=lambda r: (-r.n, r.subtype))
    return SubtypeTable(column=col, raters=list(raters), rows=rows)


def _missing_note(k: int) -> str:
    return f"({k} missing)" if k else ""


def table1(analysis: AnalysisSet) -> list[Table1Row] | None:
    """Clinical characteristics by label; None without any clinical column."""
    f = analysis.frame
    if not any(c in f.columns for c in CLINICAL_CONTINUOUS + CLINICAL_CATEGORICAL):
        return None
    groups = label_groups(analysis)
    out: list[Table1Row] = []
    for col in CLINICAL_CONTINUOUS:
        if col not in f.columns:
            continue
        v = pd.to_numeric(f[col], errors="coerce").to_numpy(dtype=float)

        def summary(mask: np.ndarray) -> str:
            x = v[mask & ~np.isnan(v)]
            if x.size == 0:
                return "—"
            q1, med, q3 = np.percentile(x, [25, 50, 75])
            return f"{med:.1f} [{q1:.1f}–{q3:.1f}] (n={x.size})"

        parts = [v[m & ~np.isnan(v)] for _, m in groups]
        p = None
        if sum(x.size > 0 for x in parts) >= 2:
            p = finite_or_none(st.kruskal_wallis(*parts).p_value)
        out.append(
            Table1Row(
                label=f"{col}, median [IQR]",
                overall=summary(np.ones(v.size, bool)),
                groups=[summary(m) for _, m in groups],
                p=p,
                test="Kruskal-Wallis",
                indent=False,
            )
        )
    for col in CLINICAL_CATEGORICAL:
        if col not in f.columns:
            continue
        s = f[col].astype("string").str.strip()
        s = s.mask(s == "")
        cats = sorted(s.dropna().unique().tolist())
        if not cats:
            continue
        is_cat = {c: (s == c).fillna(False).to_numpy(dtype=bool) for c in cats}
        table = np.array([[int((is_cat[c] & m).sum()) for _, m in groups] for c in cats])
        res = st.chi_square_independence(table) if len(cats) >= 2 else None
        out.append(
            Table1Row(
                label=f"{col}, n (%)",
                overall=_missing_note(int(s.isna().sum())),
                groups=[_missing_note(int(s[m].isna().sum())) for _, m in groups],
                p=finite_or_none(res.p_value) if res is not None else None,
                test="chi-square (Pearson)",
                indent=False,
            )
        )
        col_tot = table.sum(axis=0)
        for c, row in zip(cats, table):
            tot = int(row.sum())
            overall_n = int(table.sum())
            out.append(
                Table1Row(
                    label=str(c),
                    overall=f"{tot} ({100.0 * tot / overall_n:.1f}%)" if overall_n else "—",
                    groups=[f"{int(k)} ({100.0 * k / t:.1f}%)" if t else "—" for k, t in zip(row, col_tot)],
                    p=None,
                    test="",
                    indent=True,
                )
            )
    return out or None
