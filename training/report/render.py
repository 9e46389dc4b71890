"""``report.html``: the metrics, agreement and report-only statistics as escaped HTML tables
and offline plotly figures (ROC, confusion, reliability). Nothing is computed here that
``metrics.json`` holds; nothing is fetched from the network (plotly.js is inlined, or
loaded from a local copy shipped beside the report).
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from typing import Any, Sequence

import numpy as np

from model_zoo.zoo import plotly_script_tag
from training import stats as st
from training.report.extras import ReportExtras, SubtypeTable, Table1Row, label_groups
from training.report.inputs import AnalysisSet
from training.report.metrics import PAIR_SEPARATOR, PROPORTIONS, Agreement, finite_or_none

INLINE_PLOTLY = "inline"  # plotly_js value: the bundle goes into the page itself


def _f(x: Any, nd: int = 3) -> str:
    v = finite_or_none(x) if not isinstance(x, str) else None
    return "—" if v is None else f"{v:.{nd}f}"


def _fci(x: Any, ci: Sequence[Any] | None) -> str:
    if finite_or_none(x) is None:
        return "—"
    if ci is None or finite_or_none(ci[0]) is None or finite_or_none(ci[1]) is None:
        return f"{_f(x)} (CI —)"
    return f"{_f(x)} ({_f(ci[0])}–{_f(ci[1])})"


def _fp(p: Any) -> str:
    v = finite_or_none(p)
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
            ('<td class="ind">' if (ind and j == 0) else "<td>") + html.escape(str(c)) + "</td>" for j, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    open_tag = f'<table class="{cls}">' if cls else "<table>"
    return f"{open_tag}{thead}<tbody>{''.join(body)}</tbody></table>"


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


def plotly_bundle() -> str:
    """The offline plotly.js bundle, for reports written with ``plotly_js=<relative path>``."""
    return _offline_plotly_js()


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


def _fig_roc(metrics: dict[str, Any], extras: ReportExtras) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure([_line_trace("chance")])
    for i, (name, roc) in enumerate(extras.roc.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        m = metrics["models"][name]
        # The band is one closed polygon: upper edge left to right, lower edge back.
        fig.add_trace(
            go.Scatter(
                x=np.r_[roc.grid, roc.grid[::-1]],
                y=np.r_[roc.hi, roc.lo[::-1]],
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
                x=roc.fpr,
                y=roc.tpr,
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


def _fig_reliability(extras: ReportExtras) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure([_line_trace("perfect calibration")])
    for i, (name, cal) in enumerate(extras.calibration.items()):
        rc = cal.curve
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
                name=f"{name} (ECE {_f(cal.ece)})",
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
    return "—" if finite_or_none(p) is None else f"{_fp(p)} ({test})"


def _section_performance(metrics: dict[str, Any], extras: ReportExtras) -> str:
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
            + [_f(extras.reader_f1[name]), "—", _p_with_test(m["cochran_q_p_vs_ensemble"], "Cochran Q")]
        )
    return (
        "<h2>Performance (Table 2)</h2>"
        + _table(head, rows)
        + '<p class="note">Values with 95% CIs (AUC: DeLong; proportions: Wilson). '
        "p vs ensemble: paired DeLong test of AUC for models, Cochran's Q on per-case "
        "correctness for readers.</p>"
    )


def _section_agreement(analysis: AnalysisSet, agreement: Agreement) -> str:
    out = ["<h2>Readers and agreement</h2>"]
    if agreement.cochran is not None:
        names, q = agreement.cochran.raters, agreement.cochran.result
        out.append(
            f"<p>Cochran's Q over {html.escape(', '.join(names))}: Q = {_f(q.statistic)}, "
            f"df = {q.df}, p = {html.escape(_fp(q.p_value))}.</p>"
        )
    rows = []
    for pair, k in agreement.cohen.items():
        a, b = pair.split(PAIR_SEPARATOR, 1)
        rows.append([f"Cohen: {a} vs {b}", _fci(k.kappa, k.ci), st.kappa_grade(k.kappa) or "—"])
    if agreement.fleiss is not None:
        fk = agreement.fleiss
        label = f"Fleiss: all {len(analysis.readers)} readers"
        rows.append([label, _fci(fk.kappa, fk.ci), st.kappa_grade(fk.kappa) or "—"])
    out.append(_table(["Agreement", "kappa (95% CI)", "consistency"], rows))
    return "".join(out)


def _section_subtype(sub: SubtypeTable) -> str:
    head = ["Subtype", "n", "positives"] + [f"{r} accuracy (95% CI)" for r in sub.raters]
    rows = [[r.subtype, r.n, r.positives] + [_fci(c.estimate, c.ci) for c in r.accuracy.values()] for r in sub.rows]
    col = html.escape(sub.column)
    return f"<h2>Accuracy by subtype (Table 3; column <code>{col}</code>)</h2>" + _table(head, rows)


def _section_table1(analysis: AnalysisSet, metrics: dict[str, Any], t1: list[Table1Row]) -> str:
    groups = label_groups(analysis)
    head = ["Characteristic", f"Overall (n={metrics['n']})"]
    head += [f"{n} (n={int(m.sum())})" for n, m in groups] + ["p", "test"]
    rows = [[r.label, r.overall, *r.groups, "" if r.indent else _fp(r.p), r.test] for r in t1]
    return "<h2>Clinical characteristics by label (Table 1)</h2>" + _table(head, rows, indent_rows=[r.indent for r in t1])


def _section_figures(analysis: AnalysisSet, metrics: dict[str, Any], extras: ReportExtras) -> str:
    out = ["<h2>Figures</h2>"]
    if extras.roc:
        out.append(_figure_html(_fig_roc(metrics, extras), "fig-roc"))
    out.append(_figure_html(_fig_confusion(metrics), "fig-confusion"))
    if extras.calibration:
        out.append(_figure_html(_fig_reliability(extras), "fig-reliability"))
        rows = [[n, _f(c.brier, 4), _f(c.ece, 4)] for n, c in extras.calibration.items()]
        out.append(_table(["Model", "Brier score", "ECE (10 bins)"], rows))
    skipped = [n for n in analysis.models if n not in extras.calibration]
    if skipped:
        names = html.escape(", ".join(skipped))
        out.append(f'<p class="note">No calibration for {names}: scores outside [0, 1].</p>')
    return "".join(out)


def render_html(
    analysis: AnalysisSet,
    metrics: dict[str, Any],
    agreement: Agreement,
    extras: ReportExtras,
    title: str,
    context: dict[str, Any] | None,
    plotly_js: str = INLINE_PLOTLY,
) -> str:
    """The whole report page. ``plotly_js``: ``"inline"`` or the relative path of a local copy
    of :func:`plotly_bundle`."""
    e = html.escape
    n_pos = int(analysis.y.sum())
    ctx_rows = [(str(k), str(v)) for k, v in (context or {}).items()]
    ctx_rows.append(
        (
            "cases analysed",
            f"{metrics['n']} of {analysis.n_input} rows ({n_pos} positive, {metrics['n'] - n_pos} negative)",
        )
    )
    ctx_rows.append(("generated (UTC)", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M")))
    parts = [_table(None, ctx_rows, cls="ctx")]
    if analysis.excluded:
        why = "; ".join(f"{v} row(s): {k}" for k, v in analysis.excluded.items())
        parts.append(f'<p class="warn">Excluded from every statistic: {e(why)}.</p>')
    if not analysis.both_classes:
        parts.append(
            '<p class="warn">Only one class is present: AUC, DeLong tests and one of sensitivity/specificity are undefined.</p>'
        )
    if not analysis.has_ensemble:
        parts.append('<p class="warn">No p_ensemble column: comparisons against the ensemble are not shown.</p>')
    parts.append(_section_performance(metrics, extras))
    if metrics["readers"]:
        parts.append(_section_agreement(analysis, agreement))
    if extras.subtype is not None:
        parts.append(_section_subtype(extras.subtype))
    if extras.table1 is not None:
        parts.append(_section_table1(analysis, metrics, extras.table1))
    parts.append(_section_figures(analysis, metrics, extras))
    parts.append("<h2>Methods</h2>" + _METHODS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{_CSS}</style>"
        + (
            f'<script type="text/javascript">{_offline_plotly_js()}</script>'
            if plotly_js == INLINE_PLOTLY
            else plotly_script_tag(plotly_js)
        )
        + "</head><body>"
        f"<h1>{e(title)}</h1>{''.join(parts)}</body></html>\n"
    )
