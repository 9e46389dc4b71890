"""``python -m training add-explain``: a new zoo release = an existing release + its measured heatmaps.

Takes one or more ``summary.json`` files from ``python -m model_zoo explain-eval`` (one per
case set: ``--summary test=runs/explain-test/summary.json --summary centre3=...``) and
writes a new release: every file of the source release byte for byte (members, stacker,
localiser, reports), plus ``report/explain.json`` (the summaries, keyed by set name), a
"Heatmaps" section in MODEL_CARD.md, the bumped version in the manifest, config and card,
and ``derived_from`` naming the source release. Same pattern as ``add-localiser``.

A summary is accepted only if it was measured on members, stacker and CAM weights equal to
the source release's (sha256 of the files, recorded by explain-eval), so a number in the
card always belongs to the networks that ship with it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model_zoo.cli_logging import setup_cli_logging
from model_zoo.errors import InputError, ZooError
from model_zoo.manifest import DerivedFrom, ExplainInfo
from model_zoo.zoo import ReleaseWriter, next_patch, sha256_file, verify_release
from training.release import card_with_section

LOG = logging.getLogger(__name__)

# Files the new release writes itself rather than copying.
REGENERATED = {"manifest.json", "manifest.sha256", "MODEL_CARD.md", "config.yaml"}
CARD_SECTION = "## Heatmaps: where they point and how faithful they are"
CARD_BEFORE = "## What it is not"


def parse_summary_args(items: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` (or a bare PATH: the name recorded in the summary) -> {name: path}."""
    out: dict[str, Path] = {}
    for item in items:
        if "=" in item:
            name, path = item.split("=", 1)
            name = name.strip()
        else:
            path = item
            name = ""
        p = Path(path.strip())
        if not p.is_file():
            raise InputError(f"--summary {item}: {p} not found")
        if not name:
            name = str(json.loads(p.read_text(encoding="utf-8")).get("set") or p.parent.name)
        if name in out:
            raise InputError(f"--summary: set name {name!r} given twice")
        out[name] = p
    if not out:
        raise InputError("give at least one --summary NAME=PATH")
    return out


def _check_summary(name: str, summary: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> None:
    from model_zoo.explain_eval import SUMMARY_FORMAT

    if summary.get("format_version") != SUMMARY_FORMAT or not isinstance(summary.get("results"), Mapping):
        raise InputError(f"--summary {name}: not an explain-eval summary (format_version {SUMMARY_FORMAT})")
    measured = summary.get("release_fingerprint")
    if not isinstance(measured, Mapping):
        raise InputError(f"--summary {name}: records no release fingerprint; re-run explain-eval")
    for key in ("members", "stacker", "cam_weights"):
        if measured.get(key) != fingerprint.get(key):
            raise InputError(
                f"--summary {name}: measured on {summary.get('zoo')}, whose {key} differ from the "
                "source release's; measure this release"
            )
    if not summary.get("n_cases"):
        raise InputError(f"--summary {name}: no case was evaluated")


def card_section(report: Any, sets: Mapping[str, Mapping[str, Any]]) -> str:
    """The model card's heatmap section (markdown) from the typed report and the raw summaries."""
    from model_zoo.explain_eval import markdown_tables

    lines = [
        CARD_SECTION,
        "",
        "Measured by `python -m model_zoo explain-eval` on cases with an annotator's lesion box, with the "
        "heatmaps the Case page shows (per member and ensemble-weighted). Pointing = the map's peak inside "
        "the box; energy = share of the map's positive mass inside the box; IoU = the map's top 20 % vs the "
        "box; deletion / insertion = area under the probability while the most-highlighted pixels are "
        "blurred away / restored (lower / higher = the score depends on the highlighted pixels). Random "
        "and centre-prior maps are the baselines: a heatmap is informative only where it beats them. "
        "Means with 95 % bootstrap CIs over cases.",
        "",
    ]
    for name, s in sets.items():
        sel = s.get("selection") or {}
        subset_taken = sel.get("subset", bool(sel.get("max_cases")) and (sel.get("n_eligible") or 0) > s["n_cases"])
        subset = f"a seeded random {s['n_cases']} of {sel.get('n_eligible')}" if subset_taken else f"all {s['n_cases']}"
        lines.append(
            f"- {name} ({s.get('kind')}): {subset} lesions of `{s.get('cases')}`"
            + (f", split {s['split']}" if s.get("split") else "")
            + f"; measured {s.get('created', '')[:10]}"
        )
    lines += ["", markdown_tables(report).rstrip(), ""]
    return "\n".join(lines)


def add_explain(
    source: Path, summaries: Mapping[str, Path], out_parent: Path, version: str | None = None, log: Any = LOG.info
) -> Path:
    import yaml

    from model_zoo.explain_report import REPORT_FILE, ExplainReport, release_fingerprint
    from training.config import dump_config

    manifest = verify_release(source)
    version = str(version or next_patch(manifest.version))
    if version == manifest.version:
        raise InputError(f"--version {version} is the source release's version; choose a new one")
    fingerprint = release_fingerprint(manifest)
    sets: dict[str, dict[str, Any]] = {}
    for name, path in summaries.items():
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        _check_summary(name, summary, fingerprint)
        sets[name] = {**summary, "set": name}
    blob = {"format_version": 1, "sets": sets}
    report = ExplainReport.from_dict(blob)
    cfg = yaml.safe_load((source / "config.yaml").read_text(encoding="utf-8"))
    cfg["version"] = version
    old_title = manifest.title
    new_title = f"{manifest.name} {version}"
    with ReleaseWriter(out_parent, manifest.name, version) as rw:
        for rel in manifest.files:
            if rel in REGENERATED or rel == REPORT_FILE:
                continue
            rw.copy_file(rel, source / rel)
        rw.write_text(REPORT_FILE, json.dumps(blob, indent=2, sort_keys=True, allow_nan=False))
        rw.write_text("config.yaml", dump_config(cfg))
        explain = ExplainInfo(
            report=REPORT_FILE,
            sets={
                name: {
                    "kind": s.get("kind"),
                    "n_cases": s.get("n_cases"),
                    "cases": s.get("cases"),
                    "split": s.get("split"),
                    "methods": s.get("methods"),
                    "views": s.get("views"),
                    "measured_on": s.get("zoo"),
                    "created": s.get("created"),
                }
                for name, s in sets.items()
            },
        )
        new = manifest.replace(
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            explain=explain,
            derived_from=DerivedFrom(
                release=old_title,
                manifest_sha256=sha256_file(source / "manifest.json"),
                change="heatmap measurements added (report/explain.json, model card); "
                "members, stacker, threshold, localiser and reports unchanged",
            ),
        )
        card_path = source / "MODEL_CARD.md"
        source_card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
        rw.write_text(
            "MODEL_CARD.md",
            card_with_section(source_card, old_title, new_title, CARD_SECTION, card_section(report, sets), before=CARD_BEFORE),
        )
        final = rw.publish(new)
    log(f"release written: {final}")
    return final


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    p = argparse.ArgumentParser(prog="python -m training add-explain", description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, type=Path, help="source release folder")
    p.add_argument(
        "--summary",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an explain-eval summary.json and the set's name (repeat per set: test=..., centre3=...)",
    )
    p.add_argument("--version", default=None, help="version of the new release (default: the source's, patch + 1)")
    p.add_argument("--out", type=Path, default=None, help="parent folder of the new release (default: beside --zoo)")
    args = p.parse_args(argv)
    try:
        add_explain(args.zoo, parse_summary_args(args.summary), args.out or args.zoo.parent, args.version)
    except ZooError as err:
        LOG.error(f"error: {err}")
        return 2
    return 0
