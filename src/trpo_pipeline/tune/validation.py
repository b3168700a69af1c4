"""Checks of the tune section and of every search-space entry, before any trial runs."""

from __future__ import annotations

import dataclasses
import typing

from trpo_pipeline.config import (
    MAX_EPISODES,
    Config,
    ConfigError,
    check_folder_name,
    check_path,
)
from trpo_pipeline.tune.space import Dimension, dimensions, with_values
from trpo_pipeline.tune.storage import PRUNERS, SAMPLERS

PARAM_TYPES = ("float", "int", "categorical")
UNTUNABLE_GROUPS = ("tune", "tracking")


def validate_tune(cfg: Config) -> None:
    """Range checks of the tune section and of every search-space entry; ConfigError if bad."""
    t = cfg.tune
    check_folder_name("tune.study_name", t.study_name)
    check_path("tune.output_dir", t.output_dir)
    if t.report_episodes > MAX_EPISODES:
        raise ConfigError(
            "tune.report_episodes", f"must be <= {MAX_EPISODES}, got {t.report_episodes}"
        )
    for key in ("n_trials", "report_every", "report_episodes"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"tune.{key}", f"must be > 0, got {getattr(t, key)}")
    if t.sampler.name not in SAMPLERS:
        raise ConfigError(
            "tune.sampler.name", f"must be one of {', '.join(SAMPLERS)}, got {t.sampler.name!r}"
        )
    if t.pruner.name not in PRUNERS:
        raise ConfigError(
            "tune.pruner.name", f"must be one of {', '.join(PRUNERS)}, got {t.pruner.name!r}"
        )
    for key, low in (
        ("sampler.n_startup_trials", 0),
        ("pruner.n_startup_trials", 0),
        ("pruner.n_warmup_steps", 0),
        ("pruner.min_resource", 1),
        ("pruner.reduction_factor", 2),
        ("storage.max_retry", 0),
    ):
        group, name = key.split(".")
        value = getattr(getattr(t, group), name)
        if value < low:
            raise ConfigError(f"tune.{key}", f"must be >= {low}, got {value}")
    for key in ("heartbeat_interval", "grace_period"):
        value = getattr(t.storage, key)
        if value is not None and value <= 0:
            raise ConfigError(f"tune.storage.{key}", f"must be > 0 or null, got {value}")
    url = t.storage.url
    check_path("tune.storage.url", url)
    if url is not None and not (url.startswith("journal:") or "://" in url):
        raise ConfigError(
            "tune.storage.url",
            f"must be an RDB URL (sqlite:///..., postgresql://...) or journal:<file>, got {url!r}",
        )
    if not t.search_space:
        raise ConfigError("tune.search_space", "is empty; add at least one key to tune")
    for d in dimensions(t):
        _check_dimension(cfg, d)


def _check_dimension(cfg: Config, d: Dimension) -> None:
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
    field_type = hints[key]
    p = d.param
    if p.type not in PARAM_TYPES:
        raise ConfigError(f"{where}.type", f"must be one of {', '.join(PARAM_TYPES)}")
    if p.type == "categorical":
        if not p.choices:
            raise ConfigError(f"{where}.choices", "must be a non-empty list for type categorical")
        for name in ("low", "high", "step"):
            if getattr(p, name) is not None:
                raise ConfigError(f"{where}.{name}", "is not used by type categorical")
        if p.log or p.one_minus:
            raise ConfigError(where, "log and one_minus are not used by type categorical")
        for c in p.choices:
            if not isinstance(c, bool | int | float | str):
                raise ConfigError(
                    f"{where}.choices", f"must be numbers, strings or booleans, got {c!r}"
                )
        samples = [("choices", c) for c in p.choices]
    else:
        wanted = {"float": float, "int": int}[p.type]
        if field_type is not wanted:
            raise ConfigError(f"{where}.type", f"{d.key} is not a {p.type}; use categorical")
        if p.choices is not None:
            raise ConfigError(f"{where}.choices", f"is only used by type categorical, not {p.type}")
        for name in ("low", "high"):
            value = getattr(p, name)
            if value is None:
                raise ConfigError(f"{where}.{name}", f"is required for type {p.type}")
            if p.type == "int" and value != int(value):
                raise ConfigError(f"{where}.{name}", f"must be an integer, got {value}")
        if p.low > p.high:
            raise ConfigError(f"{where}.low", f"must be <= high={p.high}, got {p.low}")
        if p.log and p.low <= 0:
            raise ConfigError(f"{where}.low", f"must be > 0 (log: true), got {p.low}")
        if p.step is not None and (p.log or p.step <= 0):
            raise ConfigError(f"{where}.step", "must be > 0, and is not allowed with log: true")
        if p.one_minus and p.type != "float":
            raise ConfigError(f"{where}.one_minus", "is only allowed with type float")
        samples = [("low", p.low), ("high", p.high)]
    for name, x in samples:
        value = d.value(int(x) if p.type == "int" else x)
        try:
            with_values(cfg, {d.key: value})
        except ConfigError as err:
            raise ConfigError(f"{where}.{name}", f"gives {d.key}={value!r}: {err}") from None
