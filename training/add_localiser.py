"""``python -m training add-localiser``: a new zoo release = an existing release + a localiser.

The members, stacker, threshold and reports are copied byte for byte from a verified
release (no retraining); the localiser folder from ``python -m training localiser`` is added
(float16 when the members are stored as float16), the version is bumped and the manifest
records the release it derives from. With ``--cases`` (the release's own case table) the
tool also measures what the localiser is for: the ensemble's ROC AUC on the release's val
and test splits when the ROI comes from the annotator's box, from the localiser, or is the
whole image (what ``--roi auto`` used without a localiser). The measurement goes into the
manifest and the model card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_zoo.auc import roc_auc
from model_zoo.cli_logging import setup_cli_logging
from model_zoo.errors import InputError, ZooError
from model_zoo.manifest import DerivedFrom, LocaliserInfo, Manifest
from model_zoo.zoo import ReleaseWriter, sha256_file, verify_release

LOG = logging.getLogger(__name__)

# Files the new release writes itself rather than copying.
REGENERATED = {"manifest.json", "manifest.sha256", "MODEL_CARD.md"}


def roi_source_measures(zoo: Any, localiser: Any, rows: pd.DataFrame, seconds: list[float] | None = None) -> dict[str, Any]:
    """On labelled rows with annotator boxes: the ensemble ROC AUC with the ROI from the
    annotator's box, the localiser's proposal and the whole image, and the proposals' IoU with
    the annotator boxes (mean, shares > 0.3 / > 0.5). Appends each proposal's seconds."""
    from model_zoo import imaging
    from training.fit import row_box
    from training.fit_localiser import box_metrics

    scores: dict[str, list[float]] = {"annotator": [], "localiser": [], "whole_image": []}
    proposals, truths = [], []
    for _, row in rows.iterrows():
        pixels = imaging.load_image(row["image_path"]).pixels
        h, w = pixels.shape
        proposal = localiser.propose(pixels)
        if seconds is not None:
            seconds.append(proposal.seconds)
        truth = row_box(row, (w, h))
        proposals.append(proposal.box)
        truths.append(truth)
        for source, box in {"annotator": truth, "localiser": proposal.box, "whole_image": None}.items():
            p = zoo.predict(pixels, box, age=row.get("age"), sex=row.get("sex"), site=row.get("site"))
            scores[source].append(p.p_ensemble)
    y = rows["label"].to_numpy()
    out: dict[str, Any] = {"n": int(len(rows))}
    if len(np.unique(y)) == 2:
        out.update({k: roc_auc(y, np.array(v)) for k, v in scores.items()})
    out["iou"] = box_metrics(proposals, truths)
    return out


def roi_source_auc(
    zoo: Any, localiser: Any, cfg: dict[str, Any], fingerprint: str, log: Any = LOG.info
) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Ensemble ROC AUC per split (val, test) for three ROI sources: annotator box, localiser
    proposal, whole image; and the median seconds of one proposal on this machine. Rows,
    labels and splits come from the release's own config."""
    from training.data import data_fingerprint, load_cases

    frame = load_cases(cfg, log=lambda *_: None)
    if data_fingerprint(frame) != fingerprint:
        raise InputError(
            "--cases: these are not the cases the release was trained on (data "
            "fingerprint differs); its splits cannot be reproduced"
        )
    out: dict[str, Any] = {}
    seconds: list[float] = []
    for split in ("val", "test"):
        sub = frame[frame["split"] == split]
        if sub.empty or sub["label"].nunique() < 2:
            continue
        out[split] = roi_source_measures(zoo, localiser, sub, seconds)
        out[split].pop("iou")  # the localiser's own metrics already hold its internal IoU
        log(f"      {split}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[split].items() if k != "n"))
    return out, (float(np.median(seconds)) if seconds else None)


def external_measures(
    zoo: Any, localiser: Any, manifest: Manifest, label_map: Any, log: Any = LOG.info
) -> dict[str, dict[str, Any]]:
    """The same measures on every external set the release was validated on (its
    ``data.external`` entries): what auto-crop does at a hospital the localiser never saw."""
    from model_zoo.cases import read_case_table

    out = {}
    for name, entry in manifest.data.external.items():
        source = Path(entry.source)
        if not source.is_file():
            log(f"      external set {name}: {source} not found here; not measured")
            continue
        table = read_case_table(source, label_map=label_map, require_label=True)
        rows = table.frame[table.frame["row_error"] == ""].reset_index(drop=True)
        rows["label"] = rows["label"].astype(int)
        out[name] = roi_source_measures(zoo, localiser, rows)
        iou = out[name]["iou"]
        log(
            f"      external {name}: IoU mean {iou['mean_iou']:.3f}, > 0.3 on {iou['frac_iou_gt_0_3']:.2f}; "
            + ", ".join(f"{k} {v:.3f}" for k, v in out[name].items() if k not in ("n", "iou"))
        )
    return out


def add_localiser(
    source: Path, localiser_dir: Path, version: str, out_parent: Path, cases: str | None = None, log: Any = LOG.info
) -> Path:
    import yaml

    from model_zoo.ensemble import load_zoo
    from training.config import dump_config
    from training.config import FitConfig
    from training.release import model_card
    from training.fit_localiser import release_files

    manifest = verify_release(source)
    fp16 = any(m.weights_dtype == "float16" for m in manifest.members)
    entry, weights, localiser = release_files(localiser_dir, fp16)
    if str(version) == manifest.version:
        raise InputError(f"--version {version} is the source release's version; choose a new one")
    cfg = yaml.safe_load((source / "config.yaml").read_text(encoding="utf-8"))
    cfg["version"] = str(version)

    roi_auc, seconds = None, None
    if cases:
        if Path(cases).resolve() != Path(cfg["data"]["cases"]).resolve():
            log(
                f"      note: --cases {cases} differs from the release's data.cases {cfg['data']['cases']}; "
                "the data fingerprint decides"
            )
        cfg_cases = dict(cfg, data=dict(cfg["data"], cases=str(cases)))
        log("[1/2] ensemble AUC by ROI source (annotator box / localiser / whole image)")
        zoo = load_zoo(source)
        roi_auc, seconds = roi_source_auc(zoo, localiser, cfg_cases, manifest.data.fingerprint, log)
        external = external_measures(zoo, localiser, manifest, cfg["task"].get("label_map"), log)
        if external:
            entry["external"] = external

    log("[2/2] release")
    if roi_auc is not None:
        import os

        import torch

        entry["ensemble_auc_by_roi_source"] = roi_auc
        entry["proposal_seconds_median"] = {
            "seconds": seconds,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        }
    with ReleaseWriter(out_parent, manifest.name, str(version)) as rw:
        for rel in manifest.files:
            if rel in REGENERATED or rel.startswith("localiser/"):
                continue
            rw.copy_file(rel, source / rel)
        info = LocaliserInfo.from_dict(entry)
        rw.write_bytes(info.weights, weights)
        rw.write_text(
            "config.yaml", dump_config({**cfg, "localiser": {**(cfg.get("localiser") or {}), "path": str(localiser_dir)}})
        )
        new = manifest.replace(
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            localiser=info,
            derived_from=DerivedFrom(
                release=manifest.title,
                manifest_sha256=sha256_file(source / "manifest.json"),
                change="localiser added; members, stacker, threshold and reports unchanged",
            ),
        )
        reports = {}
        for split in ("val", "test"):
            path = source / "report" / split / "metrics.json"
            if path.is_file():
                reports[split] = json.loads(path.read_text(encoding="utf-8"))
        rw.write_text("MODEL_CARD.md", model_card(FitConfig.from_dict(cfg), new, reports))
        final = rw.publish(new)
    log(f"      release written: {final}")
    return final


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    p = argparse.ArgumentParser(prog="python -m training add-localiser", description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, type=Path, help="source release folder")
    p.add_argument("--localiser", required=True, type=Path, help="folder from `python -m training localiser`")
    p.add_argument("--version", required=True, help="version of the new release")
    p.add_argument("--out", type=Path, default=None, help="parent folder of the new release (default: beside --zoo)")
    p.add_argument("--cases", default=None, help="the release's case table: also measure ensemble AUC by ROI source on val/test")
    args = p.parse_args(argv)
    try:
        add_localiser(args.zoo, args.localiser, args.version, args.out or args.zoo.parent, args.cases)
    except ZooError as err:
        LOG.error(f"error: {err}")
        return 2
    return 0
