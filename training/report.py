"""Evaluation report: ``metrics.json`` (GUIDE.md contract 2.3) and an offline ``report.html``.

Input is a predictions table (the output of ``python -m model_zoo predict`` or any CSV)
with ``label`` (0/1), one or more ``p_<model>`` score columns (``p_ensemble`` is the
ensemble), optional ``reader_<name>`` 0/1 reads, an optional ``tumor_subtype`` /
``subtype`` column and optional clinical columns ``age``, ``sex``, ``site``.

Rules the numbers follow (also printed in the report's Methods section):

- Analysis set: rows with a label and every score and read present. Rows without a
  label, or with a missing score/read (e.g. a failed prediction), are excluded and
  counted, so every paired statistic is computed on the same cases.
- A model calls a case positive when ``p >= threshold`` (0.5 unless given; per-model
  thresholds override).
- AUC with a DeLong 95 % CI; paired DeLong test of each model against ``p_ensemble``.
- Proportions with Wilson 95 % CIs. Cochran's Q on per-case correctness. Cohen's kappa
  between every pair of readers and between the ensemble's calls and each reader;
  Fleiss' kappa over the readers.
- A statistic that is undefined on the data (AUC with one class, PPV with no positive
  call, kappa with a constant rater) is JSON ``null``; CIs are always two-element lists
  whose bounds may be ``null``. ``metrics.json`` is strict JSON (no NaN).

The command line is ``python -m training report --predictions PRED.csv --out DIR
[--threshold T] [--readers] [--title TITLE]`` (wired by ``training/__main__.py`` to
:func:`main`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import itertools
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from model_zoo.errors import InputError
from model_zoo.zoo import plotly_script_tag
from training import stats as st

MODEL_PREFIX = "p_"
READER_PREFIX = "reader_"
ENSEMBLE = "ensemble"
SUBTYPE_COLUMNS = ("tumor_subtype", "subtype")
CLINICAL_CONTINUOUS = ("age",)
CLINICAL_CATEGORICAL = ("sex", "site")
DEFAULT_THRESHOLD = 0.5
PROPORTIONS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
ROC_BAND_BOOTSTRAPS = 300

__all__ = ["compute_metrics", "main", "read_predictions", "write_report"]


# --------------------------------------------------------------------------- input


@dataclass
class _Prepared:
    """The analysis set: aligned arrays for every model and reader."""

    frame: pd.DataFrame  # analysis rows, original columns
    y: np.ndarray  # bool
    models: dict[str, np.ndarray]  # name -> scores
    readers: dict[str, np.ndarray]  # name -> bool reads
    n_input: int
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def has_ensemble(self) -> bool:
        return ENSEMBLE in self.models

    @property
    def both_classes(self) -> bool:
        return bool(self.y.any() and (~self.y).any())


def read_predictions(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a predictions CSV; any failure becomes a one-line :class:`InputError`."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"predictions file not found: {p}")
    try:
        return pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read predictions CSV {p.name}: {first}") from None


def _binary_column(series: pd.Series, column: str) -> pd.Series:
    """0/1 (or bool, or "0"/"1") values as float with NaN for missing; raise otherwise."""
    if series.dtype == bool:
        return series.astype(float)
    num = pd.to_numeric(series, errors="coerce")
    bad = num.isna() & series.notna() & (series.astype(str).str.strip() != "")
    bad |= num.notna() & ~num.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"column '{column}' must hold 0/1 values; row {row + 1} has {series.iloc[row]!r}"
        )
    return num.astype(float)


def _score_column(series: pd.Series, column: str) -> pd.Series:
    num = pd.to_numeric(series, errors="coerce")
    bad = num.isna() & series.notna() & (series.astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"column '{column}' must be numeric; row {row + 1} has {series.iloc[row]!r}")
    if np.isinf(num.to_numpy(dtype=float)).any():
        raise InputError(f"column '{column}' contains an infinite score")
    return num.astype(float)


def _prefixed(columns: Iterable[str], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for col in columns:
        if isinstance(col, str) and col.startswith(prefix) and len(col) > len(prefix):
            out[col[len(prefix) :]] = col
    return out


def _prepare(pred: pd.DataFrame, *, require_readers: bool = False) -> _Prepared:
    if not isinstance(pred, pd.DataFrame):
        raise InputError("predictions must be a table (pandas DataFrame)")
    if "label" not in pred.columns:
        raise InputError("predictions have no 'label' column: the report needs the ground truth (0/1)")
    model_cols = _prefixed(pred.columns, MODEL_PREFIX)
    reader_cols = _prefixed(pred.columns, READER_PREFIX)
    if not model_cols:
        raise InputError("predictions have no 'p_<model>' score column (e.g. p_ensemble)")
    if require_readers and not reader_cols:
        raise InputError("--readers was given but the predictions have no 'reader_<name>' column")

    label = _binary_column(pred["label"], "label")
    scores = {name: _score_column(pred[col], col) for name, col in model_cols.items()}
    reads = {name: _binary_column(pred[col], col) for name, col in reader_cols.items()}

    has_label = label.notna()
    complete = pd.Series(True, index=pred.index)
    for s in itertools.chain(scores.values(), reads.values()):
        complete &= s.notna()
    keep = has_label & complete
    excluded = {}
    if (~has_label).sum():
        excluded["no label"] = int((~has_label).sum())
    if (has_label & ~complete).sum():
        excluded["missing score or read"] = int((has_label & ~complete).sum())
    if not keep.any():
        why = ", ".join(f"{v} {k}" for k, v in excluded.items()) or "empty table"
        raise InputError(f"no usable rows in the predictions ({why})")
    mask = keep.to_numpy()
    return _Prepared(
        frame=pred.loc[keep].reset_index(drop=True),
        y=label.to_numpy()[mask] == 1.0,
        models={k: v.to_numpy()[mask] for k, v in scores.items()},
        readers={k: v.to_numpy()[mask] == 1.0 for k, v in reads.items()},
        n_input=len(pred),
        excluded=excluded,
    )


def _resolve_thresholds(
    names: Sequence[str], threshold: float | None, thresholds: dict[str, float] | None
) -> dict[str, float]:
    def check(t: Any, what: str) -> float:
        try:
            v = float(t)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be a number, got {t!r}") from None
        if not (0.0 <= v <= 1.0):
            raise InputError(f"{what} must be in [0, 1], got {t!r}")
        return v

    base = DEFAULT_THRESHOLD if threshold is None else check(threshold, "threshold")
    out = {n: base for n in names}
    for name, t in (thresholds or {}).items():
        key = name[len(MODEL_PREFIX) :] if name.startswith(MODEL_PREFIX) and name not in out else name
        if key not in out:
            raise InputError(f"threshold given for unknown model '{name}' (models: {', '.join(names)})")
        out[key] = check(t, f"threshold for '{name}'")
    return out


# --------------------------------------------------------------------------- metrics


def _num(x: Any) -> float | None:
    """A finite float, or None for NaN/inf/None (JSON null)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _ci(ci: Sequence[float]) -> list[float | None]:
    return [_num(ci[0]), _num(ci[1])]


def _proportion_entries(conf: st.Confusion) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, prop in st.classification_metrics(conf).items():
        out[name] = _num(prop.estimate)
        out[f"{name}_ci"] = _ci(prop.ci)
    return out


def _correct(y: np.ndarray, calls: np.ndarray) -> np.ndarray:
    return (calls == y).astype(int)


def _calls(prep: _Prepared, thr: dict[str, float]) -> dict[str, np.ndarray]:
    return {name: s >= thr[name] for name, s in prep.models.items()}


def _metrics(prep: _Prepared, thr: dict[str, float]) -> dict[str, Any]:
    y = prep.y
    calls = _calls(prep, thr)
    models: dict[str, Any] = {}
    for name, s in prep.models.items():
        conf = st.confusion_from_predictions(y, calls[name])
        if prep.both_classes:
            a = st.delong_auc(y, s)
            auc, auc_ci = _num(a.auc), _ci(a.ci)
        else:
            auc, auc_ci = None, [None, None]
        p_vs = None
        if prep.has_ensemble and name != ENSEMBLE and prep.both_classes:
            p_vs = _num(st.delong_test(y, prep.models[ENSEMBLE], s).p_value)
        entry: dict[str, Any] = {"auc": auc, "auc_ci": auc_ci}
        entry.update(_proportion_entries(conf))
        entry.update(
            {
                "f1": _num(st.f1_score(conf)),
                "threshold": thr[name],
                "confusion": conf.as_list(),
                "delong_p_vs_ensemble": p_vs,
            }
        )
        models[name] = entry

    ens_correct = _correct(y, calls[ENSEMBLE]) if prep.has_ensemble else None
    readers: dict[str, Any] = {}
    for name, r in prep.readers.items():
        conf = st.confusion_from_predictions(y, r)
        entry = _proportion_entries(conf)
        entry["confusion"] = conf.as_list()
        p_vs = None
        if ens_correct is not None:
            p_vs = _num(st.cochrans_q(np.column_stack([ens_correct, _correct(y, r)])).p_value)
        entry["cochran_q_p_vs_ensemble"] = p_vs
        readers[name] = entry

    columns = [ens_correct] if ens_correct is not None else []
    columns += [_correct(y, r) for r in prep.readers.values()]
    cochran_p = _num(st.cochrans_q(np.column_stack(columns)).p_value) if len(columns) >= 2 else None

    fleiss, fleiss_ci = None, [None, None]
    if len(prep.readers) >= 2:
        counts, _ = st.ratings_to_counts(np.column_stack(list(prep.readers.values())).astype(int), [0, 1])
        fk = st.fleiss_kappa(counts)
        fleiss, fleiss_ci = _num(fk.kappa), _ci(fk.ci)

    cohen: dict[str, float | None] = {}
    for (a, ra), (b, rb) in itertools.combinations(prep.readers.items(), 2):
        cohen[f"{a}|{b}"] = _num(st.cohen_kappa(ra, rb).kappa)
    if prep.has_ensemble:
        for name, r in prep.readers.items():
            cohen[f"{ENSEMBLE}|{name}"] = _num(st.cohen_kappa(calls[ENSEMBLE], r).kappa)

    return {
        "n": int(y.size),
        "models": models,
        "readers": readers,
        "cochran_q_p": cochran_p,
        "fleiss_kappa": fleiss,
        "fleiss_kappa_ci": fleiss_ci,
        "cohen_kappa": cohen,
    }


def compute_metrics(
    pred: pd.DataFrame,
    *,
    threshold: float | None = None,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` dictionary of GUIDE.md contract 2.3 for a predictions table.

    Parameters
    ----------
    pred : DataFrame
        ``label`` (0/1), ``p_<model>`` columns, optional ``reader_<name>`` columns.
    threshold : float, optional
        Operating threshold in [0, 1] for every model (default 0.5); a case is called
        positive when ``p >= threshold``.
    thresholds : dict, optional
        Per-model thresholds keyed by model name (``"ensemble"``, or ``"p_ensemble"``);
        they override ``threshold``.

    Returns
    -------
    dict
        Exactly the contract's keys; undefined statistics are ``None``. Serialise it with
        ``json.dumps(..., allow_nan=False)``.

    Raises
    ------
    InputError
        Missing ``label`` or ``p_`` columns, non-0/1 labels or reads, non-numeric scores,
        no usable rows, a threshold outside [0, 1] or for an unknown model.
    """
    prep = _prepare(pred)
    thr = _resolve_thresholds(list(prep.models), threshold, thresholds)
    return _metrics(prep, thr)


# --------------------------------------------------------------------------- report-only extras


def _extras(prep: _Prepared, thr: dict[str, float]) -> dict[str, Any]:
    """Statistics shown in the HTML only (not part of the metrics.json contract)."""
    y = prep.y
    calls = _calls(prep, thr)
    ex: dict[str, Any] = {"calibration": {}, "roc": {}, "reader_f1": {}, "cohen": {}, "fleiss": None}
    for name, s in prep.models.items():
        if np.all((s >= 0) & (s <= 1)):
            rc = st.reliability_curve(y, s, 10)
            ex["calibration"][name] = {
                "brier": st.brier_score(y, s),
                "ece": st.expected_calibration_error(y, s, 10),
                "curve": rc,
            }
        if prep.both_classes:
            fpr, tpr, _ = st.roc_curve(y, s)
            grid, lo, hi = st.roc_band(y, s, n_boot=ROC_BAND_BOOTSTRAPS, seed=0)
            ex["roc"][name] = {"fpr": fpr, "tpr": tpr, "grid": grid, "lo": lo, "hi": hi}
    for name, r in prep.readers.items():
        ex["reader_f1"][name] = st.f1_score(st.confusion_from_predictions(y, r))
    for (a, ra), (b, rb) in itertools.combinations(prep.readers.items(), 2):
        ex["cohen"][f"{a}|{b}"] = st.cohen_kappa(ra, rb)
    if prep.has_ensemble:
        for name, r in prep.readers.items():
            ex["cohen"][f"{ENSEMBLE}|{name}"] = st.cohen_kappa(calls[ENSEMBLE], r)
    if len(prep.readers) >= 2:
        counts, _ = st.ratings_to_counts(np.column_stack(list(prep.readers.values())).astype(int), [0, 1])
        ex["fleiss"] = st.fleiss_kappa(counts)
    columns = {}
    if prep.has_ensemble:
        columns[ENSEMBLE] = _correct(y, calls[ENSEMBLE])
    columns.update({n: _correct(y, r) for n, r in prep.readers.items()})
    ex["cochran"] = None
    if len(columns) >= 2:
        ex["cochran"] = (list(columns), st.cochrans_q(np.column_stack(list(columns.values()))))
    ex["subtype"] = _subtype_table(prep, calls)
    ex["table1"] = _table1(prep)
    return ex


def _subtype_table(prep: _Prepared, calls: dict[str, np.ndarray]) -> dict[str, Any] | None:
    col = next((c for c in SUBTYPE_COLUMNS if c in prep.frame.columns), None)
    if col is None:
        return None
    values = prep.frame[col].astype("string").fillna("(missing)").str.strip().replace("", "(missing)")
    raters = {**calls, **{f"reader {n}": r for n, r in prep.readers.items()}}
    rows = []
    for sub in values.unique():
        m = (values == sub).to_numpy(dtype=bool)
        n = int(m.sum())
        cells = {}
        for name, c in raters.items():
            k = int((c[m] == prep.y[m]).sum())
            cells[name] = st.proportion(k, n, 0.05)
        rows.append({"subtype": str(sub), "n": n, "positives": int(prep.y[m].sum()), "cells": cells})
    rows.sort(key=lambda r: (-r["n"], r["subtype"]))
    return {"column": col, "raters": list(raters), "rows": rows}


def _missing_note(k: int) -> str:
    return f"({k} missing)" if k else ""


def _group_names(prep: _Prepared) -> list[tuple[str, np.ndarray]]:
    return [("Label 0 (negative)", ~prep.y), ("Label 1 (positive)", prep.y)]


def _table1(prep: _Prepared) -> list[dict[str, Any]] | None:
    f = prep.frame
    if not any(c in f.columns for c in CLINICAL_CONTINUOUS + CLINICAL_CATEGORICAL):
        return None
    groups = _group_names(prep)
    out: list[dict[str, Any]] = []
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
            p = _num(st.kruskal_wallis(*parts).p_value)
        out.append(
            {
                "label": f"{col}, median [IQR]",
                "overall": summary(np.ones(v.size, bool)),
                "groups": [summary(m) for _, m in groups],
                "p": p,
                "test": "Kruskal-Wallis",
                "indent": False,
            }
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
            {
                "label": f"{col}, n (%)",
                "overall": _missing_note(int(s.isna().sum())),
                "groups": [_missing_note(int(s[m].isna().sum())) for _, m in groups],
                "p": _num(res.p_value) if res is not None else None,
                "test": "chi-square (Pearson)",
                "indent": False,
            }
        )
        col_tot = table.sum(axis=0)
        for c, row in zip(cats, table):
            tot = int(row.sum())
            overall_n = int(table.sum())
            out.append(
                {
                    "label": str(c),
                    "overall": f"{tot} ({100.0 * tot / overall_n:.1f}%)" if overall_n else "—",
                    "groups": [
                        f"{int(k)} ({100.0 * k / t:.1f}%)" if t else "—" for k, t in zip(row, col_tot)
                    ],
                    "p": None,
                    "test": "",
                    "indent": True,
                }
            )
    return out or None


# --------------------------------------------------------------------------- HTML


def _f(x: Any, nd: int = 3) -> str:
    v = _num(x) if not isinstance(x, str) else None
    return "—" if v is None else f"{v:.{nd}f}"


def _fci(x: Any, ci: Sequence[Any] | None) -> str:
    if _num(x) is None:
        return "—"
    if ci is None or _num(ci[0]) is None or _num(ci[1]) is None:
        return f"{_f(x)} (CI —)"
    return f"{_f(x)} ({_f(ci[0])}–{_f(ci[1])})"


def _fp(p: Any) -> str:
    v = _num(p)
    if v is None:
        return "—"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _table(
    headers: Sequence[str] | None,
    rows: Sequence[Sequence[Any]],
    *,
    cls: str = "",
    indent_rows: Sequence[bool] | None = None,
) -> str:
    """An HTML table; every cell is escaped (names come from user CSV columns)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers or ())
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    body = []
    for i, row in enumerate(rows):
        ind = indent_rows is not None and indent_rows[i]
        cells = "".join(
            ('<td class="ind">' if (ind and j == 0) else "<td>") + html.escape(str(c)) + "</td>"
            for j, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    open_tag = f'<table class="{cls}">' if cls else "<table>"
    return f'{open_tag}{thead}<tbody>{"".join(body)}</tbody></table>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;
color:#1f2933;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #d9e2ec;padding-bottom:4px}
table{border-collapse:collapse;margin:10px 0 6px;font-size:0.92em}
th,td{border:1px solid #d9e2ec;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f0f4f8}td:first-child,th:first-child{text-align:left}td.ind{padding-left:24px}
.note{color:#52606d;font-size:0.88em;max-width:980px}.ctx td{text-align:left}
.warn{background:#fff3c4;padding:6px 10px;border-left:4px solid #f0b429}
"""


def _offline_plotly_js() -> str:
    """The plotly.js bundle to inline once, so the report never touches the network.

    The bundle's only built-in CDN reference is the default ``topojsonURL``, used by geo
    maps (which this report never draws); it is pointed at a relative path so that
    nothing in the file names a CDN at all.
    """
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().replace("https://cdn.plot.ly/", "./")


def _figure_html(fig: Any, div_id: str) -> str:
    import plotly.io as pio

    return pio.to_html(
        fig,
        include_plotlyjs=False,  # the bundle is inlined once in <head>
        full_html=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True, "topojsonURL": "./"},
    )


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _line_trace(name: str) -> Any:
    import plotly.graph_objects as go

    return go.Scatter(
        x=[0, 1],
        y=[0, 1],
        mode="lines",
        name=name,
        hoverinfo="skip",
        line={"dash": "dash", "color": "#9aa5b1"},
    )


def _fig_roc(metrics: dict[str, Any], ex: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure([_line_trace("chance")])
    for i, (name, roc) in enumerate(ex["roc"].items()):
        colour = _PALETTE[i % len(_PALETTE)]
        m = metrics["models"][name]
        # The band is one closed polygon: upper edge left to right, lower edge back.
        fig.add_trace(
            go.Scatter(
                x=np.r_[roc["grid"], roc["grid"][::-1]],
                y=np.r_[roc["hi"], roc["lo"][::-1]],
                fill="toself",
                fillcolor=_rgba(colour, 0.15),
                line={"width": 0},
                hoverinfo="skip",
                legendgroup=name,
                showlegend=False,
                name=f"{name} 95% band",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=roc["fpr"],
                y=roc["tpr"],
                mode="lines",
                line={"color": colour, "width": 2},
                name=f"{name} (AUC {_fci(m['auc'], m['auc_ci'])})",
                legendgroup=name,
            )
        )
    for j, (name, r) in enumerate(metrics["readers"].items()):
        if r["sensitivity"] is None or r["specificity"] is None:
            continue
        fig.add_trace(
            go.Scatter(
                x=[1 - r["specificity"]],
                y=[r["sensitivity"]],
                mode="markers",
                marker={
                    "symbol": "diamond",
                    "size": 11,
                    "color": _PALETTE[(j + 3) % len(_PALETTE)],
                    "line": {"width": 1, "color": "#1f2933"},
                },
                name=f"reader {name}",
            )
        )
    fig.update_layout(
        template="plotly_white",
        height=560,
        title="ROC curves (shaded: bootstrap 95% band of sensitivity; diamonds: readers)",
        xaxis_title="1 − specificity",
        yaxis_title="Sensitivity",
        xaxis={"range": [0, 1], "constrain": "domain"},
        yaxis={"range": [0, 1.02], "scaleanchor": "x"},
        legend={"x": 1.02, "y": 0},
    )
    return fig


def _fig_confusion(metrics: dict[str, Any]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    items = [(n, m["confusion"]) for n, m in metrics["models"].items()]
    items += [(f"reader {n}", m["confusion"]) for n, m in metrics["readers"].items()]
    cols = min(4, len(items))
    rows = math.ceil(len(items) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[n for n, _ in items],
        horizontal_spacing=0.08,
        vertical_spacing=0.16,
    )
    for i, (_, cm) in enumerate(items):
        z = np.asarray(cm)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=["pred 0", "pred 1"],
                y=["true 0", "true 1"],
                colorscale="Blues",
                showscale=False,
                text=z,
                texttemplate="%{text}",
                hovertemplate="%{y}, %{x}: %{z}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_yaxes(autorange="reversed")  # true 0 on top, as in the printed matrix
    fig.update_layout(template="plotly_white", height=280 * rows + 60, title="Confusion matrices")
    return fig


def _fig_reliability(ex: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure([_line_trace("perfect calibration")])
    for i, (name, cal) in enumerate(ex["calibration"].items()):
        rc: st.ReliabilityCurve = cal["curve"]
        ok = rc.count > 0
        colour = _PALETTE[i % len(_PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=rc.mean_predicted[ok],
                y=rc.fraction_positive[ok],
                mode="lines+markers",
                marker={"size": np.clip(4 + 2 * np.sqrt(rc.count[ok]), 6, 22), "color": colour},
                line={"color": colour},
                customdata=rc.count[ok],
                hovertemplate="mean p %{x:.3f}<br>observed %{y:.3f}<br>n=%{customdata}<extra></extra>",
                name=f"{name} (ECE {_f(cal['ece'])})",
            )
        )
    fig.update_layout(
        template="plotly_white",
        height=520,
        title="Reliability diagram (10 equal-width bins; marker size grows with cases)",
        xaxis_title="Mean predicted probability",
        yaxis_title="Observed fraction positive",
        xaxis={"range": [0, 1]},
        yaxis={"range": [0, 1.02]},
    )
    return fig


_METHODS = """
<ul class="note">
<li>A model calls a case positive when its score is at or above its threshold (p &ge; t).</li>
<li>AUC: Mann-Whitney estimate; 95% CI and paired test against the ensemble by DeLong et al.
(1988), fast midrank algorithm of Sun &amp; Xu (2014). The interval collapses to a point when
the classes are perfectly separated (zero DeLong variance).</li>
<li>Proportions (accuracy, sensitivity, specificity, PPV, NPV): Wilson score 95% CIs.
F1 = 2TP/(2TP+FP+FN).</li>
<li>Cochran's Q on per-case correctness (call = label), over the ensemble and all readers,
and for the ensemble against each reader (McNemar without continuity correction).</li>
<li>Cohen's kappa with the Fleiss-Cohen-Everitt (1969) large-sample SE; Fleiss' kappa (1971) with
Gwet's (2008) linearisation SE; normal 95% CIs. Consistency grades: &le;0.2 low, 0.2-0.4
general (fair), 0.4-0.6 moderate, 0.6-0.8 high, &gt;0.8 extremely high.</li>
<li>Calibration: Brier score; expected calibration error over 10 equal-width bins
([0,0.1], (0.1,0.2], ...).</li>
<li>Table 1: Kruskal-Wallis for continuous and Pearson chi-square (no continuity correction)
for categorical characteristics; missing values excluded per characteristic.</li>
<li>&ldquo;—&rdquo; marks a statistic that is undefined on these cases (e.g. AUC with one class).</li>
</ul>
"""


def _p_with_test(p: Any, test: str) -> str:
    return "—" if _num(p) is None else f"{_fp(p)} ({test})"


def _section_performance(metrics: dict[str, Any], ex: dict[str, Any]) -> str:
    head = ["", "AUC (95% CI)", "Accuracy", "Sensitivity", "Specificity", "PPV", "NPV"]
    head += ["F1", "Threshold", "p vs ensemble"]
    rows = []
    for name, m in metrics["models"].items():
        rows.append(
            [name, _fci(m["auc"], m["auc_ci"])]
            + [_fci(m[k], m[f"{k}_ci"]) for k in PROPORTIONS]
            + [_f(m["f1"]), _f(m["threshold"]), _p_with_test(m["delong_p_vs_ensemble"], "DeLong")]
        )
    for name, m in metrics["readers"].items():
        rows.append(
            [f"reader {name}", "—"]
            + [_fci(m[k], m[f"{k}_ci"]) for k in PROPORTIONS]
            + [_f(ex["reader_f1"][name]), "—", _p_with_test(m["cochran_q_p_vs_ensemble"], "Cochran Q")]
        )
    return (
        "<h2>Performance (Table 2)</h2>"
        + _table(head, rows)
        + '<p class="note">Values with 95% CIs (AUC: DeLong; proportions: Wilson). '
        "p vs ensemble: paired DeLong test of AUC for models, Cochran's Q on per-case "
        "correctness for readers.</p>"
    )


def _section_agreement(prep: _Prepared, ex: dict[str, Any]) -> str:
    out = ["<h2>Readers and agreement</h2>"]
    if ex["cochran"] is not None:
        names, q = ex["cochran"]
        out.append(
            f"<p>Cochran's Q over {html.escape(', '.join(names))}: Q = {_f(q.statistic)}, "
            f"df = {q.df}, p = {html.escape(_fp(q.p_value))}.</p>"
        )
    rows = []
    for pair, k in ex["cohen"].items():
        a, b = pair.split("|", 1)
        rows.append([f"Cohen: {a} vs {b}", _fci(k.kappa, k.ci), st.kappa_grade(k.kappa) or "—"])
    if ex["fleiss"] is not None:
        fk = ex["fleiss"]
        label = f"Fleiss: all {len(prep.readers)} readers"
        rows.append([label, _fci(fk.kappa, fk.ci), st.kappa_grade(fk.kappa) or "—"])
    out.append(_table(["Agreement", "kappa (95% CI)", "consistency"], rows))
    return "".join(out)


def _section_subtype(sub: dict[str, Any]) -> str:
    head = ["Subtype", "n", "positives"] + [f"{r} accuracy (95% CI)" for r in sub["raters"]]
    rows = [
        [r["subtype"], r["n"], r["positives"]] + [_fci(c.estimate, c.ci) for c in r["cells"].values()]
        for r in sub["rows"]
    ]
    col = html.escape(sub["column"])
    return f"<h2>Accuracy by subtype (Table 3; column <code>{col}</code>)</h2>" + _table(head, rows)


def _section_table1(prep: _Prepared, metrics: dict[str, Any], t1: list[dict[str, Any]]) -> str:
    groups = _group_names(prep)
    head = ["Characteristic", f"Overall (n={metrics['n']})"]
    head += [f"{n} (n={int(m.sum())})" for n, m in groups] + ["p", "test"]
    rows = [
        [r["label"], r["overall"], *r["groups"], "" if r["indent"] else _fp(r["p"]), r["test"]]
        for r in t1
    ]
    return "<h2>Clinical characteristics by label (Table 1)</h2>" + _table(
        head, rows, indent_rows=[r["indent"] for r in t1]
    )


def _section_figures(prep: _Prepared, metrics: dict[str, Any], ex: dict[str, Any]) -> str:
    out = ["<h2>Figures</h2>"]
    if ex["roc"]:
        out.append(_figure_html(_fig_roc(metrics, ex), "fig-roc"))
    out.append(_figure_html(_fig_confusion(metrics), "fig-confusion"))
    if ex["calibration"]:
        out.append(_figure_html(_fig_reliability(ex), "fig-reliability"))
        rows = [[n, _f(c["brier"], 4), _f(c["ece"], 4)] for n, c in ex["calibration"].items()]
        out.append(_table(["Model", "Brier score", "ECE (10 bins)"], rows))
    skipped = [n for n in prep.models if n not in ex["calibration"]]
    if skipped:
        names = html.escape(", ".join(skipped))
        out.append(f'<p class="note">No calibration for {names}: scores outside [0, 1].</p>')
    return "".join(out)


def _render_html(
    prep: _Prepared,
    metrics: dict[str, Any],
    ex: dict[str, Any],
    title: str,
    context: dict[str, Any] | None,
    plotly_js: str = "inline",
) -> str:
    e = html.escape
    n_pos = int(prep.y.sum())
    ctx_rows = [(str(k), str(v)) for k, v in (context or {}).items()]
    ctx_rows.append(
        (
            "cases analysed",
            f"{metrics['n']} of {prep.n_input} rows ({n_pos} positive, {metrics['n'] - n_pos} negative)",
        )
    )
    ctx_rows.append(("generated (UTC)", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")))
    parts = [_table(None, ctx_rows, cls="ctx")]
    if prep.excluded:
        why = "; ".join(f"{v} row(s): {k}" for k, v in prep.excluded.items())
        parts.append(f'<p class="warn">Excluded from every statistic: {e(why)}.</p>')
    if not prep.both_classes:
        parts.append(
            '<p class="warn">Only one class is present: AUC, DeLong tests and one of '
            "sensitivity/specificity are undefined.</p>"
        )
    if not prep.has_ensemble:
        parts.append(
            '<p class="warn">No p_ensemble column: comparisons against the ensemble are not shown.</p>'
        )
    parts.append(_section_performance(metrics, ex))
    if metrics["readers"]:
        parts.append(_section_agreement(prep, ex))
    if ex["subtype"] is not None:
        parts.append(_section_subtype(ex["subtype"]))
    if ex["table1"] is not None:
        parts.append(_section_table1(prep, metrics, ex["table1"]))
    parts.append(_section_figures(prep, metrics, ex))
    parts.append("<h2>Methods</h2>" + _METHODS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{_CSS}</style>"
        + (f'<script type="text/javascript">{_offline_plotly_js()}</script>' if plotly_js == "inline"
           else plotly_script_tag(plotly_js))
        + "</head><body>"
        f"<h1>{e(title)}</h1>{''.join(parts)}</body></html>\n"
    )


# --------------------------------------------------------------------------- writing


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and ``os.replace`` (atomic on POSIX)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_report(
    pred: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    thresholds: dict[str, float] | None = None,
    title: str = "Evaluation report",
    context: dict[str, Any] | None = None,
    require_readers: bool = False,
    plotly_js: str = "inline",
) -> dict[str, Any]:
    """Write ``out_dir/metrics.json`` and ``out_dir/report.html``; return the metrics dict.

    Everything is computed and rendered before anything is written, and each file is
    replaced atomically, so a failure never leaves a half-written report.

    Parameters
    ----------
    pred : DataFrame
        See :func:`compute_metrics`.
    out_dir : path
        Created if missing.
    threshold, thresholds
        As in :func:`compute_metrics`.
    title : str
        Report heading.
    context : dict, optional
        Extra key/value lines shown at the top (zoo name/version, split name, ...).
    require_readers : bool
        Raise :class:`InputError` when there is no ``reader_`` column (CLI ``--readers``).
    plotly_js : str
        ``"inline"`` (default: the report is one self-contained file) or a relative path to
        a local copy of :func:`plotly_bundle` that the caller ships beside the report (zoo
        releases share one copy between their reports to stay within the size budget).
        Either way nothing is fetched from the network.
    """
    prep = _prepare(pred, require_readers=require_readers)
    return _write(prep, Path(out_dir), threshold, thresholds, title, context, plotly_js)


def plotly_bundle() -> str:
    """The offline plotly.js bundle, for reports written with ``plotly_js=<relative path>``."""
    return _offline_plotly_js()


def _write(
    prep: _Prepared,
    out: Path,
    threshold: float | None,
    thresholds: dict[str, float] | None,
    title: str,
    context: dict[str, Any] | None,
    plotly_js: str = "inline",
) -> dict[str, Any]:
    thr = _resolve_thresholds(list(prep.models), threshold, thresholds)
    metrics = _metrics(prep, thr)
    text_json = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
    text_html = _render_html(prep, metrics, _extras(prep, thr), title, context, plotly_js)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out must be a folder, but {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(out / "metrics.json", text_json)
    _atomic_write_text(out / "report.html", text_html)
    return metrics


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training report",
        description="Evaluation report: DIR/metrics.json (contract 2.3) and DIR/report.html (offline).",
    )
    p.add_argument(
        "--predictions",
        required=True,
        metavar="PRED.csv",
        help="CSV with label, p_* and optional reader_* columns",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="operating threshold for every model, p >= T is positive (default 0.5)",
    )
    p.add_argument(
        "--readers",
        action="store_true",
        help="require reader_* columns (they are always included when present; "
        "with this flag their absence is an error)",
    )
    p.add_argument("--title", default="Evaluation report", help="report heading")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 unusable input or arguments, 1 write failure)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage message
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        prep = _prepare(read_predictions(args.predictions), require_readers=args.readers)
        context = {"predictions": str(Path(args.predictions))}
        metrics = _write(prep, Path(args.out), args.threshold, None, args.title, context)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the report to {args.out}: {err.strerror or err}", file=sys.stderr)
        return 1
    excluded = sum(prep.excluded.values())
    if excluded:
        print(f"note: {excluded} row(s) excluded (no label, or a missing score/read)", file=sys.stderr)
    print(
        f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.html'} "
        f"(n={metrics['n']}, models={len(metrics['models'])}, readers={len(metrics['readers'])})"
    )
    return 0
