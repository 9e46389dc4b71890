"""End to end: case table -> `python -m training fit` (main(argv)) -> release -> reload -> predict.

Runs the real training path with the tiny config: four tiny members, 2 out-of-fold jobs + 1
final job each, stacker selection, threshold, reports, atomic release.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from model_zoo.errors import IntegrityError
from model_zoo.zoo import verify_release

pytestmark = pytest.mark.slow


def _fit(cases: Path, tmp: Path, *extra: str) -> Path:
    from training.__main__ import main

    zoo_parent, run_dir = tmp / "zoo", tmp / "run"
    rc = main(
        ["fit", "--config", "tiny", "--quiet", "--cases", str(cases), "--out", str(zoo_parent), "--run-dir", str(run_dir), *extra]
    )
    assert rc == 0
    releases = [p for p in zoo_parent.iterdir() if not p.name.startswith(".")]
    assert len(releases) == 1, "exactly one release folder, no temp leftovers"
    return releases[0]


@pytest.fixture(scope="module")
def synthetic_zoo(tiny_release) -> tuple[Path, Path, Path]:
    return tiny_release["release"], tiny_release["run_dir"], tiny_release["cases"]


def test_release_manifest_and_hashes(synthetic_zoo):
    release, _, _ = synthetic_zoo
    manifest = verify_release(release).to_dict()
    assert manifest["name"] == "tiny-zoo" and manifest["version"] == "0.0.1"
    assert [m["spec"]["member_id"] for m in manifest["members"]] == ["effnet_b3", "effnet_b4", "vit", "swin"]
    for entry in manifest["members"]:
        assert entry["weights"] in manifest["files"]
        spec = entry["spec"]
        assert spec["std"][0] > 0 and spec["mean"][0] != 0.5, "train-set mean/std recorded, not defaults"
    assert manifest["task"]["positive_class"] == "malignant"
    assert manifest["stacker"]["score_source"] == "oof"
    assert manifest["stacker"]["chosen"] in {"rf", "lr", "dt", "knn"}
    assert {r["name"] for r in manifest["stacker"]["comparison"]} == {"rf", "lr", "dt", "knn"}
    assert 0.0 <= manifest["threshold"]["value"] <= 1.0
    assert manifest["threshold"]["chosen_on"] == "val"
    assert set(manifest["files"]) >= {
        "stacker.joblib",
        "config.yaml",
        "MODEL_CARD.md",
        "report/val/metrics.json",
        "report/val/report.html",
    }
    assert len(manifest["data"]["fingerprint"]) == 64
    # reports share one offline plotly.js; the standalone copy inlines it again
    from model_zoo.zoo import standalone_report_html

    assert "report/plotly.min.js" in manifest["files"]
    html = standalone_report_html(release, "val").decode()
    assert 'src="../plotly.min.js"' not in html and "cdn.plot.ly" not in html and len(html) > 1_000_000
    assert "not a medical device" in manifest["intended_use"].lower()


def test_out_of_fold_rule(synthetic_zoo):
    """The stacker never sees a score from a member that trained on that row."""
    _, run_dir, _ = synthetic_zoo
    for member_dir in (run_dir / "jobs").iterdir():
        scored: list[int] = []
        for fold_dir in sorted(member_dir.glob("fold*")):
            result = torch.load(fold_dir / "result.pt", weights_only=False)
            train, score = set(result["train_idx"].tolist()), set(result["score_idx"].tolist())
            assert train and score and not (train & score), f"{fold_dir}: scored rows it trained on"
            scored += result["score_idx"].tolist()
        final = torch.load(member_dir / "final" / "result.pt", weights_only=False)
        assert sorted(scored) == sorted(final["train_idx"].tolist()), "every training row gets exactly one out-of-fold score"
        assert not set(final["train_idx"].tolist()) & set(final["score_idx"].tolist())


def test_reload_and_predict_cli(synthetic_zoo, tmp_path):
    from model_zoo.__main__ import main
    from model_zoo.ensemble import load_zoo

    release, _, cases = synthetic_zoo
    zoo = load_zoo(release)
    out = tmp_path / "pred.csv"
    rc = main(["predict", "--cases", str(cases), "--out", str(out), "--zoo", str(release), "--quiet"])
    assert rc == 0
    pred = pd.read_csv(out, keep_default_na=False)
    expected = {"p_ensemble", "roi_x0", "roi_y0", "roi_x1", "roi_y1", "error"} | {f"p_{m}" for m in zoo.member_ids}
    assert expected <= set(pred.columns)
    assert set(pd.read_csv(cases).columns) <= set(pred.columns), "every input column kept"
    p = pred["p_ensemble"].astype(float)
    assert ((p >= 0) & (p <= 1)).all() and (pred["error"] == "").all()
    # the ROI actually used is the given one
    given = pd.read_csv(cases)
    np.testing.assert_allclose(pred["roi_x0"].astype(float), given["roi_x0"], atol=1e-6)


def test_predict_bad_rows_continue(synthetic_zoo, tmp_path):
    from model_zoo.__main__ import main

    release, _, cases = synthetic_zoo
    frame = pd.read_csv(cases, dtype=str)
    frame["image"] = [str(cases.parent / p) for p in frame["image"]]
    frame.loc[1, "image"] = str(tmp_path / "missing.png")
    frame.loc[2, "age"] = "abc"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    out = tmp_path / "pred.csv"
    rc = main(["predict", "--cases", str(bad), "--out", str(out), "--zoo", str(release), "--quiet"])
    assert rc == 1
    pred = pd.read_csv(out, keep_default_na=False)
    assert len(pred) == len(frame)
    assert pred.loc[1, "error"] and pred.loc[2, "error"]
    assert (pred.drop(index=[1, 2])["error"] == "").all()
    assert main(["predict", "--cases", str(tmp_path / "nope.csv"), "--out", str(out), "--zoo", str(release)]) == 2


def test_predict_auto_roi_uses_localiser(synthetic_zoo, tmp_path):
    from model_zoo.__main__ import main

    release, _, cases = synthetic_zoo
    manifest = verify_release(release).to_dict()
    assert manifest["localiser"]["weights"] in manifest["files"]
    out = tmp_path / "auto.csv"
    assert main(["predict", "--cases", str(cases), "--out", str(out), "--zoo", str(release), "--roi", "auto", "--quiet"]) == 0
    pred = pd.read_csv(out, keep_default_na=False)
    assert pred["roi_source"].str.startswith("auto (confidence").all()
    assert ((pred["roi_x1"].astype(float) <= 96) & (pred["roi_x0"].astype(float) >= 0)).all()


def test_tampered_weights_refused(synthetic_zoo, tmp_path):
    from model_zoo.ensemble import load_zoo

    release, _, _ = synthetic_zoo
    copy = tmp_path / release.name
    shutil.copytree(release, copy)
    weights = copy / "members" / "vit.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0x01
    weights.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="vit.safetensors was modified"):
        load_zoo(copy)


def test_releases_are_immutable(synthetic_zoo, tmp_path):
    from training.fit import main

    release, run_dir, cases = synthetic_zoo
    rc = main(
        [
            "--config",
            "tiny",
            "--quiet",
            "--cases",
            str(cases),
            "--out",
            str(release.parent),
            "--run-dir",
            str(tmp_path / "run2"),
            "version=0.0.1",
            "train.epochs=0",
        ]
    )
    assert rc == 2  # same name+version exists: refused, nothing overwritten
    verify_release(release).to_dict()


def test_real_btxrd_subset(btxrd_dir, tmp_path):
    """A few dozen real BTXRD radiographs through the whole path."""
    release = _fit(
        btxrd_dir / "metadata.csv",
        tmp_path,
        "data.max_cases=48",
        "version=0.0.2",
        "train.epochs=1",
        "data.split_ratios=[0.5,0.3,0.2]",
    )
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["data"]["n_cases"] == 48
    assert sum(v["n"] for v in manifest["data"]["splits"].values()) == 48


def test_resume_repackages_without_retraining(synthetic_zoo, tmp_path):
    """A finished run resumed with a new version reuses every member job; training changes are refused."""
    from training.fit import main

    release, run_dir, cases = synthetic_zoo
    results = sorted(run_dir.glob("jobs/*/*/result.pt"))
    stamps = {p: p.stat().st_mtime_ns for p in results}
    args = [
        "--config",
        "tiny",
        "--quiet",
        "--cases",
        str(cases),
        "--out",
        str(tmp_path / "zoo"),
        "--run-dir",
        str(run_dir),
        "--resume",
        f"localiser.path={release.parent.parent / 'loc'}",
    ]
    assert main([*args, "version=0.0.3"]) == 0
    assert {p: p.stat().st_mtime_ns for p in results} == stamps, "no member job was retrained"
    new = verify_release(tmp_path / "zoo" / "tiny-zoo-0.0.3").to_dict()
    old = verify_release(release).to_dict()
    for rel in old["files"]:
        if rel.startswith("members/"):
            assert new["files"][rel] == old["files"][rel]
    assert main([*args, "version=0.0.4", "train.epochs=5"]) == 2


# ----------------------------------------------------------------------------- model card


def test_model_card_target_sentences_are_computed_from_metrics():
    from training.release import target_sentences

    models = {"ensemble": {"auc": 0.91}, "vit": {"auc": 0.93}, "swin": {"auc": None}, "clinic": {"auc": 0.95}}
    assert target_sentences(models, {"ensemble_auc": 0.9}) == [
        "- Ensemble test AUC 0.910 is not above the best single member (vit 0.930).",
        "- Target ensemble AUC >= 0.90: met.",
    ]
    models["ensemble"]["auc"] = 0.94  # the clinic-only model is not a member
    assert target_sentences(models, {})[0].endswith("is above the best single member (vit 0.930).")
    assert target_sentences({"vit": {"auc": 0.8}}, {"ensemble_auc": 0.9}) == []


def test_training_recipe_names_what_was_configured():
    from training.config import load_config
    from training.release import training_recipe

    paper = training_recipe(load_config("paper")["train"])
    assert paper.startswith("SGD (momentum 0.9) lr 0.1") and "x0.1 every 30 epochs" in paper
    assert "augmentation: horizontal flips, vertical flips" in paper
    custom = training_recipe(
        dict(
            load_config("paper")["train"],
            optimizer="adamw",
            schedule="cosine",
            warmup_epochs=2,
            hflip=False,
            vflip=False,
            affine={"degrees": 5},
        )
    )
    assert custom.startswith("AdamW") and "cosine decay with 2 warm-up" in custom
    assert custom.endswith("augmentation: affine jitter")


# ----------------------------------------------------------------------------- GPU-style runs


def test_parallel_members_only_then_resume_matches_serial(synthetic_zoo, tmp_path):
    """--workers 2 --members-only trains every job in worker processes and writes no release;
    --resume then finishes it. Same seeds, so every job scores like the serial run's."""
    from training.fit import main

    _, serial_run, cases = synthetic_zoo
    run_dir, zoo = tmp_path / "run", tmp_path / "zoo"
    common = ["--config", "tiny", "--quiet", "--cases", str(cases), "--out", str(zoo), "--run-dir", str(run_dir), "version=0.0.1"]
    assert main([*common, "--members-only", "--workers", "2"]) == 0
    assert not zoo.exists() or not any(zoo.iterdir()), "members-only writes no release"
    serial = {p.relative_to(serial_run): p for p in serial_run.glob("jobs/*/*/result.pt")}
    parallel = {p.relative_to(run_dir): p for p in run_dir.glob("jobs/*/*/result.pt")}
    assert set(parallel) == set(serial) and len(serial) == 12  # 4 members x (2 folds + final)
    for rel, path in serial.items():
        a = torch.load(path, weights_only=False)
        b = torch.load(parallel[rel], weights_only=False)
        np.testing.assert_array_equal(a["score_idx"], b["score_idx"])
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-3, err_msg=str(rel))
        assert len(b["history"]) == 2
    stamps = {p: p.stat().st_mtime_ns for p in parallel.values()}
    assert main([*common, "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in parallel.values()} == stamps, "resume retrained a job"
    manifest = verify_release(zoo / "tiny-zoo-0.0.1").to_dict()
    assert [m["epochs_run"] for m in manifest["members"]] == [2, 2, 2, 2]


def test_time_limit_stops_jobs_and_the_model_card_says_so(tmp_path):
    from synthetic import write_case_table
    from training.fit import main

    cases = write_case_table(tmp_path / "data", n=40, size=64, seed=3)
    zoo = tmp_path / "zoo"
    assert (
        main(
            [
                "--config",
                "tiny",
                "--quiet",
                "--cases",
                str(cases),
                "--out",
                str(zoo),
                "--run-dir",
                str(tmp_path / "run"),
                "--time-limit",
                "0.0001",
                "members.families=[vit]",
                "stacker.candidates=[lr]",
            ]
        )
        == 0
    )
    release = next(p for p in zoo.iterdir() if not p.name.startswith("."))
    manifest = verify_release(release).to_dict()
    assert manifest["members"][0]["epochs_run"] == 1
    for job in (tmp_path / "run" / "jobs" / "vit").iterdir():  # folds and final alike
        assert len(torch.load(job / "result.pt", weights_only=False)["history"]) == 1
    assert "| 1 of 2 epochs (time limit) |" in (release / "MODEL_CARD.md").read_text()
    assert main(["--config", "tiny", "--cases", str(cases), "--workers", "0"]) == 2


# ----------------------------------------------------------------------------- add-localiser


def test_add_localiser_makes_a_new_release_without_retraining(synthetic_zoo, tmp_path):
    from model_zoo.ensemble import load_zoo
    from model_zoo.zoo import sha256_file
    from training.__main__ import main

    release, _, cases = synthetic_zoo
    loc = release.parent.parent / "loc"
    out = tmp_path / "zoo"
    assert (
        main(
            [
                "add-localiser",
                "--zoo",
                str(release),
                "--localiser",
                str(loc),
                "--version",
                "0.1.0",
                "--out",
                str(out),
                "--cases",
                str(cases),
            ]
        )
        == 0
    )
    old, new = verify_release(release).to_dict(), verify_release(out / "tiny-zoo-0.1.0").to_dict()
    assert new["version"] == "0.1.0" and new["name"] == old["name"]
    for rel, digest in old["files"].items():
        if rel.startswith(("members/", "report/")) or rel == "stacker.joblib":
            assert new["files"][rel] == digest, f"{rel} changed"
    assert new["derived_from"]["manifest_sha256"] == sha256_file(release / "manifest.json")
    assert new["threshold"] == old["threshold"] and new["metrics"] == old["metrics"]
    # Independent check of the ROI-source measurement: with the annotator's boxes the reloaded
    # zoo reproduces the ensemble AUC that training computed for each split.
    by_source = new["localiser"]["ensemble_auc_by_roi_source"]
    assert set(by_source) == {s for s in ("val", "test") if old["metrics"].get(s, {}).get("auc", {}).get("ensemble") is not None}
    for split_name, row in by_source.items():
        assert row["annotator"] == pytest.approx(old["metrics"][split_name]["auc"]["ensemble"], abs=1e-6)
        assert 0.0 <= row["localiser"] <= 1.0 and 0.0 <= row["whole_image"] <= 1.0
    assert load_zoo(out / "tiny-zoo-0.1.0").localiser is not None
    card = (out / "tiny-zoo-0.1.0" / "MODEL_CARD.md").read_text()
    assert "| split | n | annotator box | localiser box | whole image |" in card


def test_add_localiser_refuses_bad_requests(synthetic_zoo, tmp_path, capsys):
    from synthetic import write_case_table
    from training.__main__ import main

    release, _, _ = synthetic_zoo
    loc = release.parent.parent / "loc"
    base = ["add-localiser", "--zoo", str(release), "--out", str(tmp_path / "zoo")]
    assert main([*base, "--localiser", str(loc), "--version", "0.0.1"]) == 2
    assert "source release's version" in capsys.readouterr().err
    assert main([*base, "--localiser", str(tmp_path), "--version", "0.2.0"]) == 2
    assert "not a localiser folder" in capsys.readouterr().err
    other = write_case_table(tmp_path / "other", n=48, size=96, seed=7)
    assert main([*base, "--localiser", str(loc), "--version", "0.2.0", "--cases", str(other)]) == 2
    assert "fingerprint differs" in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists() or not any((tmp_path / "zoo").iterdir()), "nothing published"


def test_a_failing_parallel_job_names_itself_and_keeps_finished_jobs(tmp_path, capsys):
    from synthetic import write_case_table
    from training.fit import main

    cases = write_case_table(tmp_path / "data", n=40, size=64, seed=5)
    run_dir = tmp_path / "run"
    rc = main(
        [
            "--config",
            "tiny",
            "--quiet",
            "--cases",
            str(cases),
            "--out",
            str(tmp_path / "zoo"),
            "--run-dir",
            str(run_dir),
            "--workers",
            "2",
            "members.families=[vit,swin]",
            "--init",
            f"swin={tmp_path / 'no-such-weights.safetensors'}",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "member job swin" in err and "--resume" in err and "Traceback" not in err
    assert list(run_dir.glob("jobs/swin/*/result.pt")) == []


def test_remote_pack_then_resume_at_home(synthetic_zoo, tmp_path):
    """training/remote/pack.py output, unpacked elsewhere, finishes with --resume into a release
    whose members are the run's final weights (float16 in transit, as the release stores them)."""
    import subprocess
    import sys
    import tarfile

    from training.fit import main

    release, run_dir, cases = synthetic_zoo
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, str(repo / "training" / "remote" / "pack.py"), str(run_dir), str(tmp_path / "pack")],
        check=True,
        capture_output=True,
        cwd=repo,
    )
    home = tmp_path / "home"
    with tarfile.open(tmp_path / "pack" / "run.tar") as tar:
        tar.extractall(home, filter="data")
    fold = torch.load(home / "run" / "jobs" / "vit" / "fold0" / "result.pt", weights_only=False)
    final = torch.load(home / "run" / "jobs" / "vit" / "final" / "result.pt", weights_only=False)
    assert fold["state_dict"] is None and len(fold["scores"]) == len(fold["score_idx"])
    assert all(v.dtype in (torch.float16, torch.int64) for v in final["state_dict"].values())
    assert (
        main(
            [
                "--config",
                "tiny",
                "--quiet",
                "--cases",
                str(cases),
                "--out",
                str(tmp_path / "zoo"),
                "--run-dir",
                str(home / "run"),
                "--resume",
                "version=0.0.9",
            ]
        )
        == 0
    )
    manifest = verify_release(tmp_path / "zoo" / "tiny-zoo-0.0.9").to_dict()
    original = verify_release(release).to_dict()["metrics"]  # also holds the fixture's external set, not re-scored here
    assert manifest["metrics"] == {k: original[k] for k in ("val", "test")}, "same member scores, same stacker"


def test_bad_localiser_path_fails_before_training(tmp_path, capsys):
    from synthetic import write_case_table
    from training.fit import main

    cases = write_case_table(tmp_path / "data", n=24, size=48, seed=6)
    rc = main(
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
            f"localiser.path={tmp_path / 'nowhere'}",
        ]
    )
    assert rc == 2 and "not a localiser folder" in capsys.readouterr().err
    assert not (tmp_path / "run" / "jobs").exists(), "no member job ran"
