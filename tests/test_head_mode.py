"""``train.trainable: head``: frozen starts, a linear head fitted on a shared feature bank.

A tiny random network saved as a 'converted start' (safetensors + provenance JSON with its own
mean/std) stands in for the ImageNet weights, so this runs without the weight packages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model_zoo.errors import InputError
from model_zoo.members import family_spec

pytestmark = pytest.mark.slow

START_MEAN, START_STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)


def _fake_start(folder: Path, family: str) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = family_spec(family, variant="tiny", input_size=64).build_model()
    path = folder / f"{family}.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"name": family, "mean": START_MEAN, "std": START_STD, "licence": "test"}))
    return path


def _fit_with_starts(tmp_path: Path, seed: int, *overrides: str) -> tuple[Path, dict, dict[str, Path]]:
    """Fit a tiny zoo (EfficientNet + ViT) from fake converted starts with their own
    normalisation; returns (release, verified manifest, family -> start file)."""
    from synthetic import write_case_table

    from model_zoo.zoo import verify_release
    from training.fit import main as fit_main

    cases = write_case_table(tmp_path / "data", n=40, size=96, seed=seed)
    starts = {f: _fake_start(tmp_path / "starts", f) for f in ("efficientnet_b3", "vit")}
    argv = [
        "--config",
        "tiny",
        "--quiet",
        "--cases",
        str(cases),
        "--out",
        str(tmp_path / "zoo"),
        "--run-dir",
        str(tmp_path / "run"),
        "members.families=[efficientnet_b3, vit]",
        "members.normalisation=init",
        *overrides,
    ]
    argv += [f"--init={f}={p}" for f, p in starts.items()]
    assert fit_main(argv) == 0
    release = next(p for p in (tmp_path / "zoo").iterdir() if not p.name.startswith("."))
    return release, verify_release(release).to_dict(), starts


def test_views_are_pure_and_named():
    from training.fit_heads import apply_view, view_names

    crops = np.random.default_rng(0).integers(0, 255, (3, 16, 16), dtype=np.uint8)
    assert view_names({}) == ["id", "h", "v", "hv"]
    assert view_names({"vflip": False, "resolution_jitter": [0.5]}) == ["id", "h", "blur0.5"]
    np.testing.assert_array_equal(apply_view(crops, "h"), crops[:, :, ::-1])
    np.testing.assert_array_equal(apply_view(crops, "hv"), crops[:, ::-1, ::-1])
    blurred = apply_view(crops, "blur0.5")
    assert blurred.shape == crops.shape and not np.array_equal(blurred, crops)
    # blurring removes high-frequency energy (pixel-to-pixel differences)
    assert np.abs(np.diff(blurred.astype(float), axis=-1)).mean() < np.abs(np.diff(crops.astype(float), axis=-1)).mean()
    with pytest.raises(InputError):
        view_names({"resolution_jitter": [1.5]})


def test_acquisition_views_match_independent_references():
    from training.fit_heads import apply_view, view_names

    rng = np.random.default_rng(1)
    crops = rng.integers(40, 216, (4, 32, 32), dtype=np.uint8)
    assert view_names({"hflip": False, "vflip": False, "acquisition_views": ["gamma0.7", "rot10", "gamma0.7"]}) == [
        "id",
        "gamma0.7",
        "rot10",
    ]
    for bad in (["sharpen2"], ["gamma0"], ["zoom1.5"], ["rot90"], ["noisex"]):
        with pytest.raises(InputError):
            view_names({"acquisition_views": bad})

    # exposure curve, pixel by pixel in float
    expected = np.round(255 * (crops / 255.0) ** 0.7).astype(np.uint8)
    np.testing.assert_array_equal(apply_view(crops, "gamma0.7"), expected)
    # contrast about each crop's mean: mean kept, spread scaled (no clipping in this value range)
    c = apply_view(crops, "contrast1.2").astype(float)
    np.testing.assert_allclose(c.mean(axis=(1, 2)), crops.mean(axis=(1, 2)), atol=0.5)
    np.testing.assert_allclose(c.std(axis=(1, 2)), 1.2 * crops.std(axis=(1, 2)), rtol=0.02)
    # noise: same on every call, zero-mean, the requested spread
    n1, n2 = apply_view(crops, "noise6"), apply_view(crops, "noise6")
    np.testing.assert_array_equal(n1, n2)
    diff = n1.astype(float) - crops
    assert abs(diff.mean()) < 0.3 and abs(diff.std() - 6) < 0.3

    # rotation: a bright spot 10 px right of the centre moves by the rotation matrix (counter-clockwise)
    spot = np.zeros((1, 33, 33), np.uint8)
    spot[0, 15:18, 25:28] = 255
    rotated = apply_view(spot, "rot30").astype(float)[0]
    yy, xx = np.mgrid[:33, :33]
    cy, cx = (yy * rotated).sum() / rotated.sum(), (xx * rotated).sum() / rotated.sum()
    a = np.deg2rad(30)
    assert abs(cx - (16 + 10 * np.cos(a))) < 0.5 and abs(cy - (16 - 10 * np.sin(a))) < 0.5
    np.testing.assert_array_equal(apply_view(crops, "rot0"), crops)

    # zoom: the central half fills the crop
    frame = np.zeros((1, 32, 32), np.uint8)
    frame[0, 8:24, 8:24] = 200
    zoomed = apply_view(frame, "zoom0.5")
    assert zoomed.shape == frame.shape and zoomed[0, 2:30, 2:30].min() == 200


def test_head_mode_fit_keeps_the_backbone_and_uses_the_start_normalisation(tmp_path):
    from safetensors.torch import load_file

    from model_zoo.ensemble import load_zoo

    release, manifest, starts = _fit_with_starts(tmp_path, 2, "train.trainable=head", "train.resolution_jitter=[0.5]")
    for entry in manifest["members"]:
        assert entry["trainable"] == "head"
        assert tuple(entry["spec"]["mean"]) == START_MEAN and tuple(entry["spec"]["std"]) == START_STD
        assert entry["init_provenance"]["licence"] == "test"
        family = entry["spec"]["family"]
        start = load_file(str(starts[family]))
        shipped = load_file(str(release / entry["weights"]))
        changed = [k for k in start if not torch.equal(start[k], shipped[k])]
        # only the classifier moved: the backbone is the start, tensor for tensor
        assert changed and all(k.startswith(("classifier.", "head.")) for k in changed), changed
    zoo = load_zoo(release)
    assert 0.0 <= zoo.predict(np.random.default_rng(0).random((96, 96)), None).p_ensemble <= 1.0


def test_head_mode_refuses_a_member_without_a_start(tmp_path):
    from synthetic import write_case_table

    from training.fit import main as fit_main

    cases = write_case_table(tmp_path / "data", n=24, size=64, seed=2)
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
            "members.families=[vit]",
            "train.trainable=head",
        ]
    )
    assert rc == 2


def test_tail_mode_fine_tunes_only_the_last_blocks(tmp_path):
    """LP-FT: the cached-prefix tail is the network inference runs (fit checks the forward pass),
    and only the last block(s) and the head differ from the start."""
    from safetensors.torch import load_file

    release, manifest, starts = _fit_with_starts(
        tmp_path, 4, "train.trainable=tail", "train.tail_blocks=1", "train.tail_epochs=2", "train.tail_lr=0.01"
    )
    import timm

    for entry in manifest["members"]:
        assert entry["trainable"] == "tail"
        start = load_file(str(starts[entry["spec"]["family"]]))
        shipped = load_file(str(release / entry["weights"]))
        model = timm.create_model(entry["spec"]["arch"], num_classes=1, **entry["spec"]["model_kwargs"])
        last = f"blocks.{len(model.blocks) - 1}."
        changed = [
            k for k in start if k in shipped and not torch.allclose(start[k].float(), shipped[k].float(), rtol=1e-3, atol=1e-5)
        ]  # fp16 storage rounds
        assert changed, "the tail trained"
        assert all(k.startswith((last, "classifier.", "head.", "conv_head.", "bn2.", "norm.")) for k in changed), changed


def test_head_is_not_hostage_to_a_near_constant_feature():
    """A dead channel (tiny variance) must not get a huge folded weight: a 1e-3 change in it,
    the size of uint8 rounding, moves the logit by far less than a typical feature's does."""
    from training.fit_heads import fit_head

    rng = np.random.default_rng(0)
    n, d = 200, 16
    y = (rng.random(n) < 0.4).astype(int)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] += 1.5 * y  # an informative, normally scaled feature
    x[:, 1] = 1e-4 * rng.normal(size=n) + 1e-4 * y  # near-constant, also a little informative
    spec = family_spec("vit", variant="tiny", input_size=32)
    bank = {"id": x}
    idx = np.arange(n)
    import training.fit_heads as H

    real_start = H.start_model
    try:
        H.start_model = lambda spec, init: _head_model(d)
        _, weight, _ = fit_head(spec, "unused", bank, y, idx[:150], idx[150:], {}, seed=0)
    finally:
        H.start_model = real_start
    assert abs(weight[1]) * 1e-3 < 0.1 * abs(weight[0])


def _head_model(d: int):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(d, 1)

        def get_classifier(self):
            return self.head

    return Tiny()


def test_banks_and_prefix_maps_are_cached_per_view(tmp_path):
    """A run that adds a view computes only that view; cached values are the computed ones."""
    from training.fit_heads import feature_bank
    from training.fit_tails import prefix_maps

    start = _fake_start(tmp_path / "starts", "efficientnet_b3")
    spec = family_spec("efficientnet_b3", variant="tiny", input_size=64)
    crops = np.random.default_rng(0).integers(0, 255, (6, 64, 64), dtype=np.uint8)
    rows = np.array([0, 2, 4])
    # a bank holds every row (NaN outside the training rows); prefix maps only the training rows
    for build, new_view_rows in (
        (
            lambda views, log: feature_bank(spec, str(start), crops, views, tmp_path / "c", "k", train_rows=rows, log=log),
            len(crops),
        ),
        (
            lambda views, log: prefix_maps(spec, str(start), crops, views, 2, rows, log=log, cache=(tmp_path / "c", "k")),
            len(rows),
        ),
    ):
        computed: list[str] = []
        first = build(["id", "h"], computed.append)
        assert len(computed) == 2
        computed.clear()
        second = build(["id", "h", "gamma0.7"], computed.append)
        assert len(computed) == 1 and "gamma0.7" in computed[0]
        for view in ("id", "h"):
            np.testing.assert_array_equal(first[view], second[view])
        assert second["gamma0.7"].shape[0] == new_view_rows
