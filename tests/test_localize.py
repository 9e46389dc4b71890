"""Localiser: box extraction maths and a tiny end-to-end train -> write -> load -> propose."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_zoo.localize import LocaliserSpec, build_unet, load_localiser, mask_to_box
from model_zoo.manifest import LocaliserInfo
from training.fit_localiser import box_metrics, main, mask_box
from synthetic import write_case_table


def test_mask_to_box_unions_regions_above_threshold():
    prob = np.zeros((32, 32))
    prob[2:5, 3:7] = 0.9  # lesion A: x 3..6, y 2..4
    prob[20:30, 10:12] = 0.8  # lesion B: x 10..11, y 20..29
    prob[31, 31] = 0.95  # a 1-pixel speck, below min_area
    box, found = mask_to_box(prob, threshold=0.5, min_area=2)
    assert found and box == (3.0, 2.0, 12.0, 30.0)


def test_mask_to_box_falls_back_to_peak_region():
    prob = np.full((16, 16), 0.05)
    prob[4:8, 9:12] = 0.3
    prob[5, 10] = 0.4
    box, found = mask_to_box(prob, threshold=0.5, min_area=1)
    assert not found and box == (9.0, 4.0, 12.0, 8.0)


def test_mask_box_and_metrics():
    mask = np.zeros((10, 10), bool)
    assert mask_box(mask) is None
    mask[2:4, 5:9] = True
    assert mask_box(mask) == (5.0, 2.0, 9.0, 4.0)
    m = box_metrics([(5, 2, 9, 4), (0, 0, 1, 1)], [(5, 2, 9, 4), (0, 0, 2, 2)])
    assert m["mean_iou"] == pytest.approx((1 + 0.25) / 2) and m["frac_iou_gt_0_3"] == 0.5


def test_unet_shapes():
    import torch

    model = build_unet(LocaliserSpec(input_size=32, base_channels=4))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError):
        build_unet(LocaliserSpec(input_size=30))


def test_train_write_load_propose(tmp_path):
    cases = write_case_table(tmp_path / "data", n=30, size=64, seed=3)
    out = tmp_path / "loc"
    assert main(["--cases", str(cases), "--out", str(out), "--epochs", "2", "--input-size", "32", "--batch-size", "8"]) == 0
    entry = json.loads((out / "localiser.json").read_text())
    assert entry["metrics"]["test"]["n_lesion"] > 0
    assert 0.0 <= entry["metrics"]["test"]["mean_iou"] <= 1.0
    assert entry["metrics"]["seconds_per_image_median"] < 0.5
    # the release stores weights under localiser/: emulate that layout
    release = tmp_path / "release"
    (release / "localiser").mkdir(parents=True)
    (release / "localiser" / "localiser.safetensors").write_bytes((out / "localiser.safetensors").read_bytes())
    localiser = load_localiser(release, LocaliserInfo.from_dict(entry))
    pixels = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    proposal = localiser.propose(pixels)
    x0, y0, x1, y1 = proposal.box
    assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 64
    assert 0.0 <= proposal.confidence <= 1.0
    assert main(["--cases", str(cases), "--out", str(out)]) == 2  # never overwrites
    # re-scoring with the current post-processing reproduces the split and the metrics
    assert main(["--cases", str(cases), "--out", str(tmp_path / "loc2"), "--rescore", str(out)]) == 0
    again = json.loads((tmp_path / "loc2" / "localiser.json").read_text())
    assert again["metrics"]["splits"] == entry["metrics"]["splits"]
    assert again["metrics"]["test"]["mean_iou"] == pytest.approx(entry["metrics"]["test"]["mean_iou"])


def test_init_continues_from_a_trained_localiser(tmp_path):
    from safetensors.torch import load_file

    cases = write_case_table(tmp_path / "data", n=30, size=64, seed=4)
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        main(
            [
                "--cases",
                str(cases),
                "--out",
                str(first),
                "--epochs",
                "1",
                "--input-size",
                "32",
                "--base-channels",
                "4",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    # lr 0: AdamW leaves the learned weights as loaded, so they must equal the first run's.
    # The width and input size come from --init, not from the (different) defaults.
    assert (
        main(
            ["--cases", str(cases), "--out", str(second), "--init", str(first), "--epochs", "1", "--lr", "0", "--batch-size", "8"]
        )
        == 0
    )
    a, b = load_file(str(first / "localiser.safetensors")), load_file(str(second / "localiser.safetensors"))
    learned = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert set(a) == set(b) and learned
    for k in learned:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    entry = json.loads((second / "localiser.json").read_text())
    assert entry["spec"]["base_channels"] == 4 and entry["spec"]["input_size"] == 32
    assert entry["metrics"]["init"] == str(first) and entry["metrics"]["epochs_planned"] == 1
    assert main(["--cases", str(cases), "--out", str(tmp_path / "third"), "--init", str(tmp_path)]) == 2
