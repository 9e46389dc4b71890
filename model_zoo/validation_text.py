"""The manifest's evaluation blocks as words and table rows: which number applies at a
hospital the model has never seen. One source for the model card (training) and the dashboard.

``Manifest.evaluation``: {set name: block}, the argument ``evaluation`` of every function
here; "internal" blocks (the test split) come from the training hospital, "external" ones
from hospitals never used for fitting, calibrating or choosing the threshold. Releases from
before external evaluation have none (``None``): every function here then returns an empty
list / None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


def evaluation_blocks(evaluation: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """``(name, block)`` pairs, internal blocks first, then external ones (manifest order).

    Malformed entries (not a dict) are skipped; a release without evaluation gives ``[]``.
    """
    if not isinstance(evaluation, Mapping):
        return []
    blocks = [(str(k), dict(b)) for k, b in evaluation.items() if isinstance(b, Mapping)]
    return [(k, b) for k, b in blocks if b.get("kind") != "external"] + [(k, b) for k, b in blocks if b.get("kind") == "external"]


def external_blocks(evaluation: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    return [(k, b) for k, b in evaluation_blocks(evaluation) if b.get("kind") == "external"]


def _auc(block: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return (block.get("models") or {}).get(name) or {}


def best_member(block: Mapping[str, Any]) -> tuple[str, float] | None:
    """The member (not ``ensemble``/``clinic``) with the highest AUC on this set."""
    scored = [
        (name, finite_or_none(m.get("auc")))
        for name, m in (block.get("models") or {}).items()
        if name not in ("ensemble", "clinic") and isinstance(m, Mapping)
    ]
    found = [(n, a) for n, a in scored if a is not None]
    return max(found, key=lambda na: na[1]) if found else None


def ece_text(ens: Mapping[str, Any]) -> str:
    raw, cal = finite_or_none(ens.get("ece")), finite_or_none(ens.get("ece_calibrated"))
    if raw is None:
        return "n/a"
    return f"{raw:.3f} (not calibrated)" if cal is None else f"{raw:.3f} -> {cal:.3f}"


def evaluation_rows(evaluation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One row per evaluation block (internal test first): the "new hospital" table."""
    rows = []
    for name, b in evaluation_blocks(evaluation):
        ens = b.get("ensemble") or {}
        best = best_member(b)
        ens_auc = _auc(b, "ensemble")
        rows.append(
            {
                "set": name,
                "kind": "internal test" if b.get("kind") == "internal" else "external (unseen hospital)",
                "n (positive)": f"{b.get('n', '?')} ({b.get('n_positive', '?')})",
                "ensemble AUC [95% CI]": fmt_ci(ens_auc.get("auc"), ens_auc.get("auc_ci")),
                "best member AUC": "n/a" if best is None else f"{best[1]:.2f} ({best[0]})",
                "clinic-only AUC": fmt_ci(_auc(b, "clinic").get("auc"), None),
                "ECE raw -> calibrated": ece_text(ens),
                "threshold": "n/a"
                if finite_or_none(ens.get("threshold")) is None
                else f"{finite_or_none(ens.get('threshold')):.3f}",
                "sensitivity [95% CI]": fmt_ci(ens.get("sensitivity"), ens.get("sensitivity_ci")),
                "specificity [95% CI]": fmt_ci(ens.get("specificity"), ens.get("specificity_ci")),
            }
        )
    return rows


def _auc_phrase(block: Mapping[str, Any]) -> str:
    m = _auc(block, "ensemble")
    return f"AUC {fmt_ci(m.get('auc'), m.get('auc_ci'))}"


def unseen_hospital_sentence(evaluation: Mapping[str, Any] | None) -> str | None:
    """Which row a clinician at a new hospital should read, from the release's numbers.

    None for a release without evaluation blocks.
    """
    blocks = evaluation_blocks(evaluation)
    if not blocks:
        return None
    external = external_blocks(evaluation)
    internal = [(k, b) for k, b in blocks if b.get("kind") != "external"]
    internal_auc = [(k, finite_or_none(_auc(b, "ensemble").get("auc"))) for k, b in internal]
    internal_auc = [(k, a) for k, a in internal_auc if a is not None]
    if internal_auc:
        named = ", ".join(f"{a:.2f}" if k == "test" else f"{a:.2f} ({k})" for k, a in internal_auc)
        internal_text = f"the internal test AUC {named}"
    else:
        internal_text = ""
    if not external:
        return (
            "This release was not validated outside its training hospital: no row here estimates "
            "performance at a hospital whose images the model has never seen"
            + (f", and {internal_text} is likely to be optimistic there." if internal_text else ".")
        )
    parts = "; ".join(f"{k}: {_auc_phrase(b)}, n = {b.get('n', '?')}" for k, b in external)
    rows = "row" if len(external) == 1 else "rows"
    text = f"At a hospital whose images the model has never seen, expect numbers like the external {rows} ({parts})"
    text += f", not {internal_text}." if internal_text else "."
    small = [k for k, b in external if isinstance(b.get("n_positive"), int) and b["n_positive"] < 50]
    if small:
        text += f" Few positive cases in {', '.join(small)}: the confidence intervals are wide."
    return text


# ----------------------------------------------------------------------------- plain words


def share_words(k: int, n: int) -> str:
    """``k`` of ``n`` as a clinician would say it: "about 7 in 10", "about 1 in 17", "none", "all".

    From one in five up: tenths ("about 7 in 10"; "more than 9 in 10" rather than rounding to
    all); below it: "about 1 in N" with N = round(n / k). "none"/"all" only when exact.
    """
    if n <= 0:
        raise ValueError("share_words needs n > 0")
    if k <= 0:
        return "none"
    if k >= n:
        return "all"
    x = k / n
    if x < 0.2:
        return f"about 1 in {round(1.0 / x)}"
    tenths = round(10.0 * x)
    if tenths >= 10:
        return "more than 9 in 10"
    return f"about {tenths} in 10"


@dataclass(frozen=True)
class CallCounts:
    """One evaluation block's confusion at the shipped threshold, in the counts the words use."""

    n: int
    n_positive: int
    flagged: int  # positives called positive (true positives)
    negative_calls: int
    wrong_negative_calls: int  # positives called negative (false negatives)
    positive_calls: int
    wrong_positive_calls: int  # negatives called positive (false positives)

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> CallCounts | None:
        """From ``block["ensemble"]["confusion"]`` ([[tn, fp], [fn, tp]], scikit-learn's layout);
        None when it is missing or malformed."""
        ens = block.get("ensemble")
        conf: Any = ens.get("confusion") if isinstance(ens, Mapping) else None
        try:
            (tn, fp), (fn, tp) = conf
            tn, fp, fn, tp = (int(v) for v in (tn, fp, fn, tp))
        except (TypeError, ValueError):
            return None
        if min(tn, fp, fn, tp) < 0 or tn + fp + fn + tp == 0:
            return None
        return cls(
            n=tn + fp + fn + tp,
            n_positive=fn + tp,
            flagged=tp,
            negative_calls=tn + fn,
            wrong_negative_calls=fn,
            positive_calls=tp + fp,
            wrong_positive_calls=fp,
        )


def _calls_sentence(where: str, set_name: str, c: CallCounts, positive: str, negative: str) -> str:
    """E.g. "In its own hospital (internal test set: 269 tumours, 47 malignant) it flagged 35 of
    the 47 malignant tumours (about 7 in 10); 12 of its 206 'benign' calls were wrong (about 1
    in 17), and 28 of its 63 'malignant' calls (about 4 in 10)."""
    text = f"{where} ({set_name}: {c.n} tumours, {c.n_positive} {positive})"
    if c.n_positive:
        text += f" it flagged {c.flagged} of the {c.n_positive} {positive} tumours ({share_words(c.flagged, c.n_positive)})"
    else:
        text += f" there was no {positive} tumour to flag"
    wrong = []
    if c.negative_calls:
        wrong.append(_wrong_calls(c.wrong_negative_calls, c.negative_calls, negative, with_verb=True))
    if c.positive_calls:  # the verb is shared with the clause before it, when there is one
        wrong.append(_wrong_calls(c.wrong_positive_calls, c.positive_calls, positive, with_verb=not wrong))
    return text + ("; " + ", and ".join(wrong) if wrong else "") + "."


def _wrong_calls(k: int, n: int, word: str, with_verb: bool) -> str:
    """ "12 of its 206 'benign' calls were wrong (about 1 in 17)", or without "were wrong"."""
    verb = ("was wrong " if k == 1 else "were wrong ") if with_verb else ""
    return f"{k} of its {n} '{word}' calls {verb}({share_words(k, n)})"


def plain_summary(
    evaluation: Mapping[str, Any] | None, positive_class: str | None = None, negative_class: str | None = None
) -> str | None:
    """Plain sentences for a clinician, before any statistic (five with one external hospital,
    one more per further hospital): what the model does,
    how often it is wrong at its threshold in its own hospital (the internal test block) and at
    each hospital it has not seen (the external blocks), and where it was tested.

    The counts are the evaluation blocks' confusion matrices at the shipped threshold. One
    source for the Zoo page and the model card. None for a release without evaluation blocks
    (or whose blocks carry no confusion matrix).
    """
    positive = str(positive_class or "positive")
    negative = str(negative_class or "negative")

    def counted(blocks: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, CallCounts]]:
        pairs = [(k, CallCounts.from_block(b)) for k, b in blocks]
        return [(k, c) for k, c in pairs if c is not None]

    internal = counted([(k, b) for k, b in evaluation_blocks(evaluation) if b.get("kind") != "external"])
    external = counted(external_blocks(evaluation))
    if not internal and not external:
        return None
    sentences = [
        f"This model looks at a box drawn around a bone tumour on a radiograph, together with the "
        f"patient's age, sex and the tumour's site, and says, by a fixed cut-off on its probability, "
        f"whether the tumour looks {positive} or {negative}; it is for research and teaching, not for "
        "diagnosis."
    ]
    # The internal test split ("test") is the one the card quotes; other internal blocks add nothing plain.
    if internal:
        name, counts = next(((k, c) for k, c in internal if k == "test"), internal[0])
        sentences.append(_calls_sentence("In its own hospital", f"internal {name} set", counts, positive, negative))
    for name, counts in external:
        sentences.append(_calls_sentence("At a hospital whose images it had never seen", name, counts, positive, negative))
    tested = []
    if internal:
        tested.append("on held-out cases from the hospital it was trained on")
    if external:
        names = ", ".join(k for k, _ in external)
        count = "one hospital" if len(external) == 1 else f"{len(external)} hospitals"
        tested.append(f"at {count} never used to build it ({names})")
    where = "It was tested " + " and ".join(tested) + "."
    if external:
        where += " Expect numbers like the unseen hospital's at yours, not the home hospital's."
    else:
        where += " It was not tested at any other hospital: expect it to be wrong more often at yours."
    sentences.append(where)
    return " ".join(sentences)
