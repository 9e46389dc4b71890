"""The predictions table of a report: reading it, checking its columns, and the analysis set.

Analysis set: rows with a label and every score and read present. Rows without a label,
or with a missing score/read (e.g. a failed prediction), are excluded and counted, so
every paired statistic is computed on the same cases.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from model_zoo.errors import InputError

MODEL_PREFIX = "p_"
READER_PREFIX = "reader_"
ENSEMBLE = "ensemble"
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class AnalysisSet:
    """The analysis set: aligned arrays for every model and reader."""

    frame: pd.DataFrame  # analysis rows, original columns
    y: np.ndarray  # bool
    models: dict[str, np.ndarray]  # name -> scores
    readers: dict[str, np.ndarray]  # name -> bool reads
    n_input: int
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows

    @property
    def has_ensemble(self) -> bool:
        return ENSEMBLE in self.models

    @property
    def both_classes(self) -> bool:
        return bool(self.y.any() and (~self.y).any())

    def calls(self, thresholds: dict[str, float]) -> dict[str, np.ndarray]:
        """Each model's positive calls: ``p >= threshold``."""
        return {name: s >= thresholds[name] for name, s in self.models.items()}


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
        raise InputError(f"column '{column}' must hold 0/1 values; row {row + 1} has {series.iloc[row]!r}")
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


def prepare(pred: pd.DataFrame, *, require_readers: bool = False) -> AnalysisSet:
    """Check a predictions table and keep its analysis set; bad input raises :class:`InputError`."""
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
    return AnalysisSet(
        frame=pred.loc[keep].reset_index(drop=True),
        y=label.to_numpy()[mask] == 1.0,
        models={k: v.to_numpy()[mask] for k, v in scores.items()},
        readers={k: v.to_numpy()[mask] == 1.0 for k, v in reads.items()},
        n_input=len(pred),
        excluded=excluded,
    )


def resolve_thresholds(names: Sequence[str], threshold: float | None, thresholds: dict[str, float] | None) -> dict[str, float]:
    """One threshold per model: ``threshold`` (default 0.5) overridden per model by
    ``thresholds``, keyed ``"ensemble"`` or ``"p_ensemble"``."""

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
