"""Tables for the Zoo page, read from a release's manifest and stored reports (no Streamlit).

Only files listed in the manifest are read, and only after ``verify_release`` passed (the
page calls :func:`release_summary` for listings, which reads the manifest JSON alone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from model_zoo.errors import ZooError
from model_zoo.manifest import Manifest, MemberEntry, read_manifest_file

# The words and rows of the external-validation table live in model_zoo (the model card uses
# them too); the pages import them from here.
from model_zoo.validation_text import (
    best_member,
    ece_text,
    evaluation_blocks,
    evaluation_rows,
    external_blocks,
    finite_or_none,
    fmt_ci,
    plain_summary,
    unseen_hospital_sentence,
)

__all__ = [
    "best_member",
    "ece_text",
    "evaluation_blocks",
    "evaluation_rows",
    "external_blocks",
    "fmt_ci",
    "plain_summary",
    "unseen_hospital_sentence",
]

PROPORTIONS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")


def release_summary(path: Path) -> dict[str, Any]:
    """Name, version, created, task and threshold from a release's manifest (not verified)."""
    try:
        m = read_manifest_file(path)
    except (OSError, ValueError, ZooError) as err:
        return {"folder": Path(path).name, "error": f"manifest unreadable ({type(err).__name__})"}
    return {
        "folder": Path(path).name,
        "name": m.name,
        "version": m.version,
        "created": m.created,
        "task": f"{m.task.positive_class} vs {m.task.negative_class}",
        "members": len(m.members),
        "threshold": m.threshold.value,
    }


def members_table(manifest: Manifest) -> pd.DataFrame:
    """One row per member: architecture and its input spec, training facts, weights hash."""
    files = manifest.files
    rows = []
    for entry in manifest.members:
        spec = entry.spec
        rows.append(
            {
                "member": spec.member_id,
                "family": spec.family,
                "architecture": spec.arch,
                "input (px)": spec.input_size,
                "ROI margin": spec.roi_margin,
                "mean": _first(spec.mean),
                "std": _first(spec.std),
                "CAM layer": spec.cam_layer,
                "start": start_text(entry),
                "best epoch": entry.best_epoch,
                "val AUC (training)": entry.best_val_auc,
                "weights sha256": (files.get(entry.weights, "") or "")[:16] + "...",
            }
        )
        if "trainable" not in entry.absent:  # releases from before head-only training do not say
            rows[-1]["trained"] = trained_text(entry.trainable)
    return pd.DataFrame(rows)


def start_text(entry: MemberEntry) -> str:
    """Where a member's weights started: the converted start's name, package and licence, or scratch."""
    prov = entry.init_provenance
    if isinstance(prov, Mapping) and prov:
        package = " ".join(str(v) for v in (prov.get("package"), prov.get("package_version")) if v)
        text = str(prov.get("name") or "pretrained")
        details = [d for d in (package, f"licence {prov.get('licence') or 'not stated'}") if d]
        return f"{text} ({'; '.join(details)})"
    init = entry.init
    if not init or str(init) == "scratch":
        return "scratch"
    return Path(str(init)).name


def trained_text(trainable: Any) -> str:
    """``MemberEntry.trainable`` in words."""
    if trainable == "head":
        return "frozen backbone + linear head"
    if trainable == "all":
        return "all layers"
    return "-" if trainable is None else str(trainable)


def _first(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and v:
        return round(float(v[0]), 4)
    return v


def _ci(value: Any, ci: Any) -> str:
    if value is None:
        return "-"
    s = f"{float(value):.3f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        s += f" ({float(ci[0]):.3f}-{float(ci[1]):.3f})"
    return s


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Contract-2.3 ``metrics.json`` -> one row per model: AUC and proportions with 95 % CIs."""
    rows = []
    for name, m in (metrics.get("models", {}) or {}).items():
        row = {"model": name, "AUC (DeLong 95% CI)": _ci(m.get("auc"), m.get("auc_ci"))}
        for p in PROPORTIONS:
            row[p] = _ci(m.get(p), m.get(f"{p}_ci"))
        row["threshold"] = m.get("threshold")
        row["DeLong p vs ensemble"] = m.get("delong_p_vs_ensemble")
        rows.append(row)
    return pd.DataFrame(rows)


def files_table(manifest: Manifest) -> pd.DataFrame:
    return pd.DataFrame(sorted(manifest.files.items()), columns=["file", "sha256"])


def stacker_table(manifest: Manifest) -> pd.DataFrame:
    return pd.DataFrame([dict(r) for r in manifest.stacker.comparison])


def report_splits(root: Path, manifest: Manifest) -> list[str]:
    """Splits with a stored ``report/<split>/metrics.json`` listed in the manifest."""
    files = manifest.files
    return sorted({p.split("/")[1] for p in files if p.startswith("report/") and p.endswith("/metrics.json")})


def default_split(splits: list[str]) -> int:
    """Index of the split the Zoo page opens on: the held-out test split when the release has
    one (the numbers a user should quote), else validation, else the first."""
    for name in ("test", "val"):
        if name in splits:
            return splits.index(name)
    return 0


def read_metrics(root: Path, split: str) -> dict[str, Any] | None:
    path = Path(root) / "report" / split / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def auc_figure(metrics: Mapping[str, Any], title: str) -> Any:
    """Plotly dot plot of each model's AUC with its DeLong 95 % CI (from metrics.json)."""
    import plotly.graph_objects as go

    names, aucs, lo, hi = [], [], [], []
    for name, m in (metrics.get("models", {}) or {}).items():
        if m.get("auc") is None:
            continue
        ci = m.get("auc_ci") or [None, None]
        names.append(name)
        aucs.append(float(m["auc"]))
        lo.append(float(m["auc"]) - float(ci[0]) if ci[0] is not None else 0.0)
        hi.append(float(ci[1]) - float(m["auc"]) if ci[1] is not None else 0.0)
    fig = go.Figure(
        go.Scatter(
            x=aucs,
            y=names,
            mode="markers",
            marker=dict(size=10, color="#4a78c2"),
            error_x=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
        )
    )
    fig.add_vline(x=0.5, line_dash="dot", line_color="grey")
    fig.update_layout(
        title=title,
        xaxis=dict(range=[0, 1.02], title="ROC AUC (DeLong 95% CI)"),
        height=60 + 40 * max(len(names), 1),
        margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig


def reliability_traces(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Reliability bins of one block as plot traces: ``name`` ("raw"/"calibrated"), ``x``
    (mean predicted probability), ``y`` (observed fraction positive), ``n`` per non-empty bin.

    The block's ``reliability`` is of the calibrated probability when ``ece_calibrated`` is
    set, else of the raw one (then only the raw trace is returned).
    """
    ens = block.get("ensemble") or {}
    calibrated = finite_or_none(ens.get("ece_calibrated")) is not None
    raw = ens.get("reliability_raw") or (None if calibrated else ens.get("reliability"))
    sources = [("raw", raw)]
    if calibrated:
        sources.append(("calibrated", ens.get("reliability")))
    traces = []
    for name, bins in sources:
        x, y, n = [], [], []
        for b in bins or []:
            if not isinstance(b, Mapping):
                continue
            p, f, k = finite_or_none(b.get("mean_p")), finite_or_none(b.get("frac_positive")), b.get("n") or 0
            if p is None or f is None or not k:
                continue
            x.append(p)
            y.append(f)
            n.append(int(k))
        if x:
            traces.append({"name": name, "x": x, "y": y, "n": n})
    return traces


def reliability_figure(name: str, block: Mapping[str, Any]) -> Any | None:
    """Plotly reliability plot (predicted vs observed per bin, marker area ~ n, the diagonal);
    None when the block has no reliability bins."""
    traces = reliability_traces(block)
    if not traces:
        return None
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line=dict(color="grey", dash="dot")))
    colours = {"raw": "#c0392b", "calibrated": "#2e8b57"}
    biggest = max(max(t["n"]) for t in traces)
    for t in traces:
        fig.add_trace(
            go.Scatter(
                x=t["x"],
                y=t["y"],
                mode="lines+markers",
                name=f"{t['name']} ensemble probability",
                marker=dict(size=[6 + 24 * (k / biggest) ** 0.5 for k in t["n"]], color=colours.get(t["name"])),
                line=dict(color=colours.get(t["name"])),
                customdata=t["n"],
                hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>n = %{customdata}<extra></extra>",
            )
        )
    kind = "internal test" if block.get("kind") != "external" else "external"
    fig.update_layout(
        title=f"Reliability on {name} ({kind}, n = {block.get('n', '?')})",
        xaxis=dict(range=[0, 1], title="predicted probability (bin mean)"),
        yaxis=dict(range=[0, 1.02], title="observed fraction positive", scaleanchor="x"),
        height=380,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig
