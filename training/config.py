"""YAML configs with single inheritance and ``dotted.key=value`` command-line overrides, and
:class:`FitConfig`, the typed view of a merged config that ``training.fit`` reads."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model_zoo.errors import InputError
from model_zoo.framing import DEFAULT_INDETERMINATE_BAND, check_band

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, or a bare name (``cpu``/``cpu.yaml``) from training/configs."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    raise InputError(f"config not found: {name} (looked in the current folder and {CONFIG_DIR})")


def load_config(name: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    path = resolve_config_path(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{path.name}: not valid YAML ({err})") from None
    parent = raw.pop("inherit", None)
    cfg = _merge(load_config(path.parent / parent), raw) if parent else raw
    for item in overrides:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` (value parsed as YAML: numbers, lists, null, booleans)."""
    if "=" not in item:
        raise InputError(f"override {item!r} is not of the form key=value")
    key, raw_value = item.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise InputError(f"override {key!r}: {part!r} is not a config section")
        node = node[part]
    if parts[-1] not in node:
        raise InputError(f"override {key!r}: unknown key (check the spelling against the config)")
    try:
        node[parts[-1]] = yaml.safe_load(raw_value)
    except yaml.YAMLError:
        node[parts[-1]] = raw_value


def dump_config(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


# Config sections that decide what the member and stacker jobs compute. A resumed run must
# keep them; the others (name, version, profile, output, localiser) may change, so a finished
# run can be re-packaged, e.g. as a new version with a localiser, without retraining.
TRAINING_KEYS = ("seed", "data", "task", "members", "train", "stacker", "threshold")


def resume_view(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings a resumed run must share; a run folder written before the band
    existed holds no ``threshold.indeterminate_band`` and means the default (the band changes
    no fitted number)."""
    out = dict(cfg)
    if isinstance(out.get("threshold"), dict):
        out["threshold"] = {"indeterminate_band": DEFAULT_INDETERMINATE_BAND, **out["threshold"]}
    return out


def indeterminate_band(cfg: Mapping[str, Any]) -> float:
    """``threshold.indeterminate_band``, validated (0 <= band < 0.5; the library default when absent):
    a release fact written into the manifest's threshold block and read by ``Zoo.call``."""
    band = (cfg.get("threshold") or {}).get("indeterminate_band", DEFAULT_INDETERMINATE_BAND)
    try:
        return check_band(band)
    except ValueError as err:
        raise InputError(str(err)) from None


# ----------------------------------------------------------------------------- typed view
# The merged YAML (paper.yaml + a profile + overrides) as frozen dataclasses, for ``training.fit``
# and its phases: a misspelt section or a missing key fails once, here, with the key's name,
# instead of as a KeyError deep inside a run. ``raw`` keeps the merged dict for what is saved
# beside the release (config.yaml) and for the member trainers, which read the ``train``
# section as a mapping of optimiser settings.


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"config: {key} must be a section (key: value pairs), got {value!r}")
    return value


def _need(section: Mapping[str, Any], where: str, key: str) -> Any:
    if key not in section:
        raise InputError(f"config: {where}.{key} is missing")
    return section[key]


@dataclass(frozen=True)
class TaskConfig:
    name: str
    positive_class: str
    negative_class: str
    label_map: dict[str, int] | None = None


@dataclass(frozen=True)
class DataConfig:
    cases: str
    split_ratios: tuple[float, ...] = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class MembersConfig:
    families: tuple[str, ...]
    init: Mapping[str, str] = field(default_factory=dict)  # family -> local start weights
    normalisation: str = "train_set"

    def init_for(self, family: str) -> str | None:
        """The local start of ``family`` (``members.init``), or None for scratch."""
        value = self.init.get(family)
        return str(value) if value else None


@dataclass(frozen=True)
class TrainConfig:
    """The fields the pipeline itself reads; ``settings`` is the whole section (optimiser,
    schedule, augmentation...), handed to the member trainers and the model card's recipe line."""

    trainable: str = "all"  # all | head | tail
    tail_blocks: int = 2
    epochs: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StackerConfig:
    score_source: str = "oof"  # oof | holdout
    folds: int = 5
    cv_folds: int = 5
    candidates: tuple[str, ...] = ()
    prefer: str | None = None
    prefer_within: float = 0.0
    member_scores: str = "probability"  # probability | logit

    @property
    def oof_folds(self) -> int:
        """Out-of-fold jobs per member: ``folds`` with oof scores, none with holdout scores."""
        return self.folds if self.score_source == "oof" else 0


@dataclass(frozen=True)
class CalibrationConfig:
    method: str = "none"  # none | platt
    fit_on: str = "oof"  # oof | val


@dataclass(frozen=True)
class ThresholdConfig:
    rule: str = "youden"  # youden | target_sensitivity
    target_sensitivity: float = 0.9
    indeterminate_band: float = DEFAULT_INDETERMINATE_BAND  # validated: 0 <= band < 0.5


@dataclass(frozen=True)
class OutputConfig:
    zoo_parent: str = "runs/zoo"
    fp16: bool = False
    run_dir: str | None = None


@dataclass(frozen=True)
class FitConfig:
    """``training fit``'s merged config, typed."""

    name: str
    version: str
    seed: int
    task: TaskConfig
    data: DataConfig
    members: MembersConfig
    train: TrainConfig
    stacker: StackerConfig
    calibration: CalibrationConfig
    threshold: ThresholdConfig
    output: OutputConfig
    profile: str | None = None
    external: tuple[Mapping[str, Any], ...] = ()  # [{name, cases}]: checked by training.fit.load_externals
    localiser_path: str | None = None
    model_card: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def title(self) -> str:
        return f"{self.name} {self.version}"

    def external_source(self, name: str) -> str:
        """The case table of the external set ``name``."""
        return next(str(e["cases"]) for e in self.external if str(e["name"]) == name)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> FitConfig:
        task, data, members = _section(cfg, "task"), _section(cfg, "data"), _section(cfg, "members")
        train, stacker, cal = _section(cfg, "train"), _section(cfg, "stacker"), _section(cfg, "calibration")
        threshold, output = _section(cfg, "threshold"), _section(cfg, "output")
        band = indeterminate_band(cfg)
        return cls(
            name=str(_need(cfg, "config", "name")),
            version=str(_need(cfg, "config", "version")),
            seed=int(_need(cfg, "config", "seed")),
            profile=cfg.get("profile"),
            task=TaskConfig(
                name=str(_need(task, "task", "name")),
                positive_class=str(_need(task, "task", "positive_class")),
                negative_class=str(_need(task, "task", "negative_class")),
                label_map=task.get("label_map"),
            ),
            data=DataConfig(
                cases=str(_need(data, "data", "cases")),
                split_ratios=tuple(float(r) for r in data.get("split_ratios") or (0.7, 0.1, 0.2)),
            ),
            members=MembersConfig(
                families=tuple(str(f) for f in _need(members, "members", "families")),
                init=dict(members.get("init") or {}),
                normalisation=str(members.get("normalisation") or "train_set"),
            ),
            train=TrainConfig(
                trainable=str(train.get("trainable", "all")),
                tail_blocks=int(train.get("tail_blocks", 2)),
                epochs=int(train.get("epochs", 0)),
                settings=train,
            ),
            stacker=StackerConfig(
                score_source=str(_need(stacker, "stacker", "score_source")),
                folds=int(stacker.get("folds", 5)),
                cv_folds=int(stacker.get("cv_folds", 5)),
                candidates=tuple(str(c) for c in stacker.get("candidates") or ()),
                prefer=stacker.get("prefer"),
                prefer_within=float(stacker.get("prefer_within") or 0.0),
                member_scores=str(stacker.get("member_scores", "probability")),
            ),
            calibration=CalibrationConfig(method=str(cal.get("method") or "none"), fit_on=str(cal.get("fit_on", "oof"))),
            threshold=ThresholdConfig(
                rule=str(_need(threshold, "threshold", "rule")),
                target_sensitivity=float(threshold.get("target_sensitivity", 0.9)),
                indeterminate_band=band,
            ),
            output=OutputConfig(
                zoo_parent=str(output.get("zoo_parent", "runs/zoo")),
                fp16=bool(output.get("fp16", False)),
                run_dir=output.get("run_dir"),
            ),
            external=tuple(cfg.get("external") or ()),
            localiser_path=(_section(cfg, "localiser").get("path") or None),
            model_card=_section(cfg, "model_card"),
            raw=cfg,
        )
