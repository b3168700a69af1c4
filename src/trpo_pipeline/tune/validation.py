"""Checks only a study needs, before any trial runs. Each tune.* value was checked against its
field when the config was built (config.py); here: the search space is not empty, each tuned
key is a key of the schema of the right type, and its lowest and highest values (every choice)
give a config the schema accepts."""

from __future__ import annotations

import dataclasses
import typing

from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.tune.space import Dimension, dimensions, with_values

UNTUNABLE_GROUPS = ("tune", "tracking")


def validate_tune(cfg: Config) -> None:
    """ConfigError on the first problem of the study's search space."""
    if not cfg.tune.search_space:
        raise ConfigError("tune.search_space", "is empty; add at least one key to tune")
    for d in dimensions(cfg.tune):
        _check_dimension(cfg, d)


def _field_type(d: Dimension) -> type:
    """The schema type of the tuned key; ConfigError if it is not a tunable key."""
    where = f"tune.search_space.{d.key}"
    group, key = d.key.split(".")
    schema = typing.get_type_hints(Config)
    groups = [
        name
        for name, tp in schema.items()
        if dataclasses.is_dataclass(tp) and name not in UNTUNABLE_GROUPS
    ]
    if group not in groups:
        raise ConfigError(
            f"tune.search_space.{group}",
            f"unknown or untunable group (tunable: {', '.join(groups)})",
        )
    hints = typing.get_type_hints(schema[group])
    if key not in hints:
        raise ConfigError(where, f"unknown key (allowed under {group}: {', '.join(hints)})")
    return hints[key]


def _check_dimension(cfg: Config, d: Dimension) -> None:
    where = f"tune.search_space.{d.key}"
    field_type = _field_type(d)
    p = d.param
    if p.type == "categorical":
        samples = [("choices", c) for c in p.choices or ()]
    else:
        if field_type is not {"float": float, "int": int}[p.type]:
            raise ConfigError(f"{where}.type", f"{d.key} is not a {p.type}; use categorical")
        samples = [("low", p.low), ("high", p.high)]
    for name, x in samples:
        value = d.value(int(x) if p.type == "int" else x)
        try:
            with_values(cfg, {d.key: value})
        except ConfigError as err:
            raise ConfigError(f"{where}.{name}", f"gives {d.key}={value!r}: {err}") from None
