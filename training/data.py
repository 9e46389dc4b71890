"""Group-aware, label-stratified splits of case tables.

Images of one patient must never sit on both sides of a split, or the test score measures
recall of that patient rather than generalisation. Case tables carry ``patient_id`` when
the source has one; BTXRD does not, so :func:`infer_groups` builds conservative proxy
groups from the clinical columns.

Reading and adapting tables lives in :mod:`model_zoo.cases` (the dashboard's batch page
needs it too); this module decides which rows go where, and loads a training config's table
with its splits (:func:`load_cases`) and fingerprint, for fitting and for every command that
reproduces a release's rows (evaluate, add-ood, add-localiser, throughput).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_zoo.cases import read_case_table
from model_zoo.errors import InputError
from model_zoo.zoo import sha256_file

LOG = logging.getLogger(__name__)

__all__ = ["SPLIT_NAMES", "data_fingerprint", "group_kfold", "image_hashes", "infer_groups", "load_cases", "split_cases"]

SPLIT_NAMES = ("train", "val", "test")


def _missing(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _key_text(value: object) -> str:
    # 12 and 12.0 (int vs float columns) must give the same key.
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value).strip()


def infer_groups(cases: pd.DataFrame) -> pd.Series:
    """One group key per row: the patient where known, else a probable-same-patient proxy.

    Rules, per row:

    1. ``patient_id`` present and non-empty -> group ``"patient:<id>"``.
    2. Otherwise images with the same ``age``, ``sex``, ``label`` and ``site`` are taken to
       be one patient (``"auto:..."``). When the table has a ``subtype`` column (BTXRD),
       the key is ``age, sex, label, subtype`` instead - ``site`` is dropped there.
    3. A row missing age or sex, or any other value its key needs, gets its own group
       (``"row:<index>"``): without them nothing links it to other images.

    Why subtype instead of site for BTXRD: the dataset has no patient id, but its image ids
    run patient by patient. Across the 616 consecutive tumour-image pairs that share age,
    sex and diagnosis (probably two views of one patient), the subtype agrees in all 616,
    while ``site_group`` differs in 8 (BTXRD labels some femur images 'axial') and the bone
    name (``bone_site``, e.g. 'tibia' vs 'tibia+fibula' for multiple osteochondromas)
    differs in 75. Keying on the bone name would therefore put likely same-patient images
    in different groups - leakage - so the stricter-looking bone-name key was rejected;
    subtype both splits unrelated patients more finely than site_group (374 vs 267 groups
    over the 1,345 tumour images, largest 20 images) and keeps the likely pairs together.
    The image-id order itself is not used: it is undocumented.

    Returns
    -------
    pd.Series
        String group keys aligned with ``cases.index``, named ``"group"``.
    """
    n = len(cases)
    keys: list[str] = []
    has_pid = "patient_id" in cases.columns
    optional = ["label"]
    optional += ["subtype"] if "subtype" in cases.columns else ["site"]
    key_cols = ["age", "sex"] + [c for c in optional if c in cases.columns]
    have_clinical = "age" in cases.columns and "sex" in cases.columns
    for pos in range(n):
        idx = cases.index[pos]
        if has_pid and not _missing(pid := cases["patient_id"].iat[pos]):
            keys.append(f"patient:{_key_text(pid)}")
            continue
        if have_clinical:
            values = [cases[c].iat[pos] for c in key_cols]
            if not any(_missing(v) for v in values):
                keys.append("auto:" + "|".join(f"{c}={_key_text(v)}" for c, v in zip(key_cols, values)))
                continue
        keys.append(f"row:{idx}")
    return pd.Series(keys, index=cases.index, name="group", dtype=object)


def _strata(cases: pd.DataFrame, label_col: str | None) -> pd.Series:
    if label_col is None or label_col not in cases.columns:
        return pd.Series("all", index=cases.index, dtype=object)
    return pd.Series(["missing" if _missing(v) else _key_text(v) for v in cases[label_col]], index=cases.index, dtype=object)


def _group_table(cases: pd.DataFrame, label_col: str | None) -> pd.DataFrame:
    """Per group: size and a single stratum (the most common label; ties -> largest)."""
    groups = infer_groups(cases)
    strata = _strata(cases, label_col)
    df = pd.DataFrame({"group": groups.to_numpy(), "stratum": strata.to_numpy()})
    counts = df.groupby(["group", "stratum"]).size().reset_index(name="n")
    counts = counts.sort_values(["group", "n", "stratum"], ascending=[True, False, False])
    per_group = counts.drop_duplicates("group").set_index("group")["stratum"]
    sizes = df.groupby("group").size()
    return pd.DataFrame({"size": sizes, "stratum": per_group.reindex(sizes.index)})


def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(list(ratios), dtype=float)
    if r.shape != (3,) or not np.all(np.isfinite(r)) or np.any(r < 0) or not math.isclose(r.sum(), 1.0, abs_tol=1e-6):
        raise InputError(f"split ratios {tuple(ratios)} must be three non-negative numbers (train, val, test) summing to 1")
    return r / r.sum()


def split_cases(
    cases: pd.DataFrame,
    *,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    label_col: str = "label",
) -> pd.Series:
    """Assign each row to ``'train'``, ``'val'`` or ``'test'``.

    Whole groups (:func:`infer_groups`) are assigned, separately within each label
    stratum (a group's stratum is its most common label; rows without a label form their
    own stratum), so the positive rate is about the same in every split and no group
    crosses a split.

    Algorithm, per stratum: shuffle the groups with ``seed``, then take them largest
    first (ties in shuffled order); each goes to a split drawn at random with probability
    proportional to how many images that split still lacks against its target
    (``ratio * stratum size``). Large groups are placed while there is room, the many
    small ones at the end fill the remaining gaps, so image proportions land close to the
    target (within about one large group); the draw keeps the assignment random.

    Returns
    -------
    pd.Series
        Split name per row, aligned with ``cases.index``, named ``"split"``.
    """
    r = _check_ratios(ratios)
    if len(cases) == 0:
        return pd.Series([], index=cases.index, name="split", dtype=object)
    groups = infer_groups(cases)
    table = _group_table(cases, label_col)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for stratum in sorted(table["stratum"].unique()):
        sub = table[table["stratum"] == stratum]
        order = rng.permutation(len(sub))
        sub = sub.iloc[order]
        # Stable sort keeps the shuffled order among equal sizes.
        sub = sub.iloc[np.argsort(-sub["size"].to_numpy(), kind="stable")]
        target = r * float(sub["size"].sum())
        filled = np.zeros(3)
        for group, size in zip(sub.index, sub["size"].to_numpy()):
            deficit = target - filled
            positive = np.clip(deficit, 0.0, None)
            if positive.sum() > 0:
                choice = int(rng.choice(3, p=positive / positive.sum()))
            else:  # float rounding at the very end: put it where it hurts least
                choice = int(np.argmax(deficit))
            assignment[group] = SPLIT_NAMES[choice]
            filled[choice] += size
    return pd.Series([assignment[g] for g in groups], index=cases.index, name="split", dtype=object)


def group_kfold(cases: pd.DataFrame, k: int = 5, seed: int = 0, label_col: str = "label") -> pd.Series:
    """Fold index ``0..k-1`` per row: stratified group k-fold over :func:`infer_groups`.

    Uses scikit-learn's ``StratifiedGroupKFold(shuffle=True, random_state=seed)``; rows
    without a label are stratified as their own class. Each row's fold is the one where it
    is held out, so ``fold == i`` is the validation set of fold ``i``.

    Raises
    ------
    InputError
        ``k < 2`` or fewer groups than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    k = int(k)
    if k < 2:
        raise InputError(f"k-fold needs k >= 2, got {k}")
    groups = infer_groups(cases)
    n_groups = groups.nunique()
    if n_groups < k:
        raise InputError(f"cannot make {k} folds from {n_groups} patient group(s)")
    strata = _strata(cases, label_col)
    y = pd.factorize(strata)[0]
    g = pd.factorize(groups)[0]
    folds = np.full(len(cases), -1, dtype=int)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(cases)), y, g)):
        folds[held_out] = fold
    return pd.Series(folds, index=cases.index, name="fold")


# ----------------------------------------------------------------------------- a training table


def load_cases(cfg: dict[str, Any], log: Any = LOG.info) -> pd.DataFrame:
    """Validated case rows with labels, splits, groups and folds."""
    data_cfg, task = cfg["data"], cfg["task"]
    table = read_case_table(data_cfg["cases"], label_map=task.get("label_map"), require_label=True)
    frame = table.frame
    bad = frame[frame["row_error"] != ""]
    for message in table.errors[:20]:
        log(f"  skipped {message}")
    if len(bad) > 20:
        log(f"  ... and {len(bad) - 20} more rows skipped")
    frame = frame[frame["row_error"] == ""].reset_index(drop=True)
    frame["label"] = frame["label"].astype(int)
    max_cases = data_cfg.get("max_cases")
    if max_cases and len(frame) > int(max_cases):
        from sklearn.model_selection import train_test_split

        frame, _ = train_test_split(frame, train_size=int(max_cases), stratify=frame["label"], random_state=int(cfg["seed"]))
        frame = frame.reset_index(drop=True)
    if frame["label"].nunique() < 2:
        raise InputError("the case table needs both classes (label 0 and 1) to train")
    frame["group"] = infer_groups(frame).astype(str).to_numpy()
    frame["split"] = split_cases(frame, ratios=tuple(data_cfg["split_ratios"]), seed=int(cfg["seed"])).to_numpy()
    frame["fold"] = -1
    train_mask = frame["split"] == "train"
    if cfg["stacker"]["score_source"] == "oof":
        folds = group_kfold(frame[train_mask], k=int(cfg["stacker"]["folds"]), seed=int(cfg["seed"]))
        frame.loc[train_mask, "fold"] = np.asarray(folds)
    return frame


def data_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over every image's bytes and the labels/clinical values used."""
    digest = hashlib.sha256()
    for row in frame.sort_values("image_path").itertuples():
        digest.update(Path(row.image_path).read_bytes())
        digest.update(f"|{row.label}|{getattr(row, 'age', '')}|{getattr(row, 'sex', '')}|{getattr(row, 'site', '')}".encode())
    return digest.hexdigest()


def image_hashes(frame: pd.DataFrame) -> list[str]:
    """sha256 of each row's image file: how a release's rows are traced (and external sets are
    proven disjoint from training) without copying any image."""
    return [sha256_file(Path(path)) for path in frame["image_path"]]
