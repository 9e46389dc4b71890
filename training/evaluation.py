"""``python -m training evaluate``: score a finished release on internal and external case tables.

A hospital that installs the dashboard is a new centre, so the number its clinicians need is
the release's performance on a centre it never saw. This module runs the product path
(:func:`model_zoo.predict.predict_cases`, exactly what ``python -m model_zoo predict`` runs)
on each set, then summarises every set in one *evaluation block* (AUC with DeLong CIs per
model, the ensemble's sensitivity/specificity/PPV/NPV with Wilson CIs at the shipped
threshold, raw and calibrated ECE with reliability bins, accuracy per tumour subtype) and
renders the blocks side by side as a markdown table for the model card.

External sets are for measurement only: nothing here fits anything on them. A set that
shares an image (same sha256 of the file bytes) with the release's own data is refused.

Usage::

    python -m training evaluate --zoo RELEASE_DIR --external NAME=CSV [--external ...] \\
        --out DIR [--roi given|auto|full] [--internal-test] [--quiet]

Writes, per set, ``DIR/NAME/predictions.csv``, ``DIR/NAME/report/`` (metrics.json +
report.html, at the release's per-model thresholds) and ``DIR/NAME/evaluation.json`` (the
block), then ``DIR/evaluation.md`` and prints the table.

Exit codes: 0 = done, every row scored; 1 = done, but some rows failed (their ``error``
column says why; they are left out of every statistic) or a file could not be written;
2 = unusable arguments, zoo or case table (one-line message).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from model_zoo.cli_logging import setup_cli_logging
from model_zoo.errors import InputError, ZooError
from training import stats as st
from training.report.extras import SUBTYPE_COLUMNS  # one definition: the report reads the same column

if TYPE_CHECKING:  # pragma: no cover
    from model_zoo.manifest import Manifest

LOG = logging.getLogger(__name__)

__all__ = [
    "CALIBRATED_COLUMN",
    "SUBTYPE_COLUMNS",
    "block_from_release_metrics",
    "evaluation_block",
    "format_evaluation_table",
    "main",
    "release_image_hashes",
]

ENSEMBLE_COLUMN = "p_ensemble"
CALIBRATED_COLUMN = "calibrated_p_ensemble"
KINDS = ("internal", "external")
INTERNAL_TEST = "internal-test"
# Keys under the manifest's data section (``DataInfo.listed``) where a release may list the sha256 of its images: a list of
# hex digests, a dict of such lists (e.g. per split) or of path -> digest, or the path of a
# hashed file in the release holding one digest per line (or a JSON list).
HASH_KEYS = ("image_sha256", "image_hashes", "train_image_sha256")
RELEASE_CASES = "data/cases.csv"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# ----------------------------------------------------------------------------- values


def _num(x: Any) -> float | None:
    """A finite plain float, or None (JSON null) for None/NaN/inf."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _ci(ci: Sequence[Any] | None) -> list[float | None] | None:
    if ci is None:
        return None
    lo, hi = _num(ci[0]), _num(ci[1])
    return None if lo is None and hi is None else [lo, hi]


def _numeric(series: pd.Series, column: str) -> pd.Series:
    num = pd.to_numeric(series, errors="coerce").astype(float)
    bad = num.isna() & series.notna() & (series.astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"column '{column}' must be numeric; row {row + 1} has {series.iloc[row]!r}")
    if np.isinf(num.to_numpy()).any():
        raise InputError(f"column '{column}' contains an infinite value")
    return num


def _labels(series: pd.Series) -> pd.Series:
    num = _numeric(series, "label")
    bad = num.notna() & ~num.isin([0.0, 1.0])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"column 'label' must hold 0/1; row {row + 1} has {series.iloc[row]!r}")
    return num


def _auc_entry(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    if y.size == 0 or y.all() or not y.any():
        return {"auc": None, "auc_ci": None, "n": int(y.size)}
    r = st.delong_auc(y, s)
    return {"auc": _num(r.auc), "auc_ci": _ci(r.ci), "n": int(y.size)}


# ----------------------------------------------------------------------------- the block


def evaluation_block(
    pred: pd.DataFrame,
    *,
    threshold: float,
    kind: str,
    source: str,
    calibrated_column: str | None = CALIBRATED_COLUMN,
    subtype_columns: Sequence[str] = SUBTYPE_COLUMNS,
    bins: int = 10,
) -> dict[str, Any]:
    """Summarise one set's predictions (a ``predict`` output with a ``label`` column).

    Parameters
    ----------
    pred : DataFrame
        ``label`` (0/1), ``p_ensemble``, any other ``p_<model>`` columns (members,
        ``p_clinic``), optional ``calibrated_column``, optional subtype column, optional
        ``error`` (rows with a non-empty error are left out).
    threshold : float
        The shipped operating threshold on the raw ``p_ensemble``: a case is called
        positive when ``p_ensemble >= threshold``. Calibration is monotone, so the calls
        are the same as thresholding the calibrated column at the calibrated threshold.
    kind : "internal" or "external"
    source : str
        Where the set came from (shown in the model card).
    calibrated_column : str or None
        Column with the calibrated ensemble probability; its ECE and reliability bins are
        reported when the column is present and filled.
    subtype_columns : sequence of str
        The first of these present gives the per-subtype accuracy table.
    bins : int
        Equal-width reliability bins for ECE.

    Returns
    -------
    dict
        ``kind, source, n, n_positive, n_excluded, models, ensemble, subtype_column,
        subtypes`` (see the module docs of the CLI); undefined statistics are ``None`` (an
        AUC with one class, a sensitivity without positives). JSON-serialisable with
        ``allow_nan=False``.

    Raises
    ------
    InputError
        Missing ``label``/``p_ensemble``, non-0/1 labels, non-numeric scores, a threshold
        outside [0, 1], an unknown kind, no usable row.
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be a number, got {threshold!r}") from None
    if not 0.0 <= t <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {threshold!r}")
    if not isinstance(pred, pd.DataFrame):
        raise InputError("predictions must be a table (pandas DataFrame)")
    for col in ("label", ENSEMBLE_COLUMN):
        if col not in pred.columns:
            raise InputError(f"predictions have no '{col}' column")

    label = _labels(pred["label"])
    p_all = _numeric(pred[ENSEMBLE_COLUMN], ENSEMBLE_COLUMN)
    ok = label.notna() & p_all.notna()
    if "error" in pred.columns:
        err = pred["error"]
        ok &= err.isna() | (err.astype(str).str.strip() == "")
    if not ok.any():
        raise InputError("no usable rows (every row lacks a label or an ensemble score, or failed)")
    mask = ok.to_numpy()
    y = label.to_numpy()[mask] == 1.0
    p = p_all.to_numpy()[mask]
    n, n_pos = int(y.size), int(y.sum())

    models: dict[str, Any] = {}
    for col in pred.columns:
        if isinstance(col, str) and col.startswith("p_") and len(col) > 2:
            s = _numeric(pred[col], col).to_numpy()[mask]
            have = ~np.isnan(s)
            models[col[2:]] = _auc_entry(y[have], s[have])

    conf = st.confusion_at_threshold(y, p, t)
    cm = st.classification_metrics(conf)
    ens: dict[str, Any] = {"threshold": t}
    for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        ens[key] = _num(cm[key].estimate)
        ens[f"{key}_ci"] = _ci(cm[key].ci)
    ens["confusion"] = conf.as_list()
    ece_raw, rel_raw = st.ece_with_bins(y, p, bins)
    ece_cal, rel_cal = None, None
    if calibrated_column and calibrated_column in pred.columns:
        c = _numeric(pred[calibrated_column], calibrated_column).to_numpy()[mask]
        if np.isnan(c).all():
            pass  # an empty column: no calibration for this set
        elif np.isnan(c).any():
            raise InputError(
                f"column '{calibrated_column}' is empty on {int(np.isnan(c).sum())} scored row(s): calibrate every row or none"
            )
        else:
            ece_cal, rel_cal = st.ece_with_bins(y, c, bins)
    ens["ece"] = _num(ece_raw)
    ens["ece_calibrated"] = _num(ece_cal)
    ens["reliability"] = rel_cal if rel_cal is not None else rel_raw
    ens["reliability_raw"] = rel_raw

    sub_col = next((c for c in subtype_columns if c in pred.columns), None)
    subtypes: dict[str, Any] = {}
    if sub_col is not None:
        values = pred.loc[ok, sub_col].astype("string").fillna("").str.strip().replace("", "(missing)").to_numpy(dtype=object)
        correct = (p >= t) == y
        rows = []
        for sub in pd.unique(values):
            m = values == sub
            k, size = int(correct[m].sum()), int(m.sum())
            prop = st.proportion(k, size)
            ys = np.unique(y[m].astype(int))
            rows.append(
                (
                    str(sub),
                    {
                        "n": size,
                        "n_correct": k,
                        "accuracy": _num(prop.estimate),
                        "accuracy_ci": _ci(prop.ci),
                        "label": int(ys[0]) if ys.size == 1 else None,
                        "n_positive": int(y[m].sum()),
                    },
                )
            )
        rows.sort(key=lambda r: (-r[1]["n"], r[0]))
        subtypes = dict(rows)

    return {
        "kind": kind,
        "source": str(source),
        "n": n,
        "n_positive": n_pos,
        "n_excluded": int((~ok).sum()),
        "models": models,
        "ensemble": ens,
        "subtype_column": sub_col,
        "subtypes": subtypes,
    }


def block_from_release_metrics(metrics: dict[str, Any], *, source: str, kind: str = "internal") -> dict[str, Any]:
    """An evaluation block from a release's own ``report/<split>/metrics.json`` (README: Training, report).

    For the internal test split when it is not re-scored: AUCs, CIs and the ensemble's
    operating point come from the release; ECE, reliability and subtypes are ``None``/empty
    (metrics.json does not hold them).
    """
    ens_m = (metrics.get("models") or {}).get("ensemble")
    if not ens_m or "confusion" not in ens_m:
        raise InputError(f"{source}: no ensemble entry with a confusion matrix")
    (tn, fp), (fn, tp) = ens_m["confusion"]
    ens: dict[str, Any] = {"threshold": _num(ens_m.get("threshold"))}
    for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy"):
        ens[key] = _num(ens_m.get(key))
        ens[f"{key}_ci"] = _ci(ens_m.get(f"{key}_ci"))
    ens.update(confusion=[[tn, fp], [fn, tp]], ece=None, ece_calibrated=None, reliability=None, reliability_raw=None)
    models = {name: {"auc": _num(m.get("auc")), "auc_ci": _ci(m.get("auc_ci"))} for name, m in metrics["models"].items()}
    return {
        "kind": kind,
        "source": source,
        "n": int(tn + fp + fn + tp),
        "n_positive": int(fn + tp),
        "n_excluded": 0,
        "models": models,
        "ensemble": ens,
        "subtype_column": None,
        "subtypes": {},
    }


# ----------------------------------------------------------------------------- the table


def format_evaluation_table(blocks: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines for a model card: the dashboard's "new hospital" table (one row per set,
    internal first), then the sentence naming the rows that apply at a hospital the model has
    not seen. Both come from ``model_zoo.validation_text``, so card and Zoo page agree."""
    from model_zoo.validation_text import evaluation_rows, unseen_hospital_sentence

    rows = evaluation_rows(blocks)
    if not rows:
        return []
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return [*lines, "", unseen_hospital_sentence(blocks) or ""]


# ----------------------------------------------------------------------------- leakage check


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _hash_values(value: Any) -> Iterable[str]:
    """Every sha256 hex digest in a list / dict (keys and values) / string, recursively."""
    if isinstance(value, str):
        if _SHA256.fullmatch(value.strip()):
            yield value.strip().lower()
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _hash_values(k)
            yield from _hash_values(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _hash_values(v)


def release_image_hashes(root: Path, manifest: Manifest) -> tuple[set[str] | None, str]:
    """The sha256 digests of the release's own images, as the release lists them.

    Looks under the manifest's ``data`` section for one of :data:`HASH_KEYS`, then for the ``sha256``
    column of the release's own case list ``data/cases.csv`` (external sets the release was
    measured on, ``data/external-*.csv``, are not its data and are not read). Returns
    ``(None, why)`` when the release lists none, else ``(digests, where)``.
    """
    from model_zoo.zoo import verified_path

    for key in HASH_KEYS:
        value = manifest.data.listed(key)
        if not value:
            continue
        where = f"manifest data.{key}"
        if isinstance(value, str) and not _SHA256.fullmatch(value.strip()):
            path = verified_path(root, manifest, value, "the image hash list")
            text = path.read_text(encoding="utf-8")
            value = json.loads(text) if text.lstrip().startswith(("[", "{")) else text.split()
            where = f"{path.name} (manifest data.{key})"
        return set(_hash_values(value)), where
    if RELEASE_CASES in manifest.files:
        path = verified_path(root, manifest, RELEASE_CASES, "the release's case list")
        table = pd.read_csv(path, usecols=lambda c: c == "sha256", dtype=str)
        if "sha256" in table.columns:
            return set(_hash_values(table["sha256"].dropna().tolist())), f"{RELEASE_CASES} of the release"
    return None, "the release lists no image hashes"


def _release_frame(root: Path, manifest: Manifest) -> tuple[pd.DataFrame | None, str]:
    """The release's case rows (with ``split``) rebuilt from its saved config and data source.

    Only when the source is readable here and its fingerprint equals the manifest's, i.e.
    the very images and labels the release was built from. ``(None, why)`` otherwise.
    """
    import yaml

    from model_zoo.zoo import verified_path
    from training.data import data_fingerprint, load_cases

    try:
        cfg_path = verified_path(root, manifest, "config.yaml", "the release config")
    except ZooError:
        return None, "the release has no config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    cases = Path(str((cfg.get("data") or {}).get("cases", "")))
    candidates = [cases] if cases.is_absolute() else [Path.cwd() / cases, Path(__file__).resolve().parents[1] / cases]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        return None, f"its data source {cases} is not available here"
    cfg["data"]["cases"] = str(found)
    try:
        frame = load_cases(cfg, log=lambda *a, **k: None)
        fingerprint = data_fingerprint(frame)
    except (ZooError, OSError, KeyError) as err:
        return None, f"its data source {found} could not be rebuilt ({err})"
    if fingerprint != manifest.data.fingerprint:
        return None, f"its data source {found} has changed since the release (fingerprint differs)"
    return frame, f"its data source {found} (fingerprint matches)"


def _file_sha256(path: str) -> str | None:
    from model_zoo.zoo import sha256_file

    try:
        return sha256_file(Path(path))
    except OSError:
        return None


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training evaluate",
        description="Score a release on internal/external case tables: AUC (DeLong CIs), "
        "sensitivity/specificity (Wilson CIs), ECE, accuracy per subtype.",
    )
    p.add_argument("--zoo", type=Path, required=True, metavar="RELEASE_DIR", help="zoo release folder")
    p.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=CSV",
        help="an external set: a case CSV (README: Case table) or BTXRD metadata.csv with labels; "
        "repeatable. Measurement only: nothing is fitted on it",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (DIR/NAME/...)")
    p.add_argument(
        "--roi", choices=("given", "auto", "full"), default="given", help="as in `python -m model_zoo predict` (default: given)"
    )
    p.add_argument(
        "--internal-test",
        action="store_true",
        help="also re-score the release's own test split (rebuilt from its config and data "
        "source; refused unless the data fingerprint matches). Without it the internal "
        "row is read from the release's report/test/metrics.json",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_external_sets(items: list[str], reserved: set[str], *, required: bool = True) -> list[tuple[str, Path]]:
    """``--external NAME=CSV`` arguments -> [(name, path)], each name valid, unique and not reserved,
    each path an existing file."""
    if not items and required:
        raise InputError("give at least one --external NAME=CSV")
    sets: list[tuple[str, Path]] = []
    for item in items:
        name, sep, csv = item.partition("=")
        name, csv = name.strip(), csv.strip()
        if not sep or not name or not csv:
            raise InputError(f"--external takes NAME=CSV, got {item!r}")
        if not _NAME.match(name) or name in reserved:
            raise InputError(
                f"--external name {name!r} must be letters, digits, '.', '_' or '-' (and not {', '.join(sorted(reserved))})"
            )
        if any(name == n for n, _ in sets):
            raise InputError(f"--external name {name!r} is given twice")
        path = Path(csv).expanduser()
        if not path.is_file():
            raise InputError(f"--external {name}: case table not found: {path}")
        sets.append((name, path))
    return sets


def _write_json(path: Path, obj: Any) -> None:
    from model_zoo.zoo import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _progress_bar(name: str, quiet: bool) -> tuple[Callable[[int, int], None] | None, Any]:
    if quiet:
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(desc=f"predict {name}", unit="case", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return progress, bar


def _evaluate_set(
    zoo: Any, name: str, kind: str, cases: Path, out: Path, args: argparse.Namespace, calibration: Any
) -> tuple[dict[str, Any], int]:
    """Predict one set, write its predictions, report and block; return (block, failed rows)."""
    from model_zoo.predict import predict_cases
    from training.report import write_report

    set_dir = out / name
    set_dir.mkdir(parents=True, exist_ok=True)
    progress, bar = _progress_bar(name, args.quiet)
    pred = predict_cases(zoo, cases, set_dir / "predictions.csv", roi_mode=args.roi, progress=progress)
    if bar is not None:
        bar.close()
    failed = int((pred["error"].astype(str) != "").sum())

    source = f"{cases} (roi {args.roi})"
    block = evaluation_block(pred, threshold=zoo.threshold, kind=kind, source=source)

    # The report: all-empty score columns (e.g. no clinic model) would empty every row.
    drop = [
        c
        for c in pred.columns
        if isinstance(c, str) and c.startswith("p_") and pd.to_numeric(pred[c], errors="coerce").isna().all()
    ]
    report_frame = pred.drop(columns=drop)
    names = {c[2:] for c in report_frame.columns if isinstance(c, str) and c.startswith("p_")}
    per_model = zoo.manifest.threshold.per_model
    thresholds = {k: float(v) for k, v in per_model.items() if k in names}
    write_report(
        report_frame,
        set_dir / "report",
        threshold=zoo.threshold,
        thresholds=thresholds,
        title=f"{zoo.name} on {name} ({kind})",
        context={
            "zoo": zoo.name,
            "set": f"{name} ({kind})",
            "cases": str(cases),
            "roi": args.roi,
            "thresholds": "release per-model thresholds" if thresholds else "release threshold",
        },
    )
    record = {
        **block,
        "set": name,
        "zoo": zoo.name,
        "roi": args.roi,
        "calibration": calibration.to_dict() if calibration is not None else None,
        "n_failed_rows": failed,
    }
    _write_json(set_dir / "evaluation.json", record)
    return block, failed


def _internal_test_cases(frame: pd.DataFrame, out: Path) -> Path:
    test = frame[frame["split"] == "test"].copy()
    if test.empty:
        raise InputError("the release's test split is empty")
    test["image"] = test["image_path"]
    test = test.drop(columns=[c for c in ("row_error", "image_path") if c in test.columns])
    path = out / INTERNAL_TEST / "cases.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    test.to_csv(path, index=False)
    return path


def _run(args: argparse.Namespace) -> int:
    from model_zoo.cases import read_case_table
    from model_zoo.ensemble import load_zoo

    sets = parse_external_sets(args.external, {INTERNAL_TEST})
    if not args.zoo.is_dir():
        raise InputError(f"zoo release folder not found: {args.zoo}")
    zoo = load_zoo(args.zoo)
    try:
        calibration = zoo.calibration  # predict_cases writes calibrated_p_ensemble from the same entry
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"the release's calibration entry cannot be read: {err}") from None
    label_map = zoo.task.label_map

    # Every table is checked (labels, leakage) before any prediction starts.
    tables = {}
    for name, path in sets:
        table = read_case_table(path, label_map=label_map, check_files=False)
        if "label" not in table.frame.columns or table.frame["label"].isna().all():
            raise InputError(f"--external {name}: {path.name} has no labels; evaluation needs them")
        tables[name] = table

    hashes, where = release_image_hashes(zoo.root, zoo.manifest)
    frame = None
    if hashes is None or args.internal_test:
        frame, why = _release_frame(zoo.root, zoo.manifest)
        if args.internal_test and frame is None:
            raise InputError(f"--internal-test: cannot rebuild the release's test split: {why}")
        if hashes is None and frame is not None:
            hashes = {h for h in map(_file_sha256, frame["image_path"]) if h}
            where = f"the {len(hashes)} images of {why}"
        elif hashes is None:
            LOG.warning(f"note: leakage check skipped: {where} and {why}")
    if hashes is not None:
        for name, path in sets:
            paths = [p for p in tables[name].frame["image_path"].dropna().unique()]
            shared = [p for p in paths if _file_sha256(p) in hashes]
            if shared:
                raise InputError(
                    f"--external {name}: {len(shared)} image(s) are also in the release's own data "
                    f"(same sha256, e.g. {Path(shared[0]).name}); refusing to call it external"
                )
        # a warning-level note (stderr): the reader should see what the check covered
        LOG.warning(f"leakage check: no image of {', '.join(n for n, _ in sets)} is among {where}")

    args.out.mkdir(parents=True, exist_ok=True)
    blocks: dict[str, dict[str, Any]] = {}
    failed_total = 0
    if args.internal_test:
        cases = _internal_test_cases(frame, args.out)
        blocks[INTERNAL_TEST], failed = _evaluate_set(zoo, INTERNAL_TEST, "internal", cases, args.out, args, calibration)
        failed_total += failed
    else:
        report_test = zoo.root / "report" / "test" / "metrics.json"
        if args.roi != "given":
            LOG.warning(
                f"note: no internal row (the release's test report used the given ROIs, this run --roi "
                f"{args.roi}); add --internal-test to re-score it"
            )
        elif report_test.is_file():
            blocks[INTERNAL_TEST] = block_from_release_metrics(
                json.loads(report_test.read_text(encoding="utf-8")),
                source=f"{zoo.name} report/test/metrics.json (not re-scored; ECE needs --internal-test)",
            )
    for name, path in sets:
        blocks[name], failed = _evaluate_set(zoo, name, "external", path, args.out, args, calibration)
        failed_total += failed

    lines = format_evaluation_table(blocks)
    header = [f"# {zoo.name}: evaluation (roi {args.roi})", ""]
    from model_zoo.zoo import atomic_write_text

    atomic_write_text(args.out / "evaluation.md", "\n".join(header + lines) + "\n")
    print("\n".join(lines))
    if failed_total:
        LOG.warning(f"note: {failed_total} row(s) failed and are left out (see the 'error' column of predictions.csv)")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (see the module docstring)."""
    setup_cli_logging()
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed its message
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except ZooError as err:
        LOG.error(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        return 2
    except OSError as err:
        LOG.error(f"error: {err.strerror or err}: {getattr(err, 'filename', '') or ''}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
