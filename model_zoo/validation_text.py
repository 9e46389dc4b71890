"""The manifest's evaluation blocks as words and table rows: which number applies at a
hospital the model has never seen. One source for the model card (training) and the dashboard.

``manifest["evaluation"]``: {set name: block}; "internal" blocks (the test split) come from
the training hospital, "external" ones from hospitals never used for fitting, calibrating or
choosing the threshold. Releases from before external evaluation have no such key: every
function here then returns an empty list / None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def finite_or_none(x: Any) -> float | None:
    """A finite float, or None (missing, text, bool, NaN or infinite)."""
    if isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def _pair(ci: Any) -> tuple[float, float] | None:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = finite_or_none(ci[0]), finite_or_none(ci[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def fmt_ci(value: Any, ci: Any, nd: int = 2) -> str:
    """``0.76 [0.66-0.86]``; the value alone without a CI; ``n/a`` without a value."""
    v = finite_or_none(value)
    if v is None:
        return "n/a"
    pair = _pair(ci)
    return f"{v:.{nd}f}" + (f" [{pair[0]:.{nd}f}-{pair[1]:.{nd}f}]" if pair else "")


def evaluation_blocks(manifest: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, block)`` pairs, internal blocks first, then external ones (manifest order).

    Malformed entries (not a dict) are skipped; a release without evaluation gives ``[]``.
    """
    evaluation = manifest.get("evaluation")
    if not isinstance(evaluation, Mapping):
        return []
    blocks = [(str(k), dict(b)) for k, b in evaluation.items() if isinstance(b, Mapping)]
    return ([(k, b) for k, b in blocks if b.get("kind") != "external"]
            + [(k, b) for k, b in blocks if b.get("kind") == "external"])


def external_blocks(manifest: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(k, b) for k, b in evaluation_blocks(manifest) if b.get("kind") == "external"]


def _auc(block: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return ((block.get("models") or {}).get(name) or {})


def best_member(block: Mapping[str, Any]) -> tuple[str, float] | None:
    """The member (not ``ensemble``/``clinic``) with the highest AUC on this set."""
    scored = [(name, finite_or_none(m.get("auc"))) for name, m in (block.get("models") or {}).items()
              if name not in ("ensemble", "clinic") and isinstance(m, Mapping)]
    found = [(n, a) for n, a in scored if a is not None]
    return max(found, key=lambda na: na[1]) if found else None


def ece_text(ens: Mapping[str, Any]) -> str:
    raw, cal = finite_or_none(ens.get("ece")), finite_or_none(ens.get("ece_calibrated"))
    if raw is None:
        return "n/a"
    return f"{raw:.3f} (not calibrated)" if cal is None else f"{raw:.3f} -> {cal:.3f}"


def evaluation_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluation block (internal test first): the "new hospital" table."""
    rows = []
    for name, b in evaluation_blocks(manifest):
        ens = b.get("ensemble") or {}
        best = best_member(b)
        ens_auc = _auc(b, "ensemble")
        rows.append({
            "set": name,
            "kind": "internal test" if b.get("kind") == "internal" else "external (unseen hospital)",
            "n (positive)": f"{b.get('n', '?')} ({b.get('n_positive', '?')})",
            "ensemble AUC [95% CI]": fmt_ci(ens_auc.get("auc"), ens_auc.get("auc_ci")),
            "best member AUC": "n/a" if best is None else f"{best[1]:.2f} ({best[0]})",
            "clinic-only AUC": fmt_ci(_auc(b, "clinic").get("auc"), None),
            "ECE raw -> calibrated": ece_text(ens),
            "threshold": "n/a" if finite_or_none(ens.get("threshold")) is None else f"{finite_or_none(ens.get('threshold')):.3f}",
            "sensitivity [95% CI]": fmt_ci(ens.get("sensitivity"), ens.get("sensitivity_ci")),
            "specificity [95% CI]": fmt_ci(ens.get("specificity"), ens.get("specificity_ci")),
        })
    return rows


def _auc_phrase(block: Mapping[str, Any]) -> str:
    m = _auc(block, "ensemble")
    return f"AUC {fmt_ci(m.get('auc'), m.get('auc_ci'))}"


def unseen_hospital_sentence(manifest: Mapping[str, Any]) -> str | None:
    """Which row a clinician at a new hospital should read, from the manifest's numbers.

    None for a release without evaluation blocks.
    """
    blocks = evaluation_blocks(manifest)
    if not blocks:
        return None
    external = external_blocks(manifest)
    internal = [(k, b) for k, b in blocks if b.get("kind") != "external"]
    internal_auc = [(k, finite_or_none(_auc(b, "ensemble").get("auc"))) for k, b in internal]
    internal_auc = [(k, a) for k, a in internal_auc if a is not None]
    if internal_auc:
        named = ", ".join(f"{a:.2f}" if k == "test" else f"{a:.2f} ({k})" for k, a in internal_auc)
        internal_text = f"the internal test AUC {named}"
    else:
        internal_text = ""
    if not external:
        return ("This release was not validated outside its training hospital: no row here estimates "
                "performance at a hospital whose images the model has never seen"
                + (f", and {internal_text} is likely to be optimistic there." if internal_text else "."))
    parts = "; ".join(f"{k}: {_auc_phrase(b)}, n = {b.get('n', '?')}" for k, b in external)
    rows = "row" if len(external) == 1 else "rows"
    text = f"At a hospital whose images the model has never seen, expect numbers like the external {rows} ({parts})"
    text += f", not {internal_text}." if internal_text else "."
    small = [k for k, b in external if isinstance(b.get("n_positive"), int) and b["n_positive"] < 50]
    if small:
        text += (f" Few positive cases in {', '.join(small)}: the confidence intervals are wide.")
    return text
