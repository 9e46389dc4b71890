"""``python -m training throughput``: training img/s per member, plain loop vs ours, same run.

- plain: every step decodes and crops its images from disk, builds an fp32 NCHW batch,
  no channels_last, no autocast, no compile - what a straightforward script does;
- ours: the fit path - inputs from the per-run uint8 cache, channels_last, and on CUDA bf16
  autocast + torch.compile.

Both run the same number of optimiser steps on the same images after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any


from model_zoo import imaging, preprocess
from model_zoo.cli_logging import setup_cli_logging
from model_zoo.errors import ZooError
from training import fit_members
from training.config import load_config

LOG = logging.getLogger(__name__)


def _step_plain(model: Any, optim: Any, spec: Any, rows: list[Any], y: Any) -> None:
    import torch
    import torch.nn.functional as F

    from training.fit import row_box

    xs = []
    for row in rows:
        image = imaging.load_image(row["image_path"])
        h, w = image.pixels.shape
        x, _, _ = preprocess.member_input(spec, image.pixels, row_box(row, (w, h)))
        xs.append(x)
    loss = F.binary_cross_entropy_with_logits(model(torch.cat(xs)).reshape(-1), y)
    optim.zero_grad()
    loss.backward()
    optim.step()


def measure(cfg: dict[str, Any], *, n_images: int = 64, steps: int = 3) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from training.data import data_fingerprint, load_cases
    from training.fit import build_input_cache, member_specs

    cfg = dict(cfg)
    cfg["data"] = dict(cfg["data"], max_cases=max(n_images, 8))
    cfg["stacker"] = dict(cfg["stacker"], score_source="holdout")
    frame = load_cases(cfg, log=lambda *_: None)
    batch = min(int(cfg["train"]["batch_size"]), len(frame))
    rows = [frame.iloc[i] for i in range(batch)]
    y = torch.tensor(frame["label"].to_numpy()[:batch], dtype=torch.float32)
    cuda = torch.cuda.is_available()
    results = []
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        fingerprint = data_fingerprint(frame)
        for spec in member_specs(cfg):
            # plain fp32 loop
            model = spec.build_model().train()
            optim = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            _step_plain(model, optim, spec, rows, y)  # warm-up
            t0 = time.perf_counter()
            for _ in range(steps):
                _step_plain(model, optim, spec, rows, y)
            plain = steps * batch / (time.perf_counter() - t0)

            # ours: cached inputs, channels_last, AMP/compile on CUDA
            t_cache = time.perf_counter()
            cache = build_input_cache(frame.iloc[:batch], spec, Path(tmp), fingerprint + spec.member_id, progress=False)
            cache_s = time.perf_counter() - t_cache
            device = torch.device("cuda" if cuda else "cpu")
            model = spec.build_model().train().to(device).to(memory_format=torch.channels_last)
            run = torch.compile(model) if cuda else model
            optim = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            mean, std = fit_members.channel_stats(cache)
            yd = y.to(device)

            def step() -> None:
                x = fit_members.to_batch(cache, mean, std, device, True)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
                    out = run(x).float().reshape(-1)
                loss = F.binary_cross_entropy_with_logits(out, yd)
                optim.zero_grad()
                loss.backward()
                optim.step()

            step()
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            if cuda:
                torch.cuda.synchronize()
            ours = steps * batch / (time.perf_counter() - t0)
            results.append(
                {
                    "member": spec.member_id,
                    "arch": spec.arch,
                    "input_size": spec.input_size,
                    "batch": batch,
                    "plain_img_s": round(plain, 2),
                    "ours_img_s": round(ours, 2),
                    "speedup": round(ours / plain, 2),
                    "cache_build_s_per_img": round(cache_s / batch, 4),
                    "device": "cuda" if cuda else "cpu",
                    "threads": torch.get_num_threads(),
                }
            )
    return results


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    p = argparse.ArgumentParser(prog="python -m training throughput", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="cpu")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        for row in measure(cfg, steps=args.steps):
            print(json.dumps(row), flush=True)
    except ZooError as err:
        LOG.error(f"error: {err}")
        return 2
    return 0
