"""Typed configs: nested dataclasses from YAML, with strict ``--section.key=value`` overrides.

Unknown keys and values of the wrong type are errors that name the full dotted key and list
the valid ones (nanoGPT's configurator and torchtitan's "every TOML key must exist" rule,
made strict). The resolved config is saved as YAML and loads back to an equal object. This is
the machinery, for any dataclass; :mod:`pretrain.config` holds the experiment's schema.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from pretrain.atomic import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, missing or has a value of the wrong type.

    ``key``: the dotted key at fault, where one is (:func:`load_config` says whether the file
    or an override set it)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a (YAML-loaded) dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where or 'config'}: expected a mapping, got {type(data).__name__}", where or None
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _join(where, unknown[0])
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(fields)}", key)
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in data:
            try:
                kwargs[name] = _convert(hints[name], data[name], key)
            except ConfigError as e:
                e.key = e.key or key  # the innermost key that was at fault
                raise
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {key!r}", key)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain dict/list/scalar form of a config, ready for YAML."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(
    data: dict[str, Any], overrides: Sequence[str], set_by: dict[str, str] | None = None
) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict, in place;
    ``set_by``, when given, gets each dotted key the overrides set or create (a new section
    too) and the override that did."""
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --section.key=value")
        dotted, raw = text.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({problem}); quote it for "
                "the shell, e.g. --objective.mixture='[{name: span, weight: 1}]'"
            ) from None
        node = data
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            prefix = ".".join(parts[: i + 1])
            if set_by is not None and (part not in node or prefix == dotted):
                set_by[prefix] = item
            if prefix == dotted:
                node[part] = value
                break
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # the file or an earlier override set a value here
                raise ConfigError(
                    f"{prefix}: expected a mapping, got {type(node).__name__} {node!r} "
                    f"(override {item!r} sets a key in it)",
                    prefix,
                )
    return data


def _source(error: ConfigError, path, set_by: dict[str, str]) -> ConfigError:
    """``error`` prefixed with where its key came from: the last override that set or created
    it or a section above it, else the file. An error about no key is returned as it is."""
    key = error.key
    if key is None:
        return error
    for dotted, item in reversed(set_by.items()):
        if dotted == key or key.startswith(f"{dotted}."):
            return ConfigError(f"override {item!r}: {error}", key)
    return ConfigError(f"{path}: {error}" if path else str(error), key)


def load_config(
    cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> T:
    """Read YAML at ``path`` (or start from defaults), apply overrides, build ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
    set_by: dict[str, str] = {}
    try:
        apply_overrides(data, overrides, set_by)
        return from_dict(cls, data)
    except ConfigError as e:
        raise _source(e, path, set_by) from None


def to_yaml(obj: Any) -> str:
    """A config as the YAML :func:`load_config` reads back (keys in their declared order)."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def save_config(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, to_yaml(obj))


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` and ``1e3`` (no dot) as strings: those become floats."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key!r}: {value!r} fits no type of {tp}"
        )
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key!r} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key!r} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed-length tuple
            if len(value) != len(args):
                raise ConfigError(f"{key!r} must have {len(args)} items, got {value!r}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in pairs)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key!r} must be true or false, got {value!r}")
        return value
    if tp is int:
        value = _yaml_number(value)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        value = _yaml_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key!r} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key!r}: unsupported config type {tp}")
