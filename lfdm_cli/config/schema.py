"""Typed configuration: YAML mappings checked against dataclasses.

Every config object in lfdm is a dataclass. `from_dict` builds one from a plain mapping and rejects
unknown keys (naming the closest known key and the file) and values of the wrong type or range
(naming the dotted field path). Range limits live in the field metadata:
`field(default=..., metadata={"min": 0, "max": 1, "choices": (...), "help": "..."})`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from lfdm_cli.errors import UserError, closest

T = TypeVar("T")


def _where(source: str | None) -> str:
    return f" (in {source})" if source else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str, source: str | None) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:
            # Optional[X]: report X's own error, which names the exact nested field.
            return _convert(value, real[0], path, source)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, source)
            except UserError as exc:
                errors.append(exc)
        raise UserError(
            f"Field '{path}'{_where(source)}: expected {_type_name(tp)}, got {value!r}."
        )
    if origin is typing.Literal:
        choices = get_args(tp)
        if value not in choices:
            raise UserError(
                f"Field '{path}'{_where(source)}: {value!r} is not one of {list(choices)}."
            )
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"Field '{path}'{_where(source)}: expected a mapping, got {value!r}.")
        return from_dict(tp, value, source=source, prefix=path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"Field '{path}'{_where(source)}: expected a list, got {value!r}.")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise UserError(
                    f"Field '{path}'{_where(source)}: expected {len(args)} items, got {len(value)}."
                )
            return tuple(_convert(v, a, f"{path}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"Field '{path}'{_where(source)}: expected a mapping, got {value!r}.")
        kt, vt = get_args(tp) or (Any, Any)
        return {
            _convert(k, kt, f"{path}.{k}", source): _convert(v, vt, f"{path}.{k}", source)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"Field '{path}'{_where(source)}: expected true/false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"Field '{path}'{_where(source)}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it clearly is.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"Field '{path}'{_where(source)}: expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"Field '{path}'{_where(source)}: expected a string, got {value!r}.")
    return value


def _check_range(value: Any, meta: typing.Mapping, path: str, source: str | None) -> None:
    if value is None:
        return
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if "choices" in meta and v not in meta["choices"]:
            raise UserError(
                f"Field '{path}'{_where(source)}: {v!r} is not one of {list(meta['choices'])}."
            )
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if "min" in meta and v < meta["min"]:
                raise UserError(f"Field '{path}'{_where(source)}: {v} is below the minimum {meta['min']}.")
            if "max" in meta and v > meta["max"]:
                raise UserError(f"Field '{path}'{_where(source)}: {v} is above the maximum {meta['max']}.")


def from_dict(cls: type[T], data: typing.Mapping[str, Any] | None, *, source: str | None = None,
              prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, validating keys, types and ranges."""
    data = dict(data or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            best = closest(str(key), fields)
            full = f"{prefix}.{key}" if prefix else str(key)
            hint = f"Did you mean '{prefix + '.' if prefix else ''}{best}'?" if best else None
            raise UserError(f"Unknown key '{full}'{_where(source)}.", hint=hint)
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _convert(data[name], hints[name], path, source)
            _check_range(value, f.metadata, path, source)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"Missing required key '{path}'{_where(source)}.")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(source)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-safe) form of a dataclass tree."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must contain a YAML mapping at the top level.")
    return data


def load_dataclass(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, load_yaml(path), source=str(path))
