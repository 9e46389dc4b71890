"""Measurement (not a test): which acquisition views help a tail-tuned member at a hospital never seen?

Issue 13, deliverable 3: each augmentation measured as an ablation on internal val, internal
test and every external set. For each member of a `--config pretrained-tail` profile and each
recipe (a set of training views), this fits the member's final job exactly as `fit` does -
linear probe on the recipe's feature bank, then the last blocks fine-tuned on the frozen
prefix's cached maps, one random view per row and epoch, best val epoch kept - and reports ROC
AUC with DeLong 95 % CI. External rows are only scored (identity view): nothing is fitted or
chosen on them here. The "mean of members" row averages the member logits of one recipe.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/tail_recipes.py --run-dir runs/tail-recipes \\
        [--config pretrained-tail] [--members effnet_b4,effnet_b3,vit] \\
        [--recipes flips,flips+gamma0.7+gamma1.4,...] >> recipes.md

Needs the converted starts (`python -m training pretrained convert --out runs/pretrained`).
Caches crops, feature banks and prefix maps per view under --run-dir, so a second run with
new recipes only computes the views it has not seen.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from training import fit as F
from training import fit_heads as H
from training import fit_tails as T
from training.config import load_config

# run as a script from the repo root: this folder is on sys.path
from head_recipes import auc_text  # noqa: E402  (AUC with DeLong CI, the same cell format)

FLIPS = ["h", "v", "hv"]


def recipe_views(name: str) -> list[str]:
    """'id' | 'flips' | 'flips+gamma0.7+noise6' ... -> view names (identity first)."""
    views = [H.IDENTITY]
    for part in name.split("+"):
        if part == "flips":
            views += FLIPS
        elif part != H.IDENTITY:
            H.check_view_name(part)
            views.append(part)
    return views


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--config", default="pretrained-tail")
    p.add_argument("--members", default="", help="member ids (default: all of the profile)")
    p.add_argument("--recipes", default="flips,flips+gamma0.7+gamma1.4")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cfg = load_config(args.config)
    quiet = lambda *a, **k: None  # noqa: E731
    frame = F.load_cases(cfg, log=quiet)
    frame["sha256"] = F.image_hashes(frame)
    externals = F.load_externals(cfg, frame, log=quiet)
    specs = F.member_specs(cfg)
    if args.members:
        wanted = args.members.split(",")
        specs = [s for s in specs if s.member_id in wanted]
    init = cfg["members"]["init"]
    k = int(cfg["train"].get("tail_blocks", 2))
    fingerprint = F.data_fingerprint(frame)
    y = frame["label"].to_numpy()
    idx = {s: np.flatnonzero(frame["split"] == s) for s in ("train", "val", "test")}
    cache_dir = args.run_dir / "cache"
    recipes = args.recipes.split(",")
    all_views = list(dict.fromkeys(v for r in recipes for v in recipe_views(r)))

    sets = ["val", "test", *externals]
    print(f"<!-- tail_recipes {time.strftime('%Y-%m-%d %H:%M')} config={args.config} seed={args.seed} -->")
    print("| recipe | model | best epoch | " + " | ".join(sets) + " |")
    print("|---|---|---|" + "---|" * len(sets), flush=True)
    logits: dict[str, dict[str, dict[str, np.ndarray]]] = {r: {s: {} for s in sets} for r in recipes}
    for spec in specs:
        t0 = time.perf_counter()
        crops = F.build_input_cache(frame, spec, cache_dir, fingerprint, progress=False)
        key = F.cache_path(spec, cache_dir, fingerprint).stem
        # banks and prefix maps are cached per view on disk, named as `fit` names them
        bank = H.feature_bank(spec, init[spec.family], crops, all_views, cache_dir, key, train_rows=idx["train"], log=quiet)
        maps = T.prefix_maps(spec, init[spec.family], crops, all_views, k, idx["train"], log=quiet, cache=(cache_dir, key))
        ext_maps = {}
        for name, ext in externals.items():
            ext_crops = F.build_input_cache(ext, spec, cache_dir, F.data_fingerprint(ext), progress=False)
            ext_maps[name] = T.prefix_maps(spec, init[spec.family], ext_crops, [H.IDENTITY], k, np.arange(0), log=quiet)
        print(f"<!-- {spec.member_id}: views ready in {time.perf_counter() - t0:.0f} s -->", flush=True)
        for recipe in recipes:
            t1 = time.perf_counter()
            views = recipe_views(recipe)
            res = T.fit_tail(
                spec,
                init[spec.family],
                {v: bank[v] for v in views},
                {v: maps[v] for v in views},
                idx["train"],
                y,
                idx["train"],
                idx["val"],
                cfg["train"],
                args.seed,
            )
            for s in ("val", "test"):
                logits[recipe][s][spec.member_id] = T.tail_scores(res, {H.IDENTITY: maps[H.IDENTITY]}, idx[s], k)
            for name in externals:
                logits[recipe][name][spec.member_id] = T.tail_scores(res, ext_maps[name], np.arange(len(externals[name])), k)
            cells = [
                auc_text(y[idx[s]] if s in idx else externals[s]["label"].to_numpy(), logits[recipe][s][spec.member_id])
                for s in sets
            ]
            print(
                f"| {recipe} | {spec.member_id} | {res.best_epoch} | "
                + " | ".join(cells)
                + f" |  <!-- {time.perf_counter() - t1:.0f} s -->",
                flush=True,
            )
    if len(specs) > 1:
        for recipe in recipes:
            cells = []
            for s in sets:
                truth = y[idx[s]] if s in idx else externals[s]["label"].to_numpy()
                cells.append(auc_text(truth, np.mean(list(logits[recipe][s].values()), axis=0)))
            print(f"| {recipe} | mean of members | - | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
