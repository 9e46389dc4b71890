"""``train.trainable: tail``: linear probe, then fine-tune only the last blocks (LP-FT).

Why: frozen ImageNet features transfer to other hospitals better than full fine-tuning on one
centre's ~1,000 crops, but they were never trained on radiographs. Fine-tuning only the last
``train.tail_blocks`` stages (EfficientNet) or transformer blocks (ViT), starting from the fitted
linear head (probe first, then fine-tune: the head does not tear the features apart while it is
still random), adapts the top of the network and keeps the rest of the start.

On 2 CPU cores this is affordable because the frozen prefix is run once per crop and view:
every epoch of every fold job trains the tail on those cached maps. BatchNorm statistics stay
frozen (the whole model runs in eval mode), so a tail trained on cached maps is exactly the
network that inference runs. The best epoch by val AUC is kept (epoch 0 = the probe alone).
"""

from __future__ import annotations

import io
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from model_zoo.auc import roc_auc
from model_zoo.errors import InputError
from model_zoo.members import MemberSpec
from model_zoo.zoo import atomic_write_bytes
from training.fit_heads import IDENTITY, apply_view, fit_head, start_model
from training.fit_members import MemberResult, to_batch

LOG = logging.getLogger(__name__)


def split_model(model: Any, k: int) -> tuple[Callable[[Any], Any], Callable[[Any], Any], list[Any]]:
    """(prefix, tail, tail modules) of a timm EfficientNet or ViT: ``tail(prefix(x)) == model(x)``
    in eval mode; the tail holds the last ``k`` stages/blocks, the head norm/conv and the classifier."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not 0 < k <= len(blocks):
        raise InputError(f"train.tail_blocks={k}: {type(model).__name__} has {len(blocks or [])} blocks")
    cut = len(blocks) - k
    if hasattr(model, "conv_stem"):  # timm EfficientNet

        def prefix(x: Any) -> Any:
            return blocks[:cut](model.bn1(model.conv_stem(x)))

        def tail(h: Any) -> Any:
            return model.forward_head(model.bn2(model.conv_head(blocks[cut:](h))))

        return prefix, tail, [*blocks[cut:], model.conv_head, model.bn2, model.get_classifier()]
    if hasattr(model, "patch_embed"):  # timm VisionTransformer

        def prefix(x: Any) -> Any:
            return blocks[:cut](model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x)))))

        def tail(h: Any) -> Any:
            return model.forward_head(model.norm(blocks[cut:](h)))

        return prefix, tail, [*blocks[cut:], model.norm, model.get_classifier()]
    raise InputError(f"train.trainable=tail supports timm EfficientNet and ViT members, not {type(model).__name__}")


def prefix_maps(
    spec: MemberSpec,
    init_path: str | None,
    crops_u8: np.ndarray,
    views: list[str],
    k: int,
    train_rows: np.ndarray,
    log: Any = LOG.info,
    batch_size: int = 32,
    cache: tuple[Path, str] | None = None,
) -> dict[str, np.ndarray]:
    """View -> float16 prefix outputs: every row for ``id``, training rows for the other views
    (row order of ``train_rows``). float16 halves the memory; the tail computes in float32.
    With ``cache`` = (folder, crops key) each view is kept on disk as .npy (the feature bank's
    naming rule plus ``k``), so --resume and recipe benchmarks do not recompute the prefix."""
    import torch

    from training.fit_heads import require_start, start_views_key

    prefix = None
    out: dict[str, np.ndarray] = {}
    for view in views:
        path = None
        if cache is not None:
            key = start_views_key(spec, require_start(spec, init_path), [view], cache[1])
            path = cache[0] / f"prefix{k}_{spec.member_id}_{key}.npy"
            if path.is_file():
                out[view] = np.load(path)
                continue
        if prefix is None:
            prefix, _, _ = split_model(start_model(spec, init_path).to(memory_format=torch.channels_last), k)
        rows = np.arange(len(crops_u8)) if view == IDENTITY else np.asarray(train_rows)
        log(f"      {spec.member_id}: frozen prefix, view {view} ({len(rows)} crops)")
        crops = apply_view(crops_u8[rows], view)
        parts = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                x = to_batch(crops[start : start + batch_size], spec.mean, spec.std, "cpu", True)
                parts.append(prefix(x).to(torch.float16).contiguous().numpy())
        out[view] = np.concatenate(parts)
        if path is not None:
            buf = io.BytesIO()
            np.save(buf, out[view])
            atomic_write_bytes(path, buf.getvalue())
    return out


def _as_input(maps: np.ndarray) -> Any:
    """float32 tensor of cached maps; CNN maps channels_last (depthwise convs ~8x faster on the CPU)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(maps)).float()
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _tail_logits(tail: Any, maps: np.ndarray, batch_size: int = 64) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(maps), batch_size):
            out.append(tail(_as_input(maps[start : start + batch_size])).reshape(-1).numpy())
    return np.concatenate(out).astype(np.float64)


def fit_tail(
    spec: MemberSpec,
    init_path: str,
    bank: dict[str, np.ndarray],
    maps: dict[str, np.ndarray],
    train_rows: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    train_cfg: dict[str, Any],
    seed: int,
) -> MemberResult:
    """Probe (``fit_head`` on the feature bank), then AdamW on the tail over the cached prefix
    maps of ``train_idx`` (one random view per row and epoch). ``maps`` non-identity views hold
    the rows of ``train_rows`` in that order."""
    import torch
    import torch.nn.functional as F

    k = int(train_cfg.get("tail_blocks", 2))
    probe, _, _ = fit_head(spec, init_path, bank, y, train_idx, val_idx, train_cfg, seed)
    model = start_model(spec, init_path)
    model.load_state_dict(probe.state_dict)
    model = model.to(memory_format=torch.channels_last)
    model.eval()  # frozen BatchNorm statistics and no dropout: the tail trained is the one inferred
    _, tail, modules = split_model(model, k)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    lr = float(train_cfg.get("tail_lr", 1e-4))
    epochs = int(train_cfg.get("tail_epochs", 6))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=float(train_cfg.get("weight_decay", 0.05)))
    batch = int(train_cfg.get("batch_size", 32))
    steps = max(1, epochs * math.ceil(len(train_idx) / batch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    views = list(maps)
    pos_in_train = {int(r): i for i, r in enumerate(train_rows)}
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    y_val = y[val_idx]
    val_maps = maps[IDENTITY][val_idx]

    def snapshot() -> dict[str, Any]:
        return {k2: v.detach().cpu().clone() for k2, v in model.state_dict().items()}

    auc0 = roc_auc(y_val, _tail_logits(tail, val_maps))
    best = (auc0, 0, snapshot())
    history = [{"epoch": 0, "lr": 0.0, "train_loss": float("nan"), "val_loss": float("nan"), "val_auc": auc0, "seconds": 0.0}]
    seen, t_all = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        total, count = 0.0, 0
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            if len(rows) < 2:
                continue
            picks = rng.integers(0, len(views), len(rows))
            x = np.stack(
                [maps[views[v]][r] if views[v] == IDENTITY else maps[views[v]][pos_in_train[int(r)]] for r, v in zip(rows, picks)]
            )
            logits = tail(_as_input(x)).reshape(-1)
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y[rows].astype(np.float32)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(rows)
            count += len(rows)
        seen += count
        auc = roc_auc(y_val, _tail_logits(tail, val_maps))
        history.append(
            {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": total / max(count, 1),
                "val_loss": float("nan"),
                "val_auc": auc,
                "seconds": time.perf_counter() - t0,
            }
        )
        if auc > best[0]:
            best = (auc, epoch, snapshot())
    seconds = time.perf_counter() - t_all
    return MemberResult(
        spec=spec,
        state_dict=best[2],
        best_epoch=best[1],
        best_val_auc=float(best[0]),
        history=history,
        images_per_second=seen / seconds if seconds > 0 else float("nan"),
    )


def tail_scores(result: MemberResult, maps: dict[str, np.ndarray], score_idx: np.ndarray, k: int) -> np.ndarray:
    """Logits of the identity view through the trained tail (the cached prefix is unchanged)."""
    from training.fit_members import build_model_from_state

    import torch

    model = build_model_from_state(result.spec, result.state_dict).to(memory_format=torch.channels_last)
    _, tail, _ = split_model(model, k)
    return _tail_logits(tail, maps[IDENTITY][score_idx])
