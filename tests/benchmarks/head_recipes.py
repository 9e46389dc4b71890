"""Measurement (not a test): which frozen-feature recipe transfers to a hospital never seen?

Reuses a `--config pretrained` run folder (its crop caches and feature banks), extracts the
members' features of each external set once, and for every recipe fits each member's linear
head exactly as `fit` does (training views, C chosen on val) and reports ROC AUC with DeLong
95 % CI on internal val, internal test and every external set, plus the mean-logit ensemble
of the members. Centre 3 only measures: nothing is fitted or chosen on it here.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/head_recipes.py --run-dir runs/demo-btxrd-2.0.0 \
        [--config pretrained] [--recipes flips,id,flips+blur0.5,flips+blur0.35] > recipes.md

~5 min on 2 cores when the run's feature banks exist (blur views cost one extra pass over the
training crops per member and scale).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from training import fit as F
from training import fit_heads as H
from training import stats
from training.config import FitConfig, load_config


def recipe_views(name: str) -> list[str]:
    """'id' | 'flips' | 'flips+blur0.5' ... -> bank view names."""
    views = ["id"]
    for part in name.split("+"):
        if part == "flips":
            views += ["h", "v", "hv"]
        elif part.startswith("blur"):
            views.append(part)
        elif part != "id":
            raise SystemExit(f"unknown recipe part {part!r}")
    return views


def auc_text(y: np.ndarray, s: np.ndarray) -> str:
    r = stats.delong_auc(y, s)
    return f"{r.auc:.3f} ({r.ci[0]:.2f}-{r.ci[1]:.2f})"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--config", default="pretrained")
    p.add_argument("--recipes", default="id,flips,flips+blur0.5")
    args = p.parse_args()
    cfg = load_config(args.config)
    frame = F.load_cases(cfg, log=lambda *a: None)
    frame["sha256"] = F.image_hashes(frame)
    externals = F.load_externals(FitConfig.from_dict(cfg), frame, log=lambda *a: None)
    specs = F.member_specs(cfg)
    init = cfg["members"]["init"]
    fingerprint = F.data_fingerprint(frame)
    y = frame["label"].to_numpy()
    idx = {s: np.flatnonzero(frame["split"] == s) for s in ("train", "val", "test")}
    cache_dir = args.run_dir / "cache"

    features: dict[str, dict[str, np.ndarray]] = {}
    ext_features: dict[str, dict[str, np.ndarray]] = {}
    crops_by_member: dict[str, np.ndarray] = {}
    for spec in specs:
        crops = F.build_input_cache(frame, spec, cache_dir, fingerprint, progress=False)
        crops_by_member[spec.member_id] = crops
        base = H.feature_bank(
            spec,
            init[spec.family],
            crops,
            H.view_names(cfg["train"]),
            cache_dir,
            F.cache_path(spec, cache_dir, fingerprint).stem,
            train_rows=idx["train"],
            log=lambda *a: None,
        )
        features[spec.member_id] = dict(base)
        model = H.start_model(spec, init[spec.family])
        for name, ext in externals.items():
            ext_crops = F.build_input_cache(ext, spec, cache_dir, F.data_fingerprint(ext), progress=False)
            ext_features.setdefault(name, {})[spec.member_id] = H.pooled_features(model, ext_crops, spec.mean, spec.std)

    def view_features(member: str, view: str) -> np.ndarray:
        bank = features[member]
        if view not in bank:
            spec = next(s for s in specs if s.member_id == member)
            model = H.start_model(spec, init[spec.family])
            full = np.full_like(bank["id"], np.nan)
            full[idx["train"]] = H.pooled_features(
                model, H.apply_view(crops_by_member[member][idx["train"]], view), spec.mean, spec.std
            )
            bank[view] = full
        return bank[view]

    sets = ["val", "test", *externals]
    print("| recipe | model | " + " | ".join(sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for recipe in args.recipes.split(","):
        views = recipe_views(recipe)
        logits: dict[str, dict[str, np.ndarray]] = {s: {} for s in sets}
        for spec in specs:
            bank = {v: view_features(spec.member_id, v) for v in views}
            _, w, b = H.fit_head(spec, init[spec.family], bank, y, idx["train"], idx["val"], cfg["train"], seed=0)
            for s in ("val", "test"):
                logits[s][spec.member_id] = H.head_scores(w, b, bank, idx[s])
            for name in externals:
                logits[name][spec.member_id] = ext_features[name][spec.member_id].astype(np.float64) @ w + b
        for member in [s.member_id for s in specs] + ["mean of members"]:
            cells = []
            for s in sets:
                truth = y[idx[s]] if s in idx else externals[s]["label"].to_numpy()
                score = np.mean([v for v in logits[s].values()], axis=0) if member == "mean of members" else logits[s][member]
                cells.append(auc_text(truth, score))
            print(f"| {recipe} | {member} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
