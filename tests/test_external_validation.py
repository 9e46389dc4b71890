"""External validation built into `fit` (issue 13): a configured external set is scored by every
model, reported beside the internal test split in the manifest and model card, traceable by
image hash, and never used for fitting anything."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from model_zoo.zoo import verify_release

pytestmark = pytest.mark.slow


def test_external_metrics_reach_manifest_and_model_card(tiny_release):
    release = tiny_release["release"]
    manifest = verify_release(release).to_dict()
    block = manifest["evaluation"]["site2"]
    ext = pd.read_csv(tiny_release["external"])
    assert block["kind"] == "external" and block["n"] == len(ext)
    assert block["n_positive"] == int(ext["label"].sum())
    assert manifest["evaluation"]["test"]["kind"] == "internal"
    assert {"ensemble", "clinic", "effnet_b3", "effnet_b4", "vit", "swin"} <= set(block["models"])
    # the ensemble AUC reported equals one recomputed from the external predictions
    from sklearn.metrics import roc_auc_score

    pred = pd.read_csv(tiny_release["run_dir"] / "predictions_external-site2.csv")
    assert len(pred) == len(ext)
    expected = roc_auc_score(pred["label"], pred["p_ensemble"])
    assert block["models"]["ensemble"]["auc"] == pytest.approx(expected)
    card = (release / "MODEL_CARD.md").read_text()
    assert "At a hospital the model has not seen" in card and "site2" in card
    assert "report/external-site2/metrics.json" in manifest["files"]


def test_no_external_row_was_used_for_fitting(tiny_release):
    """Every row is traceable by content hash: the release lists the training table's images
    with their split and the external set's images; none of the latter trained anything."""
    release, run_dir = tiny_release["release"], tiny_release["run_dir"]
    manifest = verify_release(release).to_dict()
    cases = pd.read_csv(release / manifest["data"]["rows"])
    external = pd.read_csv(release / manifest["data"]["external"]["site2"]["rows"])
    ext_dir = Path(tiny_release["external"]).parent
    for row in external.itertuples():  # the hashes are the files' real content hashes
        assert row.sha256 == hashlib.sha256((ext_dir / row.image).read_bytes()).hexdigest()
    assert not set(external["sha256"]) & set(cases["sha256"])
    # the rows every member job trained on are training-split rows of the case table
    train_rows = set(np.flatnonzero(cases["split"] == "train"))
    for result_path in (run_dir / "jobs").glob("*/*/result.pt"):
        trained = set(torch.load(result_path, weights_only=False)["train_idx"].tolist())
        assert trained <= train_rows, result_path


def test_external_set_sharing_an_image_with_training_is_refused(tmp_path, tiny_release, capsys):
    from training.fit import main as fit_main

    cases = Path(tiny_release["cases"])
    leaky = tmp_path / "leaky"
    shutil.copytree(Path(tiny_release["external"]).parent, leaky)
    table = pd.read_csv(leaky / "cases.csv")
    shutil.copy(cases.parent / pd.read_csv(cases)["image"].iloc[0], leaky / table["image"].iloc[0])
    rc = fit_main(
        [
            "--config",
            "tiny",
            "--quiet",
            "--cases",
            str(cases),
            "--out",
            str(tmp_path / "zoo"),
            "--run-dir",
            str(tmp_path / "run"),
            f"external=[{{name: leaky, cases: '{leaky / 'cases.csv'}'}}]",
        ]
    )
    assert rc == 2
    assert "also in the training case table" in capsys.readouterr().err
    assert not (tmp_path / "run" / "jobs").exists(), "refused before any member trained"


def test_calibrated_probability_is_the_release_calibration(tiny_release):
    from model_zoo.ensemble import load_zoo

    zoo = load_zoo(tiny_release["release"])
    cal = zoo.manifest.calibration
    assert cal.fit_on == "oof" and cal.n > 0
    pred = zoo.predict(np.random.default_rng(0).random((96, 96)), None, age=30, sex="F", site="appendicular")
    assert pred.p_calibrated == pytest.approx(float(cal.apply(pred.p_ensemble)))
    # monotonic: the call at the calibrated threshold is the call at the raw one
    assert (pred.p_calibrated >= zoo.threshold_calibrated) == (pred.p_ensemble >= zoo.threshold)


def test_platt_matches_an_independent_fit():
    """Platt slope/intercept equal an unregularised logistic fit done by statsmodels."""
    import statsmodels.api as sm

    from model_zoo.calibration import fit_platt, logit

    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 400)
    y = (rng.random(400) < 1 / (1 + np.exp(-(0.6 * logit(p) - 0.4)))).astype(int)
    cal = fit_platt(y, p, fit_on="oof")
    ref = sm.Logit(y, sm.add_constant(logit(p))).fit(disp=0).params
    assert cal.intercept == pytest.approx(ref[0], abs=1e-3) and cal.slope == pytest.approx(ref[1], abs=1e-3)
    assert cal.apply(0.5) == pytest.approx(1 / (1 + np.exp(-ref[0])), abs=1e-3)


def test_float16_release_reports_the_numbers_of_its_stored_weights(tmp_path):
    """With output.fp16 the release's test metrics equal what the product path computes from
    the stored float16 weights (not the float32 ones the fit held in memory)."""
    from sklearn.metrics import roc_auc_score
    from synthetic import write_case_table

    from model_zoo.predict import predict_cases
    from model_zoo.ensemble import load_zoo
    from training.fit import main as fit_main

    cases = write_case_table(tmp_path / "data", n=40, size=64, seed=9)
    assert (
        fit_main(
            [
                "--config",
                "tiny",
                "--quiet",
                "--cases",
                str(cases),
                "--out",
                str(tmp_path / "zoo"),
                "--run-dir",
                str(tmp_path / "run"),
                "members.families=[vit]",
                "output.fp16=true",
            ]
        )
        == 0
    )
    release = next(p for p in (tmp_path / "zoo").iterdir() if not p.name.startswith("."))
    manifest = verify_release(release).to_dict()
    fit_pred = pd.read_csv(tmp_path / "run" / "predictions_test.csv")
    test_cases = pd.read_csv(cases)
    test_cases = test_cases[test_cases["image"].isin(fit_pred["image"])]
    test_cases.to_csv(tmp_path / "data" / "test.csv", index=False)
    out = predict_cases(load_zoo(release), tmp_path / "data" / "test.csv", tmp_path / "out.csv")
    merged = fit_pred.merge(out[["image", "p_vit", "p_ensemble"]], on="image", suffixes=("_fit", "_product"))
    np.testing.assert_allclose(merged["p_vit_fit"], merged["p_vit_product"], atol=1e-5)
    product_auc = roc_auc_score(merged["label"], merged["p_ensemble_product"])
    assert manifest["metrics"]["test"]["auc"]["ensemble"] == pytest.approx(product_auc, abs=1e-9)
