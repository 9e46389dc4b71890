"""Run by test_fit_members.test_ddp_ranks_agree under torchrun (2 CPU processes, gloo)."""

import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from model_zoo.members import family_spec
from training import fit_members

rng = np.random.default_rng(0)
x = rng.integers(0, 255, (32, 32, 32), dtype=np.uint8)
y = np.arange(32) % 2
cfg = {"epochs": 2, "batch_size": 8, "lr": 0.01, "lr_step": 5, "hflip": True, "vflip": True, "channels_last": False}
res = fit_members.train_member(
    family_spec("vit", variant="tiny", input_size=32),
    x[:24],
    y[:24],
    x[24:],
    y[24:],
    cfg,
    work_dir=Path(sys.argv[1]),
    seed=3,
    progress=False,
)
checksum = sum(float(v.double().sum()) for v in res.state_dict.values())
print(f"RANK {dist.get_rank()} WORLD {dist.get_world_size()} CHECKSUM {checksum:.6f}", flush=True)
dist.destroy_process_group()
