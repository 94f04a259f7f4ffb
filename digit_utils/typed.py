"""One typed-field checker for every settings object: TrainConfig, AugmentPolicy and the
notebooks' parameters. Types come from dataclass annotations (``int``, ``float``, ``str | dict``,
``int | None``); an int is accepted where a float is meant, a bool never counts as a number."""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any

from digit_utils.errors import ConfigError

NoneType = type(None)
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring = 2, 4, 4, 60


def shown(value: Any) -> str:
    """``repr(value)`` cut to a readable size (a YAML alias bomb is millions of characters)."""
    return _SHOWN.repr(value)


def _alternatives(want: Any) -> tuple[type, ...]:
    """``int | None`` -> (int, NoneType); a plain type -> (type,)."""
    if typing.get_origin(want) in (typing.Union, types.UnionType):
        return tuple(typing.get_args(want))
    return (want,)


def type_name(want: Any) -> str:
    return " or ".join("None" if t is NoneType else t.__name__ for t in _alternatives(want))


def coerce(value: Any, want: Any) -> Any:
    """``value`` as type ``want`` (an int becomes a float where a float is meant); raises
    TypeError when it is not of that type."""
    options = _alternatives(want)
    if isinstance(value, bool):  # True is an int to Python, never a number to a user
        if bool in options:
            return value
        raise TypeError
    if float in options and isinstance(value, int) and int not in options:
        return float(value)  # accept 1 where 1.0 is meant
    if isinstance(value, options):
        return value
    raise TypeError


def check(
    values: Mapping[str, Any], schema: Mapping[str, Any], *, where: str = "", quote: bool = False
) -> dict:
    """Check ``values`` against ``schema`` ({name: type}): no unknown or missing names, right
    types. Returns the coerced values; ConfigError names ``where`` and the parameter (and with
    ``quote``, the ``name = value`` line of a notebook's parameters cell that set it)."""
    if unknown := sorted(set(values) - set(schema)):
        raise ConfigError(f"{where}unknown parameter(s) {unknown}; known: {sorted(schema)}")
    if missing := sorted(set(schema) - set(values)):
        raise ConfigError(f"{where}missing parameter(s) {missing}")
    out = {}
    for name, want in schema.items():
        try:
            out[name] = coerce(values[name], want)
        except TypeError:
            line = f" (parameters cell: {name} = {shown(values[name])})" if quote else ""
            raise ConfigError(
                f"{where}{name}: expected {type_name(want)}, got {shown(values[name])}{line}"
            ) from None
    return out


def field_types(cls) -> dict[str, Any]:
    """``{field: type}`` of a dataclass, from its (string) annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_dataclass(obj, *, where: str = "") -> None:
    """Type-check and coerce a frozen dataclass's fields in place (from ``__post_init__``)."""
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for name, value in check(values, field_types(type(obj)), where=where).items():
        object.__setattr__(obj, name, value)


def from_dict(cls, d: Any, *, where: str = ""):
    """Build dataclass ``cls`` from a plain dict; unknown keys raise ConfigError."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}expected a mapping of settings, got {shown(d)}")
    known = [f.name for f in dataclasses.fields(cls)]
    if unknown := sorted(set(d) - set(known)):
        raise ConfigError(f"{where}unknown key(s) {unknown}; known: {known}")
    return cls(**d)


def json_problem(value: Any, schema: Mapping[str, Any], what: str | None = None) -> str | None:
    """Why ``value``, read from one of our JSON state files, does not have the shape ``schema``
    ({field: type}; a field may be absent) describes; None when it does. ``what`` names the
    part of the file ``value`` is (the whole file when None)."""
    if not isinstance(value, dict):
        return f"{what or 'the file'} must be a JSON object, got {shown(value)}"
    for key, want in schema.items():
        if key in value:
            try:
                coerce(value[key], want)
            except TypeError:
                where = f"{what}." if what else ""
                names = type_name(want).replace("None", "null")
                return f"{where}{key} must be {names}, got {shown(value[key])}"
    return None
