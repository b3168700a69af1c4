"""The whole configuration of a command: the engine's groups (rl/config.py) plus where runs are
recorded (tracking) and how a study tunes them (tune).

Every entry point composes conf/ with Hydra, or reads params.yaml, and builds a :class:`Config`
once (:func:`config_from_dict`); the rest of the package only ever sees these plain, checked
objects. A bad value raises ``ConfigError``, whose message is one line naming the dotted key and
what is allowed. Each key's type, default, bounds and doc are declared beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trpo_pipeline.rl.config import MAX_EPISODES, RunConfig
from trpo_pipeline.rl.errors import ConfigError
from trpo_pipeline.rl.schema import (
    MAX_PATH,
    build,
    file_path,
    folder_name,
    group,
    setting,
)

# MLflow stores: scheme://... (SQLAlchemy dialects may add +driver), or a plain folder.
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")
SAMPLERS = ("tpe", "random", "qmc", "gp", "cmaes")
PRUNERS = ("median", "hyperband", "none")
PARAM_TYPES = ("float", "int", "categorical")


def tracking_uri(uri: str) -> str | None:
    scheme = uri.partition("://")[0].partition("+")[0].lower() if "://" in uri else ""
    if (
        not uri.strip()
        or len(uri) > MAX_PATH
        or not uri.isprintable()
        or ("://" in uri and scheme not in TRACKING_SCHEMES)
    ):
        return f"must be null, a folder, or a {'/'.join(TRACKING_SCHEMES)}:// URI, got {uri!r}"
    return None


def experiment_name(name: str) -> str | None:
    if not name.strip() or not name.isprintable():
        return "must be a non-empty MLflow experiment name"
    if len(name) > 256:  # MLflow's column
        return "must be at most 256 characters"
    return None


def storage_url(url: str) -> str | None:
    if problem := file_path(url):
        return problem
    if not (url.startswith("journal:") or "://" in url):
        return (
            f"must be an RDB URL (sqlite:///..., postgresql://...) or journal:<file>, got {url!r}"
        )
    return None


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how runs are recorded in MLflow (tracking/)."""

    enabled: bool = setting(True, "false: nothing is sent to MLflow")
    uri: str | None = setting(
        None,
        "null: $MLFLOW_TRACKING_URI, else sqlite:///<repo root>/mlflow.db",
        check=tracking_uri,
    )
    experiment: str = setting(
        "trpo-pipeline", "MLflow experiment the runs go to", check=experiment_name
    )
    log_model: bool = setting(True, "also log the policy as an MLflow pyfunc model")
    system_metrics: bool = setting(
        True, "CPU, memory, disk and network use as system/* metrics (MLflow, psutil)"
    )


@dataclass(frozen=True)
class SearchParam:
    """How Optuna samples one config key (conf/tune/*.yaml, under search_space.<group>.<key>)."""

    type: str = setting("float", "how the value is sampled", one_of=PARAM_TYPES)
    low: float | None = setting(None, "float/int: smallest value sampled (of x when one_minus)")
    high: float | None = setting(None, "float/int: largest value sampled (of x when one_minus)")
    log: bool = setting(False, "uniform in log space (low > 0): for scales like learning rates")
    step: float | None = setting(None, "float/int: sample on a grid low, low + step, ...")
    one_minus: bool = setting(False, "sample x, set the key to 1 - x: log resolution near 1")
    choices: tuple[Any, ...] | None = setting(None, "categorical: numbers, strings or booleans")

    def check(self) -> None:
        if self.type == "categorical":
            self._check_categorical()
            return
        if self.choices is not None:
            raise ConfigError("choices", f"is only used by type categorical, not {self.type}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is None:
                raise ConfigError(name, f"is required for type {self.type}")
            if self.type == "int" and value != int(value):
                raise ConfigError(name, f"must be an integer, got {value}")
        if self.low > self.high:
            raise ConfigError("low", f"must be <= high={self.high}, got {self.low}")
        if self.log and self.low <= 0:
            raise ConfigError("low", f"must be > 0 (log: true), got {self.low}")
        if self.step is not None and (self.log or self.step <= 0):
            raise ConfigError("step", "must be > 0, and is not allowed with log: true")
        if self.one_minus and self.type != "float":
            raise ConfigError("one_minus", "is only allowed with type float")

    def _check_categorical(self) -> None:
        if not self.choices:
            raise ConfigError("choices", "must be a non-empty list for type categorical")
        for name in ("low", "high", "step"):
            if getattr(self, name) is not None:
                raise ConfigError(name, "is not used by type categorical")
        if self.log or self.one_minus:
            raise ConfigError("", "log and one_minus are not used by type categorical")
        for c in self.choices:
            if not isinstance(c, bool | int | float | str):
                raise ConfigError("choices", f"must be numbers, strings or booleans, got {c!r}")


@dataclass(frozen=True)
class SamplerConfig:
    """Which Optuna sampler proposes the next trial."""

    name: str = setting("tpe", "the sampler", one_of=SAMPLERS)
    seed: int | None = setting(0, "null: unseeded; mixed with the trial count on a resume")
    n_startup_trials: int = setting(5, "tpe / gp: random trials before the model is used", ge=0)


@dataclass(frozen=True)
class PrunerConfig:
    """When a trial whose intermediate returns lag the others is stopped early."""

    name: str = setting("median", "the pruner", one_of=PRUNERS)
    n_startup_trials: int = setting(3, "median: finished trials before any is pruned", ge=0)
    n_warmup_steps: int = setting(0, "median: updates a trial runs before it may be pruned", ge=0)
    min_resource: int = setting(1, "hyperband: updates a trial gets in the first rung", ge=1)
    reduction_factor: int = setting(3, "hyperband: 1 / fraction promoted per rung", ge=2)


@dataclass(frozen=True)
class StorageConfig:
    """Where the study lives; several workers share one study through an RDB or journal file."""

    url: str | None = setting(
        None,
        "null: sqlite:///<repo root>/optuna.db; postgresql://...; journal:<file>",
        check=storage_url,
    )
    heartbeat_interval: int | None = setting(60, "s between heartbeats (RDB only)", gt=0)
    grace_period: int | None = setting(120, "s without a heartbeat before a trial fails", gt=0)
    max_retry: int = setting(2, "times a failed (stale) trial is re-queued", ge=0)


@dataclass(frozen=True)
class TuneConfig:
    """An Optuna study over this config (`trpo-tune`): budget, sampler, pruner, storage."""

    study_name: str = setting(
        "cartpole", "the study (and conf/experiment/tuned_<study_name>.yaml)", check=folder_name
    )
    n_trials: int = setting(20, "cap on finished trials, across all workers", gt=0)
    load_if_exists: bool = setting(True, "continue a study of this name instead of refusing")
    report_every: int = setting(5, "updates between intermediate evaluations", gt=0)
    report_episodes: int = setting(
        5, "deterministic episodes per intermediate evaluation", gt=0, le=MAX_EPISODES
    )
    output_dir: str = setting(
        "runs/tune", "trials train in <output_dir>/<study_name>/trial_<n>/", check=file_path
    )
    overwrite: bool = setting(False, "replace an existing conf/experiment/tuned_<study>.yaml")
    sampler: SamplerConfig = group(SamplerConfig, "the sampler")
    pruner: PrunerConfig = group(PrunerConfig, "the pruner")
    storage: StorageConfig = group(StorageConfig, "the storage")
    search_space: dict[str, dict[str, SearchParam]] = setting(
        {}, "search_space.<group>.<key>: how each tuned key is sampled"
    )


@dataclass(frozen=True)
class Config(RunConfig):
    """The whole composed configuration of one command."""

    tune: TuneConfig = group(TuneConfig, "trpo-tune's study")
    tracking: TrackingConfig = group(TrackingConfig, "MLflow")


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Build and check a :class:`Config` from a plain nested mapping."""
    return build(Config, values)
