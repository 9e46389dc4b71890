"""The release a fit writes: the typed manifest, the model card, and the atomic release folder.

``training.fit`` computes; this module only writes what it computed (``write_release``) and the
words a release carries (``model_card``; the ``add-*`` commands reuse ``card_with_section``).
Every manifest field is built as a ``model_zoo.manifest`` record, never as a dict literal.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from model_zoo.calibration import Calibration
from model_zoo.ensemble import CLINICAL_FEATURES
from model_zoo.framing import DEFAULT_INDETERMINATE_BAND
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
from model_zoo.members import MemberSpec
from model_zoo.zoo import ReleaseWriter
from training.config import FitConfig, dump_config

LOG = logging.getLogger(__name__)

INTENDED_USE = (
    "Research and teaching only; not a medical device. Not for diagnosis or treatment "
    "decisions. Outputs are probabilities from models trained on a public research dataset "
    "and must be read by a qualified clinician together with all other information."
)
PREPROCESSING = {
    "image": "grayscale float in [0,1]; DICOM: modality LUT, VOI LUT/window, MONOCHROME1 inverted",
    "roi": "ROI box + member roi_margin on each side, squared about its centre, shifted inside the image",
    "resize": "INTER_AREA when shrinking, bilinear when enlarging, to the member input_size",
    "normalisation": "training-set mean/std per member (spec.mean/std), grey replicated to 3 channels",
}


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "timm", "grad-cam", "scikit-learn", "numpy", "pydicom", "safetensors", "lightgbm"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def selection_rule(stacker: Any) -> str:
    """The stacker-selection rule in words, for the manifest and model card (``stacker``: a
    ``StackerConfig``)."""
    prefer, within = stacker.prefer, float(stacker.prefer_within or 0.0)
    rule = "best grouped-CV ROC AUC"
    if prefer and within > 0:
        rule += f", except {prefer} when its CV AUC is within {within:g} of the best"
    return rule


def init_provenance(init_path: str | None) -> dict[str, Any] | None:
    """The provenance record written beside a converted start (``python -m training pretrained
    convert``: ``<name>.json`` next to ``<name>.safetensors``), or None for other files."""
    import json

    if not init_path:
        return None
    sidecar = Path(init_path).with_suffix(".json")
    return json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else None


# ----------------------------------------------------------------------------- the release


@dataclass(frozen=True)
class ReleaseInputs:
    """Everything the fit computed that the release records (the phases' outputs, gathered)."""

    frame: pd.DataFrame  # the case rows with split, fold, label, sha256
    fingerprint: str
    counts: Mapping[str, Mapping[str, Any]]  # split -> {"count", "sum"}
    externals: Mapping[str, pd.DataFrame]
    specs: list[MemberSpec]  # the current family specs (their CAM settings ship)
    finals: list[dict[str, Any]]  # the final member jobs' results
    chosen: str
    stacker: Any
    clinic: Any
    comparison: list[dict[str, Any]]
    age_fill: float
    cam_weights: Mapping[str, float]
    threshold: float
    band: float
    model_thresholds: Mapping[str, float]
    calibration: Calibration | None
    evaluation: Mapping[str, Any]
    metrics: Mapping[str, Any]
    report_dirs: Mapping[str, Path]
    split_metrics: Mapping[str, Any]
    localiser_files: tuple[dict[str, Any], bytes, Any] | None


def build_manifest(config: FitConfig, r: ReleaseInputs, members: list[MemberEntry], localiser: LocaliserInfo | None) -> Manifest:
    """The release's manifest (``ReleaseWriter.publish`` adds name, version and file hashes)."""
    member_ids = [m.member_id for m in members]
    cal = r.calibration
    return Manifest(
        name=config.name,
        version=config.version,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        profile=config.profile,
        seed=config.seed,
        intended_use=INTENDED_USE,
        task=Task(
            name=config.task.name,
            positive_class=config.task.positive_class,
            negative_class=config.task.negative_class,
            class_names=(config.task.negative_class, config.task.positive_class),
            label_map=config.task.label_map,
        ),
        preprocessing=dict(PREPROCESSING),
        members=tuple(members),
        stacker=StackerInfo(
            file="stacker.joblib",
            chosen=r.chosen,
            comparison=tuple(r.comparison),
            selection=selection_rule(config.stacker),
            features=tuple([f"p_{m}" for m in member_ids] + list(CLINICAL_FEATURES)),
            score_source=config.stacker.score_source,
            folds=config.stacker.oof_folds,
            age_fill=r.age_fill,
            member_scores=config.stacker.member_scores,
            imputation="age -> training median, sex/site -> 0.5, each with a *_missing indicator",
            cam_weights=dict(r.cam_weights),
            cam_weights_rule="permutation importance (AUC) of each member score in the stacker",
        ),
        clinic_model={"kind": "logistic regression", "features": list(CLINICAL_FEATURES)},
        threshold=ThresholdInfo(
            value=r.threshold,
            rule=config.threshold.rule,
            chosen_on="val",
            indeterminate_band=r.band,
            per_model=dict(r.model_thresholds),
            value_calibrated=float(cal.apply(r.threshold)) if cal else None,
        ),
        calibration=cal,
        evaluation=dict(r.evaluation),
        metrics=dict(r.metrics),
        data=DataInfo(
            source=config.data.cases,
            fingerprint=r.fingerprint,
            n_cases=int(len(r.frame)),
            splits={k: {"n": int(v["count"]), "positive": int(v["sum"])} for k, v in r.counts.items()},
            rows="data/cases.csv",
            external={
                name: ExternalData(source=config.external_source(name), n=int(len(f)), rows=f"data/external-{name}.csv")
                for name, f in r.externals.items()
            },
        ),
        library_versions=library_versions(),
        localiser=localiser,
    )


def write_release(config: FitConfig, r: ReleaseInputs, run_dir: Path, log: Any = LOG.info) -> Path:
    """Write ``<output.zoo_parent>/<name>-<version>`` atomically: member weights (float16 with
    ``output.fp16``), stacker, config, case rows, localiser, reports, model card, manifest."""
    import joblib
    from safetensors.torch import save as save_safetensors

    fp16 = config.output.fp16
    with ReleaseWriter(Path(config.output.zoo_parent), config.name, config.version) as rw:
        member_entries = []
        current = {s.member_id: s for s in r.specs}
        for res in r.finals:
            spec = MemberSpec.from_dict(res["spec"])
            # The CAM layer does not affect training: take it from the current family spec, so
            # a re-packaged run gets improved explanation settings without retraining.
            spec = spec.replace(cam_layer=current[spec.member_id].cam_layer, cam_layout=current[spec.member_id].cam_layout)
            state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in res["state_dict"].items()}
            rel = f"members/{spec.member_id}.safetensors"
            rw.write_bytes(rel, save_safetensors(state))
            rw.copy_file(f"logs/{spec.member_id}.csv", run_dir / "jobs" / spec.member_id / "final" / "log.csv")
            member_entries.append(
                MemberEntry(
                    spec=spec,
                    weights=rel,
                    best_epoch=res["best_epoch"],
                    best_val_auc=res["best_val_auc"],
                    train_images_per_second=res["images_per_second"],
                    epochs_run=len(res["history"]),
                    init=config.members.init_for(spec.family) or "scratch",
                    weights_dtype="float16" if fp16 else "float32",
                    init_provenance=init_provenance(config.members.init_for(spec.family)),
                    trainable=config.train.trainable,
                )
            )
        buf = io.BytesIO()
        joblib.dump({"stacker": r.stacker, "clinic": r.clinic}, buf, compress=3)
        rw.write_bytes("stacker.joblib", buf.getvalue())
        rw.write_text("config.yaml", dump_config(dict(config.raw)))
        # Every row by content hash (paths relative to their table): which images trained,
        # chose and tested this release, and proof that no external image was among them.
        rw.write_text("data/cases.csv", r.frame[["image", "sha256", "split", "fold", "label"]].to_csv(index=False))
        for name, ext_frame in r.externals.items():
            rw.write_text(f"data/external-{name}.csv", ext_frame[["image", "sha256", "label"]].to_csv(index=False))
        localiser = None
        if r.localiser_files:
            entry, localiser_bytes, _ = r.localiser_files
            localiser = LocaliserInfo.from_dict(entry)
            rw.write_bytes(localiser.weights, localiser_bytes)
        rw.copy_file("report/plotly.min.js", run_dir / "report" / "plotly.min.js")
        for split_name, out in r.report_dirs.items():
            for f in sorted(out.iterdir()):
                rw.copy_file(f"report/{split_name}/{f.name}", f)
        manifest = build_manifest(config, r, member_entries, localiser)
        rw.write_text("MODEL_CARD.md", model_card(config, manifest, r.split_metrics))
        final = rw.publish(manifest)
    log(f"      release written: {final}")
    return final


# ----------------------------------------------------------------------------- model card


def training_recipe(train: Mapping[str, Any]) -> str:
    """One line naming the optimiser, schedule, epochs and augmentation actually configured."""
    if str(train.get("trainable", "all")) in ("head", "tail"):
        from training.fit_heads import view_names

        grid = train.get("head_c_grid") or "0.001-1"
        tail = ""
        if str(train.get("trainable")) == "tail":
            tail = (
                f"; then the last {train.get('tail_blocks', 2)} blocks + head fine-tuned on the frozen prefix's "
                f"cached maps (AdamW lr {train.get('tail_lr', 1e-4)}, cosine, {train.get('tail_epochs', 6)} epochs, "
                "BatchNorm frozen, one random training view per crop and epoch; best epoch by val AUC, 0 = head only)"
            )
        return (
            "frozen pretrained backbone; linear head = L2 logistic regression on its standardised pooled "
            f"features (inverse strength C from {grid}, chosen by val AUC); training views: "
            f"{', '.join(view_names(train))}{tail}"
        )
    opt = str(train.get("optimizer", "sgd")).lower()
    opt_text = (
        f"SGD (momentum {train.get('momentum', 0.9)})" if opt == "sgd" else "AdamW"
    ) + f" lr {train['lr']}, weight decay {train.get('weight_decay', 0)}"
    if str(train.get("schedule", "step")).lower() == "cosine":
        sched = f"cosine decay with {train.get('warmup_epochs', 0)} warm-up epoch(s)"
    else:
        sched = f"lr x{train.get('lr_gamma', 0.1)} every {train['lr_step']} epochs"
    aug = [
        name
        for name, on in (
            ("horizontal flips", train.get("hflip", True)),
            ("vertical flips", train.get("vflip", True)),
            ("affine jitter", bool(train.get("affine"))),
            ("intensity jitter", bool(train.get("intensity"))),
        )
        if on
    ]
    return f"{opt_text}; {sched}; {train['epochs']} epochs, batch {train['batch_size']}; augmentation: {', '.join(aug) or 'none'}"


def target_sentences(models: Mapping[str, Any], targets: Mapping[str, Any]) -> list[str]:
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
        out.append(
            f"- Ensemble test AUC {auc['ensemble']:.3f} is {relation} the best single member ({best} {members[best]:.3f})."
        )
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
    parts = [
        f"`{prov.get('name', '?')}`: {prov.get('description') or prov.get('timm_arch', '')}",
        f"from PyPI `{prov.get('package', '?')}=={prov.get('package_version', '?')}`",
        f"licence {prov.get('licence', 'not stated')}",
    ]
    if prov.get("provenance"):
        parts.append(str(prov["provenance"]))
    if sha:
        parts.append(f"sha256 `{sha}...`")
    return "; ".join(parts)


def proposal_time(loc: LocaliserInfo) -> str:
    """The localiser's median time per image, saying where it was measured."""
    timed = loc.proposal_seconds_median
    if timed.get("seconds") is not None:
        return (
            f"median {timed['seconds']:.3f} s per image on {timed['cpu_count']} CPU cores "
            f"({timed['torch_threads']} torch threads)"
        )
    seconds = loc.metrics.get("seconds_per_image_median")
    return f"median {seconds:.3f} s per image where it was trained" if seconds is not None else "time not measured"


def card_with_section(
    source_card: str, old_title: str, new_title: str, heading: str, section: str, before: str | None = None
) -> str:
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
        text = text[:start] + (text[nxt + 1 :] if nxt >= 0 else "")
    if before and before in text:
        i = text.index(before)
        return text[:i] + section.strip() + "\n\n" + text[i:]
    return text.rstrip() + "\n\n" + section.strip() + "\n"


def model_card(config: FitConfig, manifest: Manifest, reports: Mapping[str, Any] | None = None) -> str:
    """MODEL_CARD.md of a release: plain words, intended use, training facts, members, data,
    metrics (with the test split's CIs from ``reports``), external sets, calibration, localiser."""
    from model_zoo.validation_text import plain_summary

    m = manifest
    band = DEFAULT_INDETERMINATE_BAND if m.threshold.indeterminate_band is None else m.threshold.indeterminate_band
    # Words before statistics (issue 17): the Zoo page opens with the same sentences.
    plain = plain_summary(m.evaluation, m.task.positive_class, m.task.negative_class)
    lines = [
        f"# Model card: {config.title}",
        "",
        *(["## In plain words", plain, ""] if plain else []),
        "## Intended use",
        m.intended_use,
        "",
        "## Task",
        f"{m.task.positive_class} (positive) vs {m.task.negative_class} (negative), "
        "from an ROI crop of a radiograph plus age, sex and lesion site.",
        "",
        "## Training",
        f"- Profile: `{m.profile}`; seed {m.seed}; data: `{m.data.source}` "
        f"({m.data.n_cases} cases; fingerprint `{m.data.fingerprint[:16]}`)",
        "- Splits: " + ", ".join(f"{k} {v['n']} ({v['positive']} positive)" for k, v in m.data.splits.items()),
        f"- Stacker: {m.stacker.chosen} chosen by {m.stacker.selection or 'best grouped-CV ROC AUC'} "
        f"on {m.stacker.score_source} member scores" + (" (as log-odds)" if m.stacker.member_scores == "logit" else ""),
        f"- Threshold {m.threshold.value:.4f} ({m.threshold.rule} on the val split); a probability "
        f"within {band:.2f} of it (on the shown "
        "scale), or one that an ROI-jitter box flips, is reported as indeterminate",
        "- Recipe: " + training_recipe(config.train.settings),
        "",
        "## Members",
        "",
        "| member (family role) | architecture | input | start | trained | best epoch | val AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    planned = config.train.epochs
    for e in m.members:
        s = e.spec
        ran = planned if e.epochs_run is None else e.epochs_run
        if e.trainable == "head":
            ran_text = "head only (frozen backbone)"
        elif e.trainable == "tail":
            ran_text = f"head, then the last {config.train.tail_blocks} blocks fine-tuned"
        else:
            ran_text = f"{ran} epochs" if ran >= planned else f"{ran} of {planned} epochs (time limit)"
        lines.append(
            f"| {s.member_id} ({s.family}) | {s.arch} | {s.input_size} px | "
            f"{start_text(e)} | {ran_text} | {e.best_epoch} | {e.best_val_auc:.3f} |"
        )
    starts = [e.init_provenance for e in m.members if e.init_provenance]
    if starts:
        lines += [
            "",
            "Pretrained starts (converted from PyPI packages by `python -m training pretrained "
            "convert`; nothing downloaded from a model hub):",
            "",
        ]
        for prov in starts:
            lines.append(f"- {prov_line(prov)}")
    lines += ["", "## Data", ""]
    card = config.model_card
    if card.get("data"):
        lines.append(card["data"])
    ratios = ":".join(f"{r:g}" for r in config.data.split_ratios)
    lines.append(
        f"Source table `{m.data.source}`; group-aware stratified {ratios} train/val/test split "
        "(no probable same-patient group crosses splits)."
    )
    lines += ["", "## Metrics", ""]
    for split_name, block in m.metrics.items():
        aucs = ", ".join(f"{k} {v:.3f}" for k, v in block["auc"].items() if v is not None)
        lines.append(f"- {split_name} ROC AUC (n={block['n']}, {block['n_positive']} positive): {aucs}")
    test = (reports or {}).get("test")
    if test:
        lines += [
            "",
            "Internal test split at each model's val-chosen threshold (AUC: DeLong 95 % CI; proportions: Wilson 95 % CI):",
            "",
            "| model | AUC | sensitivity | specificity | accuracy |",
            "|---|---|---|---|---|",
        ]

        def fmt(block: Mapping[str, Any], key: str) -> str:
            value, ci = block.get(key), block.get(f"{key}_ci") or [None, None]
            if value is None:
                return "n/a"
            return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if None not in ci else f"{value:.3f}"

        for name, block in test["models"].items():
            lines.append(
                f"| {name} | {fmt(block, 'auc')} | {fmt(block, 'sensitivity')} | "
                f"{fmt(block, 'specificity')} | {fmt(block, 'accuracy')} |"
            )
        lines += ["", *target_sentences(test["models"], card.get("targets") or {})]
    evaluation = m.evaluation or {}
    if evaluation:
        from training.evaluation import format_evaluation_table

        lines += [
            "",
            "## At a hospital the model has not seen",
            "",
            "Internal test (centre of the training data) beside every external set (never used for "
            "fitting, calibrating or choosing the threshold):",
            "",
            *format_evaluation_table(dict(evaluation)),
        ]
    cal = m.calibration
    if cal:
        value_calibrated = m.threshold.value_calibrated
        shown = "n/a" if value_calibrated is None else f"{value_calibrated:.3f}"
        lines += [
            "",
            "## Calibration",
            "",
            f"Platt scaling of the ensemble probability (slope {cal.slope:.3f}, intercept "
            f"{cal.intercept:.3f}), fitted on {cal.fit_on} predictions of {cal.n} internal "
            f"cases ({cal.n_positive} positive). The operating threshold "
            f"{m.threshold.value:.3f} is {shown} on the "
            "calibrated scale: the call is the same on both.",
        ]
    lines += ["", "Full tables and figures: `report/<split>/report.html`.", "", "## Localiser", ""]
    loc = m.localiser
    if loc:
        t = loc.metrics.get("test", {})
        spec = loc.spec

        def num(v: Any) -> str:
            return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"

        lines.append(
            f"Auto-crop U-Net ({spec.input_size} px input, width "
            f"{spec.base_channels}); internal test: mean IoU {num(t.get('mean_iou'))}, "
            f"IoU > 0.3 on {num(t.get('frac_iou_gt_0_3'))} and > 0.5 on {num(t.get('frac_iou_gt_0_5'))} "
            f"of {t.get('n_lesion')} lesions (annotator boxes); {proposal_time(loc)}. "
            f"Trained {loc.metrics.get('epochs_run', '?')} epochs (best {loc.metrics.get('best_epoch', '?')}"
            f"{'; time limit' if loc.metrics.get('epochs_run', 0) < loc.metrics.get('epochs_planned', 0) else ''}) "
            f"on {loc.data or '?'}."
        )
        by_source = loc.ensemble_auc_by_roi_source
        if by_source:
            lines += [
                "",
                "Ensemble ROC AUC by where the ROI comes from (same cases, same models):",
                "",
                "| split | n | annotator box | localiser box | whole image |",
                "|---|---|---|---|---|",
            ]
            rows = [*by_source.items(), *((f"{k} (external)", v) for k, v in loc.external.items())]
            for split_name, row in rows:
                lines.append(
                    f"| {split_name} | {row['n']} | {num(row.get('annotator'))} | "
                    f"{num(row.get('localiser'))} | {num(row.get('whole_image'))} |"
                )
        for name, ext in loc.external.items():
            iou = ext.get("iou") or {}
            lines += [
                "",
                f"At {name}, a hospital it never saw: mean IoU {num(iou.get('mean_iou'))} with the "
                f"annotator boxes, IoU > 0.3 on {num(iou.get('frac_iou_gt_0_3'))} and > 0.5 on "
                f"{num(iou.get('frac_iou_gt_0_5'))} of {iou.get('n_lesion')} lesions.",
            ]
    else:
        lines.append("None in this release: auto-crop falls back to the whole image (and says so).")
    lines += ["", "## What it is not / limitations", ""]
    lines += [f"- {item}" for item in card.get("not", [])]
    lines += [
        "- Trained from scratch unless a member's start says otherwise; small data.",
        "- Not validated for clinical use; not a medical device.",
        "",
    ]
    return "\n".join(lines)
