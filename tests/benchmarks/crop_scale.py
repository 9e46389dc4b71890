"""Measurement (not a test): does more context around the lesion box transfer better?

Centre-1 lesion boxes cover a median 0.7 % of the 256-px image (about 21 x 21 px), centre 3's
2.5 %, so a tight crop is upsampled ~10x in centre 1 and ~5x elsewhere. A wider ROI margin gives
the frozen backbone more real pixels and a scale closer across hospitals. For every
``roi_margin`` this fits each member's linear head exactly as ``fit`` does (views from the
config, L2 strength chosen on val) and reports ROC AUC [DeLong 95 % CI] on internal val,
internal test and each external set, for every member, the mean of the members' logits, and
the multi-scale mean over all margins. External sets only measure: nothing is fitted on them.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/crop_scale.py --run-dir runs/probe \
        --margins 0.1,0.25,0.5,1.0 [--views id] > crop_scale.md
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from training import fit as F
from training import fit_heads as H
from training.config import FitConfig, load_config

# The sibling benchmark's AUC cell (run as a script, this folder is on sys.path).
from head_recipes import auc_text


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--config", default="pretrained")
    p.add_argument("--margins", default="0.1,0.25,0.5,1.0")
    p.add_argument("--views", default="config", help="'config' (the config's views) or e.g. 'id'")
    args = p.parse_args()
    cfg = load_config(args.config)
    frame = F.load_cases(cfg, log=lambda *a: None)
    frame["sha256"] = F.image_hashes(frame)
    externals = F.load_externals(FitConfig.from_dict(cfg), frame, log=lambda *a: None)
    init = cfg["members"]["init"]
    fingerprint = F.data_fingerprint(frame)
    y = frame["label"].to_numpy()
    idx = {s: np.flatnonzero(frame["split"] == s) for s in ("train", "val", "test")}
    cache_dir = args.run_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    views = H.view_names(cfg["train"]) if args.views == "config" else args.views.split(",")
    sets = ["val", "test", *externals]
    truth = {s: (y[idx[s]] if s in idx else externals[s]["label"].to_numpy()) for s in sets}

    print(f"views: {views}\n")
    print("| roi_margin | model | " + " | ".join(sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    all_logits: dict[str, list[np.ndarray]] = {s: [] for s in sets}
    for margin in [float(m) for m in args.margins.split(",")]:
        logits: dict[str, dict[str, np.ndarray]] = {s: {} for s in sets}
        for base in F.member_specs(cfg):
            spec = dataclasses.replace(base, roi_margin=margin)
            crops = F.build_input_cache(frame, spec, cache_dir, fingerprint, progress=False)
            bank = H.feature_bank(
                spec,
                init[spec.family],
                crops,
                views,
                cache_dir,
                F.cache_path(spec, cache_dir, fingerprint).stem,
                train_rows=idx["train"],
                log=lambda *a: None,
            )
            _, w, b = H.fit_head(spec, init[spec.family], bank, y, idx["train"], idx["val"], cfg["train"], seed=0)
            for s in ("val", "test"):
                logits[s][spec.member_id] = H.head_scores(w, b, bank, idx[s])
            model = H.start_model(spec, init[spec.family])
            for name, ext in externals.items():
                ext_crops = F.build_input_cache(ext, spec, cache_dir, F.data_fingerprint(ext), progress=False)
                feats = H.pooled_features(model, ext_crops, spec.mean, spec.std)
                logits[name][spec.member_id] = feats.astype(np.float64) @ w + b
        for member in [*logits["val"], "mean of members"]:
            cells = []
            for s in sets:
                score = np.mean(list(logits[s].values()), axis=0) if member == "mean of members" else logits[s][member]
                if member == "mean of members":
                    all_logits[s].append(score)
                cells.append(auc_text(truth[s], score))
            print(f"| {margin:g} | {member} | " + " | ".join(cells) + " |", flush=True)
    cells = [auc_text(truth[s], np.mean(all_logits[s], axis=0)) for s in sets]
    print("| all | multi-scale mean | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
