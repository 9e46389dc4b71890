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

In code, :func:`fit` runs six phases, each a function of typed inputs (the config as
:class:`training.config.FitConfig`) returning a typed result: :func:`prepare_data` (1-2),
:func:`fit_member_jobs` (3-4), :func:`stacker_inputs` (the out-of-fold scores),
:func:`fit_stacker_phase` (5), :func:`evaluate` (6-7) and
:func:`training.release.write_release` (the manifest, model card and release folder).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
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
from model_zoo.members import MemberSpec, family_spec
from model_zoo.zoo import SPLIT_REPORT_PLOTLY_SRC, atomic_write_text
from training import fit_heads, fit_localiser, fit_members, fit_stacker, fit_tails
from training.config import TRAINING_KEYS, FitConfig, StackerConfig, dump_config, load_config, resume_view
from training.release import ReleaseInputs, init_provenance, write_release
from training.data import data_fingerprint, image_hashes, load_cases

LOG = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data ----------
def load_externals(config: FitConfig, frame: pd.DataFrame, log: Any = LOG.info) -> dict[str, pd.DataFrame]:
    """``external: [{name, cases}]``: hospitals the release never trains on, only measures on.

    Refused when any external image is byte-identical to a row of the training table: a
    number measured on seen images would be reported as 'a hospital it has not seen'."""
    out: dict[str, pd.DataFrame] = {}
    known = set(frame["sha256"])
    for entry in config.external:
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("cases"):
            raise InputError(f"external: each entry needs a name and a cases table, got {entry!r}")
        name = str(entry["name"])
        if not name.replace("-", "").replace("_", "").isalnum() or name in out:
            raise InputError(f"external: names must be unique and alphanumeric (- and _ allowed), got {name!r}")
        table = read_case_table(entry["cases"], label_map=config.task.label_map, require_label=True)
        ext = table.frame[table.frame["row_error"] == ""].reset_index(drop=True)
        if len(ext) == 0:
            raise InputError(f"external set {name}: no usable labelled rows in {entry['cases']}")
        ext["label"] = ext["label"].astype(int)
        ext["sha256"] = image_hashes(ext)
        shared = int(ext["sha256"].isin(known).sum())
        if shared:
            raise InputError(
                f"external set {name}: {shared} of its images are also in the training case "
                "table; an external set must be a hospital the model has not seen"
            )
        log(
            f"      external set {name}: {len(ext)} cases ({int(ext['label'].sum())} positive), "
            f"{len(table.errors)} rows skipped; no image shared with the training table"
        )
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
        res["state_dict"] = {k: (v.half().float() if v.is_floating_point() else v) for k, v in res["state_dict"].items()}
        model = fit_members.build_model_from_state(spec, res["state_dict"]).to(memory_format=torch.channels_last)
        idx = res["score_idx"]
        res["full_scores"][idx] = sigmoid(
            fit_members.predict_logits(model, caches[spec.member_id][idx], spec.mean, spec.std, channels_last=True)
        )


def score_with_finals(source: pd.DataFrame, finals: list[dict[str, Any]], cache_dir: Path, progress: bool) -> np.ndarray:
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


def member_logit_columns(stacker: StackerConfig, X_fit: np.ndarray) -> int:
    """How many leading stacker columns the candidates turn into log-odds: the member scores
    with ``stacker.member_scores: logit``, none with ``probability`` (the paper's stacker)."""
    kind = stacker.member_scores
    if kind not in ("probability", "logit"):
        raise InputError(f"stacker.member_scores must be probability or logit, not {kind!r}")
    return X_fit.shape[1] - len(CLINICAL_FEATURES) if kind == "logit" else 0


def fit_calibration(
    config: FitConfig,
    chosen: str,
    X_fit: np.ndarray,
    y_fit: np.ndarray,
    groups_fit: np.ndarray,
    y_val: np.ndarray,
    p_val: np.ndarray,
    log: Any = LOG.info,
) -> Calibration | None:
    """Platt calibration of the ensemble on internal data only (``calibration.fit_on``):
    ``oof`` = the chosen stacker's cross-validated probabilities on its own training rows,
    ``val`` = the val split (which also chose the checkpoints, heads and threshold)."""
    method = config.calibration.method
    if method in (None, "none"):
        return None
    if method != "platt":
        raise InputError(f"calibration.method must be platt or none, not {method!r}")
    fit_on = config.calibration.fit_on
    if fit_on == "oof":
        p_cv = fit_stacker.cross_val_probabilities(
            chosen,
            X_fit,
            y_fit,
            groups_fit,
            folds=config.stacker.cv_folds,
            seed=config.seed,
            member_logits=member_logit_columns(config.stacker, X_fit),
        )
        ok = ~np.isnan(p_cv)
        calibration = fit_platt(y_fit[ok], p_cv[ok], fit_on="oof")
    elif fit_on == "val":
        calibration = fit_platt(y_val, p_val, fit_on="val")
    else:
        raise InputError(f"calibration.fit_on must be oof or val, not {fit_on!r}")
    log(
        f"      calibration: Platt on {fit_on} (n={calibration.n}): slope {calibration.slope:.3f}, "
        f"intercept {calibration.intercept:.3f}"
    )
    return calibration


def row_box(row: pd.Series, size_wh: tuple[int, int]) -> roi.Box:
    cols = ("roi_x0", "roi_y0", "roi_x1", "roi_y1")
    if all(c in row and pd.notna(row[c]) for c in cols):
        return roi.validate_box(tuple(float(row[c]) for c in cols), size_wh)
    return roi.full_image_box(size_wh)


def cache_path(spec: MemberSpec, cache_dir: Path, fingerprint: str) -> Path:
    """Members with the same input size and ROI margin share one crop cache."""
    return cache_dir / f"crops_{spec.input_size}_{spec.roi_margin:g}_{fingerprint[:16]}.npy"


def build_input_cache(
    frame: pd.DataFrame, spec: MemberSpec, cache_dir: Path, fingerprint: str, progress: bool = True
) -> np.ndarray:
    """(N, S, S) uint8 crops for every row, computed once and kept on disk for --resume."""
    from tqdm.auto import tqdm

    path = cache_path(spec, cache_dir, fingerprint)
    if path.is_file():
        return np.load(path)
    out = np.zeros((len(frame), spec.input_size, spec.input_size), np.uint8)
    for i, row in enumerate(
        tqdm(list(frame.itertuples(index=False)), desc=f"cache {spec.input_size}px", disable=not progress, leave=False)
    ):
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


def init_normalisation(family: str, init_path: str | None) -> dict[str, tuple[float, ...]]:
    """``members.normalisation: init``: the mean/std the start's weights were trained with."""
    record = init_provenance(init_path)
    if not record or "mean" not in record or "std" not in record:
        raise InputError(
            f"members.normalisation=init: {family} needs a converted start with its provenance "
            f"(<name>.json beside the weights, from `python -m training pretrained convert`); "
            f"got {init_path or 'no members.init entry'}"
        )
    return {"mean": tuple(float(v) for v in record["mean"]), "std": tuple(float(v) for v in record["std"])}


def run_member_job(
    spec: MemberSpec,
    cache: np.ndarray,
    frame: pd.DataFrame,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    score_idx: np.ndarray,
    config: FitConfig,
    job_dir: Path,
    seed: int,
    init_path: str | None,
    progress: bool,
    stop_at: float | None = None,
    bank: dict[str, np.ndarray] | None = None,
    maps: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
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
        k = config.train.tail_blocks
        res = fit_tails.fit_tail(
            spec,
            init_path,
            bank,
            maps,
            np.flatnonzero(frame["split"] == "train"),
            y,
            train_idx,
            val_idx,
            config.train.settings,
            seed,
        )
        job_dir.mkdir(parents=True, exist_ok=True)
        fit_members.write_log(job_dir / "log.csv", res.history)
        logits = fit_tails.tail_scores(res, maps, score_idx, k)
        drift = fit_heads.forward_check(res, cache[score_idx[:8]], logits[:8])
        if drift > 5e-2:  # the cached prefix is float16
            raise RuntimeError(
                f"internal error: {spec.member_id}'s tail on cached maps disagrees with its forward pass by {drift:.2g} logits"
            )
    elif bank is not None:
        assert init_path is not None
        res, weight, bias = fit_heads.fit_head(spec, init_path, bank, y, train_idx, val_idx, config.train.settings, seed)
        job_dir.mkdir(parents=True, exist_ok=True)
        fit_members.write_log(job_dir / "log.csv", res.history)
        logits = fit_heads.head_scores(weight, bias, bank, score_idx)
        probe = score_idx[:8]
        drift = fit_heads.forward_check(res, cache[probe], logits[:8])
        if drift > 1e-3:
            raise RuntimeError(
                f"internal error: {spec.member_id}'s folded head disagrees with its forward pass by {drift:.2g} logits"
            )
    else:
        normalisation = (spec.mean, spec.std) if config.members.normalisation == "init" else None
        res = fit_members.train_member(
            spec,
            cache[train_idx],
            y[train_idx],
            cache[val_idx],
            y[val_idx],
            config.train.settings,
            work_dir=job_dir,
            seed=seed,
            init_path=init_path,
            progress=progress,
            stop_at=stop_at,
            normalisation=normalisation,
        )
        device = "cuda" if torch.cuda.is_available() else "cpu"  # scored in float32 either way
        model = fit_members.build_model_from_state(res.spec, res.state_dict).to(device)
        model = model.to(memory_format=torch.channels_last)  # ~8x faster depthwise convs on the CPU
        logits = fit_members.predict_logits(
            model, cache[score_idx], res.spec.mean, res.spec.std, device=device, channels_last=True
        )
    payload = {
        "spec": res.spec.to_dict(),
        "state_dict": res.state_dict,
        "best_epoch": res.best_epoch,
        "best_val_auc": res.best_val_auc,
        "history": res.history,
        "images_per_second": res.images_per_second,
        "train_idx": train_idx,
        "score_idx": score_idx,
        "scores": sigmoid(logits),
    }
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


def member_jobs(frame: pd.DataFrame, specs: list[MemberSpec], folds: int, seed: int, run_dir: Path) -> list[MemberJob]:
    """Every member job of a run, in the order the serial loop runs them."""
    train_idx = np.flatnonzero(frame["split"] == "train")
    val_idx = np.flatnonzero(frame["split"] == "val")
    test_idx = np.flatnonzero(frame["split"] == "test")
    fold_of = frame.loc[train_idx, "fold"].to_numpy()
    jobs = []
    for m, spec in enumerate(specs):
        for fold in range(folds):
            jobs.append(
                MemberJob(
                    m,
                    spec,
                    fold,
                    train_idx[fold_of != fold],
                    train_idx[fold_of == fold],
                    seed + 1000 * (fold + 1) + m,
                    run_dir / "jobs" / spec.member_id / f"fold{fold}",
                )
            )
        jobs.append(
            MemberJob(
                m,
                spec,
                None,
                train_idx,
                np.concatenate([val_idx, test_idx]),
                seed + m,
                run_dir / "jobs" / spec.member_id / "final",
            )
        )
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


def _parallel_job(
    job: MemberJob,
    cache_path: str,
    frame: pd.DataFrame,
    config: FitConfig,
    init_path: str | None,
    stop_at: float | None,
    threads: int,
) -> str:
    """Worker-process entry: one job, its result left in ``job.job_dir/result.pt``."""
    import torch

    torch.set_num_threads(threads)
    cache = np.load(cache_path, mmap_mode="r")
    val_idx = np.flatnonzero(frame["split"] == "val")
    run_member_job(
        job.spec,
        cache,
        frame,
        job.train_idx,
        val_idx,
        job.score_idx,
        config,
        job.job_dir,
        job.seed,
        init_path,
        progress=False,
        stop_at=stop_at,
    )
    return f"{job.spec.member_id} {'final' if job.fold is None else f'fold {job.fold + 1}'}"


def run_jobs_in_parallel(
    jobs: list[MemberJob],
    cache_paths: dict[str, str],
    frame: pd.DataFrame,
    config: FitConfig,
    workers: int,
    stop_at: float | None,
    log: Any = LOG.info,
) -> None:
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
    log(f"      {len(pending)} jobs in {workers} worker processes ({threads} CPU threads each)")
    # spawn: CUDA cannot be used in a forked child
    context = mp.get_context("spawn")
    slots = context.Queue()
    for k in range(workers):
        slots.put(k)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_claim_gpu, initargs=(slots,)) as pool:
        futures = {
            pool.submit(
                _parallel_job,
                j,
                cache_paths[j.spec.member_id],
                frame,
                config,
                config.members.init_for(j.spec.family),
                stop_at,
                threads,
            ): j
            for j in pending
        }
        for future in as_completed(futures):
            try:
                log(f"      done: {future.result()}")
            except Exception as err:
                for other in futures:
                    other.cancel()  # queued jobs; running ones finish and keep their results
                job = futures[future]
                what = f"{job.spec.member_id} {'final' if job.fold is None else f'fold {job.fold + 1}'}"
                detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
                hint = (
                    " - the GPU ran out of memory: use fewer --workers or a smaller train.batch_size"
                    if "out of memory" in str(err).lower()
                    else ""
                )
                raise InputError(
                    f"member job {what} failed: {detail}{hint}. Finished jobs are kept; rerun with --resume to continue"
                ) from err


# ----------------------------------------------------------------------------- thresholds ----
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


# ----------------------------------------------------------------------------- phases --------
# ``fit`` runs six phases, each a function of typed inputs returning a typed result, so a phase
# can be read, tested or rerun on its own: prepare_data -> fit_member_jobs -> stacker_inputs
# (out-of-fold scores) -> fit_stacker_phase -> evaluate -> training.release.write_release.


@dataclass(frozen=True)
class PreparedData:
    """Phase 1: the case rows (split, fold, label, sha256), their fingerprint and external sets."""

    frame: pd.DataFrame
    fingerprint: str
    counts: dict[str, dict[str, Any]]  # split -> {"count", "sum"}
    externals: dict[str, pd.DataFrame]
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray


@dataclass(frozen=True)
class MemberRuns:
    """Phase 2: every member job's result."""

    specs: list[MemberSpec]
    caches: dict[str, np.ndarray]  # member id -> (N, S, S) uint8 input crops
    oof: np.ndarray  # (N, members) out-of-fold probabilities (NaN outside train)
    finals: list[dict[str, Any]]  # the final (shipped) member jobs, with ``full_scores``

    @property
    def member_ids(self) -> list[str]:
        return [s.member_id for s in self.specs]


@dataclass(frozen=True)
class StackerInputs:
    """Phase 3: the rows and member scores the stacker is fitted on (out-of-fold, or val for holdout)."""

    fit_idx: np.ndarray
    X_fit: np.ndarray  # member scores + CLINICAL_FEATURES
    y_fit: np.ndarray
    groups_fit: np.ndarray
    age_fill: float  # training median age, the fill for a missing age
    final_scores: np.ndarray  # (N, members) probabilities of the shipped members on every row


@dataclass(frozen=True)
class FittedStacker:
    """Phase 4: the chosen stacker, its comparison table, the clinic-only model, CAM weights."""

    chosen: str
    stacker: Any
    comparison: list[dict[str, Any]]
    clinic: Any
    cam_weights: dict[str, float]


@dataclass(frozen=True)
class Evaluated:
    """Phase 5: operating point, calibration, per-split predictions, metrics and reports."""

    threshold: float
    calibration: Calibration | None
    predictions: dict[str, pd.DataFrame]
    metrics: dict[str, Any]
    model_thresholds: dict[str, float]
    report_dirs: dict[str, Path]
    split_metrics: dict[str, Any]
    evaluation: dict[str, Any]


def prepare_data(config: FitConfig, log: Any = LOG.info) -> PreparedData:
    """Read and split the case table, hash every image, load the external sets."""
    log(f"[1/6] cases: {config.data.cases}")
    frame = load_cases(dict(config.raw), log)
    fingerprint = data_fingerprint(frame)
    counts = frame.groupby("split")["label"].agg(["count", "sum"]).to_dict("index")
    log("      " + ", ".join(f"{k}: {v['count']} ({v['sum']} positive)" for k, v in counts.items()))

    frame["sha256"] = image_hashes(frame)
    externals = load_externals(config, frame, log)
    train_idx = np.flatnonzero(frame["split"] == "train")
    val_idx = np.flatnonzero(frame["split"] == "val")
    test_idx = np.flatnonzero(frame["split"] == "test")
    if len(val_idx) == 0 or frame.loc[val_idx, "label"].nunique() < 2:
        raise InputError("the validation split needs both classes; add cases or change data.split_ratios")
    return PreparedData(frame, fingerprint, counts, externals, train_idx, val_idx, test_idx)


def fit_member_jobs(
    config: FitConfig,
    data: PreparedData,
    run_dir: Path,
    *,
    progress: bool = True,
    workers: int = 1,
    time_limit_min: float | None = None,
    log: Any = LOG.info,
) -> MemberRuns:
    """Input caches, then every member job (k out-of-fold jobs + the final one per member);
    finished jobs are loaded from their cached results (``--resume``)."""
    frame, train_idx, val_idx = data.frame, data.train_idx, data.val_idx
    specs = member_specs(dict(config.raw))
    folds = config.stacker.oof_folds
    log(f"[2/6] members: {', '.join(s.member_id for s in specs)}; {folds} out-of-fold jobs + 1 final job each")
    stop_at = time.time() + 60 * float(time_limit_min) if time_limit_min else None
    jobs = member_jobs(frame, specs, folds, config.seed, run_dir)
    paths = {s.member_id: cache_path(s, run_dir / "cache", data.fingerprint) for s in specs}
    by_path: dict[Path, np.ndarray] = {}  # members with one input size share one array
    for s in specs:
        if paths[s.member_id] not in by_path:
            by_path[paths[s.member_id]] = build_input_cache(frame, s, run_dir / "cache", data.fingerprint, progress)
    caches = {mid: by_path[path] for mid, path in paths.items()}
    trainable = config.train.trainable
    banks: dict[str, dict[str, np.ndarray]] = {}
    prefix_maps: dict[str, dict[str, np.ndarray]] = {}
    if trainable in ("head", "tail"):  # frozen starts: one feature bank per member serves all its jobs
        views = fit_heads.view_names(config.train.settings)
        for s in specs:
            banks[s.member_id] = fit_heads.feature_bank(
                s,
                config.members.init_for(s.family),
                caches[s.member_id],
                views,
                run_dir / "cache",
                paths[s.member_id].stem,
                train_rows=train_idx,
                log=log,
            )
            pending = [j for j in jobs if j.spec.member_id == s.member_id and not (j.job_dir / "result.pt").is_file()]
            if trainable == "tail" and pending:  # and the frozen prefix's maps, for unfinished tail jobs
                prefix_maps[s.member_id] = fit_tails.prefix_maps(
                    s,
                    config.members.init_for(s.family),
                    caches[s.member_id],
                    views,
                    config.train.tail_blocks,
                    train_idx,
                    log=log,
                    cache=(run_dir / "cache", paths[s.member_id].stem),
                )
        if workers > 1:
            log("      head mode: the jobs take seconds each, so they run in this process")
            workers = 1
    elif trainable != "all":
        raise InputError(f"train.trainable must be all, head or tail, not {trainable!r}")
    if workers > 1:
        run_jobs_in_parallel(jobs, {mid: str(path) for mid, path in paths.items()}, frame, config, workers, stop_at, log)
    oof = np.full((len(frame), len(specs)), np.nan)
    finals: list[dict[str, Any]] = []
    for job in jobs:
        what = "final" if job.fold is None else f"fold {job.fold + 1}/{folds}"
        log(f"      {job.spec.member_id} {what}: train {len(job.train_idx)}, score {len(job.score_idx)}")
        res = run_member_job(
            job.spec,
            caches[job.spec.member_id],
            frame,
            job.train_idx,
            val_idx,
            job.score_idx,
            config,
            job.job_dir,
            job.seed,
            config.members.init_for(job.spec.family),
            progress,
            stop_at,
            bank=banks.get(job.spec.member_id),
            maps=prefix_maps.get(job.spec.member_id),
        )
        if job.fold is not None:
            oof[res["score_idx"], job.member_index] = res["scores"]
            continue
        full_scores = np.full(len(frame), np.nan)
        full_scores[res["score_idx"]] = res["scores"]
        res["full_scores"] = full_scores
        finals.append(res)
    return MemberRuns(specs, caches, oof, finals)


def stacker_inputs(config: FitConfig, data: PreparedData, members: MemberRuns, log: Any = LOG.info) -> StackerInputs:
    """The stacker's training rows: out-of-fold member scores on train (``oof``) or the final
    members' scores on val (``holdout``), with age/sex/site. A float16 release first re-scores
    its final members with the weights it will store."""
    log("[3/6] stacker")
    frame = data.frame
    if config.output.fp16:
        round_finals_to_stored_dtype(members.finals, members.caches)
    final_scores = np.column_stack([r["full_scores"] for r in members.finals])
    source = config.stacker.score_source
    if source == "oof":
        fit_idx, fit_scores = data.train_idx, members.oof[data.train_idx]
    elif source == "holdout":
        fit_idx, fit_scores = data.val_idx, final_scores[data.val_idx]
    else:
        raise InputError(f"stacker.score_source must be oof or holdout, got {source!r}")
    if np.isnan(fit_scores).any():
        raise RuntimeError("internal error: missing out-of-fold scores for some training rows")
    ages_train = pd.to_numeric(frame.iloc[fit_idx].get("age"), errors="coerce")
    age_fill = float(np.nanmedian(ages_train)) if ages_train.notna().any() else 0.0
    X_fit = stacker_matrix(fit_scores, *clinical_columns(frame, fit_idx), age_fill=age_fill)
    return StackerInputs(
        fit_idx, X_fit, frame["label"].to_numpy()[fit_idx], frame["group"].to_numpy()[fit_idx], age_fill, final_scores
    )


def fit_stacker_phase(config: FitConfig, inputs: StackerInputs, member_ids: list[str], log: Any = LOG.info) -> FittedStacker:
    """Compare the candidate stackers by grouped CV AUC, refit the chosen one; fit the
    clinic-only model and the members' CAM weights beside it."""
    X_fit, y_fit = inputs.X_fit, inputs.y_fit
    chosen, stacker, comparison = fit_stacker.select_stacker(
        X_fit,
        y_fit,
        inputs.groups_fit,
        candidates=list(config.stacker.candidates),
        folds=config.stacker.cv_folds,
        seed=config.seed,
        prefer=config.stacker.prefer,
        prefer_within=config.stacker.prefer_within,
        member_logits=member_logit_columns(config.stacker, X_fit),
    )
    log("      " + ", ".join(f"{r['name']} {r['cv_auc']:.3f}" for r in comparison if r["cv_auc"] is not None) + f" -> {chosen}")
    clinic = fit_stacker.fit_clinic_only(X_fit[:, len(member_ids) :], y_fit)
    cam_weights = fit_stacker.member_cam_weights(stacker, X_fit, y_fit, member_ids, config.seed)
    return FittedStacker(chosen, stacker, comparison, clinic, cam_weights)


def clinical_columns(source: pd.DataFrame, idx: np.ndarray) -> tuple[list, list, list]:
    """Ages, sexes and sites of rows ``idx`` (None where a table has no such column)."""
    sub = source.iloc[idx]
    get = lambda c: sub[c].tolist() if c in sub else [None] * len(sub)  # noqa: E731
    return get("age"), get("sex"), get("site")


def ensemble_probabilities(
    fitted: FittedStacker, age_fill: float, scores: np.ndarray, idx: np.ndarray, source: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """(stacker, clinic-only) probabilities of rows ``idx`` from member scores ``scores``."""
    X = stacker_matrix(scores[idx], *clinical_columns(source, idx), age_fill=age_fill)
    n_members = scores.shape[1]
    return fitted.stacker.predict_proba(X)[:, 1], fitted.clinic.predict_proba(X[:, n_members:])[:, 1]


def evaluate(
    config: FitConfig,
    data: PreparedData,
    members: MemberRuns,
    inputs: StackerInputs,
    fitted: FittedStacker,
    run_dir: Path,
    *,
    progress: bool = True,
    log: Any = LOG.info,
) -> Evaluated:
    """Threshold on val, calibration, predictions and AUCs on val/test/external sets, the HTML
    reports, and the evaluation blocks (internal test beside every external set)."""
    log("[4/6] threshold and metrics")
    frame, val_idx, test_idx = data.frame, data.val_idx, data.test_idx
    member_ids = members.member_ids
    rule, target = config.threshold.rule, config.threshold.target_sensitivity
    y_all = frame["label"].to_numpy()
    p_val, _ = ensemble_probabilities(fitted, inputs.age_fill, inputs.final_scores, val_idx, frame)
    threshold = choose_threshold(y_all[val_idx], p_val, rule, target)
    calibration = fit_calibration(
        config, fitted.chosen, inputs.X_fit, inputs.y_fit, inputs.groups_fit, y_all[val_idx], p_val, log
    )

    def prediction_frame(source: pd.DataFrame, idx: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
        p_ens, p_clin = ensemble_probabilities(fitted, inputs.age_fill, scores, idx, source)
        pred = source.iloc[idx][
            [c for c in ("image", "image_id", "subtype", "age", "sex", "site", "group") if c in source]
        ].copy()
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
            predictions[split_name] = prediction_frame(frame, idx, inputs.final_scores)
    for name, ext_frame in data.externals.items():
        log(f"      external set {name}: scoring {len(ext_frame)} cases with the final members")
        scores = score_with_finals(ext_frame, members.finals, run_dir / "cache", progress)
        predictions[f"external-{name}"] = prediction_frame(ext_frame, np.arange(len(ext_frame)), scores)
    metrics = {}
    for split_name, pred in predictions.items():
        y = pred["label"].to_numpy()
        metrics[split_name] = {
            "n": int(len(pred)),
            "n_positive": int(y.sum()),
            "auc": {c.removeprefix("p_"): _auc_or_none(y, pred[c].to_numpy()) for c in pred.columns if c.startswith("p_")},
        }
        log(
            f"      {split_name} AUC: "
            + ", ".join(f"{k} {v:.3f}" for k, v in metrics[split_name]["auc"].items() if v is not None)
        )

    log("[5/6] reports")
    from training import report

    # Every model is reported at its own operating point, chosen on val by the same rule as
    # the ensemble's (the ensemble's threshold means nothing on a member's probability scale).
    val_pred = predictions["val"]
    model_thresholds = {
        c.removeprefix("p_"): choose_threshold(val_pred["label"].to_numpy(), val_pred[c].to_numpy(), rule, target)
        for c in val_pred.columns
        if c.startswith("p_") and c != "p_ensemble"
    }
    model_thresholds["ensemble"] = threshold
    report_dirs, split_metrics = {}, {}
    # One shared offline plotly.js for both reports keeps the release within its size budget.
    atomic_write_text(run_dir / "report" / "plotly.min.js", report.plotly_bundle())
    for split_name, pred in predictions.items():
        out = run_dir / "report" / split_name
        pred.to_csv(run_dir / f"predictions_{split_name}.csv", index=False)
        split_metrics[split_name] = report.write_report(
            pred,
            out,
            thresholds=model_thresholds,
            plotly_js=SPLIT_REPORT_PLOTLY_SRC,
            title=f"{config.title} - {split_name} split",
            context={"zoo": config.title, "split": split_name, "threshold rule": rule + " on val"},
        )
        report_dirs[split_name] = out
    from training.evaluation import evaluation_block

    # The numbers a clinician elsewhere would get sit beside the internal test ones.
    evaluation = (
        {
            "test": evaluation_block(
                predictions["test"], threshold=threshold, kind="internal", source=f"{config.data.cases} (test split)"
            )
        }
        if "test" in predictions
        else {}
    )
    for name in data.externals:
        evaluation[name] = evaluation_block(
            predictions[f"external-{name}"], threshold=threshold, kind="external", source=config.external_source(name)
        )
    return Evaluated(threshold, calibration, predictions, metrics, model_thresholds, report_dirs, split_metrics, evaluation)


# ----------------------------------------------------------------------------- main ----------
def fit(
    cfg: dict[str, Any],
    *,
    run_dir: Path,
    resume: bool,
    progress: bool = True,
    log: Any = LOG.info,
    workers: int = 1,
    members_only: bool = False,
    time_limit_min: float | None = None,
) -> Path:
    """Run (or resume) the whole pipeline; returns the published release folder.

    ``cfg`` is the merged config (``training.config.load_config``); the phases read its typed
    view (:class:`~training.config.FitConfig`). ``workers`` > 1 trains member jobs in that many
    processes, one per GPU (see ``run_jobs_in_parallel``). ``members_only`` stops after the
    member jobs (e.g. on a rented GPU); ``--resume`` on the same run folder finishes it.
    ``time_limit_min`` ends each member job after the first epoch past that many minutes from
    now; the manifest records the epochs each member actually ran.
    """
    config = FitConfig.from_dict(cfg)  # a bad band (or a missing section) fails here, before any work
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / "config.yaml"
    if marker.exists() and not resume:
        raise InputError(
            f"run folder {run_dir} already holds a run; pass --resume to continue it or choose another output.run_dir"
        )
    if marker.exists() and resume:
        import yaml

        previous = yaml.safe_load(marker.read_text(encoding="utf-8")) or {}
        old, new = resume_view(previous), resume_view(cfg)
        changed = sorted(k for k in TRAINING_KEYS if old.get(k) != new.get(k))
        if changed:
            raise InputError(
                f"--resume: the config differs from the one saved in {marker} in "
                f"{', '.join(changed)}; resume with the same training settings"
            )
    atomic_write_text(marker, dump_config(cfg))
    # A bad localiser.path fails here, not after the member jobs.
    localiser_files = (
        fit_localiser.release_files(Path(config.localiser_path), config.output.fp16) if config.localiser_path else None
    )

    data = prepare_data(config, log)
    members = fit_member_jobs(config, data, run_dir, progress=progress, workers=workers, time_limit_min=time_limit_min, log=log)
    if members_only:
        log(f"      members only: the run stops here; finish it with --resume --run-dir {run_dir}")
        return run_dir
    inputs = stacker_inputs(config, data, members, log)
    fitted = fit_stacker_phase(config, inputs, members.member_ids, log)
    evaluated = evaluate(config, data, members, inputs, fitted, run_dir, progress=progress, log=log)

    log("[6/6] release")
    return write_release(
        config,
        ReleaseInputs(
            frame=data.frame,
            fingerprint=data.fingerprint,
            counts=data.counts,
            externals=data.externals,
            specs=members.specs,
            finals=members.finals,
            chosen=fitted.chosen,
            stacker=fitted.stacker,
            clinic=fitted.clinic,
            comparison=fitted.comparison,
            age_fill=inputs.age_fill,
            cam_weights=fitted.cam_weights,
            threshold=evaluated.threshold,
            band=config.threshold.indeterminate_band,
            model_thresholds=evaluated.model_thresholds,
            calibration=evaluated.calibration,
            evaluation=evaluated.evaluation,
            metrics=evaluated.metrics,
            report_dirs=evaluated.report_dirs,
            split_metrics=evaluated.split_metrics,
            localiser_files=localiser_files,
        ),
        run_dir,
        log,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training fit", description="Train the members and the stacker into a zoo release."
    )
    p.add_argument("--config", default="cpu", help="config file or name in training/configs (paper, cpu, tiny)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=5")
    p.add_argument("--cases", help="shortcut for data.cases=PATH")
    p.add_argument("--out", help="shortcut for output.zoo_parent=DIR (releases are written inside)")
    p.add_argument("--run-dir", help="working folder for caches, checkpoints and logs")
    p.add_argument(
        "--init",
        action="append",
        default=[],
        metavar="[FAMILY=]PATH",
        help="local initial weights (safetensors/torch state dict), for all members or one family",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="member jobs trained at once, each in its own process on its own GPU "
        "(worker k uses GPU k mod the GPU count; on one GPU keep 1)",
    )
    p.add_argument("--members-only", action="store_true", help="stop after the member jobs; finish later with --resume")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="end each member job after the first epoch past this many minutes from now (recorded per member as epochs_run)",
    )
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
        fit(
            cfg,
            run_dir=run_dir,
            resume=args.resume,
            progress=not args.quiet,
            workers=args.workers,
            members_only=args.members_only,
            time_limit_min=args.time_limit,
        )
    except ZooError as err:
        LOG.error(f"error: {err}")
        return 2
    return 0
