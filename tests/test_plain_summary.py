"""Plain words before statistics (issue 17): ``validation_text.plain_summary`` from a manifest's
evaluation blocks, the same text opening the Zoo page and the model card written by training."""

from __future__ import annotations

import pytest

from model_zoo.validation_text import CallCounts, plain_summary, share_words


def _block(kind: str, tn: int, fp: int, fn: int, tp: int) -> dict:
    return {
        "kind": kind,
        "n": tn + fp + fn + tp,
        "n_positive": fn + tp,
        "ensemble": {"confusion": [[tn, fp], [fn, tp]], "sensitivity": tp / (tp + fn)},
        "models": {"ensemble": {"auc": 0.8, "auc_ci": [0.7, 0.9]}},
    }


MANIFEST = {
    "task": {"positive_class": "malignant", "negative_class": "benign"},
    "evaluation": {
        # external first in the dict: the text must still put the home hospital first
        "centre3": _block("external", tn=150, fp=51, fn=11, tp=20),
        "test": _block("internal", tn=194, fp=28, fn=12, tp=35),
    },
}


def _sentences(text: str) -> list[str]:
    return [s for s in text.replace("e.g.", "eg").split(". ") if s]


def _summary(m):
    """``plain_summary`` on a manifest written as a dict (the cases below)."""
    task = m.get("task") or {}
    return plain_summary(m.get("evaluation"), task.get("positive_class"), task.get("negative_class"))


def test_plain_summary_states_the_exact_counts():
    text = _summary(MANIFEST)
    assert text is not None
    assert 3 <= len(_sentences(text)) <= 5, text
    assert text.startswith("This model looks at a box drawn around a bone tumour")
    internal = (
        "In its own hospital (internal test set: 269 tumours, 47 malignant) it flagged 35 of the 47 "
        "malignant tumours (about 7 in 10); 12 of its 206 'benign' calls were wrong (about 1 in 17), "
        "and 28 of its 63 'malignant' calls (about 4 in 10)."
    )
    external = (
        "At a hospital whose images it had never seen (centre3: 232 tumours, 31 malignant) it flagged 20 "
        "of the 31 malignant tumours (about 6 in 10); 11 of its 161 'benign' calls were wrong (about 1 in "
        "15), and 51 of its 71 'malignant' calls (about 7 in 10)."
    )
    assert internal in text and external in text
    assert text.index(internal) < text.index(external)
    assert (
        "tested on held-out cases from the hospital it was trained on and at one hospital never used to build "
        "it (centre3)" in text
    )
    assert "Expect numbers like the unseen hospital's at yours" in text


def test_plain_summary_without_external_says_so_and_without_evaluation_is_none():
    internal_only = {"task": MANIFEST["task"], "evaluation": {"test": MANIFEST["evaluation"]["test"]}}
    text = _summary(internal_only)
    assert "flagged 35 of the 47" in text and "never seen" not in text
    assert "not tested at any other hospital" in text
    assert _summary({"task": MANIFEST["task"]}) is None
    assert _summary({"evaluation": {"test": {"kind": "internal", "ensemble": {}}}}) is None
    one_wrong = {"task": MANIFEST["task"], "evaluation": {"test": _block("internal", tn=9, fp=0, fn=1, tp=5)}}
    assert "1 of its 10 'benign' calls was wrong (about 1 in 10)" in _summary(one_wrong)
    assert "0 of its 5 'malignant' calls (none)" in _summary(one_wrong)


@pytest.mark.parametrize(
    "k, n, words",
    [
        (0, 10, "none"),
        (10, 10, "all"),
        (35, 47, "about 7 in 10"),
        (12, 206, "about 1 in 17"),
        (1, 5, "about 2 in 10"),
        (1, 6, "about 1 in 6"),
        (99, 100, "more than 9 in 10"),
        (5, 10, "about 5 in 10"),
    ],
)
def test_share_words(k, n, words):
    assert share_words(k, n) == words


def test_call_counts_from_a_malformed_block_is_none():
    assert CallCounts.from_block({"ensemble": {"confusion": [[1, 2], [3]]}}) is None
    assert CallCounts.from_block({"ensemble": {"confusion": "ab"}}) is None
    assert CallCounts.from_block({"ensemble": None}) is None
    assert CallCounts.from_block({"ensemble": {"confusion": [[0, 0], [0, 0]]}}) is None
    c = CallCounts.from_block(MANIFEST["evaluation"]["test"])
    assert (c.n, c.n_positive, c.flagged, c.negative_calls, c.wrong_negative_calls) == (269, 47, 35, 206, 12)


def test_model_card_opens_with_the_plain_summary(tiny_release):
    from model_zoo.zoo import verify_release

    manifest = verify_release(tiny_release["release"]).to_dict()
    card = (tiny_release["release"] / "MODEL_CARD.md").read_text(encoding="utf-8")
    summary = _summary(manifest)
    assert summary and "site2" in summary
    lines = card.splitlines()
    assert lines[0].startswith("# Model card:")
    assert lines[2:4] == ["## In plain words", summary], "the card opens with the words, before any statistic"
    assert card.index("## In plain words") < card.index("## Intended use") < card.index("## Metrics")
