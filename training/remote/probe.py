"""Time one training step of each gpu-profile member alone on this machine (batch, input
size, bf16 and channels_last as in fit) and print the fit overrides for the most epochs and
folds whose estimated sequential training time fits the budget in seconds (argv[1]).
Extra config overrides: argv[2:]. The estimate is on stderr."""

import json
import sys
import time

import torch
import torch.nn.functional as F

from training.config import load_config
from training.fit import member_specs

budget = float(sys.argv[1])
cfg = load_config("gpu", sys.argv[2:])
cuda = torch.cuda.is_available()
device = torch.device("cuda" if cuda else "cpu")
batch, size = int(cfg["train"]["batch_size"]), int(cfg["members"]["input_size"])
torch.backends.cudnn.benchmark = True
rates = {}
for spec in member_specs(cfg):
    model = spec.build_model().to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, device=device) > 0.5).float()

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            out = model(x).float().reshape(-1)
        loss = F.binary_cross_entropy_with_logits(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 6 if cuda else 1
    for _ in range(n):
        step()
    if cuda:
        torch.cuda.synchronize()
    rates[spec.member_id] = n * batch / (time.perf_counter() - t0)
# Training crops: the train split (7/10 of the cases by default); each member trains
# (folds - 1)/folds of them per fold job plus all of them once = folds x per epoch.
from training.data import load_cases  # noqa: E402

frame = load_cases(cfg, log=lambda *_: None)
n_train = int((frame["split"] == "train").sum())
overhead = 1.15  # per-epoch validation, logging, checkpoints: an assumed margin, not measured
choice = None
for epochs, folds in [(100, 5), (100, 3), (80, 3), (60, 3), (50, 3), (40, 3), (30, 3), (20, 3), (10, 3)]:
    est = overhead * sum(epochs * n_train * folds / r for r in rates.values())
    if est <= budget or epochs == 10:
        choice = (epochs, folds, est)
        break
print(
    json.dumps(
        {
            "img_per_s": {k: round(v, 1) for k, v in rates.items()},
            "epochs": choice[0],
            "folds": choice[1],
            "estimated_s": round(choice[2]),
            "budget_s": budget,
        }
    ),
    file=sys.stderr,
)
print(f"train.epochs={choice[0]} stacker.folds={choice[1]}")
