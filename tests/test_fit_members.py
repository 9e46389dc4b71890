"""The member training loop: determinism, resume after interruption, init weights, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_zoo.errors import InputError
from model_zoo.members import family_spec, load_init_weights
from training import fit_members
from training.config import load_config

TRAIN_CFG = {
    "epochs": 3,
    "batch_size": 8,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_step": 2,
    "lr_gamma": 0.1,
    "hflip": True,
    "vflip": True,
    "channels_last": True,
}


def _data(n: int = 24, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
    y = (np.arange(n) % 2).astype(np.int64)
    x[y == 1, 8:16, 8:16] = 250
    return x, y


def _train(tmp_path, name: str, epochs: int, **kw):
    spec = family_spec("efficientnet_b3", variant="tiny", input_size=32)
    x, y = _data()
    cfg = dict(TRAIN_CFG, epochs=epochs)
    return fit_members.train_member(
        spec, x[:16], y[:16], x[16:], y[16:], cfg, work_dir=tmp_path / name, seed=7, progress=False, **kw
    )


def test_interrupted_run_resumes_to_same_result(tmp_path):
    full = _train(tmp_path, "full", 3)
    _train(tmp_path, "interrupted", 1)  # "killed" after epoch 1: last.pt stays behind
    assert (tmp_path / "interrupted" / "last.pt").is_file()
    resumed = _train(tmp_path, "interrupted", 3)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.best_epoch == full.best_epoch
    for key, value in full.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[key], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h["train_loss"] for h in resumed.history], [h["train_loss"] for h in full.history], rtol=1e-5)


def test_train_set_normalisation_recorded(tmp_path):
    res = _train(tmp_path, "norm", 1)
    x, _ = _data()
    expected_mean = x[:16].astype(np.float64).mean() / 255
    assert res.spec.mean == pytest.approx((expected_mean,) * 3)
    assert res.spec.std[0] == pytest.approx(x[:16].astype(np.float64).std() / 255)
    assert (tmp_path / "norm" / "log.csv").read_text().startswith("epoch,lr,train_loss,val_loss,val_auc")


def test_best_checkpoint_is_best_val_auc(tmp_path):
    res = _train(tmp_path, "best", 3)
    aucs = [h["val_auc"] for h in res.history]
    assert res.best_val_auc == pytest.approx(max(aucs))
    assert res.history[res.best_epoch - 1]["val_auc"] == pytest.approx(max(aucs))


def test_step_decay_schedule(tmp_path):
    res = _train(tmp_path, "lr", 3)
    assert [h["lr"] for h in res.history] == pytest.approx([0.01, 0.001, 0.001])


def test_init_weights_from_local_file(tmp_path):
    from safetensors.torch import save_file

    spec = family_spec("vit", variant="tiny", input_size=64)
    source = spec.build_model()
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["head.weight"] = torch.zeros(1000, state["head.weight"].shape[1])  # an ImageNet-style head
    state["head.bias"] = torch.zeros(1000)
    path = tmp_path / "init.safetensors"
    save_file(state, str(path))
    target = spec.build_model()
    report = load_init_weights(target, path)
    assert "head.weight" in report["skipped"] and "head.weight" in report["missing"]
    torch.testing.assert_close(target.state_dict()["pos_embed"], source.state_dict()["pos_embed"])
    with pytest.raises(InputError, match="not found"):
        load_init_weights(target, tmp_path / "nope.pt")


def test_config_inheritance_and_overrides():
    cfg = load_config("cpu", ["train.epochs=3", "members.families=[vit]"])
    assert cfg["train"]["epochs"] == 3 and cfg["members"]["families"] == ["vit"]
    assert cfg["train"]["momentum"] == 0.9  # inherited from paper.yaml
    paper = load_config("paper")
    assert (
        paper["members"]["input_size"],
        paper["train"]["lr"],
        paper["train"]["lr_step"],
        paper["train"]["epochs"],
        paper["train"]["batch_size"],
    ) == (224, 0.1, 30, 100, 128)
    with pytest.raises(InputError, match="unknown key"):
        load_config("cpu", ["train.epochz=3"])
    with pytest.raises(InputError, match="not found"):
        load_config("no-such-config")


def test_ddp_ranks_agree(tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks end with identical weights."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            str(repo / "tests" / "ddp_worker.py"),
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = dict(re.findall(r"RANK (\d) WORLD 2 CHECKSUM (\S+)", proc.stdout))
    assert set(found) == {"0", "1"} and found["0"] == found["1"]
    assert (tmp_path / "ddp" / "log.csv").is_file()  # rank 0 writes the log


# ----------------------------------------------------------------------------- opt-in recipe


def test_affine_identity_is_exact_and_rotation_matches_numpy(monkeypatch):
    """Zero-strength affine jitter returns the batch unchanged; a forced 90-degree rotation
    (no zoom/shift) is an exact pixel permutation equal to np.rot90 (independent reference)."""
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    same = fit_members._affine_jitter(x, torch.Generator().manual_seed(0), 0.0, (1.0, 1.0), 0.0)
    torch.testing.assert_close(same, x, rtol=0, atol=1e-5)
    assert same.is_contiguous(memory_format=torch.channels_last)

    real_ones = torch.ones
    monkeypatch.setattr(torch, "rand", lambda *shape, generator=None, **kw: real_ones(*shape))  # draw = 1 -> +degrees
    rotated = fit_members._affine_jitter(x, None, 90.0, (1.0, 1.0), 0.0)
    np.testing.assert_allclose(rotated.numpy(), np.rot90(x.numpy(), k=1, axes=(2, 3)), atol=1e-5)


def test_augment_batch_is_seeded_and_off_by_default():
    x = torch.randn(4, 3, 16, 16)
    cfg = {"hflip": False, "vflip": False}
    torch.testing.assert_close(fit_members.augment_batch(x.clone(), torch.Generator().manual_seed(1), cfg), x)
    cfg = {"affine": {"degrees": 10, "scale": [0.9, 1.1], "translate": 0.05}, "intensity": {"brightness": 0.1, "contrast": 0.1}}
    a = fit_members.augment_batch(x.clone(), torch.Generator().manual_seed(1), cfg)
    b = fit_members.augment_batch(x.clone(), torch.Generator().manual_seed(1), cfg)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, x)


def test_cosine_schedule_with_warmup_matches_formula():
    import math

    cfg = {"lr": 0.5, "epochs": 10, "schedule": "cosine", "warmup_epochs": 2, "optimizer": "adamw", "weight_decay": 0.01}
    opt = fit_members.make_optimizer(torch.nn.Linear(2, 1).parameters(), cfg)
    assert isinstance(opt, torch.optim.AdamW)
    sched = fit_members.make_scheduler(opt, cfg)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5 * (e + 1) / 3 for e in range(2)] + [0.5 * 0.5 * (1 + math.cos(math.pi * (e - 2) / 8)) for e in range(2, 10)]
    np.testing.assert_allclose(seen, expected, rtol=1e-9)


@pytest.mark.parametrize("key, value, words", [("optimizer", "rmsprop", "sgd or adamw"), ("schedule", "poly", "step or cosine")])
def test_unknown_recipe_names_are_refused(key, value, words):
    cfg = dict(TRAIN_CFG, **{key: value})
    with pytest.raises(ValueError, match=words):
        opt = fit_members.make_optimizer(torch.nn.Linear(2, 1).parameters(), cfg)
        fit_members.make_scheduler(opt, cfg)


def test_adamw_cosine_recipe_trains_and_resumes(tmp_path):
    """The opt-in recipe goes through the same resumable loop: interrupted == uninterrupted."""
    recipe = {
        "optimizer": "adamw",
        "lr": 0.003,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "affine": {"degrees": 8, "scale": [0.9, 1.1], "translate": 0.05},
        "intensity": {"brightness": 0.1, "contrast": 0.1},
    }
    spec = family_spec("vit", variant="tiny", input_size=32)
    x, y = _data()

    cfg = dict(TRAIN_CFG, **recipe, epochs=3)

    def run(name: str, **kw):
        return fit_members.train_member(
            spec, x[:16], y[:16], x[16:], y[16:], cfg, work_dir=tmp_path / name, seed=3, progress=False, **kw
        )

    full = run("full")
    assert all(np.isfinite(h["train_loss"]) for h in full.history)

    def killed_after_epoch_1(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("interrupted", on_epoch=killed_after_epoch_1)
    resumed = run("interrupted")
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose([h["lr"] for h in resumed.history], [h["lr"] for h in full.history])
    for key, value in full.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[key], value, rtol=1e-5, atol=1e-6)
