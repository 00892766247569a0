"""Dataclass-driven arguments: one JSON file plus command-line overrides, unknown names rejected.

This is the small part of ``HfArgumentParser`` we need, without its habit of accepting unknown keys from a
file: every field of a (possibly nested) dataclass becomes a ``--kebab-case`` option with the field's help text,
nested dataclasses become ``--outer-inner`` options, and a mapping read from a file is checked field by field so
a typo in a spec is an error that names the field instead of a silently ignored setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


class SpecError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the field and the fix."""


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, whether None is allowed) for ``X | None`` / ``Optional[X]``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _nullable(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                            skip: typing.Container[str] = ()) -> None:
    """Add one option per field of ``cls`` (recursing into nested dataclasses); absent options stay unset.

    :param skip: field names whose options already exist (two dataclasses sharing a command's options).
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        inner, nullable = _strip_optional(hints[field.name])
        name = f"{prefix}{field.name}"
        if name in skip:
            continue
        if dataclasses.is_dataclass(inner):
            add_dataclass_arguments(parser, inner, prefix=f"{name}_")
            continue
        option = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": field.metadata.get("help")}
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if typing.get_origin(inner) is list:
            item = typing.get_args(inner)[0]
            kwargs.update(nargs="+", type=item, metavar=item.__name__.upper())
        else:
            convert = _parse_bool if inner is bool else inner
            kwargs["type"] = _nullable(convert) if nullable else convert
            if "choices" not in field.metadata:
                kwargs["metavar"] = getattr(inner, "__name__", "VALUE").upper()
        parser.add_argument(option, **kwargs)


def overrides_from_namespace(namespace: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """Turn the options the user actually passed back into a nested mapping shaped like ``cls``."""
    values = vars(namespace)
    hints = typing.get_type_hints(cls)
    result: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        inner, _ = _strip_optional(hints[field.name])
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(inner):
            nested = overrides_from_namespace(namespace, inner, prefix=f"{name}_")
            if nested:
                result[field.name] = nested
        elif name in values:
            result[field.name] = values[name]
    return result


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge where ``overrides`` wins; a nested override on a null value starts from {}."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(value, dict) and (isinstance(current, dict) or current is None):
            merged[key] = merge(current or {}, value)
        else:
            merged[key] = value
    return merged


def from_mapping(cls: type, data: Any, path: str = "") -> Any:
    """Build ``cls`` from a JSON-like mapping, failing on unknown or missing fields with the field's path."""
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        field_path = f"{path}.{name}" if path else name
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise SpecError(f"missing required field '{field_path}': {field.metadata.get('help', '')}")
            continue
        kwargs[name] = _coerce(hints[name], data[name], field_path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    inner, nullable = _strip_optional(tp)
    if value is None:
        if nullable:
            return None
        raise SpecError(f"field '{path}' must not be null")
    if dataclasses.is_dataclass(inner):
        return from_mapping(inner, value, path)
    if typing.get_origin(inner) is list:
        if not isinstance(value, list):
            raise SpecError(f"field '{path}' must be a list, got {value!r}")
        return [_coerce(typing.get_args(inner)[0], item, f"{path}[]") for item in value]
    if inner is bool:
        if not isinstance(value, bool):
            raise SpecError(f"field '{path}' must be true or false, got {value!r}")
        return value
    if inner in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"field '{path}' must be a number, got {value!r}")
        if inner is int and float(value) != int(value):
            raise SpecError(f"field '{path}' must be a whole number, got {value!r}")
        return inner(value)
    if inner is str and not isinstance(value, str):
        raise SpecError(f"field '{path}' must be a string, got {value!r}")
    return value


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON object from ``path`` (a local path or any fsspec URI such as ``gs://bucket/spec.json``); a
    missing or malformed file is a :class:`SpecError` naming it."""
    from tuneloop_trainer import staging  # imported here: staging imports SpecError from this module

    text = staging.read_text(str(path), what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"{what} {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise SpecError(f"{what} {path} must hold a JSON object")
    return data
