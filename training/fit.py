"""``python -m training fit``: case table -> four members + stacker -> one zoo release.

Pipeline (each step resumable; ``--resume`` continues an interrupted run folder):

1. Read and validate the case table (or a BTXRD ``metadata.csv``); rows with errors are
   listed and left out.
2. Group-aware, stratified 7:1:2 train/val/test split; k-fold group folds on train.
3. Decode, crop and resize every image once per (input size, ROI margin): the input cache.
4. Member jobs. With ``stacker.score_source: oof`` every member is trained k times on k-1
   train folds to score the held-out fold (out-of-fold scores for the stacker), and once on
   the whole train split (the shipped member). Checkpoints are chosen on the val split.
5. Stacker: candidates compared by grouped CV AUC on out-of-fold scores + age/sex/site; the
   best is refitted; a clinic-only LR is fitted beside it.
6. Operating threshold chosen on the val split by the configured rule.
7. Evaluation reports for val and test; the release is written atomically.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from model_zoo import imaging, preprocess, roi
from model_zoo.auc import roc_auc
from model_zoo.calibration import Calibration, fit_platt
from model_zoo.cases import read_case_table
from model_zoo.ensemble import CLINICAL_FEATURES, sigmoid, stacker_matrix
from model_zoo.cli_logging import setup_cli_logging
from model_zoo.errors import InputError, ZooError
from model_zoo.framing import DEFAULT_INDETERMINATE_BAND, check_band
from model_zoo.manifest import (
    DataInfo,
    ExternalData,
    LocaliserInfo,
    Manifest,
    MemberEntry,
    StackerInfo,
    Task,
    ThresholdInfo,
)
from model_zoo.members import MemberSpec, family_spec
from model_zoo.zoo import SPLIT_REPORT_PLOTLY_SRC, ReleaseWriter, atomic_write_text
from training import fit_heads, fit_localiser, fit_members, fit_stacker, fit_tails
from training.config import dump_config, load_config
from training.data import data_fingerprint, image_hashes, load_cases

LOG = logging.getLogger(__name__)

# Config sections that decide what the member and stacker jobs compute. A resumed run must
# keep them; the others (name, version, profile, output, localiser) may change, so a finished
# run can be re-packaged, e.g. as a new version with a localiser, without retraining.
TRAINING_KEYS = ("seed", "data", "task", "members", "train", "stacker", "threshold")

INTENDED_USE = (
    "Research and teaching only; not a medical device. Not for diagnosis or treatment "
    "decisions. Outputs are probabilities from models trained on a public research dataset "
    "and must be read by a qualified clinician together with all other information."
)


# ----------------------------------------------------------------------------- data ----------
def load_externals(cfg: dict[str, Any], frame: pd.DataFrame, log: Any = LOG.info) -> dict[str, pd.DataFrame]:
    """``external: [{name, cases}]``: hospitals the release never trains on, only measures on.

    Refused when any external image is byte-identical to a row of the training table: a
    number measured on seen images would be reported as 'a hospital it has not seen'."""
    out: dict[str, pd.DataFrame] = {}
    known = set(frame["sha256"])
    for entry in cfg.get("external") or []:
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("cases"):
            raise InputError(f"external: each entry needs a name and a cases table, got {entry!r}")
        name = str(entry["name"])
        if not name.replace("-", "").replace("_", "").isalnum() or name in out:
            raise InputError(f"external: names must be unique and alphanumeric (- and _ allowed), got {name!r}")
        table = read_case_table(entry["cases"], label_map=cfg["task"].get("label_map"), require_label=True)
        ext = table.frame[table.frame["row_error"] == ""].reset_index(drop=True)
        if len(ext) == 0:
            raise InputError(f"external set {name}: no usable labelled rows in {entry['cases']}")
        ext["label"] = ext["label"].astype(int)
        ext["sha256"] = image_hashes(ext)
        shared = int(ext["sha256"].isin(known).sum())
        if shared:
            raise InputError(f"external set {name}: {shared} of its images are also in the training case "
                             "table; an external set must be a hospital the model has not seen")
        log(f"      external set {name}: {len(ext)} cases ({int(ext['label'].sum())} positive), "
            f"{len(table.errors)} rows skipped; no image shared with the training table")
        out[name] = ext
    return out


def round_finals_to_stored_dtype(finals: list[dict[str, Any]], caches: dict[str, np.ndarray]) -> None:
    """A float16 release reports the numbers of the weights it stores: each final member's
    weights are rounded to float16 and its val/test rows re-scored with them, before the
    threshold, the reports and the external sets use them. (Measured on demo 2.0.0: member AUCs
    moved by <0.001 but the GBDT stacker's internal test AUC fell from 0.876 to 0.858.)"""
    import torch

    for res in finals:
        spec = MemberSpec.from_dict(res["spec"])
        res["state_dict"] = {k: (v.half().float() if v.is_floating_point() else v)
                             for k, v in res["state_dict"].items()}
        model = fit_members.build_model_from_state(spec, res["state_dict"]).to(memory_format=torch.channels_last)
        idx = res["score_idx"]
        res["full_scores"][idx] = sigmoid(fit_members.predict_logits(
            model, caches[spec.member_id][idx], spec.mean, spec.std, channels_last=True))


def _external_source(cfg: dict[str, Any], name: str) -> str:
    return next(str(e["cases"]) for e in cfg.get("external") or [] if str(e["name"]) == name)


def score_with_finals(source: pd.DataFrame, finals: list[dict[str, Any]], cache_dir: Path,
                      progress: bool) -> np.ndarray:
    """(N, members) probabilities of the shipped (final) members on another case table, through
    the same crop cache and forward pass as the internal splits."""
    import torch

    fingerprint = data_fingerprint(source)
    columns = []
    for res in finals:
        spec = MemberSpec.from_dict(res["spec"])
        crops = build_input_cache(source, spec, cache_dir, fingerprint, progress)
        model = fit_members.build_model_from_state(spec, res["state_dict"]).to(memory_format=torch.channels_last)
        columns.append(sigmoid(fit_members.predict_logits(model, crops, spec.mean, spec.std, channels_last=True)))
    return np.column_stack(columns)


def member_logit_columns(cfg: dict[str, Any], X_fit: np.ndarray) -> int:
    """How many leading stacker columns the candidates turn into log-odds: the member scores
    with ``stacker.member_scores: logit``, none with ``probability`` (the paper's stacker)."""
    kind = str(cfg["stacker"].get("member_scores", "probability"))
    if kind not in ("probability", "logit"):
        raise InputError(f"stacker.member_scores must be probability or logit, not {kind!r}")
    return X_fit.shape[1] - len(CLINICAL_FEATURES) if kind == "logit" else 0


def indeterminate_band(cfg: dict[str, Any]) -> float:
    """``threshold.indeterminate_band``, validated (0 <= band < 0.5; the library default when absent):
    a release fact written into the manifest's threshold block and read by ``Zoo.call``."""
    band = (cfg.get("threshold") or {}).get("indeterminate_band", DEFAULT_INDETERMINATE_BAND)
    try:
        return check_band(band)
    except ValueError as err:
        raise InputError(str(err)) from None


def _resume_view(cfg: dict[str, Any]) -> dict[str, Any]:
    """The training settings a resumed run must share; a run folder written before the band
    existed holds no ``threshold.indeterminate_band`` and means the default (the band changes
    no fitted number)."""
    out = dict(cfg)
    if isinstance(out.get("threshold"), dict):
        out["threshold"] = {"indeterminate_band": DEFAULT_INDETERMINATE_BAND, **out["threshold"]}
    return out


def fit_calibration(cfg: dict[str, Any], chosen: str, X_fit: np.ndarray, y_fit: np.ndarray,
                    groups_fit: np.ndarray, y_val: np.ndarray, p_val: np.ndarray, seed: int,
                    log: Any = LOG.info) -> Calibration | None:
    """Platt calibration of the ensemble on internal data only (``calibration.fit_on``):
    ``oof`` = the chosen stacker's cross-validated probabilities on its own training rows,
    ``val`` = the val split (which also chose the checkpoints, heads and threshold)."""
    cal_cfg = cfg.get("calibration") or {}
    method = cal_cfg.get("method", "none")
    if method in (None, "none"):
        return None
    if method != "platt":
        raise InputError(f"calibration.method must be platt or none, not {method!r}")
    fit_on = cal_cfg.get("fit_on", "oof")
    if fit_on == "oof":
        p_cv = fit_stacker.cross_val_probabilities(chosen, X_fit, y_fit, groups_fit,
                                                   folds=int(cfg["stacker"]["cv_folds"]), seed=seed,
                                                   member_logits=member_logit_columns(cfg, X_fit))
        ok = ~np.isnan(p_cv)
        calibration = fit_platt(y_fit[ok], p_cv[ok], fit_on="oof")
    elif fit_on == "val":
        calibration = fit_platt(y_val, p_val, fit_on="val")
    else:
        raise InputError(f"calibration.fit_on must be oof or val, not {fit_on!r}")
    log(f"      calibration: Platt on {fit_on} (n={calibration.n}): slope {calibration.slope:.3f}, "
        f"intercept {calibration.intercept:.3f}")
    return calibration


def row_box(row: pd.Series, size_wh: tuple[int, int]) -> roi.Box:
    cols = ("roi_x0", "roi_y0", "roi_x1", "roi_y1")
    if all(c in row and pd.notna(row[c]) for c in cols):
        return roi.validate_box(tuple(float(row[c]) for c in cols), size_wh)
    return roi.full_image_box(size_wh)


def cache_path(spec: MemberSpec, cache_dir: Path, fingerprint: str) -> Path:
    """Members with the same input size and ROI margin share one crop cache."""
    return cache_dir / f"crops_{spec.input_size}_{spec.roi_margin:g}_{fingerprint[:16]}.npy"


def build_input_cache(frame: pd.DataFrame, spec: MemberSpec, cache_dir: Path, fingerprint: str,
                      progress: bool = True) -> np.ndarray:
    """(N, S, S) uint8 crops for every row, computed once and kept on disk for --resume."""
    from tqdm.auto import tqdm

    path = cache_path(spec, cache_dir, fingerprint)
    if path.is_file():
        return np.load(path)
    out = np.zeros((len(frame), spec.input_size, spec.input_size), np.uint8)
    for i, row in enumerate(tqdm(list(frame.itertuples(index=False)), desc=f"cache {spec.input_size}px",
                                 disable=not progress, leave=False)):
        row = pd.Series(row._asdict())
        image = imaging.load_image(row["image_path"])
        h, w = image.pixels.shape
        crop, _ = preprocess.member_crop(spec, image.pixels, row_box(row, (w, h)))
        out[i] = np.round(crop * 255.0).astype(np.uint8)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


# ----------------------------------------------------------------------------- members -------
def member_specs(cfg: dict[str, Any]) -> list[MemberSpec]:
    mcfg = cfg["members"]
    specs = []
    for family in mcfg["families"]:
        spec = family_spec(family, variant=mcfg.get("variant", "full"), input_size=int(mcfg["input_size"]))
        changes: dict[str, Any] = {"roi_margin": float(mcfg.get("roi_margin", spec.roi_margin))}
        # Per-family architecture overrides (e.g. ViT-Tiny, a narrower Swin for a CPU budget).
        if (mcfg.get("arch") or {}).get(family):
            changes["arch"] = mcfg["arch"][family]
        if (mcfg.get("model_kwargs") or {}).get(family):
            changes["model_kwargs"] = {**spec.model_kwargs, **mcfg["model_kwargs"][family]}
        # Any other spec field a start needs (e.g. a DINOv2 ViT's patch_size 14).
        changes.update((mcfg.get("spec") or {}).get(family) or {})
        if mcfg.get("normalisation") == "init":
            changes.update(init_normalisation(family, (mcfg.get("init") or {}).get(family)))
        specs.append(spec.replace(**changes))
    ids = [s.member_id for s in specs]
    if len(set(ids)) != len(ids):
        raise InputError(f"member ids must be unique, got {ids}")
    return specs


def init_provenance(init_path: str | None) -> dict[str, Any] | None:
    """The provenance record written beside a converted start (``python -m training pretrained
    convert``: ``<name>.json`` next to ``<name>.safetensors``), or None for other files."""
    import json

    if not init_path:
        return None
    sidecar = Path(init_path).with_suffix(".json")
    return json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else None


def init_normalisation(family: str, init_path: str | None) -> dict[str, tuple[float, ...]]:
    """``members.normalisation: init``: the mean/std the start's weights were trained with."""
    record = init_provenance(init_path)
    if not record or "mean" not in record or "std" not in record:
        raise InputError(f"members.normalisation=init: {family} needs a converted start with its provenance "
                         f"(<name>.json beside the weights, from `python -m training pretrained convert`); "
                         f"got {init_path or 'no members.init entry'}")
    return {"mean": tuple(float(v) for v in record["mean"]), "std": tuple(float(v) for v in record["std"])}


def run_member_job(spec: MemberSpec, cache: np.ndarray, frame: pd.DataFrame, train_idx: np.ndarray,
                   val_idx: np.ndarray, score_idx: np.ndarray, cfg: dict[str, Any], job_dir: Path,
                   seed: int, init_path: str | None, progress: bool,
                   stop_at: float | None = None, bank: dict[str, np.ndarray] | None = None,
                   maps: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Train one member job (resumable) and score ``score_idx``; result cached in job_dir.

    With ``bank`` (``train.trainable: head``) the backbone stays frozen and only its linear head
    is fitted on the shared feature bank; ``spec`` then already carries the start's mean/std."""
    import torch

    result_path = job_dir / "result.pt"
    if result_path.is_file():
        return torch.load(result_path, weights_only=False)
    y = frame["label"].to_numpy()
    if maps is not None:  # train.trainable: tail (probe, then fine-tune the last blocks)
        assert init_path is not None and bank is not None
        k = int(cfg["train"].get("tail_blocks", 2))
        res = fit_tails.fit_tail(spec, init_path, bank, maps, np.flatnonzero(frame["split"] == "train"), y,
                                 train_idx, val_idx, cfg["train"], seed)
        job_dir.mkdir(parents=True, exist_ok=True)
        fit_members.write_log(job_dir / "log.csv", res.history)
        logits = fit_tails.tail_scores(res, maps, score_idx, k)
        drift = fit_heads.forward_check(res, cache[score_idx[:8]], logits[:8])
        if drift > 5e-2:  # the cached prefix is float16
            raise RuntimeError(f"internal error: {spec.member_id}'s tail on cached maps disagrees with its "
                               f"forward pass by {drift:.2g} logits")
    elif bank is not None:
        assert init_path is not None
        res, weight, bias = fit_heads.fit_head(spec, init_path, bank, y, train_idx, val_idx, cfg["train"], seed)
        job_dir.mkdir(parents=True, exist_ok=True)
        fit_members.write_log(job_dir / "log.csv", res.history)
        logits = fit_heads.head_scores(weight, bias, bank, score_idx)
        probe = score_idx[:8]
        drift = fit_heads.forward_check(res, cache[probe], logits[:8])
        if drift > 1e-3:
            raise RuntimeError(f"internal error: {spec.member_id}'s folded head disagrees with its forward "
                               f"pass by {drift:.2g} logits")
    else:
        normalisation = ((spec.mean, spec.std) if cfg["members"].get("normalisation") == "init" else None)
        res = fit_members.train_member(spec, cache[train_idx], y[train_idx], cache[val_idx], y[val_idx],
                                       cfg["train"], work_dir=job_dir, seed=seed, init_path=init_path,
                                       progress=progress, stop_at=stop_at, normalisation=normalisation)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # scored in float32 either way
        model = fit_members.build_model_from_state(res.spec, res.state_dict).to(device)
        model = model.to(memory_format=torch.channels_last)  # ~8x faster depthwise convs on the CPU
        logits = fit_members.predict_logits(model, cache[score_idx], res.spec.mean, res.spec.std,
                                            device=device, channels_last=True)
    payload = {"spec": res.spec.to_dict(), "state_dict": res.state_dict, "best_epoch": res.best_epoch,
               "best_val_auc": res.best_val_auc, "history": res.history,
               "images_per_second": res.images_per_second,
               "train_idx": train_idx, "score_idx": score_idx, "scores": sigmoid(logits)}
    fit_members.save_checkpoint(result_path, payload)  # same atomic torch.save as last.pt
    (job_dir / "last.pt").unlink(missing_ok=True)  # the finished result supersedes it
    return payload


@dataclass(frozen=True)
class MemberJob:
    """One member training: k-1 folds -> out-of-fold scores, or the whole train split -> the
    shipped member (``fold`` None)."""
    member_index: int
    spec: MemberSpec
    fold: int | None
    train_idx: np.ndarray
    score_idx: np.ndarray
    seed: int
    job_dir: Path


def member_jobs(frame: pd.DataFrame, specs: list[MemberSpec], folds: int, seed: int,
                run_dir: Path) -> list[MemberJob]:
    """Every member job of a run, in the order the serial loop runs them."""
    train_idx = np.flatnonzero(frame["split"] == "train")
    val_idx = np.flatnonzero(frame["split"] == "val")
    test_idx = np.flatnonzero(frame["split"] == "test")
    fold_of = frame.loc[train_idx, "fold"].to_numpy()
    jobs = []
    for m, spec in enumerate(specs):
        for fold in range(folds):
            jobs.append(MemberJob(m, spec, fold, train_idx[fold_of != fold], train_idx[fold_of == fold],
                                  seed + 1000 * (fold + 1) + m, run_dir / "jobs" / spec.member_id / f"fold{fold}"))
        jobs.append(MemberJob(m, spec, None, train_idx, np.concatenate([val_idx, test_idx]), seed + m,
                              run_dir / "jobs" / spec.member_id / "final"))
    return jobs


def _job_costs(jobs: list[MemberJob]) -> dict[Path, float]:
    """Relative training cost of each job (parameters x training images), for longest-first
    scheduling; each architecture is built once."""
    params: dict[str, int] = {}
    for job in jobs:
        if job.spec.member_id not in params:
            params[job.spec.member_id] = sum(p.numel() for p in job.spec.build_model().parameters())
    return {job.job_dir: params[job.spec.member_id] * len(job.train_idx) for job in jobs}


def _claim_gpu(slots: Any) -> None:
    """Worker-process initialiser: worker k trains on GPU k mod (number of GPUs)."""
    import torch

    slot = slots.get()
    if torch.cuda.is_available():
        torch.cuda.set_device(slot % torch.cuda.device_count())


def _parallel_job(job: MemberJob, cache_path: str, frame: pd.DataFrame, cfg: dict[str, Any],
                  init_path: str | None, stop_at: float | None, threads: int) -> str:
    """Worker-process entry: one job, its result left in ``job.job_dir/result.pt``."""
    import torch

    torch.set_num_threads(threads)
    cache = np.load(cache_path, mmap_mode="r")
    val_idx = np.flatnonzero(frame["split"] == "val")
    run_member_job(job.spec, cache, frame, job.train_idx, val_idx, job.score_idx, cfg, job.job_dir,
                   job.seed, init_path, progress=False, stop_at=stop_at)
    return f"{job.spec.member_id} {'final' if job.fold is None else f'fold {job.fold + 1}'}"


def run_jobs_in_parallel(jobs: list[MemberJob], cache_paths: dict[str, str], frame: pd.DataFrame,
                         cfg: dict[str, Any], workers: int, stop_at: float | None, log: Any = LOG.info) -> None:
    """Run member jobs in ``workers`` processes, longest first, worker k on GPU k mod the
    number of GPUs; each job leaves its cached result, so the serial pass that follows only
    loads them. A failed job stops the run with one line naming it.

    Pays off with one worker per GPU. Several workers on one GPU do not help (measured on an
    H100: processes are time-sliced, each ran at ~1/8 speed with 8 of them, and 6 EfficientNet
    workers at batch 128 ran out of its 80 GB)."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pending = [j for j in jobs if not (j.job_dir / "result.pt").is_file()]
    cost = _job_costs(pending)
    pending.sort(key=lambda j: cost[j.job_dir], reverse=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    init_cfg = cfg["members"].get("init") or {}
    log(f"      {len(pending)} jobs in {workers} worker processes ({threads} CPU threads each)")
    # spawn: CUDA cannot be used in a forked child
    context = mp.get_context("spawn")
    slots = context.Queue()
    for k in range(workers):
        slots.put(k)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_claim_gpu,
                             initargs=(slots,)) as pool:
        futures = {pool.submit(_parallel_job, j, cache_paths[j.spec.member_id], frame, cfg,
                               init_cfg.get(j.spec.family), stop_at, threads): j for j in pending}
        for future in as_completed(futures):
            try:
                log(f"      done: {future.result()}")
            except Exception as err:
                for other in futures:
                    other.cancel()  # queued jobs; running ones finish and keep their results
                job = futures[future]
                what = f"{job.spec.member_id} {'final' if job.fold is None else f'fold {job.fold + 1}'}"
                detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
                hint = (" - the GPU ran out of memory: use fewer --workers or a smaller train.batch_size"
                        if "out of memory" in str(err).lower() else "")
                raise InputError(f"member job {what} failed: {detail}{hint}. Finished jobs are kept; "
                                 "rerun with --resume to continue") from err


# ----------------------------------------------------------------------------- thresholds ----
def selection_rule(stacker_cfg: dict[str, Any]) -> str:
    """The stacker-selection rule in words, for the manifest and model card."""
    prefer, within = stacker_cfg.get("prefer"), float(stacker_cfg.get("prefer_within") or 0.0)
    rule = "best grouped-CV ROC AUC"
    if prefer and within > 0:
        rule += f", except {prefer} when its CV AUC is within {within:g} of the best"
    return rule


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: str, target_sensitivity: float = 0.9) -> float:
    from training import stats

    if rule == "youden":
        return float(stats.youden_threshold(y, p).threshold)
    if rule == "target_sensitivity":
        return float(stats.threshold_for_sensitivity(y, p, target_sensitivity).threshold)
    raise InputError(f"unknown threshold rule {rule!r} (use youden or target_sensitivity)")


def _auc_or_none(y: np.ndarray, p: np.ndarray) -> float | None:
    auc = roc_auc(y, p)
    return None if math.isnan(auc) else auc


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "timm", "grad-cam", "scikit-learn", "numpy", "pydicom", "safetensors", "lightgbm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# ----------------------------------------------------------------------------- main ----------
def fit(cfg: dict[str, Any], *, run_dir: Path, resume: bool, progress: bool = True,
        log: Any = LOG.info, workers: int = 1, members_only: bool = False,
        time_limit_min: float | None = None) -> Path:
    """Run (or resume) the whole pipeline; returns the published release folder.

    ``workers`` > 1 trains member jobs in that many processes, one per GPU (see
    ``run_jobs_in_parallel``). ``members_only`` stops after the member jobs
    (e.g. on a rented GPU); ``--resume`` on the same run folder finishes it. ``time_limit_min``
    ends each member job after the first epoch past that many minutes from now; the manifest
    records the epochs each member actually ran.
    """
    from safetensors.torch import save as save_safetensors

    seed = int(cfg["seed"])
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / "config.yaml"
    if marker.exists() and not resume:
        raise InputError(f"run folder {run_dir} already holds a run; pass --resume to continue it "
                         "or choose another output.run_dir")
    if marker.exists() and resume:
        import yaml

        previous = yaml.safe_load(marker.read_text(encoding="utf-8")) or {}
        old, new = _resume_view(previous), _resume_view(cfg)
        changed = sorted(k for k in TRAINING_KEYS if old.get(k) != new.get(k))
        if changed:
            raise InputError(f"--resume: the config differs from the one saved in {marker} in "
                             f"{', '.join(changed)}; resume with the same training settings")
    band = indeterminate_band(cfg)  # a bad band fails here, not after the member jobs
    atomic_write_text(marker, dump_config(cfg))
    # A bad localiser.path fails here, not after the member jobs.
    localiser_path = (cfg.get("localiser") or {}).get("path")
    localiser_files = (fit_localiser.release_files(Path(localiser_path), bool(cfg["output"].get("fp16", False)))
                       if localiser_path else None)

    log(f"[1/6] cases: {cfg['data']['cases']}")
    frame = load_cases(cfg, log)
    fingerprint = data_fingerprint(frame)
    counts = frame.groupby("split")["label"].agg(["count", "sum"]).to_dict("index")
    log("      " + ", ".join(f"{k}: {v['count']} ({v['sum']} positive)" for k, v in counts.items()))

    frame["sha256"] = image_hashes(frame)
    externals = load_externals(cfg, frame, log)

    specs = member_specs(cfg)
    train_idx = np.flatnonzero(frame["split"] == "train")
    val_idx = np.flatnonzero(frame["split"] == "val")
    test_idx = np.flatnonzero(frame["split"] == "test")
    if len(val_idx) == 0 or frame.loc[val_idx, "label"].nunique() < 2:
        raise InputError("the validation split needs both classes; add cases or change data.split_ratios")
    init_cfg = cfg["members"].get("init") or {}
    source = cfg["stacker"]["score_source"]
    folds = int(cfg["stacker"]["folds"]) if source == "oof" else 0

    log(f"[2/6] members: {', '.join(s.member_id for s in specs)}; "
        f"{folds} out-of-fold jobs + 1 final job each")
    stop_at = time.time() + 60 * float(time_limit_min) if time_limit_min else None
    jobs = member_jobs(frame, specs, folds, seed, run_dir)
    paths = {s.member_id: cache_path(s, run_dir / "cache", fingerprint) for s in specs}
    by_path: dict[Path, np.ndarray] = {}  # members with one input size share one array
    for s in specs:
        if paths[s.member_id] not in by_path:
            by_path[paths[s.member_id]] = build_input_cache(frame, s, run_dir / "cache", fingerprint, progress)
    caches = {mid: by_path[path] for mid, path in paths.items()}
    trainable = str(cfg["train"].get("trainable", "all"))
    banks: dict[str, dict[str, np.ndarray]] = {}
    prefix_maps: dict[str, dict[str, np.ndarray]] = {}
    if trainable in ("head", "tail"):  # frozen starts: one feature bank per member serves all its jobs
        views = fit_heads.view_names(cfg["train"])
        for s in specs:
            banks[s.member_id] = fit_heads.feature_bank(
                s, init_cfg.get(s.family), caches[s.member_id], views, run_dir / "cache",
                paths[s.member_id].stem, train_rows=train_idx, log=log)
            pending = [j for j in jobs if j.spec.member_id == s.member_id and not (j.job_dir / "result.pt").is_file()]
            if trainable == "tail" and pending:  # and the frozen prefix's maps, for unfinished tail jobs
                prefix_maps[s.member_id] = fit_tails.prefix_maps(
                    s, init_cfg.get(s.family), caches[s.member_id], views, int(cfg["train"].get("tail_blocks", 2)),
                    train_idx, log=log)
        if workers > 1:
            log("      head mode: the jobs take seconds each, so they run in this process")
            workers = 1
    elif trainable != "all":
        raise InputError(f"train.trainable must be all, head or tail, not {trainable!r}")
    if workers > 1:
        run_jobs_in_parallel(jobs, {mid: str(path) for mid, path in paths.items()}, frame, cfg, workers,
                             stop_at, log)
    oof = np.full((len(frame), len(specs)), np.nan)
    finals: list[dict[str, Any]] = []
    for job in jobs:
        what = "final" if job.fold is None else f"fold {job.fold + 1}/{folds}"
        log(f"      {job.spec.member_id} {what}: train {len(job.train_idx)}, score {len(job.score_idx)}")
        res = run_member_job(job.spec, caches[job.spec.member_id], frame, job.train_idx, val_idx,
                             job.score_idx, cfg, job.job_dir, job.seed, init_cfg.get(job.spec.family),
                             progress, stop_at, bank=banks.get(job.spec.member_id),
                             maps=prefix_maps.get(job.spec.member_id))
        if job.fold is not None:
            oof[res["score_idx"], job.member_index] = res["scores"]
            continue
        full_scores = np.full(len(frame), np.nan)
        full_scores[res["score_idx"]] = res["scores"]
        res["full_scores"] = full_scores
        finals.append(res)
    if members_only:
        log(f"      members only: the run stops here; finish it with --resume --run-dir {run_dir}")
        return run_dir

    log("[3/6] stacker")
    member_ids = [s.member_id for s in specs]
    if bool(cfg["output"].get("fp16", False)):
        round_finals_to_stored_dtype(finals, caches)
    final_scores = np.column_stack([r["full_scores"] for r in finals])
    if source == "oof":
        fit_idx, fit_scores = train_idx, oof[train_idx]
    elif source == "holdout":
        fit_idx, fit_scores = val_idx, final_scores[val_idx]
    else:
        raise InputError(f"stacker.score_source must be oof or holdout, got {source!r}")
    if np.isnan(fit_scores).any():
        raise RuntimeError("internal error: missing out-of-fold scores for some training rows")

    def clinical_cols(idx: np.ndarray, source: pd.DataFrame = frame) -> tuple[list, list, list]:
        sub = source.iloc[idx]
        get = lambda c: sub[c].tolist() if c in sub else [None] * len(sub)  # noqa: E731
        return get("age"), get("sex"), get("site")

    ages_train = pd.to_numeric(frame.iloc[fit_idx].get("age"), errors="coerce")
    age_fill = float(np.nanmedian(ages_train)) if ages_train.notna().any() else 0.0
    X_fit = stacker_matrix(fit_scores, *clinical_cols(fit_idx), age_fill=age_fill)
    y_fit = frame["label"].to_numpy()[fit_idx]
    groups_fit = frame["group"].to_numpy()[fit_idx]
    chosen, stacker, comparison = fit_stacker.select_stacker(
        X_fit, y_fit, groups_fit, candidates=list(cfg["stacker"]["candidates"]),
        folds=int(cfg["stacker"]["cv_folds"]), seed=seed, prefer=cfg["stacker"].get("prefer"),
        prefer_within=float(cfg["stacker"].get("prefer_within") or 0.0),
        member_logits=member_logit_columns(cfg, X_fit))
    log("      " + ", ".join(f"{r['name']} {r['cv_auc']:.3f}" for r in comparison if r["cv_auc"] is not None)
        + f" -> {chosen}")
    n_members = len(member_ids)
    clinic = fit_stacker.fit_clinic_only(X_fit[:, n_members:], y_fit)
    cam_weights = fit_stacker.member_cam_weights(stacker, X_fit, y_fit, member_ids, seed)

    log("[4/6] threshold and metrics")

    def ensemble_probs(idx: np.ndarray, scores: np.ndarray = final_scores,
                       source: pd.DataFrame = frame) -> tuple[np.ndarray, np.ndarray]:
        X = stacker_matrix(scores[idx], *clinical_cols(idx, source), age_fill=age_fill)
        return stacker.predict_proba(X)[:, 1], clinic.predict_proba(X[:, n_members:])[:, 1]

    y_all = frame["label"].to_numpy()
    p_val, _ = ensemble_probs(val_idx)
    threshold = choose_threshold(y_all[val_idx], p_val, cfg["threshold"]["rule"],
                                 float(cfg["threshold"].get("target_sensitivity", 0.9)))
    calibration = fit_calibration(cfg, chosen, X_fit, y_fit, groups_fit, y_all[val_idx], p_val, seed, log)

    def prediction_frame(source: pd.DataFrame, idx: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        p_ens, p_clin = ensemble_probs(idx, scores, source)
        pred = source.iloc[idx][[c for c in ("image", "image_id", "subtype", "age", "sex", "site", "group")
                                 if c in source]].copy()
        pred.insert(0, "label", source["label"].to_numpy()[idx])
        pred["p_ensemble"] = p_ens
        for m, mid in enumerate(member_ids):
            pred[f"p_{mid}"] = scores[idx, m]
        pred["p_clinic"] = p_clin
        if calibration is not None:
            pred["calibrated_p_ensemble"] = calibration.apply(p_ens)
        return pred.reset_index(drop=True)

    predictions = {}
    for split_name, idx in (("val", val_idx), ("test", test_idx)):
        if len(idx) > 0:
            predictions[split_name] = prediction_frame(frame, idx, final_scores)
    for name, ext_frame in externals.items():
        log(f"      external set {name}: scoring {len(ext_frame)} cases with the final members")
        scores = score_with_finals(ext_frame, finals, run_dir / "cache", progress)
        predictions[f"external-{name}"] = prediction_frame(ext_frame, np.arange(len(ext_frame)), scores)
    metrics = {}
    for split_name, pred in predictions.items():
        y = pred["label"].to_numpy()
        metrics[split_name] = {"n": int(len(pred)), "n_positive": int(y.sum()),
                               "auc": {c.removeprefix("p_"): _auc_or_none(y, pred[c].to_numpy())
                                       for c in pred.columns if c.startswith("p_")}}
        log(f"      {split_name} AUC: " + ", ".join(
            f"{k} {v:.3f}" for k, v in metrics[split_name]["auc"].items() if v is not None))

    log("[5/6] reports")
    from training import report

    # Every model is reported at its own operating point, chosen on val by the same rule as
    # the ensemble's (the ensemble's threshold means nothing on a member's probability scale).
    val_pred = predictions["val"]
    model_thresholds = {c.removeprefix("p_"): choose_threshold(
        val_pred["label"].to_numpy(), val_pred[c].to_numpy(), cfg["threshold"]["rule"],
        float(cfg["threshold"].get("target_sensitivity", 0.9)))
        for c in val_pred.columns if c.startswith("p_") and c != "p_ensemble"}
    model_thresholds["ensemble"] = threshold
    report_dirs, split_metrics = {}, {}
    # One shared offline plotly.js for both reports keeps the release within its size budget.
    atomic_write_text(run_dir / "report" / "plotly.min.js", report.plotly_bundle())
    for split_name, pred in predictions.items():
        out = run_dir / "report" / split_name
        pred.to_csv(run_dir / f"predictions_{split_name}.csv", index=False)
        split_metrics[split_name] = report.write_report(pred, out, thresholds=model_thresholds, plotly_js=SPLIT_REPORT_PLOTLY_SRC,
                            title=f"{cfg['name']} {cfg['version']} - {split_name} split",
                            context={"zoo": f"{cfg['name']} {cfg['version']}", "split": split_name,
                                     "threshold rule": cfg["threshold"]["rule"] + " on val"})
        report_dirs[split_name] = out
    from training.evaluation import evaluation_block

    # The numbers a clinician elsewhere would get sit beside the internal test ones.
    evaluation = {"test": evaluation_block(predictions["test"], threshold=threshold, kind="internal",
                                           source=f"{cfg['data']['cases']} (test split)")} if "test" in predictions else {}
    for name in externals:
        evaluation[name] = evaluation_block(predictions[f"external-{name}"], threshold=threshold, kind="external",
                                            source=str(_external_source(cfg, name)))

    log("[6/6] release")
    import joblib

    parent = Path(cfg["output"]["zoo_parent"])
    fp16 = bool(cfg["output"].get("fp16", False))
    with ReleaseWriter(parent, cfg["name"], cfg["version"]) as rw:
        member_entries = []
        current = {s.member_id: s for s in specs}
        for res in finals:
            spec = MemberSpec.from_dict(res["spec"])
            # The CAM layer does not affect training: take it from the current family spec, so
            # a re-packaged run gets improved explanation settings without retraining.
            spec = spec.replace(cam_layer=current[spec.member_id].cam_layer,
                                cam_layout=current[spec.member_id].cam_layout)
            state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous()
                     for k, v in res["state_dict"].items()}
            rel = f"members/{spec.member_id}.safetensors"
            rw.write_bytes(rel, save_safetensors(state))
            rw.copy_file(f"logs/{spec.member_id}.csv", run_dir / "jobs" / spec.member_id / "final" / "log.csv")
            member_entries.append(MemberEntry(
                spec=spec, weights=rel, best_epoch=res["best_epoch"],
                best_val_auc=res["best_val_auc"], train_images_per_second=res["images_per_second"],
                epochs_run=len(res["history"]),
                init=init_cfg.get(spec.family) or "scratch", weights_dtype="float16" if fp16 else "float32",
                init_provenance=init_provenance(init_cfg.get(spec.family)),
                trainable=trainable,
            ))
        buf = io.BytesIO()
        joblib.dump({"stacker": stacker, "clinic": clinic}, buf, compress=3)
        rw.write_bytes("stacker.joblib", buf.getvalue())
        rw.write_text("config.yaml", dump_config(cfg))
        # Every row by content hash (paths relative to their table): which images trained,
        # chose and tested this release, and proof that no external image was among them.
        rw.write_text("data/cases.csv", frame[["image", "sha256", "split", "fold", "label"]].to_csv(index=False))
        for name, ext_frame in externals.items():
            rw.write_text(f"data/external-{name}.csv", ext_frame[["image", "sha256", "label"]].to_csv(index=False))
        localiser_entry = None
        if localiser_files:
            entry, localiser_bytes, _ = localiser_files
            localiser_entry = LocaliserInfo.from_dict(entry)
            rw.write_bytes(localiser_entry.weights, localiser_bytes)
        rw.copy_file("report/plotly.min.js", run_dir / "report" / "plotly.min.js")
        for split_name, out in report_dirs.items():
            for f in sorted(out.iterdir()):
                rw.copy_file(f"report/{split_name}/{f.name}", f)
        manifest = Manifest(
            name=cfg["name"], version=str(cfg["version"]),  # ReleaseWriter.publish sets both (and files)
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            profile=cfg.get("profile"),
            seed=seed,
            intended_use=INTENDED_USE,
            task=Task(name=cfg["task"]["name"], positive_class=cfg["task"]["positive_class"],
                      negative_class=cfg["task"]["negative_class"],
                      class_names=(cfg["task"]["negative_class"], cfg["task"]["positive_class"]),
                      label_map=cfg["task"].get("label_map")),
            preprocessing={
                "image": "grayscale float in [0,1]; DICOM: modality LUT, VOI LUT/window, MONOCHROME1 inverted",
                "roi": "ROI box + member roi_margin on each side, squared about its centre, shifted inside the image",
                "resize": "INTER_AREA when shrinking, bilinear when enlarging, to the member input_size",
                "normalisation": "training-set mean/std per member (spec.mean/std), grey replicated to 3 channels",
            },
            members=tuple(member_entries),
            stacker=StackerInfo(file="stacker.joblib", chosen=chosen, comparison=tuple(comparison),
                                selection=selection_rule(cfg["stacker"]),
                                features=tuple([f"p_{m}" for m in member_ids] + list(CLINICAL_FEATURES)),
                                score_source=source, folds=folds, age_fill=age_fill,
                                member_scores=str(cfg["stacker"].get("member_scores", "probability")),
                                imputation="age -> training median, sex/site -> 0.5, each with a *_missing indicator",
                                cam_weights=cam_weights,
                                cam_weights_rule="permutation importance (AUC) of each member score in the stacker"),
            clinic_model={"kind": "logistic regression", "features": list(CLINICAL_FEATURES)},
            threshold=ThresholdInfo(value=threshold, rule=cfg["threshold"]["rule"], chosen_on="val",
                                    indeterminate_band=band, per_model=model_thresholds,
                                    value_calibrated=float(calibration.apply(threshold)) if calibration else None),
            calibration=calibration,
            evaluation=evaluation,
            metrics=metrics,
            data=DataInfo(source=str(cfg["data"]["cases"]), fingerprint=fingerprint, n_cases=int(len(frame)),
                          splits={k: {"n": int(v["count"]), "positive": int(v["sum"])} for k, v in counts.items()},
                          rows="data/cases.csv",
                          external={name: ExternalData(source=str(_external_source(cfg, name)), n=int(len(f)),
                                                       rows=f"data/external-{name}.csv")
                                    for name, f in externals.items()}),
            library_versions=library_versions(),
            localiser=localiser_entry,
        )
        rw.write_text("MODEL_CARD.md", model_card(cfg, manifest, split_metrics))
        final = rw.publish(manifest)
    log(f"      release written: {final}")
    return final


def training_recipe(train: dict[str, Any]) -> str:
    """One line naming the optimiser, schedule, epochs and augmentation actually configured."""
    if str(train.get("trainable", "all")) in ("head", "tail"):
        from training.fit_heads import view_names

        grid = train.get("head_c_grid") or "0.001-1"
        tail = ""
        if str(train.get("trainable")) == "tail":
            tail = (f"; then the last {train.get('tail_blocks', 2)} blocks + head fine-tuned on the frozen prefix's "
                    f"cached maps (AdamW lr {train.get('tail_lr', 1e-4)}, cosine, {train.get('tail_epochs', 6)} epochs, "
                    "BatchNorm frozen, one random training view per crop and epoch; best epoch by val AUC, 0 = head only)")
        return ("frozen pretrained backbone; linear head = L2 logistic regression on its standardised pooled "
                f"features (inverse strength C from {grid}, chosen by val AUC); training views: "
                f"{', '.join(view_names(train))}{tail}")
    opt = str(train.get("optimizer", "sgd")).lower()
    opt_text = (f"SGD (momentum {train.get('momentum', 0.9)})" if opt == "sgd" else "AdamW") + \
        f" lr {train['lr']}, weight decay {train.get('weight_decay', 0)}"
    if str(train.get("schedule", "step")).lower() == "cosine":
        sched = f"cosine decay with {train.get('warmup_epochs', 0)} warm-up epoch(s)"
    else:
        sched = f"lr x{train.get('lr_gamma', 0.1)} every {train['lr_step']} epochs"
    aug = [name for name, on in (("horizontal flips", train.get("hflip", True)),
                                 ("vertical flips", train.get("vflip", True)),
                                 ("affine jitter", bool(train.get("affine"))),
                                 ("intensity jitter", bool(train.get("intensity")))) if on]
    return (f"{opt_text}; {sched}; {train['epochs']} epochs, batch {train['batch_size']}; "
            f"augmentation: {', '.join(aug) or 'none'}")


def target_sentences(models: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    """Computed statements about the test-split targets (never hand-written): the ensemble
    against the best single member and, if configured, against ``targets.ensemble_auc``."""
    auc = {k: v.get("auc") for k, v in models.items() if v.get("auc") is not None}
    if "ensemble" not in auc:
        return []
    members = {k: v for k, v in auc.items() if k not in ("ensemble", "clinic")}
    out = []
    if members:
        best = max(members, key=members.get)
        relation = "above" if auc["ensemble"] > members[best] else "not above"
        out.append(f"- Ensemble test AUC {auc['ensemble']:.3f} is {relation} the best single member "
                   f"({best} {members[best]:.3f}).")
    if targets.get("ensemble_auc") is not None:
        goal = float(targets["ensemble_auc"])
        met = "met" if auc["ensemble"] >= goal else "NOT met"
        out.append(f"- Target ensemble AUC >= {goal:.2f}: {met}.")
    return out


def start_text(entry: MemberEntry) -> str:
    prov = entry.init_provenance
    if prov:
        return f"{prov.get('name', '?')} ({prov.get('package', '?')} {prov.get('package_version', '')})".strip()
    return "scratch" if (entry.init or "scratch") == "scratch" else Path(str(entry.init)).name


def prov_line(prov: Mapping[str, Any]) -> str:
    """One model-card line per converted start: where it came from, its licence and hash."""
    sha = str(prov.get("output_sha256") or prov.get("sha256") or "")[:16]
    parts = [f"`{prov.get('name', '?')}`: {prov.get('description') or prov.get('timm_arch', '')}",
             f"from PyPI `{prov.get('package', '?')}=={prov.get('package_version', '?')}`",
             f"licence {prov.get('licence', 'not stated')}"]
    if prov.get("provenance"):
        parts.append(str(prov["provenance"]))
    if sha:
        parts.append(f"sha256 `{sha}...`")
    return "; ".join(parts)


def proposal_time(loc: LocaliserInfo) -> str:
    """The localiser's median time per image, saying where it was measured."""
    timed = loc.proposal_seconds_median
    if timed.get("seconds") is not None:
        return (f"median {timed['seconds']:.3f} s per image on {timed['cpu_count']} CPU cores "
                f"({timed['torch_threads']} torch threads)")
    seconds = loc.metrics.get("seconds_per_image_median")
    return f"median {seconds:.3f} s per image where it was trained" if seconds is not None else "time not measured"


def card_with_section(source_card: str, old_title: str, new_title: str, heading: str, section: str,
                      before: str | None = None) -> str:
    """An ``add-*`` command's model card: the source release's card (every section it has) with the
    new version in its title and ``section`` (starting with ``heading``) inserted before the
    heading ``before`` (appended when None or absent), replacing an older section under ``heading``."""
    text = source_card
    first, _, rest = text.partition("\n")
    if old_title in first:
        text = first.replace(old_title, new_title) + "\n" + rest
    if heading in text:
        start = text.index(heading)
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + (text[nxt + 1:] if nxt >= 0 else "")
    if before and before in text:
        i = text.index(before)
        return text[:i] + section.strip() + "\n\n" + text[i:]
    return text.rstrip() + "\n\n" + section.strip() + "\n"


def model_card(cfg: dict[str, Any], manifest: Manifest, reports: dict[str, Any] | None = None) -> str:
    from model_zoo.validation_text import plain_summary

    m = manifest
    band = DEFAULT_INDETERMINATE_BAND if m.threshold.indeterminate_band is None else m.threshold.indeterminate_band
    # Words before statistics (issue 17): the Zoo page opens with the same sentences.
    plain = plain_summary(m.evaluation, m.task.positive_class, m.task.negative_class)
    lines = [
        f"# Model card: {cfg['name']} {cfg['version']}", "",
        *(["## In plain words", plain, ""] if plain else []),
        "## Intended use", m.intended_use, "",
        "## Task",
        f"{m.task.positive_class} (positive) vs {m.task.negative_class} (negative), "
        "from an ROI crop of a radiograph plus age, sex and lesion site.", "",
        "## Training",
        f"- Profile: `{m.profile}`; seed {m.seed}; data: `{m.data.source}` "
        f"({m.data.n_cases} cases; fingerprint `{m.data.fingerprint[:16]}`)",
        "- Splits: " + ", ".join(f"{k} {v['n']} ({v['positive']} positive)" for k, v in m.data.splits.items()),
        f"- Stacker: {m.stacker.chosen} chosen by {m.stacker.selection or 'best grouped-CV ROC AUC'} "
        f"on {m.stacker.score_source} member scores"
        + (" (as log-odds)" if m.stacker.member_scores == "logit" else ""),
        f"- Threshold {m.threshold.value:.4f} ({m.threshold.rule} on the val split); a probability "
        f"within {band:.2f} of it (on the shown "
        "scale), or one that an ROI-jitter box flips, is reported as indeterminate",
        "- Recipe: " + training_recipe(cfg["train"]), "",
        "## Members", "",
        "| member (family role) | architecture | input | start | trained | best epoch | val AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    planned = int(cfg["train"]["epochs"])
    for e in m.members:
        s = e.spec
        ran = planned if e.epochs_run is None else e.epochs_run
        if e.trainable == "head":
            ran_text = "head only (frozen backbone)"
        elif e.trainable == "tail":
            ran_text = f"head, then the last {cfg['train'].get('tail_blocks', 2)} blocks fine-tuned"
        else:
            ran_text = f"{ran} epochs" if ran >= planned else f"{ran} of {planned} epochs (time limit)"
        lines.append(f"| {s.member_id} ({s.family}) | {s.arch} | {s.input_size} px | "
                     f"{start_text(e)} | {ran_text} | {e.best_epoch} | {e.best_val_auc:.3f} |")
    starts = [e.init_provenance for e in m.members if e.init_provenance]
    if starts:
        lines += ["", "Pretrained starts (converted from PyPI packages by `python -m training pretrained "
                  "convert`; nothing downloaded from a model hub):", ""]
        for prov in starts:
            lines.append(f"- {prov_line(prov)}")
    lines += ["", "## Data", ""]
    card = cfg.get("model_card") or {}
    if card.get("data"):
        lines.append(card["data"])
    ratios = ":".join(f"{r:g}" for r in cfg["data"]["split_ratios"])
    lines.append(f"Source table `{m.data.source}`; group-aware stratified {ratios} train/val/test split "
                 "(no probable same-patient group crosses splits).")
    lines += ["", "## Metrics", ""]
    for split_name, block in m.metrics.items():
        aucs = ", ".join(f"{k} {v:.3f}" for k, v in block["auc"].items() if v is not None)
        lines.append(f"- {split_name} ROC AUC (n={block['n']}, {block['n_positive']} positive): {aucs}")
    test = (reports or {}).get("test")
    if test:
        lines += ["", "Internal test split at each model's val-chosen threshold (AUC: DeLong 95 % CI; "
                  "proportions: Wilson 95 % CI):", "",
                  "| model | AUC | sensitivity | specificity | accuracy |", "|---|---|---|---|---|"]

        def fmt(block: dict, key: str) -> str:
            value, ci = block.get(key), block.get(f"{key}_ci") or [None, None]
            if value is None:
                return "n/a"
            return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if None not in ci else f"{value:.3f}"

        for name, block in test["models"].items():
            lines.append(f"| {name} | {fmt(block, 'auc')} | {fmt(block, 'sensitivity')} | "
                         f"{fmt(block, 'specificity')} | {fmt(block, 'accuracy')} |")
        lines += ["", *target_sentences(test["models"], card.get("targets") or {})]
    evaluation = m.evaluation or {}
    if evaluation:
        from training.evaluation import format_evaluation_table

        lines += ["", "## At a hospital the model has not seen", "",
                  "Internal test (centre of the training data) beside every external set (never used for "
                  "fitting, calibrating or choosing the threshold):", "",
                  *format_evaluation_table(dict(evaluation))]
    cal = m.calibration
    if cal:
        value_calibrated = m.threshold.value_calibrated
        shown = "n/a" if value_calibrated is None else f"{value_calibrated:.3f}"
        lines += ["", "## Calibration", "",
                  f"Platt scaling of the ensemble probability (slope {cal.slope:.3f}, intercept "
                  f"{cal.intercept:.3f}), fitted on {cal.fit_on} predictions of {cal.n} internal "
                  f"cases ({cal.n_positive} positive). The operating threshold "
                  f"{m.threshold.value:.3f} is {shown} on the "
                  "calibrated scale: the call is the same on both."]
    lines += ["", "Full tables and figures: `report/<split>/report.html`.", "", "## Localiser", ""]
    loc = m.localiser
    if loc:
        t = loc.metrics.get("test", {})
        spec = loc.spec

        def num(v: Any) -> str:
            return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"

        lines.append(f"Auto-crop U-Net ({spec.input_size} px input, width "
                     f"{spec.base_channels}); internal test: mean IoU {num(t.get('mean_iou'))}, "
                     f"IoU > 0.3 on {num(t.get('frac_iou_gt_0_3'))} and > 0.5 on {num(t.get('frac_iou_gt_0_5'))} "
                     f"of {t.get('n_lesion')} lesions (annotator boxes); {proposal_time(loc)}. "
                     f"Trained {loc.metrics.get('epochs_run', '?')} epochs (best {loc.metrics.get('best_epoch', '?')}"
                     f"{'; time limit' if loc.metrics.get('epochs_run', 0) < loc.metrics.get('epochs_planned', 0) else ''}) "
                     f"on {loc.data or '?'}.")
        by_source = loc.ensemble_auc_by_roi_source
        if by_source:
            lines += ["", "Ensemble ROC AUC by where the ROI comes from (same cases, same models):", "",
                      "| split | n | annotator box | localiser box | whole image |", "|---|---|---|---|---|"]
            rows = [*by_source.items(), *((f"{k} (external)", v) for k, v in loc.external.items())]
            for split_name, row in rows:
                lines.append(f"| {split_name} | {row['n']} | {num(row.get('annotator'))} | "
                             f"{num(row.get('localiser'))} | {num(row.get('whole_image'))} |")
        for name, ext in loc.external.items():
            iou = ext.get("iou") or {}
            lines += ["", f"At {name}, a hospital it never saw: mean IoU {num(iou.get('mean_iou'))} with the "
                      f"annotator boxes, IoU > 0.3 on {num(iou.get('frac_iou_gt_0_3'))} and > 0.5 on "
                      f"{num(iou.get('frac_iou_gt_0_5'))} of {iou.get('n_lesion')} lesions."]
    else:
        lines.append("None in this release: auto-crop falls back to the whole image (and says so).")
    lines += ["", "## What it is not / limitations", ""]
    lines += [f"- {item}" for item in card.get("not", [])]
    lines += ["- Trained from scratch unless a member's start says otherwise; small data.",
              "- Not validated for clinical use; not a medical device.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training fit",
                                description="Train the members and the stacker into a zoo release.")
    p.add_argument("--config", default="cpu", help="config file or name in training/configs (paper, cpu, tiny)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=5")
    p.add_argument("--cases", help="shortcut for data.cases=PATH")
    p.add_argument("--out", help="shortcut for output.zoo_parent=DIR (releases are written inside)")
    p.add_argument("--run-dir", help="working folder for caches, checkpoints and logs")
    p.add_argument("--init", action="append", default=[], metavar="[FAMILY=]PATH",
                   help="local initial weights (safetensors/torch state dict), for all members or one family")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    p.add_argument("--workers", type=int, default=1,
                   help="member jobs trained at once, each in its own process on its own GPU "
                        "(worker k uses GPU k mod the GPU count; on one GPU keep 1)")
    p.add_argument("--members-only", action="store_true",
                   help="stop after the member jobs; finish later with --resume")
    p.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="end each member job after the first epoch past this many minutes from now "
                        "(recorded per member as epochs_run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    args = build_parser().parse_args(argv)
    try:
        overrides = list(args.overrides)
        if args.cases:
            overrides.append(f"data.cases={args.cases}")
        if args.out:
            overrides.append(f"output.zoo_parent={args.out}")
        cfg = load_config(args.config, overrides)
        from model_zoo.members import FAMILIES

        for item in args.init:
            family, _, path = item.rpartition("=")
            targets = [family] if family else list(cfg["members"]["families"])
            for fam in targets:
                if fam not in FAMILIES:
                    raise InputError(f"--init: unknown family {fam!r}")
                cfg["members"].setdefault("init", {})
                cfg["members"]["init"][fam] = str(Path(path).resolve())
        run_dir = Path(args.run_dir or cfg["output"].get("run_dir") or f"runs/{cfg['name']}-{cfg['version']}")
        if args.workers < 1:
            raise InputError("--workers must be 1 or more")
        fit(cfg, run_dir=run_dir, resume=args.resume, progress=not args.quiet, workers=args.workers,
            members_only=args.members_only, time_limit_min=args.time_limit)
    except ZooError as err:
        LOG.error(f"error: {err}")
        return 2
    return 0
