"""The one place where a probability becomes the call that is shown (issue 17, "frame the call honestly").

Every output says the same thing for the same case: the Case page's headline, the PDF case
report, the DICOM SR written back to a PACS, ``python -m model_zoo pacs predict`` and the
Teaching page's model column. The rule:

* The scale: the calibrated probability against the calibrated threshold when the release
  has a calibration and both give the zoo's own call (``p_raw >= threshold``); otherwise the
  raw stacker output against the raw threshold (a decreasing, i.e. broken, calibration is
  never shown).
* The word: the class word (positive when ``p >= threshold``), or ``"indeterminate"`` when the
  probability on the shown scale lies within the release's band of the threshold
  (:func:`in_threshold_band`), or when at least :data:`JITTER_FLIP_MIN` of the ROI-jitter
  boxes give the other call (:class:`JitterSummary`).

Pure functions and frozen dataclasses only; ``Zoo.call`` feeds them the release's facts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_INDETERMINATE_BAND",
    "INDETERMINATE",
    "JITTER_BOXES",
    "JITTER_FLIP_MIN",
    "REASON_BAND",
    "REASON_BOX",
    "Call",
    "JitterSummary",
    "check_band",
    "format_probability",
    "frame_call",
    "in_threshold_band",
    "jitter_note",
    "jitter_sentence",
    "jitter_summary",
    "probability_sentence",
]

# Half-width of the "indeterminate" band around the threshold, on the scale that is shown
# (calibrated when the release has a calibrator), for releases that do not state their own
# (``threshold.indeterminate_band`` in the manifest). Why 0.05: the demo release's external
# calibration error (ECE about 0.10 at an unseen hospital) is larger than this, so a
# probability this close to the threshold cannot be placed reliably on either side of it.
DEFAULT_INDETERMINATE_BAND = 0.05
# The call is indeterminate when at least this many ROI-jitter boxes give the other call. Why:
# the shifted/resized boxes are boxes a reader could equally have drawn; if any of them changes
# the answer, the answer belongs to the box, not to the lesion.
JITTER_FLIP_MIN = 1
# How many jittered boxes the Case page and the PACS command line check (same seed, same boxes).
JITTER_BOXES = 8

INDETERMINATE = "indeterminate"
REASON_BAND = "lies at the threshold"
REASON_BOX = "depends on the exact box"


def check_band(band: object, where: str = "threshold.indeterminate_band") -> float:
    """``band`` as a float in [0, 0.5); ValueError naming ``where`` otherwise.

    0 means no band (only an exact tie, or a jitter flip, is indeterminate); 0.5 or more would
    make every probability indeterminate for a threshold of 0.5.
    """
    try:
        value = float(band)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number in [0, 0.5), not {band!r}") from None
    if isinstance(band, bool) or not math.isfinite(value) or not 0.0 <= value < 0.5:
        raise ValueError(f"{where} must be a number in [0, 0.5), not {band!r}")
    return value


def in_threshold_band(p: float, threshold: float, band: float = DEFAULT_INDETERMINATE_BAND) -> bool:
    """``|p - threshold| <= band`` (rounded to 9 decimals, so the band is symmetric in floats)."""
    return round(abs(float(p) - float(threshold)), 9) <= float(band)


def format_probability(p: float, threshold: float) -> tuple[str, str]:
    """``p`` and ``threshold`` as strings with 2 decimals, or 3 when 2 would make them look equal."""
    a, b = f"{p:.2f}", f"{threshold:.2f}"
    if a == b and p != threshold:
        a, b = f"{p:.3f}", f"{threshold:.3f}"
    return a, b


def probability_sentence(p: float, threshold: float, positive_class: str, negative_class: str) -> str:
    """E.g. ``"Probability of malignant: 0.73 (threshold 0.41 -> above: malignant)"``.

    The class call follows the zoo's rule (positive when ``p >= threshold``).
    """
    a, b = format_probability(p, threshold)
    if p > threshold:
        side, call = "above", positive_class
    elif p == threshold:
        side, call = "at", positive_class
    else:
        side, call = "below", negative_class
    return f"Probability of {positive_class}: {a} (threshold {b} -> {side}: {call})"


# ----------------------------------------------------------------------------- ROI jitter


@dataclass(frozen=True)
class JitterSummary:
    """How the ensemble probability moved when the ROI was jittered (raw scale).

    ``n_flips``: boxes whose call (``p >= threshold``) differs from the reference box's.
    """

    n: int
    n_flips: int
    p_min: float | None
    p_max: float | None
    p_sd: float | None
    probs: tuple[float, ...] = ()

    @property
    def same_call(self) -> int:
        return self.n - self.n_flips

    @property
    def flips(self) -> bool:
        """Whether enough boxes changed the call to make it indeterminate (:data:`JITTER_FLIP_MIN`)."""
        return self.n > 0 and self.n_flips >= JITTER_FLIP_MIN


def jitter_summary(p_ref: float, probs: Sequence[float], threshold: float) -> JitterSummary:
    """Summary of the jittered boxes' probabilities against the reference box's call."""
    p = np.asarray(list(probs), dtype=np.float64)
    if p.size == 0:
        return JitterSummary(n=0, n_flips=0, p_min=None, p_max=None, p_sd=None)
    ref_call = p_ref >= threshold
    return JitterSummary(
        n=int(p.size),
        n_flips=int(np.sum((p >= threshold) != ref_call)),
        p_min=float(p.min()),
        p_max=float(p.max()),
        p_sd=float(p.std(ddof=1)) if p.size > 1 else 0.0,
        probs=tuple(float(v) for v in p),
    )


def jitter_sentence(j: JitterSummary | None) -> str:
    """What the jitter check found, in one sentence."""
    if j is None or not j.n:
        return "ROI-jitter check not run."
    return (
        f"With {j.n} slightly shifted/resized boxes the probability ranged "
        f"{j.p_min:.2f}-{j.p_max:.2f} (SD {j.p_sd:.3f}); the class call "
        + (
            "never changed."
            if not j.n_flips
            else f"changed for {j.n_flips} of {j.n} boxes: the answer depends on where the box is drawn."
        )
    )


# ----------------------------------------------------------------------------- the call


@dataclass(frozen=True)
class Call:
    """The call as every output shows it.

    word : the class word, or :data:`INDETERMINATE`.
    p, threshold : the probability and threshold on the shown scale (``calibrated`` or raw).
    p_raw, threshold_raw : the stacker's raw output and threshold (the zoo's own call).
    band : the release's indeterminate band (on the shown scale).
    reasons : why the call is indeterminate (:data:`REASON_BOX`, :data:`REASON_BAND`); empty otherwise.
    scale_note : what the shown scale is, when it needs saying (calibrated, or a calibration
        that disagrees with the zoo's call and is therefore not shown).
    """

    word: str
    p: float
    threshold: float
    calibrated: bool
    band: float
    reasons: tuple[str, ...]
    positive_class: str
    negative_class: str
    p_raw: float
    threshold_raw: float
    scale_note: str | None = None

    @property
    def indeterminate(self) -> bool:
        return bool(self.reasons)

    @property
    def scale(self) -> str:
        return "calibrated" if self.calibrated else "raw"

    @property
    def leaning(self) -> str:
        """The class on whose side of the threshold the probability lies (even when indeterminate)."""
        return self.positive_class if self.p >= self.threshold else self.negative_class

    @property
    def sentence(self) -> str:
        """E.g. "Probability of malignant: 0.73 (threshold 0.41 -> above: malignant)", or
        "Probability of malignant: 0.53 (threshold 0.50) -> indeterminate - the call lies at the threshold"."""
        if not self.indeterminate:
            return probability_sentence(self.p, self.threshold, self.positive_class, self.negative_class)
        a, b = format_probability(self.p, self.threshold)
        return f"Probability of {self.positive_class}: {a} (threshold {b}) -> {INDETERMINATE} - the call " + " / ".join(
            self.reasons
        )


def frame_call(
    p_raw: float,
    threshold: float,
    positive_class: str,
    negative_class: str,
    *,
    p_calibrated: float | None = None,
    threshold_calibrated: float | None = None,
    band: float = DEFAULT_INDETERMINATE_BAND,
    jitter: JitterSummary | None = None,
) -> Call:
    """The call for one probability (see the module docstring for the rule).

    Pass ``jitter=None`` when the jitter check has not run (yet): the band alone decides.
    """
    band = check_band(band, "the indeterminate band")
    p_raw, threshold = float(p_raw), float(threshold)
    p, t, calibrated, note = p_raw, threshold, False, None
    if p_calibrated is not None and threshold_calibrated is not None:
        pc, tc = float(p_calibrated), float(threshold_calibrated)
        if (pc >= tc) == (p_raw >= threshold):
            a, b = format_probability(p_raw, threshold)
            p, t, calibrated = pc, tc, True
            note = (
                f"Calibrated probability (Platt scaling fitted on internal data). Raw stacker output {a} "
                f"against its threshold {b}: the same call."
            )
        else:  # a decreasing (broken) calibration: never show a flipped call
            note = "The release's calibration disagrees with its own call here, so the raw stacker output is shown."
    reasons = []
    if jitter is not None and jitter.flips:
        reasons.append(REASON_BOX)
    if in_threshold_band(p, t, band):
        reasons.append(REASON_BAND)
    word = INDETERMINATE if reasons else (positive_class if p >= t else negative_class)
    return Call(
        word=word,
        p=p,
        threshold=t,
        calibrated=calibrated,
        band=band,
        reasons=tuple(reasons),
        positive_class=positive_class,
        negative_class=negative_class,
        p_raw=p_raw,
        threshold_raw=threshold,
        scale_note=note,
    )


def jitter_note(call: Call, jitter: JitterSummary | None) -> str | None:
    """The note the jitter check adds when it makes the call indeterminate (None when it does not)."""
    if jitter is None or not jitter.flips:
        return None
    other = call.negative_class if call.p_raw >= call.threshold_raw else call.positive_class
    return (
        f"Indeterminate - the call depends on the exact box: {jitter.n_flips} of {jitter.n} slightly "
        f"shifted/resized boxes gave '{other}'. Read the result as neither {call.negative_class} nor "
        f"{call.positive_class}."
    )
