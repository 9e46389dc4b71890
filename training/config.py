"""YAML configs with single inheritance and ``dotted.key=value`` command-line overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from model_zoo.errors import InputError

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
