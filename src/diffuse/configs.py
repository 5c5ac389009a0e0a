"""Configs as dataclasses that round-trip through JSON, read back by one validating loader.

`to_dict(config)` gives plain JSON values (tuples as lists); `from_dict(cls, d, where)` rebuilds
the dataclass, refusing unknown keys (a typo must not silently train something else), missing
required ones and values of the wrong type, each error naming `where` the value came from (a
file, a flag) and the field's dotted path. The types checked are the annotations themselves
(int, float, str, bool, dict, list, tuples of ints, `X | None`, nested config dataclasses), so a
new field is validated by declaring it. A dataclass's own __post_init__ then checks ranges.

`read_json(path)` is the one way a JSON file is read: a missing file, bad JSON or a top level that
is not an object is a ConfigError naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A config or JSON file that cannot be used as it is, with where and which field."""


def check_choices(config) -> None:
    """Raise unless every field that declares `choices` (see `option`) holds one of them (or None);
    a config's __post_init__ calls it, so the choices the CLI offers are the ones it accepts."""
    for f in dataclasses.fields(config):
        choices, value = f.metadata.get("choices"), getattr(config, f.name)
        if choices is not None and value is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {choices}, got {value!r}")


def option(default=dataclasses.MISSING, *, help: str, choices=None, factory=None):
    """A config field that documents itself: its `help` and `choices` are what the command line
    shows (diffuse.cli derives every flag from the fields), so there is no second list to drift.
    `factory` makes a fresh mutable default (a dict, a list) for each instance."""
    metadata = {"help": help, "choices": None if choices is None else tuple(choices)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def to_dict(config) -> dict:
    """Plain JSON values of a config dataclass (nested ones included), tuples as lists."""
    def plain(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return to_dict(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def read_json(path) -> dict:
    """A JSON object from a file, or a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it ({e})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level, got {type(value).__name__}")
    return value


def from_dict(cls, d, where: str = "config", path: str = ""):
    """Rebuild dataclass `cls` from `d`, checking keys and types (see the module docstring)."""
    label = f"{where}: {path or cls.__name__}"
    if not isinstance(d, dict):
        raise ConfigError(f"{label} must be a JSON object, got {_show(d)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{label}: unknown option(s) {unknown}; known: {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{label}: missing required option(s) {missing}")
    hints = typing.get_type_hints(cls)
    values = {name: check_type(value, hints[name], where, f"{path}.{name}" if path else name)
              for name, value in d.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{label}: {e}") from None


def check_type(value, hint, where: str, path: str):
    """`value` if it has the type `hint` (JSON's view of it: an int is a float, a list a tuple),
    nested dataclasses rebuilt; else a ConfigError naming where and the field."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return check_type(value, option, where, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: {path} must be {_describe(hint)}, got {_show(value)}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, path)
    if hint is typing.Any:
        return value
    expected = origin or hint
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
        list: lambda v: isinstance(v, (list, tuple)),
        tuple: lambda v: isinstance(v, (list, tuple)),
    }.get(expected)
    if ok is None:
        return value  # a type JSON cannot spell is the dataclass's own to check
    if not ok(value):
        raise ConfigError(f"{where}: {path} must be {_describe(hint)}, got {_show(value)}")
    args = typing.get_args(hint)
    if expected in (list, tuple) and args:
        item = args[0]
        value = [check_type(v, item, where, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(value) if expected is tuple else value
    if expected is dict and args:
        return {k: check_type(v, args[1], where, f"{path}.{k}") for k, v in value.items()}
    return float(value) if expected is float and not isinstance(value, float) else value


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        names = [_describe(a) for a in typing.get_args(hint) if a is not type(None)]
        none = " or null" if type(None) in typing.get_args(hint) else ""
        return " or ".join(names) + none
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
             dict: "a JSON object", list: "a list", tuple: "a list"}
    if (origin or hint) in (list, tuple) and typing.get_args(hint):
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _show(value) -> str:
    """A value as an error message shows it: short, whatever it is."""
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- range checks that config dataclasses share (the message names the accepted range) ---------------

def whole_number(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def in_range(name: str, value, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> None:
    """Raise unless `value` is a finite number in the interval, naming the interval."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and math.isfinite(value) and (value > low if low_open else value >= low) and \
        (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
