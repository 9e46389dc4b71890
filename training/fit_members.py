"""One training loop for every timm member: cached inputs, SGD + step decay, best-val checkpoint.

Opt-in departures from the paper (off in paper.yaml, named in the manifest via the config):
``train.optimizer: adamw``, ``train.schedule: cosine`` (+ ``warmup_epochs``), ``train.affine``
and ``train.intensity`` augmentation.

The paper's recipe: BCE on one logit, SGD (lr 0.1, momentum 0.9), lr /10 every 30 epochs,
random horizontal/vertical flips, inputs normalised with the training set's mean/std, the
checkpoint with the best validation AUC kept. Every value comes from the ``train`` section
of the config.

Speed: decoded, cropped, resized inputs are computed once per run (``build_input_cache``)
and kept as one uint8 array per (input size, ROI margin); channels_last memory format;
bf16 autocast and ``torch.compile`` on CUDA; DDP when launched by ``torchrun`` (gradients
all-reduced, each rank takes a strided shard of every epoch's permutation).

Resume: after every epoch ``last.pt`` (model, optimizer, scheduler, RNG, history) is
written atomically; a killed job restarts from the last finished epoch and, the RNG state
being restored, follows the same trajectory as an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.special import expit

from model_zoo.auc import roc_auc
from model_zoo.members import MemberSpec, load_init_weights
from model_zoo.zoo import atomic_write_bytes

LOG = logging.getLogger(__name__)


@dataclass
class MemberResult:
    spec: MemberSpec  # with the training set's mean/std filled in
    state_dict: dict[str, Any]
    best_epoch: int
    best_val_auc: float
    history: list[dict[str, float]]
    images_per_second: float


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) when launched by torchrun, else (0, 1)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        import torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def channel_stats(images_u8: np.ndarray) -> tuple[float, float]:
    """Mean and std of a uint8 image stack, in [0, 1] units (the paper's train-set normalisation)."""
    x = images_u8.astype(np.float64) / 255.0
    return float(x.mean()), float(max(x.std(), 1e-3))


def to_batch(
    images_u8: Any, mean: float | tuple[float, ...], std: float | tuple[float, ...], device: Any, channels_last: bool
) -> Any:
    """Normalised (N, 3, S, S) float batch from uint8 crops (a numpy array or a uint8 tensor,
    e.g. the training set already held on the GPU)."""
    import torch

    if isinstance(images_u8, np.ndarray):
        images_u8 = torch.from_numpy(np.ascontiguousarray(images_u8))
    # uint8 crosses to the device first (4x fewer bytes than float32), then converts there.
    x = images_u8.to(device=device).to(torch.float32).div_(255.0)
    mean3 = np.broadcast_to(np.asarray(mean, np.float32), (3,))
    std3 = np.broadcast_to(np.asarray(std, np.float32), (3,))
    if (mean3 == mean3[0]).all() and (std3 == std3[0]).all():  # grey replicated: one value
        x = x.sub_(float(mean3[0])).div_(float(std3[0])).unsqueeze(1).expand(-1, 3, -1, -1)
    else:  # per-channel (a pretrained start's own normalisation)
        m = torch.as_tensor(mean3.copy(), device=device).reshape(1, 3, 1, 1)
        s = torch.as_tensor(std3.copy(), device=device).reshape(1, 3, 1, 1)
        x = (x.unsqueeze(1) - m) / s
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    return x


def _flip(x: Any, generator: Any, hflip: bool, vflip: bool) -> Any:
    """Random per-sample horizontal/vertical flips, driven by a seeded generator."""
    import torch

    n = x.shape[0]
    if hflip:
        mask = torch.rand(n, generator=generator) < 0.5
        if mask.any():
            x[mask] = x[mask].flip(-1)
    if vflip:
        mask = torch.rand(n, generator=generator) < 0.5
        if mask.any():
            x[mask] = x[mask].flip(-2)
    return x


def _affine_jitter(x: Any, generator: Any, degrees: float, scale: tuple[float, float], translate: float) -> Any:
    """Random per-sample rotation/zoom/shift (reflection padding), driven by a seeded generator.

    Radiograph ROIs vary in position inside the box, size and orientation; the paper's
    flips cover only the last. Works on the normalised batch, so it is one grid_sample.
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    zoom = scale[0] + torch.rand(n, generator=generator) * (scale[1] - scale[0])
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate * 2  # grid units span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(
        x.device, x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    keep_layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return out.contiguous(memory_format=keep_layout)


def _intensity_jitter(x: Any, generator: Any, brightness: float, contrast: float) -> Any:
    """Random per-sample contrast (multiplicative) and brightness (additive, in std units)."""
    import torch

    n = x.shape[0]
    c = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * contrast
    b = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * brightness
    return x * c.to(x.device, x.dtype) + b.to(x.device, x.dtype)


def augment_batch(x: Any, generator: Any, train_cfg: dict[str, Any]) -> Any:
    """All training-time augmentation the config asks for (flips always, affine/intensity opt-in)."""
    x = _flip(x, generator, train_cfg.get("hflip", True), train_cfg.get("vflip", True))
    affine = train_cfg.get("affine") or None
    if affine:
        x = _affine_jitter(
            x,
            generator,
            float(affine.get("degrees", 0.0)),
            tuple(affine.get("scale", (1.0, 1.0))),
            float(affine.get("translate", 0.0)),
        )
    intensity = train_cfg.get("intensity") or None
    if intensity:
        x = _intensity_jitter(x, generator, float(intensity.get("brightness", 0.0)), float(intensity.get("contrast", 0.0)))
    return x


def make_optimizer(params: Any, train_cfg: dict[str, Any]) -> Any:
    """SGD with momentum (the paper) or AdamW (`train.optimizer: adamw`, for from-scratch transformers)."""
    import torch

    name = str(train_cfg.get("optimizer", "sgd")).lower()
    lr, wd = float(train_cfg["lr"]), float(train_cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(train_cfg.get("momentum", 0.9)), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"train.optimizer must be sgd or adamw, not {name!r}")


def make_scheduler(optimizer: Any, train_cfg: dict[str, Any]) -> Any:
    """Per-epoch schedule: the paper's step decay, or linear warm-up then cosine to zero."""
    import torch

    name = str(train_cfg.get("schedule", "step")).lower()
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=int(train_cfg["lr_step"]), gamma=float(train_cfg.get("lr_gamma", 0.1))
        )
    if name == "cosine":
        epochs = max(1, int(train_cfg["epochs"]))
        warmup = max(0, int(train_cfg.get("warmup_epochs", 0)))

        def factor(epoch: int) -> float:  # multiplier for the epoch about to run
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(1, epochs - warmup)
            return 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ValueError(f"train.schedule must be step or cosine, not {name!r}")


def predict_logits(
    model: Any,
    images_u8: np.ndarray,
    mean: float | tuple[float, ...],
    std: float | tuple[float, ...],
    *,
    batch_size: int = 64,
    device: Any = "cpu",
    channels_last: bool = False,
    amp: bool = False,
) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images_u8), batch_size):
            x = to_batch(images_u8[start : start + batch_size], mean, std, device, channels_last)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                out.append(model(x).float().reshape(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def train_member(
    spec: MemberSpec,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    train_cfg: dict[str, Any],
    *,
    work_dir: Path,
    seed: int,
    init_path: str | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    stop_at: float | None = None,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> MemberResult:
    """Train one member on cached uint8 crops (N, S, S); resumable from ``work_dir/last.pt``.

    ``stop_at`` (a ``time.time()`` value) ends training after the first epoch that finishes
    past it; ``len(result.history)`` then says how many of the configured epochs ran.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    rank, world = distributed_context()
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
    amp = cuda and train_cfg.get("amp", "auto") in ("auto", True)
    use_compile = cuda and train_cfg.get("compile", "auto") in ("auto", True)
    channels_last = bool(train_cfg.get("channels_last", True))

    work_dir.mkdir(parents=True, exist_ok=True)
    if normalisation is None:  # the paper: the training set's own mean/std
        m, s = channel_stats(train_x)
        spec = spec.replace(mean=(m,) * 3, std=(s,) * 3)
    else:  # a pretrained start keeps the normalisation its weights were trained with
        spec = spec.replace(mean=tuple(normalisation[0]), std=tuple(normalisation[1]))
    mean, std = spec.mean, spec.std

    torch.manual_seed(seed)
    model = spec.build_model()
    if init_path:
        load_init_weights(model, init_path)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if use_compile:
        train_model = torch.compile(train_model)

    optimizer = make_optimizer(model.parameters(), train_cfg)
    scheduler = make_scheduler(optimizer, train_cfg)
    generator = torch.Generator().manual_seed(seed)
    epochs, batch_size = int(train_cfg["epochs"]), int(train_cfg["batch_size"])
    grad_clip = train_cfg.get("grad_clip")
    history: list[dict[str, float]] = []
    best = {"auc": -1.0, "loss": math.inf, "epoch": -1, "state": None}
    start_epoch = 0

    last_path = work_dir / "last.pt"
    if last_path.is_file():
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        history, best, start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1

    pos_weight = None
    if train_cfg.get("balance_classes", False) and train_y.sum() > 0:
        pos_weight = torch.tensor(float((train_y == 0).sum() / train_y.sum()), device=device)
    y_all = torch.from_numpy(train_y.astype(np.float32))
    # On a GPU the whole uint8 training set (~50 MB at 224 px for 1,000 crops) lives on the
    # device, so a step costs no host-to-device copy.
    train_source = torch.from_numpy(train_x).to(device) if cuda else train_x
    checkpoint_every = max(1, int(train_cfg.get("checkpoint_every", 1)))
    seen, seconds = 0, 0.0
    for epoch in range(start_epoch, epochs):
        train_model.train()
        order = torch.randperm(len(train_x), generator=generator)
        order = order[rank::world]  # DDP: each rank a strided shard of one shared permutation
        n_batches = max(1, math.ceil(len(order) / batch_size))
        bar = tqdm(
            range(n_batches), desc=f"{spec.member_id} ep {epoch + 1}/{epochs}", disable=not progress or rank != 0, leave=False
        )
        total_loss, count = 0.0, 0
        t0 = time.perf_counter()
        for b in bar:
            idx = order[b * batch_size : (b + 1) * batch_size].numpy()
            if len(idx) < 2 and n_batches > 1:
                continue  # a batch of 1 breaks BatchNorm; drop the remainder
            x = to_batch(
                train_source[torch.from_numpy(idx).to(device)] if cuda else train_source[idx], mean, std, device, channels_last
            )
            x = augment_batch(x, generator, train_cfg)
            y = y_all[idx].to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                logits = train_model(x).float().reshape(-1)
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
            optimizer.step()
            total_loss += loss.item() * len(idx)
            count += len(idx)
            bar.set_postfix(loss=f"{total_loss / max(count, 1):.4f}")
        seconds += time.perf_counter() - t0
        seen += count
        scheduler.step()

        val_logits = predict_logits(model, val_x, mean, std, device=device, channels_last=channels_last, amp=amp)
        val_p = expit(val_logits.astype(np.float64))
        val_auc = roc_auc(val_y, val_p)
        eps = 1e-7
        val_loss = (
            float(-np.mean(val_y * np.log(val_p + eps) + (1 - val_y) * np.log(1 - val_p + eps))) if len(val_y) else float("nan")
        )
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": total_loss / max(count, 1),
            "val_loss": val_loss,
            "val_auc": val_auc,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"{spec.member_id}: training loss diverged at epoch {epoch + 1}; lower train.lr")
        score = val_auc if math.isfinite(val_auc) else -val_loss
        if score > best["auc"] or (score == best["auc"] and val_loss < best["loss"]):
            best = {
                "auc": score,
                "loss": val_loss,
                "epoch": epoch + 1,
                "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
        if progress and rank == 0:
            LOG.info(
                f"  {spec.member_id} epoch {epoch + 1}/{epochs} loss {row['train_loss']:.4f} "
                f"val_loss {val_loss:.4f} val_auc {val_auc:.4f}"
            )
        out_of_time = stop_at is not None and time.time() >= stop_at
        if rank == 0:
            write_log(work_dir / "log.csv", history)
        if rank == 0 and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs or out_of_time):
            save_checkpoint(
                last_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best": best,
                    "epoch": epoch,
                },
            )
        if on_epoch:
            on_epoch(row)
        if out_of_time and epoch + 1 < epochs:
            if progress and rank == 0:
                LOG.info(f"  {spec.member_id}: time limit reached after epoch {epoch + 1}/{epochs}")
            break

    if best["state"] is None:  # zero epochs requested: keep the initial weights
        best = {
            "auc": float("nan"),
            "loss": float("nan"),
            "epoch": 0,
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        }
    return MemberResult(
        spec=spec,
        state_dict=best["state"],
        best_epoch=int(best["epoch"]),
        best_val_auc=float(best["auc"]),
        history=history,
        images_per_second=seen / seconds if seconds > 0 else float("nan"),
    )


def write_log(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())


def build_model_from_state(spec: MemberSpec, state: dict[str, Any]) -> Any:
    model = spec.build_model()
    model.load_state_dict(state)
    return model.eval()
