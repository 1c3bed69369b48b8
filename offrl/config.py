"""Configs: dataclasses filled from YAML files, with unknown keys and bad values refused by name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from offrl.errors import OfflineRLError, first_line

__all__ = ["CONFIG_ROOT", "config_from_dict", "config_with_overrides", "parse_overrides", "load_config",
           "config_hash", "shipped_config_path", "shipped_config_names"]

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
T = TypeVar("T")


def shipped_config_path(algorithm: str, name: str) -> Path:
    return CONFIG_ROOT / algorithm / f"{name}.yaml"


def config_from_dict(cls: type[T], values: dict[str, Any], source: str) -> T:
    """Build `cls` from a mapping; every key must be a field, every value must have the field's type."""
    if not isinstance(values, dict):
        raise OfflineRLError(f"config {source}: expected a mapping of settings, found {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise OfflineRLError(f"config {source}: unknown key(s) {', '.join(unknown)}; "
                             f"known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        converted[key] = _convert(value, hints[key], f"config {source}: {key}")
    config = cls(**converted)
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except OfflineRLError as exc:
            raise OfflineRLError(f"{exc} (in {source})") from None
    return config


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(value, non_none[0], where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise OfflineRLError(f"{where} must be a list, found {value!r}")
        return tuple(_convert(v, args[0], where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise OfflineRLError(f"{where} must be true or false, found {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise OfflineRLError(f"{where} must be an integer, found {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OfflineRLError(f"{where} must be a number, found {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise OfflineRLError(f"{where} must be a finite number, found {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise OfflineRLError(f"{where} must be a string, found {value!r}")
        return value
    return value


def config_with_overrides(config: T, overrides: dict[str, Any], source: str) -> T:
    """A copy of `config` with `overrides` applied, checked exactly as a YAML file's values are."""
    if not overrides:
        return config
    return config_from_dict(type(config), {**dataclasses.asdict(config), **overrides}, source)


def parse_overrides(assignments: list[str] | None) -> dict[str, Any]:
    """`["cql_alpha=5", "critic_hidden=[256, 256]"]` → values read as YAML, as in a config file."""
    overrides: dict[str, Any] = {}
    for text in assignments or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise OfflineRLError(f"--set {text!r}: expected FIELD=VALUE, e.g. --set cql_alpha=5")
        try:
            overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise OfflineRLError(f"--set {text!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None
    return overrides


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one phrase: the problem and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return first_line(exc)


def shipped_config_names(algorithm: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_ROOT / algorithm).glob("*.yaml"))


def load_config(cls: type[T], algorithm: str, name_or_path: str) -> tuple[T, str]:
    """Load a shipped config by name (`fast`) or any YAML file by path; returns (config, name)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = shipped_config_path(algorithm, name_or_path)
        if not path.is_file():
            shipped = shipped_config_names(algorithm)
            raise OfflineRLError(f"--config {name_or_path!r}: no such shipped config; shipped: {', '.join(shipped)}, "
                                 "or give a path to a YAML file")
    if not path.is_file():
        raise OfflineRLError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise OfflineRLError(f"config {path}: not valid YAML ({_yaml_problem(exc)})") from None
    return config_from_dict(cls, values, str(path)), path.stem


def config_hash(config: Any) -> str:
    """A short content hash of a resolved config: equal settings, equal hash, whatever the file name."""
    text = json.dumps(dataclasses.asdict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
