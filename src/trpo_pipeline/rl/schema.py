"""Config fields declared once, and frozen dataclasses built from plain mappings.

A field's annotation is its type; :func:`setting` gives its default, its one-line doc and its
bounds (or allowed values, or a check), beside the field. :func:`build` turns a plain nested
mapping (a composed Hydra config, params.yaml, a checkpoint's config) into the dataclass,
checking every value against its field, then the dataclass's own ``check()`` for rules that
span fields. Any problem is a :class:`ConfigError` whose text is one line naming the dotted key
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trpo_pipeline.rl.errors import ConfigError

MAX_PATH = 4096  # characters of a file path or URI (Linux's PATH_MAX)
MAX_NAME = 100  # characters of a run or study name (a folder name, inside longer paths)

# A check returns what is wrong with a (non-null) value, or None when it is fine.
Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Bounds:
    """An interval: ``gt``/``ge`` below, ``lt``/``le`` above (None: unbounded)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def problem(self, value: float) -> str | None:
        if (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        ):
            return None
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        if low is not None and high is not None:
            left, right = "(" if self.gt is not None else "[", ")" if self.lt is not None else "]"
            return f"must be in {left}{low}, {high}{right}, got {value}"
        if low is not None:
            return f"must be {'>' if self.gt is not None else '>='} {low}, got {value}"
        return f"must be {'<' if self.lt is not None else '<='} {high}, got {value}"


@dataclass(frozen=True)
class Rule:
    """What a field allows beyond its type."""

    doc: str
    bounds: Bounds = Bounds()
    one_of: tuple[Any, ...] | None = None
    check: Check | None = None

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None
        if self.one_of is not None and value not in self.one_of:
            return f"must be one of {', '.join(map(str, self.one_of))}, got {value!r}"
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and (problem := self.bounds.problem(value)):
            return problem
        return self.check(value) if self.check is not None else None


def setting(
    default: Any,
    doc: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    one_of: tuple[Any, ...] | None = None,
    check: Check | None = None,
) -> Any:
    """A config field: its default, one-line doc and what it allows, in one place."""
    rule = Rule(doc, Bounds(gt, ge, lt, le), one_of, check)
    if isinstance(default, dict | list):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"rule": rule}
        )
    return dataclasses.field(default=default, metadata={"rule": rule})


def group(cls: type, doc: str) -> Any:
    """A config group (a nested dataclass) with its defaults."""
    return dataclasses.field(default_factory=cls, metadata={"rule": Rule(doc)})


def doc_of(cls: type, name: str) -> str:
    """The one-line doc of field ``name`` of ``cls``."""
    (found,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return found.metadata["rule"].doc


# --- checks shared by several fields -------------------------------------------------------------


def file_path(path: str) -> str | None:
    """A file path the user gives: one the OS could open."""
    if (
        not path.strip()
        or len(path) > MAX_PATH
        or not path.isprintable()
        or any(len(part.encode()) > 255 for part in path.split("/"))
    ):
        return f"must be null or a file path, got {path!r}"
    return None


def folder_name(name: str) -> str | None:
    """A name that becomes a folder (runs/<name>/, a study's folder)."""
    if (
        not name
        or len(name) > MAX_NAME
        or "/" in name
        or name.startswith(".")
        or not name.isprintable()
    ):
        return (
            f"must be a folder name of 1-{MAX_NAME} printable characters, without '/' and "
            f"not starting with '.', got {name!r}"
        )
    return None


# --- building ------------------------------------------------------------------------------------

_NoneType = type(None)


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists -> tuples)."""
    if tp is Any:  # checked by its user (search-space choices)
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and _NoneType in args:
            return None
        (inner,) = [a for a in args if a is not _NoneType]
        return _convert(key, value, inner)
    if dataclasses.is_dataclass(tp) or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a group of keys, got {value!r}")
        if origin is dict:  # a group whose keys are data (the tune search space)
            inner = typing.get_args(tp)[1]
            return {k: _convert(f"{key}.{k}", v, inner) for k, v in value.items()}
        return build(tp, value, prefix=f"{key}.")
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be a list of {inner.__name__}, got {value!r}")
        return tuple(_convert(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    return _scalar(key, value, tp)


def _scalar(key: str, value: Any, tp: type) -> Any:
    # bool is an int subclass: reject it where a number is expected, and vice versa.
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} for {key}")


def build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """``cls`` from a plain mapping: unknown keys, types, each field's rule, then ``check()``."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = [k for k in values if k not in names]
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"{prefix}{unknown[0]}", f"unknown key (allowed under {where}: {', '.join(names)})"
        )
    kwargs: dict[str, Any] = {}
    for f in fields:  # in the order they are declared: the engine's groups before the pipeline's
        if f.name not in values:
            continue
        kwargs[f.name] = _convert(f"{prefix}{f.name}", values[f.name], hints[f.name])
        if problem := f.metadata["rule"].problem(kwargs[f.name]):
            raise ConfigError(f"{prefix}{f.name}", problem)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as err:  # rules across fields name keys relative to this group
            key = f"{prefix}{err.key}" if err.key else prefix.rstrip(".")
            raise ConfigError(key, err.problem) from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict with lists (not tuples): what YAML, JSON and checkpoints store."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(obj))


def describe_override_key(cls: type, dotted: str) -> ConfigError:
    """The error for overriding a key ``cls`` does not have, listing what is allowed there."""
    parts = dotted.split(".")
    new_entry = ConfigError(dotted, "is not in the composed config; add it with a leading '+'")
    in_data = False  # below a dict field (the search space), whose keys are free names
    for depth, part in enumerate(parts):
        if typing.get_origin(cls) is dict:
            cls, in_data = typing.get_args(cls)[1], True
            continue
        hints = typing.get_type_hints(cls)
        prefix = ".".join(parts[:depth])
        if part not in hints:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            return ConfigError(
                dotted, f"unknown key (allowed under {prefix or 'the top level'}: {allowed})"
            )
        if in_data:
            return new_entry
        if not dataclasses.is_dataclass(hints[part]) and typing.get_origin(hints[part]) is not dict:
            if depth == len(parts) - 1:  # a field no config file sets (ant's vectorization)
                return new_entry
            return ConfigError(
                dotted, f"{prefix + '.' if prefix else ''}{part} takes a single value"
            )
        cls = hints[part]
    if in_data or typing.get_origin(cls) is dict:
        return new_entry
    return ConfigError(dotted, "is a group of keys; override one of its keys instead")
