"""The typed release schema: ``manifest.json`` as frozen dataclasses, the only reader/writer.

Every key of a release's manifest is named here and nowhere else: training builds a
:class:`Manifest` and :class:`model_zoo.zoo.ReleaseWriter` serialises it; the loaders
(:func:`model_zoo.zoo.verify_release`, :class:`model_zoo.ensemble.Zoo`) hand the typed object
to the library, the CLIs and the dashboard, which read attributes, never key strings.

The idea follows timm's ``PretrainedCfg`` (one typed record per weight set from which
everything else is built) and MONAI's bundle ``metadata.json`` (a release folder carries its
version, library versions, intended use and input/output facts), written for this zoo:

* :data:`FORMAT_VERSION` is the layout version. A manifest of another version is refused on
  load with an :class:`UnsupportedFormatError` (an :class:`~model_zoo.errors.InputError`)
  that says whether the release is newer or older than this library reads.
* ``Manifest.from_dict(d).to_dict() == d`` for any manifest this library wrote: sections a
  release omits stay omitted (``absent``), and keys this version does not know are kept
  (``extra``), so an ``add-*`` command that derives a release from another never drops them.
* Sections that code reads by key are typed fields; large free-form tables (evaluation
  blocks, metrics, localiser measurements, OOD measurements) stay ``Mapping`` fields and are
  read by the modules that render them (``model_zoo.validation_text``, the model card).
"""

from __future__ import annotations

import copy
import math
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from model_zoo.calibration import Calibration
from model_zoo.errors import InputError, IntegrityError
from model_zoo.localize import LocaliserSpec
from model_zoo.members import MemberSpec

__all__ = [
    "FORMAT_VERSION",
    "MIN_FORMAT_VERSION",
    "DataInfo",
    "DerivedFrom",
    "ExplainInfo",
    "ExternalData",
    "LocaliserInfo",
    "Manifest",
    "MemberEntry",
    "OOD_COMBINES",
    "OOD_METHODS",
    "OOD_TRANSFORMS",
    "OodInfo",
    "OodMember",
    "StackerInfo",
    "Task",
    "ThresholdInfo",
    "UnsupportedFormatError",
    "check_format_version",
    "manifest_from_json",
    "read_manifest_file",
]

FORMAT_VERSION = 1  # written by this library
MIN_FORMAT_VERSION = 1  # the oldest layout this library still reads
MANIFEST_FILE = "manifest.json"

_EMPTY: tuple[Any, ...] = (None, {}, [], "")


class UnsupportedFormatError(InputError):
    """A manifest whose ``format_version`` this library does not read (newer or older)."""


def _copy(value: Any) -> Any:
    """A detached plain-JSON copy (dicts and lists), so a frozen record never shares state."""
    return copy.deepcopy(value)


def _known(cls: type) -> set[str]:
    return {f.name for f in fields(cls)} - {"absent", "extra"}


def _split(cls: type, d: Mapping[str, Any], keys: Mapping[str, str] | None = None) -> tuple[frozenset[str], dict[str, Any]]:
    """(known fields missing from ``d``, unknown keys of ``d`` with their values)."""
    names = _known(cls)
    json_names = {(keys or {}).get(n, n) for n in names}
    absent = frozenset(n for n in names if (keys or {}).get(n, n) not in d)
    extra = {k: _copy(v) for k, v in d.items() if k not in json_names}
    return absent, extra


def _finish(out: dict[str, Any], absent: frozenset[str], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the keys the source omitted (while still empty) and add the unknown ones back."""
    for name in absent:
        if name in out and any(out[name] is e or (out[name] == e and type(out[name]) is type(e)) for e in _EMPTY):
            del out[name]
    out.update(_copy(dict(extra)))
    return out


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


# ----------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Task:
    """What the release classifies: the positive/negative class names and the label coding."""

    name: str
    positive_class: str
    negative_class: str
    class_names: tuple[str, ...] = ()
    label_map: dict[str, int] | None = None  # class name (or other label text) -> 0/1
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "positive_class": self.positive_class,
            "negative_class": self.negative_class,
            "class_names": list(self.class_names),
            "label_map": _copy(self.label_map),
        }
        return _finish(out, self.absent, self.extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        absent, extra = _split(cls, d)
        return cls(
            name=str(d.get("name", "")),
            positive_class=str(d["positive_class"]),
            negative_class=str(d["negative_class"]),
            class_names=tuple(str(c) for c in d.get("class_names") or ()),
            label_map=_copy(d.get("label_map")),
            absent=absent,
            extra=extra,
        )


@dataclass(frozen=True)
class MemberEntry:
    """One ensemble member: its spec (architecture, input, normalisation), weights file, training facts."""

    spec: MemberSpec
    weights: str
    best_epoch: int | None = None
    best_val_auc: float | None = None
    train_images_per_second: float | None = None
    epochs_run: int | None = None
    init: str | None = None
    weights_dtype: str | None = None
    init_provenance: Mapping[str, Any] | None = None  # where a converted pretrained start came from
    trainable: str | None = None  # "all", "head" or "tail"
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def member_id(self) -> str:
        return self.spec.member_id

    def to_dict(self) -> dict[str, Any]:
        out = {
            "spec": self.spec.to_dict(),
            "weights": self.weights,
            "best_epoch": self.best_epoch,
            "best_val_auc": self.best_val_auc,
            "train_images_per_second": self.train_images_per_second,
            "epochs_run": self.epochs_run,
            "init": self.init,
            "weights_dtype": self.weights_dtype,
            "init_provenance": _copy(self.init_provenance),
            "trainable": self.trainable,
        }
        return _finish(out, self.absent, self.extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberEntry:
        absent, extra = _split(cls, d)
        return cls(
            spec=MemberSpec.from_dict(d["spec"]),
            weights=str(d["weights"]),
            best_epoch=_opt_int(d.get("best_epoch")),
            best_val_auc=_opt_float(d.get("best_val_auc")),
            train_images_per_second=_opt_float(d.get("train_images_per_second")),
            epochs_run=_opt_int(d.get("epochs_run")),
            init=_opt_str(d.get("init")),
            weights_dtype=_opt_str(d.get("weights_dtype")),
            init_provenance=_copy(d.get("init_provenance")),
            trainable=_opt_str(d.get("trainable")),
            absent=absent,
            extra=extra,
        )


@dataclass(frozen=True)
class StackerInfo:
    """The chosen stacker (pickled in ``file``), how it was chosen and what it reads."""

    file: str
    chosen: str
    age_fill: float
    features: tuple[str, ...] = ()
    comparison: tuple[Mapping[str, Any], ...] = ()  # one row per candidate stacker (free-form)
    selection: str = ""
    score_source: str = ""
    folds: int | None = None
    member_scores: str = "probability"
    imputation: str = ""
    cam_weights: Mapping[str, float] = field(default_factory=dict)
    cam_weights_rule: str = ""
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "file": self.file,
            "chosen": self.chosen,
            "age_fill": self.age_fill,
            "features": list(self.features),
            "comparison": [_copy(dict(r)) for r in self.comparison],
            "selection": self.selection,
            "score_source": self.score_source,
            "folds": self.folds,
            "member_scores": self.member_scores,
            "imputation": self.imputation,
            "cam_weights": dict(self.cam_weights),
            "cam_weights_rule": self.cam_weights_rule,
        }
        return _finish(out, self.absent, self.extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StackerInfo:
        absent, extra = _split(cls, d)
        return cls(
            file=str(d["file"]),
            chosen=str(d.get("chosen", "stacker")),
            age_fill=float(d["age_fill"]),
            features=tuple(str(f) for f in d.get("features") or ()),
            comparison=tuple(_copy(dict(r)) for r in d.get("comparison") or ()),
            selection=str(d.get("selection", "")),
            score_source=str(d.get("score_source", "")),
            folds=_opt_int(d.get("folds")),
            member_scores=str(d.get("member_scores", "probability")),
            imputation=str(d.get("imputation", "")),
            cam_weights={str(k): float(v) for k, v in (d.get("cam_weights") or {}).items()},
            cam_weights_rule=str(d.get("cam_weights_rule", "")),
            absent=absent,
            extra=extra,
        )


@dataclass(frozen=True)
class ThresholdInfo:
    """The operating threshold on the raw ensemble probability, and how it was chosen."""

    value: float
    rule: str = ""
    chosen_on: str = ""
    per_model: Mapping[str, float] = field(default_factory=dict)  # each model's own threshold (reports)
    value_calibrated: float | None = None  # the same threshold on the calibrated scale
    indeterminate_band: float | None = None  # half-width of the "indeterminate" band; None: library default
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "value": self.value,
            "rule": self.rule,
            "chosen_on": self.chosen_on,
            "per_model": dict(self.per_model),
            "value_calibrated": self.value_calibrated,
            "indeterminate_band": self.indeterminate_band,
        }
        return _finish(out, self.absent, self.extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThresholdInfo:
        absent, extra = _split(cls, d)
        return cls(
            value=float(d["value"]),
            rule=str(d.get("rule", "")),
            chosen_on=str(d.get("chosen_on", "")),
            per_model={str(k): float(v) for k, v in (d.get("per_model") or {}).items()},
            value_calibrated=_opt_float(d.get("value_calibrated")),
            indeterminate_band=_opt_float(d.get("indeterminate_band")),
            absent=absent,
            extra=extra,
        )


@dataclass(frozen=True)
class ExternalData:
    """An external (never trained on) case set the release was measured on."""

    source: str
    n: int
    rows: str  # the release's hashed copy of its rows (image sha256 + label)
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _finish({"source": self.source, "n": self.n, "rows": self.rows}, self.absent, self.extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExternalData:
        absent, extra = _split(cls, d)
        return cls(source=str(d.get("source", "")), n=int(d.get("n", 0)), rows=str(d.get("rows", "")), absent=absent, extra=extra)


@dataclass(frozen=True)
class DataInfo:
    """The training data: source table, fingerprint, split sizes, and the release's own row lists.

    ``extra`` keeps keys a release may add under ``data`` (e.g. image hash lists, read by
    ``training.evaluation.release_image_hashes`` through :meth:`listed`).
    """

    source: str = ""
    fingerprint: str = ""
    n_cases: int | None = None
    splits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # split -> {"n", "positive"}
    rows: str = ""
    external: Mapping[str, ExternalData] = field(default_factory=dict)
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def listed(self, key: str) -> Any:
        """A key this schema does not type (e.g. an image hash list), or None."""
        return self.extra.get(key)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "n_cases": self.n_cases,
            "splits": _copy(dict(self.splits)),
            "rows": self.rows,
            "external": {k: v.to_dict() for k, v in self.external.items()},
        }
        return _finish(out, self.absent, self.extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataInfo:
        absent, extra = _split(cls, d)
        return cls(
            source=str(d.get("source", "")),
            fingerprint=str(d.get("fingerprint", "")),
            n_cases=_opt_int(d.get("n_cases")),
            splits=_copy(dict(d.get("splits") or {})),
            rows=str(d.get("rows", "")),
            external={str(k): ExternalData.from_dict(v) for k, v in (d.get("external") or {}).items()},
            absent=absent,
            extra=extra,
        )


@dataclass(frozen=True)
class LocaliserInfo:
    """The auto-crop localiser: its spec and weights file, plus free-form measurements."""

    weights: str
    spec: LocaliserSpec
    architecture: str = ""
    data: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)  # training run: epochs, IoU per split
    ensemble_auc_by_roi_source: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    external: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    proposal_seconds_median: Mapping[str, Any] = field(default_factory=dict)
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "weights": self.weights,
            "spec": self.spec.to_dict(),
            "architecture": self.architecture,
            "data": self.data,
            "metrics": _copy(dict(self.metrics)),
            "ensemble_auc_by_roi_source": _copy(dict(self.ensemble_auc_by_roi_source)),
            "external": _copy(dict(self.external)),
            "proposal_seconds_median": _copy(dict(self.proposal_seconds_median)),
        }
        return _finish(out, self.absent, self.extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LocaliserInfo:
        absent, extra = _split(cls, d)
        return cls(
            weights=str(d["weights"]),
            spec=LocaliserSpec.from_dict(dict(d.get("spec") or {})),
            architecture=str(d.get("architecture", "")),
            data=str(d.get("data", "")),
            metrics=_copy(dict(d.get("metrics") or {})),
            ensemble_auc_by_roi_source=_copy(dict(d.get("ensemble_auc_by_roi_source") or {})),
            external=_copy(dict(d.get("external") or {})),
            proposal_seconds_median=_copy(dict(d.get("proposal_seconds_median") or {})),
            absent=absent,
            extra=extra,
        )


OOD_METHODS = ("knn", "mahalanobis")
OOD_COMBINES = ("max", "mean")
OOD_TRANSFORMS = ("none", "sqrt")


@dataclass(frozen=True)
class OodMember:
    """One member's part of the score: feature width, val standardisation, fit facts."""

    member_id: str
    dim: int
    loc: float  # median of the member's raw score on the validation crops
    scale: float  # IQR / 1.349 of the same
    shrinkage: float | None = None  # Ledoit-Wolf shrinkage (mahalanobis only)

    def to_dict(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "dim": self.dim, "loc": self.loc, "scale": self.scale, "shrinkage": self.shrinkage}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OodMember:
        shrink = d.get("shrinkage")
        return cls(
            member_id=str(d["member_id"]),
            dim=int(d["dim"]),
            loc=float(d["loc"]),
            scale=float(d["scale"]),
            shrinkage=None if shrink is None else float(shrink),
        )


@dataclass(frozen=True)
class OodInfo:
    """The manifest's ``ood`` block.

    method : ``knn`` or ``mahalanobis``; ``k`` for knn.
    transform : applied to the features before either (``none`` / ``sqrt``).
    combine : how the members' standardised scores become one (``max`` / ``mean``).
    threshold : a combined score above it is out of distribution.
    val_quantile : the quantile of the validation scores the threshold is; the target
        false-alarm rate on in-distribution images is ``1 - val_quantile``.
    val_false_alarm : share of validation crops above the threshold (``n_val`` crops).
    fit_on / n_fit : what the reference features are (e.g. train rows, annotator box + whole image).
    measured : detection / false-alarm numbers from ``python -m training add-ood`` (free-form
        JSON: sets, counts, rates).
    """

    method: str
    file: str
    combine: str
    members: tuple[OodMember, ...]
    threshold: float
    val_quantile: float
    val_false_alarm: float
    n_fit: int
    n_val: int
    fit_on: str
    val_on: str
    k: int | None = None
    transform: str = "none"
    measured: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in OOD_METHODS:
            raise ValueError(f"unknown OOD method {self.method!r} (this version reads {', '.join(OOD_METHODS)})")
        if self.combine not in OOD_COMBINES:
            raise ValueError(f"unknown OOD combine rule {self.combine!r}")
        if self.transform not in OOD_TRANSFORMS:
            raise ValueError(f"unknown OOD feature transform {self.transform!r}")
        if self.method == "knn" and (self.k is None or self.k < 1):
            raise ValueError("knn needs k >= 1")
        if not self.members:
            raise ValueError("an OOD model needs at least one member")
        if not math.isfinite(self.threshold):
            raise ValueError("OOD threshold must be finite")

    @property
    def member_ids(self) -> list[str]:
        return [m.member_id for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = [m.to_dict() for m in value] if f.name == "members" else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OodInfo:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown OOD manifest keys: {sorted(unknown)}")
        return cls(
            method=str(d["method"]),
            file=str(d["file"]),
            combine=str(d["combine"]),
            members=tuple(OodMember.from_dict(m) for m in d["members"]),
            threshold=float(d["threshold"]),
            val_quantile=float(d["val_quantile"]),
            val_false_alarm=float(d["val_false_alarm"]),
            n_fit=int(d["n_fit"]),
            n_val=int(d["n_val"]),
            fit_on=str(d["fit_on"]),
            val_on=str(d["val_on"]),
            k=None if d.get("k") is None else int(d["k"]),
            transform=str(d.get("transform", "none")),
            measured=dict(d.get("measured") or {}),
        )


@dataclass(frozen=True)
class ExplainInfo:
    """Heatmap measurements attached by ``python -m training add-explain``."""

    report: str
    sets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # set name -> what was measured
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _finish({"report": self.report, "sets": _copy(dict(self.sets))}, self.absent, self.extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExplainInfo:
        absent, extra = _split(cls, d)
        return cls(report=str(d["report"]), sets=_copy(dict(d.get("sets") or {})), absent=absent, extra=extra)


@dataclass(frozen=True)
class DerivedFrom:
    """The release an ``add-*`` command derived this one from, and what changed."""

    release: str
    manifest_sha256: str
    change: str = ""
    absent: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"release": self.release, "manifest_sha256": self.manifest_sha256, "change": self.change}
        return _finish(out, self.absent, self.extra)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DerivedFrom:
        absent, extra = _split(cls, d)
        return cls(
            release=str(d["release"]),
            manifest_sha256=str(d.get("manifest_sha256", "")),
            change=str(d.get("change", "")),
            absent=absent,
            extra=extra,
        )


# ----------------------------------------------------------------------------- the manifest

# Sections a freshly built manifest omits while they are None (a fit writes no OOD model, no
# heatmap report and no parent release); the others are written as null when unset.
_OMIT_WHEN_UNSET = frozenset({"ood", "explain", "derived_from"})


@dataclass(frozen=True)
class Manifest:
    """A release's ``manifest.json``.

    ``name``, ``version``, ``format_version`` and ``files`` are set by
    :meth:`model_zoo.zoo.ReleaseWriter.publish` (the folder's identity and every file's
    sha256); training fills the rest.
    """

    name: str
    version: str
    task: Task
    members: tuple[MemberEntry, ...]
    stacker: StackerInfo
    threshold: ThresholdInfo
    format_version: int = FORMAT_VERSION
    files: Mapping[str, str] = field(default_factory=dict)  # relative path -> sha256
    created: str | None = None
    profile: str | None = None
    seed: int | None = None
    intended_use: str = ""
    preprocessing: Mapping[str, str] = field(default_factory=dict)  # prose, one line per step
    clinic_model: Mapping[str, Any] | None = None  # the clinical-only comparison model
    calibration: Calibration | None = None
    evaluation: Mapping[str, Mapping[str, Any]] | None = None  # set -> block (model_zoo.validation_text)
    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # split -> {"auc": {...}, "n", ...}
    data: DataInfo = field(default_factory=DataInfo)
    library_versions: Mapping[str, str] = field(default_factory=dict)
    localiser: LocaliserInfo | None = None
    ood: OodInfo | None = None
    explain: ExplainInfo | None = None
    derived_from: DerivedFrom | None = None
    absent: frozenset[str] = field(default=_OMIT_WHEN_UNSET, compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    # -- convenience (typed views used by the zoo, CLIs and dashboard) -----------------------
    @property
    def title(self) -> str:
        """ "<name> <version>", as reports and model cards name a release."""
        return f"{self.name} {self.version}"

    @property
    def member_ids(self) -> list[str]:
        return [m.member_id for m in self.members]

    def verified_path(self, root: Path | str, rel: Any, what: str) -> Path:
        """A file a loader is about to open, only if it is one of the release's hashed files
        (``files``; the hashes themselves are checked by ``model_zoo.zoo.verify_release``)."""
        if not isinstance(rel, str) or rel not in self.files:
            raise IntegrityError(f"{Path(root).name}: {what} points to {rel!r}, which is not a verified file of the release")
        return Path(root) / rel

    def replace(self, **changes: Any) -> Manifest:
        """A copy with ``changes`` (a derived release: new created time, an added section...)."""
        return replace(self, **changes)

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "files": dict(self.files),
            "created": self.created,
            "profile": self.profile,
            "seed": self.seed,
            "intended_use": self.intended_use,
            "task": self.task.to_dict(),
            "preprocessing": dict(self.preprocessing),
            "members": [m.to_dict() for m in self.members],
            "stacker": self.stacker.to_dict(),
            "clinic_model": _copy(self.clinic_model),
            "threshold": self.threshold.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "evaluation": _copy(self.evaluation),
            "metrics": _copy(dict(self.metrics)),
            "data": self.data.to_dict(),
            "library_versions": dict(self.library_versions),
            "localiser": self.localiser.to_dict() if self.localiser else None,
            "ood": self.ood.to_dict() if self.ood else None,
            "explain": self.explain.to_dict() if self.explain else None,
            "derived_from": self.derived_from.to_dict() if self.derived_from else None,
        }
        return _finish(out, self.absent, self.extra)

    def to_json_bytes(self) -> bytes:
        """The bytes of ``manifest.json`` (sorted keys, 2-space indent, no NaN)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False).encode("utf-8")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Parse a manifest dict; raises :class:`UnsupportedFormatError` for another layout
        version and ``KeyError``/``TypeError``/``ValueError`` for a malformed one."""
        if not isinstance(d, Mapping):
            raise TypeError("the manifest is not a JSON object")
        check_format_version(d.get("format_version"))
        absent, extra = _split(cls, d)

        def part(key: str, parse: Any) -> Any:
            value = d.get(key)
            return parse(value) if value else None

        return cls(
            format_version=int(d["format_version"]),
            name=str(d["name"]),
            version=str(d["version"]),
            files={str(k): str(v) for k, v in (d.get("files") or {}).items()},
            created=_opt_str(d.get("created")),
            profile=_opt_str(d.get("profile")),
            seed=_opt_int(d.get("seed")),
            intended_use=str(d.get("intended_use") or ""),
            task=Task.from_dict(d["task"]),
            preprocessing={str(k): str(v) for k, v in (d.get("preprocessing") or {}).items()},
            members=tuple(MemberEntry.from_dict(m) for m in d.get("members") or ()),
            stacker=StackerInfo.from_dict(d["stacker"]),
            clinic_model=_copy(d.get("clinic_model")),
            threshold=ThresholdInfo.from_dict(d["threshold"]),
            calibration=part("calibration", Calibration.from_dict),
            evaluation=_copy(d.get("evaluation")),
            metrics=_copy(dict(d.get("metrics") or {})),
            data=DataInfo.from_dict(d.get("data") or {}),
            library_versions={str(k): str(v) for k, v in (d.get("library_versions") or {}).items()},
            localiser=part("localiser", LocaliserInfo.from_dict),
            ood=part("ood", OodInfo.from_dict),
            explain=part("explain", ExplainInfo.from_dict),
            derived_from=part("derived_from", DerivedFrom.from_dict),
            absent=absent,
            extra=extra,
        )


def check_format_version(value: Any, where: str = "manifest.json") -> int:
    """The manifest's ``format_version`` if this library reads it; else a one-line
    :class:`UnsupportedFormatError` saying whether the release is newer or older."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsupportedFormatError(
            f"{where}: format_version {value!r} is not a whole number; this is not a model_zoo release manifest"
        )
    if value > FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{where}: format_version {value} is newer than this model_zoo reads (up to {FORMAT_VERSION}); "
            "update model_zoo to use this release"
        )
    if value < MIN_FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"{where}: format_version {value} is older than this model_zoo reads (from {MIN_FORMAT_VERSION}); "
            "use an older model_zoo or re-export the release"
        )
    return value


def manifest_from_json(blob: bytes | str, where: str = "manifest.json") -> Manifest:
    """Parse manifest JSON bytes. Malformed JSON or fields raise :class:`IntegrityError`; a
    format version this library does not read raises :class:`UnsupportedFormatError`."""
    try:
        data = json.loads(blob)
    except json.JSONDecodeError as err:
        raise IntegrityError(f"{where}: manifest.json is not valid JSON ({err.msg})") from None
    try:
        return Manifest.from_dict(data)
    except UnsupportedFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        what = f"missing {err}" if isinstance(err, KeyError) else str(err)
        raise IntegrityError(f"{where}: manifest.json is malformed ({what})") from None


def read_manifest_file(folder: Path | str) -> Manifest:
    """A release folder's manifest, parsed but NOT verified (listings only; loading a release
    goes through :func:`model_zoo.zoo.verify_release`)."""
    folder = Path(folder)
    return manifest_from_json((folder / MANIFEST_FILE).read_bytes(), folder.name)
