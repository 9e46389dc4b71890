"""``train.trainable: head``: a frozen pretrained backbone with a fitted linear head.

Why: on BTXRD the members that generalise to a hospital they never saw are the ones that keep
their ImageNet features (issue 13's probe: frozen ImageNet Lite2 features scored centre-3 AUC
0.69 vs 0.66 at random weights, and on a third hospital 0.79 vs 0.59); full fine-tuning on
~1,000 crops from one centre is what the shipped from-scratch zoo did. On 2 CPU cores a head
costs seconds once the features exist, so every fold job of a run shares one feature bank.

The bank holds the pooled pre-logit features (timm ``forward_head(pre_logits=True)``) of every
row's crop under each configured view (flips and resolution jitter, the paper's augmentation
plus a blur that makes centre-1 crops look like other centres'). Training rows contribute every
view, scoring rows the identity view only. The head is an L2 logistic regression on
standardised features whose strength is chosen by validation AUC (the paper's best-val
checkpoint rule), then folded back into the timm classifier, so the member is an ordinary
single-logit timm model: inference, GradCAM and ScoreCAM need nothing new.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.auc import roc_auc
from model_zoo.errors import InputError
from model_zoo.members import MemberSpec, load_init_weights
from model_zoo.zoo import atomic_write_bytes
from training.fit_members import MemberResult, predict_logits

LOG = logging.getLogger(__name__)

IDENTITY = "id"


def view_names(train_cfg: dict[str, Any]) -> list[str]:
    """Views of the feature bank: ``id``, flips (``h``, ``v``, ``hv``) from the paper's flip
    switches, and ``blur<s>`` for each ``train.resolution_jitter`` scale (downscale by s, then
    back up)."""
    views = [IDENTITY]
    if train_cfg.get("hflip", True):
        views.append("h")
    if train_cfg.get("vflip", True):
        views.append("v")
    if train_cfg.get("hflip", True) and train_cfg.get("vflip", True):
        views.append("hv")
    for scale in train_cfg.get("resolution_jitter") or []:
        scale = float(scale)
        if not 0 < scale < 1:
            raise InputError(f"train.resolution_jitter scales must lie in (0, 1), got {scale}")
        views.append(f"blur{scale:g}")
    for name in train_cfg.get("acquisition_views") or []:
        name = str(name)
        if name in views:
            continue
        check_view_name(name)
        views.append(name)
    return views


# Acquisition views (issue 13, deliverable 3): fixed, named transforms of a uint8 crop that mimic
# how another hospital's radiographs differ (exposure curve, contrast, detector noise, how the
# lesion box was framed, positioning). Fixed rather than random so a frozen prefix / feature
# bank is computed once per view and every fold job of a run shares it.
_VIEW_RANGES = {"gamma": (0.3, 3.0), "contrast": (0.3, 3.0), "noise": (0.0, 64.0), "rot": (-45.0, 45.0), "zoom": (0.5, 1.0)}


def check_view_name(name: str) -> None:
    """Raise InputError unless ``name`` is a known view: gamma<g>, contrast<c>, noise<sigma>,
    rot<degrees>, zoom<fraction> (or the flip / blur views)."""
    if name in (IDENTITY, "h", "v", "hv"):
        return
    if name.startswith("blur"):
        value, lo_hi = name[4:], (0.0, 1.0)
    else:
        kind = next((k for k in _VIEW_RANGES if name.startswith(k)), None)
        if kind is None:
            raise InputError(
                f"unknown view {name!r}: use gamma<g>, contrast<c>, noise<sigma>, rot<degrees>, "
                "zoom<fraction> or blur<scale>, e.g. gamma0.7"
            )
        value, lo_hi = name[len(kind) :], _VIEW_RANGES[kind]
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"view {name!r}: {value!r} is not a number") from None
    if not lo_hi[0] <= number <= lo_hi[1] or number == 0 and not name.startswith("rot"):
        raise InputError(f"view {name!r}: the number must lie in [{lo_hi[0]:g}, {lo_hi[1]:g}] and not be 0")


def apply_view(crops_u8: np.ndarray, view: str) -> np.ndarray:
    """(N, S, S) uint8 crops under one named view (pure)."""
    import cv2

    if view == IDENTITY:
        return crops_u8
    if view == "h":
        return crops_u8[:, :, ::-1]
    if view == "v":
        return crops_u8[:, ::-1, :]
    if view == "hv":
        return crops_u8[:, ::-1, ::-1]
    if view.startswith("blur"):
        scale = float(view[4:])
        size = crops_u8.shape[-1]
        small = max(8, int(round(size * scale)))
        out = np.empty_like(crops_u8)
        for i, crop in enumerate(crops_u8):
            down = cv2.resize(crop, (small, small), interpolation=cv2.INTER_AREA)
            out[i] = cv2.resize(down, (size, size), interpolation=cv2.INTER_LINEAR)
        return out
    check_view_name(view)
    if view.startswith("gamma"):  # exposure curve: out = 255 (in / 255) ** g
        lut = np.clip(np.round(255.0 * (np.arange(256) / 255.0) ** float(view[5:])), 0, 255).astype(np.uint8)
        return lut[crops_u8]
    if view.startswith("contrast"):  # scaled about each crop's own mean, so brightness is kept
        c = float(view[8:])
        x = crops_u8.astype(np.float32)
        mean = x.mean(axis=(1, 2), keepdims=True)
        return np.clip(np.round(mean + c * (x - mean)), 0, 255).astype(np.uint8)
    if view.startswith("noise"):  # detector noise; seeded so the view is the same on every call
        noise = np.random.default_rng(0).normal(0.0, float(view[5:]), crops_u8.shape)
        return np.clip(np.round(crops_u8 + noise), 0, 255).astype(np.uint8)
    size = crops_u8.shape[-1]
    if view.startswith("rot"):  # positioning; reflected borders add no black corners
        m = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), float(view[3:]), 1.0)
        return np.stack(
            [cv2.warpAffine(c, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101) for c in crops_u8]
        )
    # zoom<f>: the central f of the crop upsampled, i.e. a tighter lesion box than the annotator's
    side = max(2, int(round(size * float(view[4:]))))
    lo = (size - side) // 2
    return np.stack(
        [cv2.resize(c[lo : lo + side, lo : lo + side], (size, size), interpolation=cv2.INTER_LINEAR) for c in crops_u8]
    )


def require_start(spec: MemberSpec, init_path: str | None) -> str:
    if not init_path:
        raise InputError(
            f"train.trainable=head freezes the backbone of {spec.member_id}, so it needs "
            f"initial weights (members.init.{spec.family} or --init {spec.family}=FILE); "
            "a frozen random backbone is not a model"
        )
    return init_path


def start_model(spec: MemberSpec, init_path: str | None) -> Any:
    """The member's network with its pretrained start loaded (required in head mode)."""
    init_path = require_start(spec, init_path)
    model = spec.build_model()
    report = load_init_weights(model, init_path)
    # A frozen backbone must be the start, whole: a tensor skipped for its shape (e.g. a ViT's
    # position grid built at another img_size) would stay random and never train.
    head_names = {n for n, m in model.named_modules() if m is model.get_classifier()}
    not_loaded = [k for k in report["missing"] if k.rsplit(".", 1)[0] not in head_names]
    if not_loaded:
        raise InputError(
            f"{spec.member_id}: {len(not_loaded)} backbone tensors of {Path(init_path).name} do not fit "
            f"{spec.arch} {spec.model_kwargs} (e.g. {not_loaded[0]}); a frozen backbone must load whole"
        )
    return model.eval()


def pooled_features(
    model: Any, crops_u8: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], *, batch_size: int = 32
) -> np.ndarray:
    """(N, D) float32 pre-logit features of a frozen model."""
    import torch

    from training.fit_members import to_batch

    # channels_last: depthwise convolutions (EfficientNet) run ~8x faster on the CPU (measured).
    model = model.to(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops_u8), batch_size):
            x = to_batch(crops_u8[start : start + batch_size], mean, std, "cpu", True)
            feats = model.forward_head(model.forward_features(x), pre_logits=True)
            out.append(feats.float().reshape(len(x), -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def start_views_key(spec: MemberSpec, init_path: str, views: list[str], crops_key: str) -> str:
    """What a cached feature bank or prefix map depends on: the network, its start, the views
    and the crops (hashed; part of the cache file names)."""
    return hashlib.sha256(
        f"{spec.arch}|{spec.model_kwargs}|{spec.mean}|{spec.std}|{init_path}|"
        f"{Path(init_path).stat().st_size}|{views}|{crops_key}".encode()
    ).hexdigest()[:16]


def bank_path(cache_dir: Path, spec: MemberSpec, init_path: str, views: list[str], crops_key: str) -> Path:
    return cache_dir / f"features_{spec.member_id}_{start_views_key(spec, init_path, views, crops_key)}.npz"


def feature_bank(
    spec: MemberSpec,
    init_path: str | None,
    crops_u8: np.ndarray,
    views: list[str],
    cache_dir: Path,
    crops_key: str,
    *,
    train_rows: np.ndarray,
    log: Any = LOG.info,
) -> dict[str, np.ndarray]:
    """View -> (N, D) features; non-identity views only for ``train_rows`` (others NaN).
    Cached on disk one file per view, for --resume, for every fold job of the run, and so that a
    run adding a view (or a recipe benchmark sharing the cache folder) computes only that view."""
    import io

    init_path = require_start(spec, init_path)
    model = None
    bank: dict[str, np.ndarray] = {}
    for view in views:
        path = bank_path(cache_dir, spec, init_path, [view], crops_key)
        if path.is_file():
            with np.load(path) as data:
                bank[view] = data[view]
            continue
        if model is None:
            model = start_model(spec, init_path)
        rows = np.arange(len(crops_u8)) if view == IDENTITY else np.asarray(train_rows)
        log(f"      {spec.member_id}: features, view {view} ({len(rows)} crops)")
        feats = pooled_features(model, apply_view(crops_u8[rows], view), spec.mean, spec.std)
        full = np.full((len(crops_u8), feats.shape[1]), np.nan, np.float32)
        full[rows] = feats
        bank[view] = full
        buf = io.BytesIO()
        np.savez(buf, **{view: full})
        atomic_write_bytes(path, buf.getvalue())
    return bank


def fit_head(
    spec: MemberSpec,
    init_path: str,
    bank: dict[str, np.ndarray],
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    train_cfg: dict[str, Any],
    seed: int,
) -> tuple[MemberResult, np.ndarray, float]:
    """L2 logistic head on the bank's training views, strength chosen by val AUC. Returns the
    member (frozen start + fitted classifier as one state dict) and the head's (weight, bias)
    on raw features."""
    import time

    import torch
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    views = list(bank)
    x_train = np.concatenate([bank[v][train_idx] for v in views])
    y_train = np.tile(y[train_idx], len(views))
    if np.isnan(x_train).any():
        raise RuntimeError(f"internal error: {spec.member_id}'s feature bank lacks training rows")
    x_val = bank[IDENTITY][val_idx]
    mu = x_train.mean(0)
    # Floor each feature's scale at a tenth of the typical one: a near-constant feature (a dead
    # channel) standardised by its own tiny std gets a huge folded weight, and the member then
    # swings by logits on input changes as small as uint8 rounding (measured: up to 2.3 logits
    # between cached and freshly computed crops without the floor).
    sd = x_train.std(0)
    sd = np.maximum(sd, 0.1 * float(np.median(sd)) + 1e-6)
    grid = [float(c) for c in train_cfg.get("head_c_grid") or (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)]
    history, best = [], None
    for i, c in enumerate(grid):
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed)
        clf.fit((x_train - mu) / sd, y_train)
        val_logit = clf.decision_function((x_val - mu) / sd)
        auc = roc_auc(y[val_idx], val_logit)
        p = 1 / (1 + np.exp(-val_logit))
        loss = float(-np.mean(y[val_idx] * np.log(p + 1e-7) + (1 - y[val_idx]) * np.log(1 - p + 1e-7)))
        history.append(
            {
                "epoch": i + 1,
                "lr": c,
                "train_loss": float("nan"),
                "val_loss": loss,
                "val_auc": auc,
                "seconds": time.perf_counter() - t0,
            }
        )
        if best is None or auc > best[0] or (auc == best[0] and loss < best[1]):
            best = (auc, loss, i + 1, clf)
    assert best is not None
    clf = best[3]
    # Fold the standardisation into the linear layer: w' = w / sd, b' = b - sum(w * mu / sd).
    weight = clf.coef_[0] / sd
    bias = float(clf.intercept_[0] - np.sum(clf.coef_[0] * mu / sd))
    model = start_model(spec, init_path)
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1 or head.in_features != len(weight):
        raise InputError(
            f"{spec.member_id}: head mode needs a single-logit Linear classifier ({spec.arch} has {type(head).__name__})"
        )
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight.astype(np.float32)).reshape(1, -1))
        head.bias.fill_(bias)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    seconds = time.perf_counter() - t0
    result = MemberResult(
        spec=spec,
        state_dict=state,
        best_epoch=best[2],
        best_val_auc=float(best[0]),
        history=history,
        images_per_second=len(x_train) / seconds if seconds > 0 else float("nan"),
    )
    return result, weight, bias


def head_scores(weight: np.ndarray, bias: float, bank: dict[str, np.ndarray], score_idx: np.ndarray) -> np.ndarray:
    """Member logits of the identity view from the bank (the same numbers as running the
    member on the crop: the classifier is linear on these features)."""
    return bank[IDENTITY][score_idx].astype(np.float64) @ np.asarray(weight, np.float64) + float(bias)


def forward_check(result: MemberResult, crops_u8: np.ndarray, bank_logits: np.ndarray) -> float:
    """Max |logit| difference between the bank path and a real forward of the built member on
    the same crops: guards the classifier folding against silent drift."""
    from training.fit_members import build_model_from_state

    import torch

    model = build_model_from_state(result.spec, result.state_dict).to(memory_format=torch.channels_last)
    real = predict_logits(model, crops_u8, result.spec.mean, result.spec.std, channels_last=True)
    return float(np.max(np.abs(real - bank_logits))) if len(bank_logits) else 0.0
