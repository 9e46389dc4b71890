"""``python -m model_zoo predict|info|verify|bench|explain-eval|pacs ...``

Exit codes (README: Batch prediction): 0 = the run completed and every row succeeded, 1 = the run
completed but some rows failed (see their ``error`` column), 2 = unusable arguments or an
unusable zoo.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from model_zoo.cli_logging import setup_cli_logging
from model_zoo.errors import ZooError
from model_zoo.roi import ROI_MODES

LOG = logging.getLogger(__name__)


def _add_zoo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--zoo", type=Path, default=None, help="zoo release folder (default: $MODEL_ZOO_DIR or the newest bundled release)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="batch prediction over a case table or a BTXRD metadata.csv")
    p.add_argument("--cases", type=Path, required=True, help="case CSV (README: Case table) or BTXRD metadata.csv")
    p.add_argument("--out", type=Path, required=True, help="output CSV")
    _add_zoo(p)
    p.add_argument(
        "--roi",
        choices=ROI_MODES,
        default="given",
        help="given: the ROI columns (auto where a row has none); auto: the localiser; full: whole image",
    )
    p.add_argument("--resume", action="store_true", help="keep finished rows of an existing --out and fill the rest")
    p.add_argument(
        "--allow-ood",
        action="store_true",
        help="give the prediction word for rows the release's out-of-distribution check flags "
        "(they are still marked in the 'ood' column); default: 'prediction' left empty",
    )
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("info", help="print a release's manifest summary")
    _add_zoo(p)

    p = sub.add_parser("verify", help="check every file hash of a release")
    _add_zoo(p)

    p = sub.add_parser("bench", help="time loading, prediction, GradCAM and ScoreCAM (README 'Batch prediction')")
    _add_zoo(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--naive-repeats", type=int, default=1, help="repeats of plain pytorch-grad-cam ScoreCAM (slow: one forward per channel)"
    )

    p = sub.add_parser("explain-eval", help="measure where GradCAM/ScoreCAM point (lesion boxes) and how faithful they are")
    p.add_argument("--cases", type=Path, required=True, help="case CSV with ROI (lesion box) columns, or BTXRD metadata.csv")
    p.add_argument("--out", type=Path, required=True, help="output folder: cases.csv + summary.json")
    _add_zoo(p)
    p.add_argument("--split", default=None, help="only rows in this split of the release (e.g. test; matched by image sha256)")
    p.add_argument("--name", default=None, help="name of the case set in the summary (default: --split or the CSV's folder)")
    p.add_argument("--max-cases", type=int, default=None, help="evaluate a seeded random subset of this many cases")
    p.add_argument("--methods", default="gradcam,scorecam", help="comma-separated: gradcam, scorecam")
    p.add_argument("--views", default="roi,image", help="comma-separated: roi (ROI = lesion box), image (whole image)")
    p.add_argument("--steps", type=int, default=10, help="deletion/insertion curve steps")
    p.add_argument("--no-faithfulness", action="store_true", help="skip deletion/insertion curves")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the CIs")
    p.add_argument("--resume", action="store_true", help="keep the cases already in OUT/cases.csv")
    p.add_argument("--quiet", action="store_true")

    from model_zoo.pacs.cli import add_parser as add_pacs_parser

    add_pacs_parser(sub)  # pacs check | pacs predict --study UID [--write]
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "info":
            return _info(args)
        if args.command == "verify":
            from model_zoo.zoo import default_zoo_dir, verify_release

            root = args.zoo or default_zoo_dir()
            manifest = verify_release(root)
            print(f"OK: {root} ({len(manifest.files)} files verified)")
            return 0
        if args.command == "bench":
            from model_zoo.bench import run_bench

            result = run_bench(args.zoo, repeats=args.repeats, naive_repeats=args.naive_repeats)
            print(json.dumps(result) if args.json else json.dumps(result, indent=2))
            return 0
        if args.command == "explain-eval":
            return _explain_eval(args)
        if args.command == "pacs":
            from model_zoo.pacs.cli import run as run_pacs

            return run_pacs(args)
    except ZooError as err:
        LOG.error(f"error: {err}")
        return 2
    return 2


def _case_progress(desc: str, quiet: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(progress(done, total), close()) for a per-case tqdm bar on stderr; both no-ops when quiet."""
    if quiet:
        return (lambda done, total: None), (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="case", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return progress, bar.close


def _predict(args: argparse.Namespace) -> int:
    from model_zoo.ensemble import load_zoo
    from model_zoo.predict import predict_cases

    if not args.cases.is_file():
        LOG.error(f"error: case table not found: {args.cases}")
        return 2
    zoo = load_zoo(args.zoo)
    progress, close_bar = _case_progress("predict", args.quiet)
    out = predict_cases(
        zoo, args.cases, args.out, roi_mode=args.roi, resume=args.resume, progress=progress, allow_ood=args.allow_ood
    )
    close_bar()
    failed = int((out["error"] != "").sum())
    flagged = int(((out["warning"] != "") & (out["error"] == "")).sum())
    n_ood = int(out["ood"].eq(True).sum()) if "ood" in out else 0  # object column: None on failed rows
    ood_note = ""
    if n_ood:
        ood_note = f"; {n_ood} out of distribution (see the 'ood' column" + (
            ")" if args.allow_ood else "; no prediction word without --allow-ood)"
        )
    print(
        f"{len(out) - failed}/{len(out)} rows predicted with {zoo.name} -> {args.out}"
        + (f"; {failed} failed (see the 'error' column)" if failed else "")
        + (f"; {flagged} predicted with an input warning (see the 'warning' column)" if flagged else "")
        + ood_note,
        file=sys.stderr,
    )
    return 1 if failed else 0


def _explain_eval(args: argparse.Namespace) -> int:
    from model_zoo.ensemble import load_zoo
    from model_zoo.explain_eval import EvalOptions, run_explain_eval

    def split_list(text: str) -> tuple[str, ...]:
        return tuple(v.strip() for v in str(text).split(",") if v.strip())

    options = EvalOptions(
        methods=split_list(args.methods),
        views=split_list(args.views),
        steps=args.steps,
        faithfulness=not args.no_faithfulness,
        seed=args.seed,
        n_boot=args.n_boot,
        max_cases=args.max_cases,
    )
    if not args.cases.is_file():
        LOG.error(f"error: case table not found: {args.cases}")
        return 2
    zoo = load_zoo(args.zoo)
    progress, close_bar = _case_progress("explain-eval", args.quiet)
    summary = run_explain_eval(
        zoo, args.cases, args.out, split=args.split, name=args.name, options=options, resume=args.resume, progress=progress
    )
    close_bar()
    failed = len(summary["failed"])
    print(
        f"{summary['n_cases']} cases of {summary['set']} ({summary['kind']}) evaluated with {zoo.name} -> "
        f"{args.out / 'summary.json'}" + (f"; {failed} failed (listed in the summary)" if failed else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0


def _info(args: argparse.Namespace) -> int:
    from model_zoo.zoo import default_zoo_dir, verify_release

    root = args.zoo or default_zoo_dir()
    m = verify_release(root)
    print(f"{m.name} {m.version}  ({root})")
    print(f"task: {m.task.positive_class} vs {m.task.negative_class}; profile {m.profile}")
    for e in m.members:
        s = e.spec
        print(f"  member {s.member_id:<10} {s.arch:<32} {s.input_size} px  init={e.init}")
    print(
        f"stacker: {m.stacker.chosen} on {m.stacker.score_source} scores; threshold {m.threshold.value:.4f} ({m.threshold.rule})"
    )
    for split, block in m.metrics.items():
        print(f"  {split} AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in block["auc"].items() if v is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
