"""The search space: the config keys ``tune.search_space`` tunes, and how a trial samples them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from trpo_pipeline.config import Config, SearchParam, TuneConfig, config_from_dict
from trpo_pipeline.rl.schema import to_dict


@dataclass(frozen=True)
class Dimension:
    """One tuned config key and how it is sampled."""

    key: str  # dotted config key, e.g. algo.gae_lambda
    param: SearchParam

    @property
    def name(self) -> str:
        """The Optuna parameter: what is sampled (1-algo.gae_lambda when one_minus)."""
        return f"1-{self.key}" if self.param.one_minus else self.key

    def value(self, x: Any) -> Any:
        """The config value of a sampled ``x``."""
        return 1.0 - x if self.param.one_minus else x


def dimensions(tune: TuneConfig) -> list[Dimension]:
    return [
        Dimension(f"{group}.{key}", param)
        for group, params in tune.search_space.items()
        for key, param in params.items()
    ]


def suggest(trial: optuna.Trial, dims: Sequence[Dimension]) -> dict[str, Any]:
    """Sample every dimension; returns {dotted config key: value}."""
    values: dict[str, Any] = {}
    for d in dims:
        p = d.param
        if p.type == "categorical":
            x = trial.suggest_categorical(d.name, list(p.choices or ()))
        elif p.type == "int":
            step = int(p.step) if p.step is not None else 1
            x = trial.suggest_int(d.name, int(p.low), int(p.high), step=step, log=p.log)
        else:
            x = trial.suggest_float(d.name, p.low, p.high, step=p.step, log=p.log)
        values[d.key] = d.value(x)
    return values


def with_values(cfg: Config, values: Mapping[str, Any]) -> Config:
    """``cfg`` with dotted keys replaced, validated by the schema (ConfigError if out of range)."""
    tree = to_dict(cfg)
    for dotted, value in values.items():
        group, key = dotted.split(".")
        tree[group][key] = value
    return config_from_dict(tree)
