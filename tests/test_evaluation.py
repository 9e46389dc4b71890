"""training.evaluation: the evaluation block against independent references, the model-card
table, and `python -m training evaluate` end to end on the tiny zoo with a synthetic external set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from model_zoo.errors import InputError
from model_zoo.manifest import read_manifest_file
from training import stats as st
from training.evaluation import (
    block_from_release_metrics,
    evaluation_block,
    format_evaluation_table,
    main,
    release_image_hashes,
)


def _frame(seed: int = 0, n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    y[:2] = [0, 1]
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    return pd.DataFrame(
        {
            "label": y,
            "p_ensemble": p,
            "calibrated_p_ensemble": p**1.5,
            "p_m1": np.round(rng.random(n) + 0.3 * y, 2),  # ties
            "p_m2": rng.random(n),
            "p_clinic": rng.random(n),
            "tumor_subtype": rng.choice(["a", "b", "c"], n),
            "error": "",
        }
    )


def test_block_matches_independent_references():
    df = _frame()
    # Rows that must be left out: a failed row, a row without label, a row without score.
    bad = pd.DataFrame(
        [
            {**df.iloc[0].to_dict(), "error": "cannot read image", "p_ensemble": np.nan},
            {**df.iloc[1].to_dict(), "label": np.nan},
            {**df.iloc[2].to_dict(), "p_ensemble": np.nan},
        ]
    )
    full = pd.concat([df, bad], ignore_index=True)
    t = 0.45
    b = evaluation_block(full, threshold=t, kind="external", source="synthetic")
    json.dumps(b, allow_nan=False)
    y, p = df["label"].to_numpy(), df["p_ensemble"].to_numpy()
    assert (b["kind"], b["source"], b["n"], b["n_positive"], b["n_excluded"]) == (
        "external",
        "synthetic",
        len(df),
        int(y.sum()),
        3,
    )
    assert set(b["models"]) == {"ensemble", "m1", "m2", "clinic"}
    for name in b["models"]:
        s = df[f"p_{name}"].to_numpy()
        assert b["models"][name]["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        lo, hi = b["models"][name]["auc_ci"]
        assert (lo, hi) == pytest.approx(st.delong_auc(y, s).ci, abs=1e-12) and lo < b["models"][name]["auc"] < hi
    e = b["ensemble"]
    calls = p >= t
    tp, fn = int((calls & (y == 1)).sum()), int((~calls & (y == 1)).sum())
    tn, fp = int((~calls & (y == 0)).sum()), int((calls & (y == 0)).sum())
    assert e["confusion"] == [[tn, fp], [fn, tp]] and e["threshold"] == t
    for key, k, n in [("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("ppv", tp, tp + fp), ("npv", tn, tn + fn)]:
        assert e[key] == pytest.approx(k / n)
        assert e[f"{key}_ci"] == pytest.approx(list(proportion_confint(k, n, method="wilson")), abs=1e-9)
    assert e["ece"] == pytest.approx(st.expected_calibration_error(y, p), abs=1e-12)
    assert e["ece_calibrated"] == pytest.approx(st.expected_calibration_error(y, p**1.5), abs=1e-12)
    assert e["reliability"] == st.ece_with_bins(y, p**1.5)[1]
    assert e["reliability_raw"] == st.ece_with_bins(y, p)[1]
    # Subtypes: accuracy of the ensemble call, counted by hand.
    assert b["subtype_column"] == "tumor_subtype"
    assert sum(v["n"] for v in b["subtypes"].values()) == len(df)
    for sub, v in b["subtypes"].items():
        m = (df["tumor_subtype"] == sub).to_numpy()
        k = int((calls[m] == (y[m] == 1)).sum())
        assert (v["n"], v["n_correct"]) == (int(m.sum()), k)
        assert v["accuracy"] == pytest.approx(k / m.sum())
        assert v["accuracy_ci"] == pytest.approx(list(proportion_confint(k, m.sum(), method="wilson")))
        assert v["label"] is None  # random subtypes mix both classes


def test_block_one_class_no_calibration_and_subtype_label():
    df = _frame(1).drop(columns=["calibrated_p_ensemble"]).rename(columns={"tumor_subtype": "subtype"})
    neg = df[df["label"] == 0].copy()
    b = evaluation_block(neg, threshold=0.5, kind="internal", source="x")
    json.dumps(b, allow_nan=False)
    assert all(m["auc"] is None and m["auc_ci"] is None for m in b["models"].values())
    assert b["n_positive"] == 0 and b["ensemble"]["sensitivity"] is None
    assert b["ensemble"]["sensitivity_ci"] is None and b["ensemble"]["specificity"] is not None
    assert b["ensemble"]["ece_calibrated"] is None
    assert b["ensemble"]["reliability"] == b["ensemble"]["reliability_raw"]
    assert all(v["label"] == 0 for v in b["subtypes"].values())
    # An all-empty score column (no clinic model) gives AUC None, not an error.
    df["p_clinic"] = None
    assert evaluation_block(df, threshold=0.5, kind="internal", source="x")["models"]["clinic"]["auc"] is None


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.drop(columns=["label"]), "label"),
        (lambda d: d.assign(label=2), "0/1"),
        (lambda d: d.assign(p_m1="abc"), "numeric"),
        (lambda d: d.assign(error="x"), "no usable rows"),
    ],
)
def test_block_rejects_unusable_input(change, match):
    with pytest.raises(InputError, match=match):
        evaluation_block(change(_frame()), threshold=0.5, kind="external", source="x")
    with pytest.raises(InputError):
        evaluation_block(_frame(), threshold=1.5, kind="external", source="x")
    with pytest.raises(InputError):
        evaluation_block(_frame(), threshold=0.5, kind="elsewhere", source="x")


def test_table_rows_and_unseen_sentence():
    """The model card's table is the Zoo page's rows as markdown, internal set first."""
    ext = evaluation_block(_frame(2), threshold=0.5, kind="external", source="b")
    internal = evaluation_block(_frame(3), threshold=0.5, kind="internal", source="a")
    lines = format_evaluation_table({"c3": ext, "test": internal})
    rows = [ln for ln in lines[2:] if ln.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["test", "c3"]
    auc = ext["models"]["ensemble"]
    assert f"{auc['auc']:.2f} [{auc['auc_ci'][0]:.2f}-{auc['auc_ci'][1]:.2f}]" in rows[1]
    assert f"{ext['ensemble']['ece']:.3f} -> {ext['ensemble']['ece_calibrated']:.3f}" in rows[1]
    best = max(("m1", "m2"), key=lambda m: ext["models"][m]["auc"])
    assert f"({best})" in rows[1]
    sentence = lines[-1]
    assert "never seen" in sentence and "c3: AUC" in sentence and "internal test AUC" in sentence
    only_internal = format_evaluation_table({"test": internal})[-1]
    assert only_internal.startswith("This release was not validated outside its training hospital")


def test_block_from_release_metrics():
    df = _frame(4)
    from training.report import compute_metrics

    m = compute_metrics(df, threshold=0.4)
    b = block_from_release_metrics(m, source="release")
    direct = evaluation_block(df, threshold=0.4, kind="internal", source="x")
    assert b["n"] == direct["n"] and b["n_positive"] == direct["n_positive"]
    assert b["models"]["ensemble"]["auc"] == pytest.approx(direct["models"]["ensemble"]["auc"])
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        assert b["ensemble"][key] == pytest.approx(direct["ensemble"][key])
    assert b["ensemble"]["confusion"] == direct["ensemble"]["confusion"]
    assert b["ensemble"]["ece"] is None


def _with_data(data: dict):
    """The bundled manifest with ``data`` as its data section and no files (nothing else to read)."""
    from model_zoo.manifest import DataInfo, read_manifest_file
    from model_zoo.zoo import BUNDLED_ZOO_PARENT, list_releases

    return read_manifest_file(list_releases(BUNDLED_ZOO_PARENT)[-1]).replace(data=DataInfo.from_dict(data), files={})


def test_release_image_hashes_forms(tmp_path):
    h1, h2 = "a" * 64, "B" * 64
    assert release_image_hashes(tmp_path, _with_data({}))[0] is None
    assert release_image_hashes(tmp_path, _with_data({"image_sha256": [h1, h2]}))[0] == {h1, h2.lower()}
    by_split = {"train": [h1], "test": {"img/x.png": h2}}
    assert release_image_hashes(tmp_path, _with_data({"image_hashes": by_split}))[0] == {h1, h2.lower()}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--zoo", "z", "--out", "o"],
        ["--zoo", "z", "--out", "o", "--external", "noequals"],
        ["--zoo", "z", "--out", "o", "--external", "a=/no/such.csv"],
        ["--zoo", "z", "--out", "o", "--external", "bad name=x.csv"],
    ],
)
def test_cli_unusable_arguments_exit_2(argv, tmp_path, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


# ----------------------------------------------------------------------------- end to end


def _resealed_copy(release: Path, dest: Path, *, calibration: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the release with a changed manifest (calibration set, files dropped), re-sealed."""
    from model_zoo.zoo import sha256_bytes

    shutil.copytree(release, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    if calibration is not None:
        manifest["calibration"] = calibration
    for rel in drop:
        if manifest["files"].pop(rel, None) is not None:
            (dest / rel).unlink()
    blob = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (dest / "manifest.json").write_bytes(blob)
    (dest / "manifest.sha256").write_text(sha256_bytes(blob) + "\n", encoding="ascii")
    return dest


@pytest.mark.slow
def test_cli_end_to_end(tiny_release, tmp_path, capsys):
    from synthetic import write_case_table

    from model_zoo.calibration import Calibration

    calibration = {"method": "platt", "slope": 0.5, "intercept": -0.3, "fit_on": "oof", "n": 10, "n_positive": 4}
    release = _resealed_copy(tiny_release["release"], tmp_path / "zoo-cal", calibration=calibration)
    external = write_case_table(tmp_path / "ext", n=12, size=96, seed=11)
    out = tmp_path / "eval"
    rc = main(["--zoo", str(release), "--external", f"site2={external}", "--out", str(out), "--internal-test", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "leakage check: no image of site2" in captured.err
    for name in ("internal-test", "site2"):
        assert (out / name / "report" / "metrics.json").is_file()
        assert (out / name / "report" / "report.html").is_file()
        pred = pd.read_csv(out / name / "predictions.csv")
        cal = Calibration.from_dict(json.loads((release / "manifest.json").read_text())["calibration"])
        np.testing.assert_allclose(pred["calibrated_p_ensemble"], cal.apply(pred["p_ensemble"]), atol=1e-9)
        block = json.loads((out / name / "evaluation.json").read_text())
        again = evaluation_block(pred, threshold=block["ensemble"]["threshold"], kind=block["kind"], source=block["source"])
        assert block["models"] == again["models"] and block["ensemble"] == again["ensemble"]
        assert block["ensemble"]["ece_calibrated"] is not None
        assert block["ensemble"]["threshold"] == pytest.approx(
            json.loads((release / "manifest.json").read_text())["threshold"]["value"]
        )
    assert json.loads((out / "site2" / "evaluation.json").read_text())["n"] == 12
    n_test = int((pd.read_csv(out / "internal-test" / "cases.csv")["split"] == "test").sum())
    assert json.loads((out / "internal-test" / "evaluation.json").read_text())["n"] == n_test
    table = captured.out
    assert "| internal-test | internal test |" in table and "| site2 | external (unseen hospital) |" in table
    assert "never seen, expect numbers like the external row (site2: AUC" in table
    assert (out / "evaluation.md").read_text().count("| site2 | external (unseen hospital) |") == 1
    # The per-model thresholds of the release reach the report.
    metrics = json.loads((out / "site2" / "report" / "metrics.json").read_text())
    per_model = json.loads((release / "manifest.json").read_text())["threshold"].get("per_model") or {}
    for model, thr in per_model.items():
        if model in metrics["models"]:
            assert metrics["models"][model]["threshold"] == pytest.approx(thr)


@pytest.mark.slow
@pytest.mark.parametrize("hashes", ["as listed by the release", "derived from its data source"])
def test_cli_refuses_a_set_with_training_images(tiny_release, tmp_path, capsys, hashes):
    release = tiny_release["release"]
    listed = release_image_hashes(release, read_manifest_file(release))[0]
    if hashes == "as listed by the release":
        if listed is None:
            pytest.skip("this fit lists no image hashes in its release (data/cases.csv)")
        assert len(listed) == len(pd.read_csv(tiny_release["cases"]))
    else:  # a release that lists no image hashes
        release = _resealed_copy(release, tmp_path / "zoo-nohash", drop=("data/cases.csv",))
        assert release_image_hashes(release, read_manifest_file(release))[0] is None
    rows = pd.read_csv(tiny_release["cases"]).head(3)
    rows["image"] = [str(tiny_release["cases"].parent / p) for p in rows["image"]]
    leaked = tmp_path / "leaked.csv"
    rows.to_csv(leaked, index=False)
    rc = main(["--zoo", str(release), "--external", f"leaky={leaked}", "--out", str(tmp_path / "eval"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing" in err and "Traceback" not in err
    assert not (tmp_path / "eval" / "leaky").exists()
