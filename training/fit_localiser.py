"""``python -m training localiser``: train the auto-crop localiser and measure its IoU.

Data: a BTXRD ``metadata.csv`` (lesion masks; normal images teach "no lesion") or a case
table with ROI columns (rectangles become masks). Images are split 7:1:2 by the same
group-aware, stratified rule as the classifier (``training.data``), so the reported IoU is
on held-out groups. Output: a folder with ``localiser.safetensors`` and ``localiser.json``
(spec + metrics), written atomically; ``fit`` copies it into a zoo release
(``localiser.path`` in the config).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_zoo import imaging, roi
from model_zoo.auc import roc_auc
from model_zoo.cases import read_case_table
from model_zoo.cli_logging import setup_cli_logging
from model_zoo.errors import InputError, ZooError
from model_zoo.localize import Localiser, LocaliserSpec, build_unet, load_localiser, mask_to_box, prepare
from training.data import infer_groups, split_cases

LOG = logging.getLogger(__name__)


def read_localiser_table(path: Path) -> pd.DataFrame:
    """Rows with image_path, mask_path (or ROI), a stratification label and grouping columns."""
    path = Path(path)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if {"image", "mask", "label", "age", "sex", "site_group", "tumor_subtype"} <= set(raw.columns):
        root = path.parent
        frame = pd.DataFrame(
            {
                "image_path": [str(root / p) for p in raw["image"]],
                "mask_path": [str(root / p) if p else "" for p in raw["mask"]],
                "label": raw["label"].str.strip().str.lower(),
                "age": pd.to_numeric(raw["age"], errors="coerce"),
                "sex": raw["sex"],
                "site": raw["site_group"],
                "subtype": raw["tumor_subtype"].replace("", "none"),
            }
        )
        return frame
    table = read_case_table(path, check_files=True)
    frame = table.frame[table.ok].copy()
    frame["mask_path"] = ""
    frame["label"] = frame["roi_x0"].notna().map({True: "lesion", False: "unknown"})
    return frame[frame["label"] == "lesion"].reset_index(drop=True)


def target_mask(row: pd.Series, size_wh: tuple[int, int]) -> np.ndarray:
    """Full-resolution boolean lesion mask for one row."""
    from PIL import Image

    w, h = size_wh
    if row.get("mask_path"):
        with Image.open(row["mask_path"]) as img:
            mask = np.asarray(img.convert("L")) > 0
        if mask.shape != (h, w):
            mask = roi.resize(mask.astype(np.float32), (w, h)) > 0.5
        return mask
    mask = np.zeros((h, w), bool)
    if pd.notna(row.get("roi_x0")):
        x0, y0, x1, y1 = (int(round(float(row[c]))) for c in ("roi_x0", "roi_y0", "roi_x1", "roi_y1"))
        mask[y0:y1, x0:x1] = True
    return mask


def mask_box(mask: np.ndarray) -> roi.Box | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def load_arrays(frame: pd.DataFrame, spec: LocaliserSpec) -> tuple[np.ndarray, np.ndarray, list[Any], list[Any]]:
    """(N,S,S) images and soft masks at the localiser's input size, plus true boxes and sizes."""
    from tqdm.auto import tqdm

    s = spec.input_size
    images = np.zeros((len(frame), s, s), np.float32)
    masks = np.zeros((len(frame), s, s), np.float32)
    boxes, sizes = [], []
    for i, (_, row) in enumerate(tqdm(list(frame.iterrows()), desc="load", leave=False)):
        pixels = imaging.load_image(row["image_path"]).pixels
        h, w = pixels.shape
        images[i] = prepare(spec, pixels)
        mask = target_mask(row, (w, h))
        masks[i] = roi.resize(mask.astype(np.float32), s)
        boxes.append(mask_box(mask))
        sizes.append((w, h))
    return images, masks, boxes, sizes


def box_metrics(pred: list[roi.Box], true: list[roi.Box | None]) -> dict[str, Any]:
    ious = np.array([roi.iou(p, t) for p, t in zip(pred, true) if t is not None])
    if len(ious) == 0:
        return {"n_lesion": 0, "mean_iou": None, "median_iou": None, "frac_iou_gt_0_3": None, "frac_iou_gt_0_5": None}
    return {
        "n_lesion": int(len(ious)),
        "mean_iou": float(ious.mean()),
        "median_iou": float(np.median(ious)),
        "frac_iou_gt_0_3": float((ious > 0.3).mean()),
        "frac_iou_gt_0_5": float((ious > 0.5).mean()),
    }


def _predict_maps(model: Any, images: np.ndarray, spec: LocaliserSpec, batch: int = 32) -> np.ndarray:
    import torch

    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy((images[i : i + batch] - spec.mean) / spec.std)[:, None].to(device)
            out.append(torch.sigmoid(model(x))[:, 0].float().cpu().numpy())
    return np.concatenate(out)


def calibrate_threshold(
    model: Any,
    spec: LocaliserSpec,
    images: np.ndarray,
    boxes: list,
    sizes: list,
    grid: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    maps: np.ndarray | None = None,
) -> LocaliserSpec:
    """The region threshold with the best mean IoU on the given (validation) images."""
    maps = _predict_maps(model, images, spec) if maps is None else maps
    scores = {
        t: _box_metrics_from_maps(maps, LocaliserSpec(**{**spec.to_dict(), "threshold": t}), boxes, sizes).get("mean_iou") or 0.0
        for t in grid
    }
    best = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
    return LocaliserSpec(**{**spec.to_dict(), "threshold": float(best)})


def _box_metrics_from_maps(maps: np.ndarray, spec: LocaliserSpec, boxes: list, sizes: list) -> dict[str, Any]:
    s = spec.input_size
    pred = []
    for prob, (w, h) in zip(maps, sizes):
        box, _ = mask_to_box(prob, spec.threshold, max(1, int(spec.min_area_frac * s * s)))
        pred.append(roi.clamp_box(roi.scale_box(box, (s, s), (w, h)), (w, h)))
    return box_metrics(pred, boxes)


def evaluate(
    model: Any, spec: LocaliserSpec, images: np.ndarray, boxes: list, sizes: list, maps: np.ndarray | None = None
) -> dict[str, Any]:
    """Box metrics against the true boxes (+ lesion-presence AUC when some images have none)."""
    maps = _predict_maps(model, images, spec) if maps is None else maps
    metrics = _box_metrics_from_maps(maps, spec, boxes, sizes)
    conf = maps.reshape(len(maps), -1).max(axis=1)
    has = np.array([b is not None for b in boxes])
    if has.any() and (~has).any():
        metrics["lesion_presence_auc"] = roc_auc(has, conf)
    return metrics


def read_localiser_folder(folder: Path) -> tuple[dict[str, Any], Localiser]:
    """A folder written by ``write_localiser``: its entry (spec, metrics, data) and the loaded model."""
    folder = Path(folder)
    if not (folder / "localiser.json").is_file() or not (folder / "localiser.safetensors").is_file():
        raise InputError(
            f"{folder} is not a localiser folder (needs localiser.json and "
            "localiser.safetensors from `python -m training localiser`)"
        )
    entry = json.loads((folder / "localiser.json").read_text(encoding="utf-8"))
    from model_zoo.manifest import LocaliserInfo

    info = LocaliserInfo.from_dict({**entry, "weights": f"{folder.name}/localiser.safetensors"})
    return entry, load_localiser(folder.parent, info)


def release_files(folder: Path, fp16: bool) -> tuple[dict[str, Any], bytes, Localiser]:
    """What a zoo release stores for a localiser folder: its manifest entry (weights under
    ``localiser/``) and the safetensors bytes, float16 when the release's members are; plus
    the loaded localiser, for callers that also run it."""
    from safetensors.torch import save

    entry, localiser = read_localiser_folder(folder)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in localiser.model.state_dict().items()}
    return {**entry, "weights": "localiser/localiser.safetensors"}, save(state), localiser


def train(
    frame: pd.DataFrame,
    spec: LocaliserSpec,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Any = LOG.info,
    stop_at: float | None = None,
    init_state: dict[str, Any] | None = None,
) -> tuple[Any, LocaliserSpec, dict[str, Any]]:
    """Train on the train split, keep the epoch with the best val mean IoU. Uses the GPU when
    there is one; ``stop_at`` (a ``time.time()`` value) ends training after the first epoch
    past it (``metrics["epochs_run"]`` says how many ran)."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    frame, images, masks, boxes, sizes, idx = prepare_data(frame, spec, seed)
    spec = LocaliserSpec(
        **{**spec.to_dict(), "mean": float(images[idx["train"]].mean()), "std": float(max(images[idx["train"]].std(), 1e-3))}
    )
    model = build_unet(spec)
    if init_state is not None:  # continue from a trained localiser (same architecture)
        model.load_state_dict(init_state)
    model = model.to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=max(epochs, 1))
    lesion_frac = float(masks[idx["train"]].mean())
    pos_weight = torch.tensor(min(20.0, (1 - lesion_frac) / max(lesion_frac, 1e-6)) ** 0.5, device=device)
    best: dict[str, Any] = {"score": -1.0}
    epochs_run = 0
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(idx["train"])
        t0, total = time.perf_counter(), 0.0
        for b in range(0, len(order) - 1, batch_size):
            sel = order[b : b + batch_size]
            x = torch.from_numpy((images[sel] - spec.mean) / spec.std)[:, None].to(device)
            y = torch.from_numpy(masks[sel])[:, None].to(device)
            if rng.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if rng.random() < 0.5:
                x, y = x.flip(-2), y.flip(-2)
            logits = model(x)
            p = torch.sigmoid(logits)
            # Lesions cover a few % of pixels and half the images have none: plain BCE + dice
            # over all images learns "nothing anywhere". So BCE up-weights lesion pixels and
            # the dice term is averaged over lesion images only (normal images teach "no
            # lesion" through BCE).
            bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            has_lesion = y.sum(dim=(1, 2, 3)) > 0
            if has_lesion.any():
                inter = (p * y).sum(dim=(1, 2, 3))[has_lesion]
                denom = (p.sum(dim=(1, 2, 3)) + y.sum(dim=(1, 2, 3)))[has_lesion]
                dice = (1 - (2 * inter + 1) / (denom + 1)).mean()
            else:
                dice = torch.zeros((), device=device)
            loss = bce + dice
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += float(loss.detach()) * len(sel)
        sched.step()
        val = evaluate(model, spec, images[idx["val"]], [boxes[i] for i in idx["val"]], [sizes[i] for i in idx["val"]])
        score = val["mean_iou"] or 0.0
        log(
            f"  localiser epoch {epoch + 1}/{epochs} loss {total / max(len(order), 1):.4f} "
            f"val mean IoU {score:.3f} ({time.perf_counter() - t0:.0f}s)"
        )
        if score > best["score"]:
            best = {
                "score": score,
                "epoch": epoch + 1,
                "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
        epochs_run = epoch + 1
        if stop_at is not None and time.time() >= stop_at and epochs_run < epochs:
            log(f"  localiser: time limit reached after epoch {epochs_run}/{epochs}")
            break
    model = model.cpu()  # the shipped localiser runs on the CPU; so do the final metrics
    model.load_state_dict(best["state"])
    metrics = final_metrics(model, spec, frame, images, boxes, sizes, idx, log)
    metrics["best_epoch"] = best["epoch"]
    metrics["epochs_run"] = epochs_run
    metrics["epochs_planned"] = epochs
    return model, LocaliserSpec.from_dict(metrics.pop("spec")), metrics


def prepare_data(frame: pd.DataFrame, spec: LocaliserSpec, seed: int) -> tuple:
    """Group-aware 7:1:2 split (same rule as the classifier) and arrays at the input size."""
    frame = frame.copy()
    frame["group"] = infer_groups(frame).to_numpy()
    frame["split"] = split_cases(frame, seed=seed).to_numpy()
    images, masks, boxes, sizes = load_arrays(frame, spec)
    idx = {k: np.flatnonzero(frame["split"].to_numpy() == k) for k in ("train", "val", "test")}
    return frame, images, masks, boxes, sizes, idx


def final_metrics(
    model: Any,
    spec: LocaliserSpec,
    frame: pd.DataFrame,
    images: np.ndarray,
    boxes: list,
    sizes: list,
    idx: dict,
    log: Any = LOG.info,
) -> dict[str, Any]:
    """Calibrate the region threshold on val, then score val and test and time inference."""
    maps = {split: _predict_maps(model, images[i], spec) for split, i in idx.items() if split != "train"}
    spec = calibrate_threshold(
        model, spec, images[idx["val"]], [boxes[i] for i in idx["val"]], [sizes[i] for i in idx["val"]], maps=maps["val"]
    )
    log(f"  localiser threshold {spec.threshold} (best val mean IoU on a grid)")
    metrics = {
        split: evaluate(
            model, spec, images[idx[split]], [boxes[j] for j in idx[split]], [sizes[j] for j in idx[split]], maps=split_maps
        )
        for split, split_maps in maps.items()
    }
    localiser = Localiser(spec, model)
    sample = [frame["image_path"].iloc[i] for i in idx["test"][:20]]
    times = []
    for path in sample:
        pixels = imaging.load_image(path).pixels
        times.append(localiser.propose(pixels).seconds)
    metrics["seconds_per_image_median"] = float(np.median(times)) if times else None
    metrics["splits"] = {k: int(len(v)) for k, v in idx.items()}
    metrics["spec"] = spec.to_dict()
    return metrics


def rescore(frame: pd.DataFrame, folder: Path, seed: int) -> tuple[Any, LocaliserSpec, dict[str, Any]]:
    """Re-evaluate a trained localiser with the current box post-processing (no retraining)."""
    entry, localiser = read_localiser_folder(folder)
    spec, model = localiser.spec, localiser.model
    frame, images, _, boxes, sizes, idx = prepare_data(frame, spec, seed)
    metrics = final_metrics(model, spec, frame, images, boxes, sizes, idx)
    metrics["best_epoch"] = entry["metrics"].get("best_epoch")
    metrics["rescored_from"] = str(folder)
    return model, LocaliserSpec.from_dict(metrics.pop("spec")), metrics


def write_localiser(out: Path, model: Any, spec: LocaliserSpec, metrics: dict[str, Any], source: str) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists():
        raise InputError(f"{out} already exists; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "localiser.safetensors"))
        entry = {
            "weights": "localiser/localiser.safetensors",
            "spec": spec.to_dict(),
            "metrics": metrics,
            "data": source,
            "architecture": "4-level U-Net, lesion segmentation -> bounding box",
        }
        (tmp / "localiser.json").write_text(json.dumps(entry, indent=2, allow_nan=False), encoding="utf-8")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    p = argparse.ArgumentParser(prog="python -m training localiser", description=__doc__.splitlines()[0])
    p.add_argument("--cases", required=True, type=Path, help="BTXRD metadata.csv or a case table with ROI columns")
    p.add_argument("--out", required=True, type=Path, help="new folder for the localiser")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--base-channels", type=int, default=16, help="U-Net width (cost grows ~quadratically)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-cases", type=int, default=None, help="subsample for quick runs")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="continue training a localiser folder's weights (its input size and width are used)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop after the first epoch past this many minutes (metrics say how many ran)",
    )
    p.add_argument(
        "--rescore",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="re-evaluate an existing localiser (same split) with the current post-processing",
    )
    args = p.parse_args(argv)
    try:
        if args.out.exists():  # checked before training, not after an hour of it
            raise InputError(f"{args.out} already exists; choose a new --out")
        frame = read_localiser_table(args.cases)
        if args.max_cases:
            frame = frame.sample(n=min(args.max_cases, len(frame)), random_state=args.seed).reset_index(drop=True)
        if args.rescore:
            model, spec, metrics = rescore(frame, args.rescore, args.seed)
            write_localiser(args.out, model, spec, metrics, str(args.cases))
            print(json.dumps(metrics, indent=2))
            return 0
        spec, init_state = LocaliserSpec(input_size=args.input_size, base_channels=args.base_channels), None
        if args.init:
            _, trained = read_localiser_folder(args.init)
            spec = LocaliserSpec(input_size=trained.spec.input_size, base_channels=trained.spec.base_channels)
            init_state = trained.model.state_dict()
        model, spec, metrics = train(
            frame,
            spec,
            init_state=init_state,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            stop_at=time.time() + 60 * args.time_limit if args.time_limit else None,
        )
        if args.init:
            metrics["init"] = str(args.init)
        write_localiser(args.out, model, spec, metrics, str(args.cases))
        print(json.dumps({k: v for k, v in metrics.items()}, indent=2))
    except ZooError as err:
        LOG.error(f"error: {err}")
        return 2
    return 0
