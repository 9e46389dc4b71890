"""Tests for training.data: group inference, group-aware stratified splits and k-fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_zoo.errors import InputError
from training.data import group_kfold, infer_groups, split_cases

# ----------------------------------------------------------------------------- data


def _patients(n_patients: int = 500, pos_rate: float = 0.2, seed: int = 0, with_pid: bool = True) -> pd.DataFrame:
    """A realistic-looking table: 1-4 images per patient, ~20 % positive patients."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(rng.random() < pos_rate)
        age, sex = int(rng.integers(2, 90)), rng.choice(["M", "F"])
        site = rng.choice(["appendicular", "axial"], p=[0.85, 0.15])
        for _ in range(int(rng.integers(1, 5))):
            rows.append({"patient_id": f"P{p:04d}", "label": label, "age": age, "sex": sex, "site": site})
    df = pd.DataFrame(rows)
    if not with_pid:
        df = df.drop(columns="patient_id")
    # A shuffled, non-default index: results must align by index, not position.
    df = df.sample(frac=1.0, random_state=seed)
    df.index = df.index * 10 + 3
    return df


def _crosses(assignment: pd.Series, keys: pd.Series) -> int:
    """Number of groups (by an independent key) found in more than one split/fold."""
    return int((pd.DataFrame({"a": assignment, "k": keys}).groupby("k")["a"].nunique() > 1).sum())


# ----------------------------------------------------------------------------- groups


def test_infer_groups_uses_patient_id_and_falls_back():
    df = pd.DataFrame(
        {
            "patient_id": ["p1", "p1", None, None, None, ""],
            "age": [30, 31, 40, 40.0, np.nan, 40],
            "sex": ["M", "F", "F", "F", "F", "F"],
            "site": ["axial", "axial", "axial", "axial", "axial", "axial"],
            "label": [1, 0, 0, 0, 0, 0],
        }
    )
    g = infer_groups(df)
    assert g.iloc[0] == g.iloc[1] == "patient:p1"  # id wins over differing clinical values
    assert g.iloc[2] == g.iloc[3]  # 40 vs 40.0: same probable patient
    assert g.iloc[4] not in set(g.drop(df.index[4]))  # missing age: its own group
    assert g.iloc[5] == g.iloc[2]  # empty patient_id counts as missing -> inferred
    assert g.index.equals(df.index)


def test_infer_groups_clinical_key():
    df = pd.DataFrame(
        {
            "age": [30, 30, 30, 30, 30],
            "sex": ["M", "M", "M", "F", "M"],
            "site": ["axial", "axial", "appendicular", "axial", "axial"],
            "label": [1, 1, 1, 1, 0],
        }
    )
    g = infer_groups(df)
    assert g.iloc[0] == g.iloc[1]
    assert g.nunique() == 4  # site, sex and label each separate


def test_infer_groups_btxrd_uses_subtype_not_site():
    # BTXRD-style rows: same patient imaged on two bones (multiple osteochondromas) with
    # inconsistent site groups must stay together; a different subtype must not.
    df = pd.DataFrame(
        {
            "age": [11, 11, 11],
            "sex": ["F", "F", "F"],
            "label": [0, 0, 0],
            "site": ["appendicular", "axial", "appendicular"],
            "bone_site": ["femur", "femur+hip bone", "tibia"],
            "subtype": ["multiple osteochondromas", "multiple osteochondromas", "simple bone cyst"],
        }
    )
    g = infer_groups(df)
    assert g.iloc[0] == g.iloc[1] and g.iloc[2] != g.iloc[0]


def test_infer_groups_without_clinical_columns_is_per_row():
    df = pd.DataFrame({"image": ["a", "b", "c"], "label": [1, 1, 1]})
    assert infer_groups(df).nunique() == 3


# ----------------------------------------------------------------------------- split


def test_split_keeps_patients_together_and_is_stratified():
    df = _patients()
    s = split_cases(df, seed=0)
    assert s.index.equals(df.index) and set(s) == {"train", "val", "test"}
    assert _crosses(s, df["patient_id"]) == 0
    frac = s.value_counts(normalize=True)
    for name, target in [("train", 0.7), ("val", 0.1), ("test", 0.2)]:
        assert abs(frac[name] - target) < 0.03, frac
    overall = df["label"].mean()
    for name, rate in df.groupby(s)["label"].mean().items():
        assert abs(rate - overall) < 0.04, (name, rate, overall)


def test_split_inferred_groups_never_cross():
    df = _patients(with_pid=False, seed=1)
    s = split_cases(df, seed=5)
    # Independent grouping on the raw columns.
    key = df["age"].astype(str) + df["sex"] + df["site"] + df["label"].astype(str)
    assert _crosses(s, key) == 0


def test_split_reproducible_and_seed_dependent():
    df = _patients()
    a, b = split_cases(df, seed=3), split_cases(df, seed=3)
    assert a.equals(b)
    c = split_cases(df, seed=4)
    assert (a != c).mean() > 0.2


def test_split_custom_ratios_and_validation():
    df = _patients(seed=2)
    s = split_cases(df, ratios=(0.8, 0.0, 0.2), seed=0)
    assert "val" not in set(s)
    assert abs((s == "test").mean() - 0.2) < 0.03
    for bad in [(0.7, 0.2, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1), (float("nan"), 0.5, 0.5)]:
        with pytest.raises(InputError, match="split ratios"):
            split_cases(df, ratios=bad)


def test_split_handles_missing_labels_and_no_label_column():
    df = _patients(seed=3)
    df.loc[df.index[:40], "label"] = np.nan
    s = split_cases(df, seed=0)
    assert _crosses(s, df["patient_id"]) == 0
    s2 = split_cases(df.drop(columns="label"), seed=0)
    assert _crosses(s2, df["patient_id"]) == 0
    assert abs((s2 == "train").mean() - 0.7) < 0.05


# ----------------------------------------------------------------------------- k-fold


def test_group_kfold_properties():
    df = _patients()
    f = group_kfold(df, k=5, seed=0)
    assert f.index.equals(df.index) and sorted(f.unique()) == [0, 1, 2, 3, 4]
    assert _crosses(f, df["patient_id"]) == 0
    overall = df["label"].mean()
    for _, rate in df.groupby(f)["label"].mean().items():
        assert abs(rate - overall) < 0.05
    sizes = f.value_counts(normalize=True)
    assert (abs(sizes - 0.2) < 0.03).all()
    assert f.equals(group_kfold(df, k=5, seed=0))
    assert not f.equals(group_kfold(df, k=5, seed=1))


def test_group_kfold_refuses_too_few_groups():
    df = pd.DataFrame({"patient_id": ["a", "a", "b"], "label": [0, 0, 1]})
    with pytest.raises(InputError, match="cannot make 3 folds from 2"):
        group_kfold(df, k=3)
    with pytest.raises(InputError, match="k >= 2"):
        group_kfold(df, k=1)


# ----------------------------------------------------------------------------- BTXRD


@pytest.mark.btxrd
def test_btxrd_split_and_folds(btxrd_dir: Path):
    from model_zoo.cases import read_case_table

    cases = read_case_table(btxrd_dir / "metadata.csv", check_files=False).frame
    assert len(cases) == 1345
    # Independent key for "probable same patient" (see infer_groups' docstring).
    key = cases[["age", "sex", "label", "subtype"]].astype(str).agg("|".join, axis=1)
    s = split_cases(cases, seed=0)
    assert _crosses(s, key) == 0
    frac = s.value_counts(normalize=True)
    assert abs(frac["train"] - 0.7) < 0.03 and abs(frac["val"] - 0.1) < 0.03 and abs(frac["test"] - 0.2) < 0.03
    overall = cases["label"].astype(float).mean()
    for _, rate in cases.groupby(s)["label"].apply(lambda x: x.astype(float).mean()).items():
        assert abs(rate - overall) < 0.04
    f = group_kfold(cases, k=5, seed=0)
    assert _crosses(f, key) == 0
    assert sorted(f.unique()) == [0, 1, 2, 3, 4]
