"""Optuna studies over the config: sampler, pruner, storage, and an objective that calls train().

A trial samples the keys of ``tune.search_space``, asks the entry point for the composed config
with those values, trains it in ``<output_dir>/<study>/trial_<n>/`` and returns the mean
deterministic evaluation return. Every ``tune.report_every`` updates the fresh checkpoint is
evaluated and reported, and the pruner may stop the trial there. A diverging trial (a NaN
anywhere) is pruned with the reason in its user attrs; it never stops the study.

Several workers (processes, machines) share a study through an RDB storage (PostgreSQL); a
worker that dies stops beating, its trial is marked failed after the grace period and re-queued
for the others. ``tune.n_trials`` caps the finished (complete + pruned) trials of the study
across all workers. This module knows neither Hydra nor conf/: tune_cli.py passes it a function
that composes a trial's config.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import socket
import time
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from trpo_pipeline import tracking
from trpo_pipeline.checkpoint import rng_state, set_rng_state
from trpo_pipeline.config import (
    MAX_EPISODES,
    Config,
    ConfigError,
    EvaluateConfig,
    SamplerConfig,
    SearchParam,
    StorageConfig,
    TuneConfig,
    check_folder_name,
    check_path,
    config_from_dict,
    to_dict,
)
from trpo_pipeline.credentials import mask
from trpo_pipeline.evaluate import evaluate
from trpo_pipeline.files import atomic_write
from trpo_pipeline.train import CHECKPOINT, UpdateRecord, train

DEFAULT_DB = "optuna.db"  # at the repo root (tracking.project_root), like MLflow's store
SAMPLERS = ("tpe", "random", "qmc", "gp", "cmaes")
PRUNERS = ("median", "hyperband", "none")
PARAM_TYPES = ("float", "int", "categorical")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what tune.n_trials counts
UNTUNABLE_GROUPS = ("tune", "tracking")
# UpdateStats fields that are finite in any healthy update; NaN or inf there means divergence.
_HEALTH_STATS = ("surrogate_after", "kl", "value_loss", "grad_norm")
_NAN_MESSAGE = re.compile(r"\b(nan|inf)\b", re.IGNORECASE)

ComposeTrial = Callable[[Mapping[str, Any]], Config]
Echo = Callable[[str], None]


def say(line: str) -> None:
    """Progress for the person waiting: a line per event, flushed at once (pipes, logs)."""
    print(line, flush=True)


class DivergenceError(Exception):
    """A trial's numbers stopped being finite; the trial is pruned with this reason."""


class CapReachedError(Exception):
    """Other workers already run the last trials the cap allows; this one is not run."""


# --- the search space ----------------------------------------------------------------------------


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


# --- validation (before any trial runs) ----------------------------------------------------------


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


# --- storage, sampler, pruner --------------------------------------------------------------------


def storage_url(cfg: StorageConfig) -> str:
    """The storage URL with file paths made absolute, so every worker and folder agrees."""
    url = cfg.url or f"sqlite:///{tracking.project_root() / DEFAULT_DB}"
    if url.startswith("journal:"):
        return f"journal:{Path(url.removeprefix('journal:')).expanduser().resolve()}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url.removeprefix("sqlite:///")
        if path and not path.startswith(":memory:"):
            return f"sqlite:///{Path(path).expanduser().resolve()}"
    if url.startswith(("postgresql://", "postgres://")) and not _installed("psycopg"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the project ships psycopg2.
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def storage_label(url: str) -> str:
    """The URL without its password: what logs, tags and reports show."""
    return mask(url)


def open_storage(
    cfg: StorageConfig,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """RDB storage (with heartbeats) or a journal file; ConfigError if it cannot be opened."""
    url = storage_url(cfg)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        heartbeat: dict[str, Any] = {}
        if cfg.heartbeat_interval is not None:
            heartbeat = {
                "heartbeat_interval": cfg.heartbeat_interval,
                "grace_period": cfg.grace_period,
                "heartbeat_stale_trial_callback": on_stale,
            }
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs={"pool_pre_ping": True}, **heartbeat
                    )
            except Exception:
                # Workers starting together race to create the tables: the loser retries.
                if attempt == 2:
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            "tune.storage.url", f"cannot open {storage_label(url)}: {first}"
        ) from None


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    return (
        isinstance(storage, optuna.storages.RDBStorage) and storage.heartbeat_interval is not None
    )


def make_sampler(cfg: SamplerConfig, n_existing: int) -> optuna.samplers.BaseSampler:
    """The sampler; its seed is mixed with the study's trial count, so a resumed study (or a
    worker joining late) does not replay the random proposals of the trials it already has."""
    seed = (
        None
        if cfg.seed is None
        else int(np.random.SeedSequence([cfg.seed, n_existing]).generate_state(1)[0])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
        if cfg.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if cfg.name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
        if cfg.name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError(
                "tune.sampler.name", "cmaes needs the cmaes package (pip install cmaes)"
            ) from None
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    """Pruning steps are update numbers, which line up across trials whatever they tune."""
    p = cfg.tune.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if p.name == "hyperband":  # max_resource: the updates of the first complete trial
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource, max_resource="auto", reduction_factor=p.reduction_factor
        )
    return optuna.pruners.NopPruner()


# --- MLflow: the study is a parent run, each trial a child run -----------------------------------


class NoTracker:
    """What the study reports to; this one records nothing (tracking.enabled=false)."""

    def start_trial(
        self, trial: optuna.Trial, cfg: Config, run_dir: Path | None = None
    ) -> Callable[[UpdateRecord], None]:
        """Open the trial's run; returns a train() callback for its per-update metrics."""
        return lambda record: None

    def intermediate(self, trial: optuna.Trial, value: float, update: int, env_steps: int) -> None:
        return None

    def finish_trial(
        self, trial: optuna.Trial, state: str, value: float | None, env_steps: int
    ) -> None:
        return None

    def lost_trial(self, trial: FrozenTrial) -> None:
        return None

    def finish_study(self, summary: StudySummary, report_dir: Path | None, done: bool) -> None:
        return None


class MlflowTracker(NoTracker):
    """Nested MLflow runs (tracking.py): one parent per study, shared by all its workers and
    found again by its tags when the study resumes; a child run per trial with the trial's
    config as params, training metrics, ``tune/intermediate_return`` (step = env steps),
    ``tune/objective`` and the tag ``trial_state`` (complete / pruned / failed).

    A store that cannot be reached costs one warning line: the study goes on without a parent
    run, and each trial keeps what MLflow is missing in its folder for ``trpo-sync``."""

    def __init__(self, cfg: Config, study: optuna.Study, storage: str) -> None:
        self.uri = tracking.resolve_tracking_uri(cfg.tracking)
        self.study_tags = {"optuna_study": study.study_name, "optuna_storage": storage}
        self.runs: dict[int, tracking.TrackedRun] = {}
        self.parent_id: str | None = None
        try:
            # open_experiment creates the client under the store's lock (workers starting
            # together on a fresh SQLite store take turns) and retries while it is locked.
            self.client, self.experiment_id = tracking.open_experiment(
                self.uri, cfg.tracking.experiment
            )
            with tracking.quiet_http():
                self.parent_id = self._parent(cfg)
        except tracking.TrackingUnavailableError as err:
            tracking.warn_unreachable(
                self.uri, str(err), "the study goes on; trials keep their results for trpo-sync"
            )
        except Exception as err:
            if not tracking.is_outage(err):
                raise
            tracking.warn_unreachable(
                self.uri, err, "the study goes on; trials keep their results for trpo-sync"
            )

    def _best_effort(self, call: Callable[[], Any]) -> None:
        """A study-level MLflow call (parent run, another worker's trial) that may not stop
        the study: a store gone away costs one warning line."""
        if self.parent_id is None:
            return
        try:
            with tracking.quiet_http():
                call()
        except Exception as err:
            if not tracking.is_outage(err):
                raise
            tracking.warn_unreachable(self.uri, err, "the study's parent run is left incomplete")
            self.parent_id = None

    def _find_parents(self) -> list[Any]:
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in self.study_tags.items())
        return self.client.search_runs(
            [self.experiment_id],
            f"{query} and tags.tune_role = 'study'",
            order_by=["attributes.start_time ASC"],
        )

    def _parent(self, cfg: Config) -> str:
        from mlflow.entities import Param

        found = self._find_parents()
        if not found:
            run_id = tracking.start_parent_run(
                cfg.tracking,
                run_name=f"tune {self.study_tags['optuna_study']}",
                tags={**self.study_tags, "tune_role": "study", "launcher": "optuna"},
            )
            params = tracking.flatten(to_dict(cfg)).items()
            for i in range(0, len(params), tracking.PARAMS_PER_BATCH):
                batch = list(params)[i : i + tracking.PARAMS_PER_BATCH]
                self.client.log_batch(run_id, params=[Param(k, v) for k, v in batch])
            # Two workers starting together may each have created one: all keep the oldest.
            found = self._find_parents()
            if found[0].info.run_id != run_id:
                self.client.delete_run(run_id)
        parent_id = found[0].info.run_id
        self.client.update_run(parent_id, status="RUNNING")
        return parent_id

    def start_trial(
        self, trial: optuna.Trial, cfg: Config, run_dir: Path | None = None
    ) -> Callable[[UpdateRecord], None]:
        run = tracking.start_run(
            cfg,
            run_name=f"{self.study_tags['optuna_study']}/trial_{trial.number}",
            parent_run_id=self.parent_id,
            tags={
                **self.study_tags,
                "tune_role": "trial",
                "launcher": "optuna",
                "trial_number": str(trial.number),
                "trial_state": "running",
                "tuned_keys": ",".join(trial.user_attrs.get("config", {})),
            },
            folder=run_dir,
        )
        self.runs[trial.number] = run
        trial.set_user_attr("mlflow_run_id", run.run_id)
        return run.log_update

    def intermediate(self, trial: optuna.Trial, value: float, update: int, env_steps: int) -> None:
        self.runs[trial.number].log_metrics({"tune/intermediate_return": value}, step=env_steps)

    def finish_trial(
        self, trial: optuna.Trial, state: str, value: float | None, env_steps: int
    ) -> None:
        run = self.runs.pop(trial.number, None)
        if run is None:
            return
        if value is not None:
            run.log_metrics({"tune/objective": value}, step=env_steps)
        run.set_tag("trial_state", state)
        run.finish("FAILED" if state == "failed" else "FINISHED")

    def lost_trial(self, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:

            def mark_failed() -> None:
                self.client.set_tag(run_id, "trial_state", "failed")
                self.client.set_tag(run_id, "trial_fail_reason", "worker lost (no heartbeat)")
                self.client.set_terminated(run_id, "FAILED")

            self._best_effort(mark_failed)

    def finish_study(self, summary: StudySummary, report_dir: Path | None, done: bool) -> None:
        self._best_effort(lambda: self._finish_parent(summary, report_dir, done))

    def _finish_parent(self, summary: StudySummary, report_dir: Path | None, done: bool) -> None:
        assert self.parent_id is not None
        metrics = {
            "tune/trials_complete": summary.n_complete,
            "tune/trials_pruned": summary.n_pruned,
            "tune/trials_failed": summary.n_failed,
        }
        if summary.best_value is not None:
            metrics["tune/best_objective"] = summary.best_value
            self.client.set_tag(self.parent_id, "best_trial", str(summary.best_number))
        for key, value in metrics.items():
            self.client.log_metric(self.parent_id, key, value)
        if report_dir is not None and report_dir.is_dir():
            self.client.log_artifacts(self.parent_id, str(report_dir), "tune_report")
        self.client.set_terminated(self.parent_id, "FINISHED" if done else "KILLED")


def make_tracker(cfg: Config, study: optuna.Study, storage: str) -> NoTracker:
    return MlflowTracker(cfg, study, storage) if cfg.tracking.enabled else NoTracker()


# --- the objective -------------------------------------------------------------------------------


class _Reporter:
    """train() callback: divergence checks every update, an intermediate evaluation every
    ``report_every`` updates (the checkpoint is written there), and the pruning decision."""

    def __init__(self, trial: optuna.Trial, cfg: Config, run_dir: Path, tracker: NoTracker) -> None:
        self.trial, self.cfg, self.run_dir, self.tracker = trial, cfg, run_dir, tracker
        self.eval_cfg = EvaluateConfig(
            episodes=cfg.tune.report_episodes, seed=cfg.evaluate.seed, deterministic=True
        )
        self.update, self.env_steps = 0, 0

    def __call__(self, record: UpdateRecord) -> None:
        self.update, self.env_steps = record.update, record.env_steps
        bad = [k for k in _HEALTH_STATS if not math.isfinite(getattr(record.stats, k))]
        if bad:
            raise DivergenceError(f"update {record.update}: {', '.join(bad)} not finite")
        if record.update % self.cfg.tune.report_every:
            return
        # evaluate() seeds torch's global RNG; training must go on as if it had not run, so
        # that the trial is the same run `trpo-train experiment=tuned_<study>` repeats.
        state = rng_state()
        try:
            result = evaluate(self.run_dir / CHECKPOINT, self.eval_cfg)
        finally:
            set_rng_state(state)
        if result.env_steps_trained != record.env_steps:  # train() checkpoints before callbacks
            raise RuntimeError(
                f"checkpoint at {result.env_steps_trained} env steps, expected {record.env_steps}"
            )
        value = result.mean_return
        if not math.isfinite(value):
            raise DivergenceError(f"update {record.update}: evaluation return {value}")
        self.trial.report(value, step=record.update)
        self.tracker.intermediate(self.trial, value, record.update, record.env_steps)
        last = record.env_steps >= self.cfg.train.total_steps  # trained: nothing left to save
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"update {record.update} ({record.env_steps} env steps): "
                f"evaluation return {value:.1f} below the pruner's threshold"
            )


class Objective:
    """Sample a config, train it in its own folder, return its mean evaluation return."""

    def __init__(
        self,
        base: Config,
        compose_trial: ComposeTrial,
        study_dir: Path,
        tracker: NoTracker,
        *,
        count_running: bool,
    ) -> None:
        self.base = base
        self.dims = dimensions(base.tune)
        self.compose_trial = compose_trial
        self.study_dir = study_dir
        self.tracker = tracker
        self.count_running = count_running

    def __call__(self, trial: optuna.Trial) -> float:
        self._check_cap(trial)
        values = suggest(trial, self.dims)
        trial.set_user_attr("config", values)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            cfg = self.trial_config(values)
        except ConfigError as err:  # a combination of values the schema rejects
            trial.set_user_attr("invalid", str(err))
            raise optuna.TrialPruned(f"invalid config: {err}") from None
        run_dir = self.study_dir / f"trial_{trial.number}"
        log_update = self.tracker.start_trial(trial, cfg, run_dir)
        reporter = _Reporter(trial, cfg, run_dir, self.tracker)
        try:
            value = self._train_and_evaluate(trial, cfg, run_dir, reporter, log_update)
        except optuna.TrialPruned:
            self._record_steps(trial, reporter)
            self.tracker.finish_trial(trial, "pruned", None, reporter.env_steps)
            raise
        except BaseException:
            self.tracker.finish_trial(trial, "failed", None, reporter.env_steps)
            raise
        self._record_steps(trial, reporter)
        self.tracker.finish_trial(trial, "complete", value, reporter.env_steps)
        return value

    def trial_config(self, values: Mapping[str, Any]) -> Config:
        """The composed config of these values, checkpointing at every report (the intermediate
        evaluation reads that checkpoint), quiet, and free to replace its own trial folder."""
        cfg = self.compose_trial(values)
        train_cfg = dataclasses.replace(
            cfg.train, checkpoint_every=cfg.tune.report_every, progress=False
        )
        return dataclasses.replace(cfg, train=train_cfg, resume=None, overwrite=True)

    def _check_cap(self, trial: optuna.Trial) -> None:
        # Two workers that both saw room for the last trial both asked for one: the later is
        # not run, so finished trials never exceed the cap.
        trials = trial.study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
        if finished + (ahead if self.count_running else 0) >= self.base.tune.n_trials:
            trial.set_user_attr("not_run", "the cap was reached by other workers")
            raise CapReachedError(f"tune.n_trials={self.base.tune.n_trials} reached")

    def _train_and_evaluate(
        self,
        trial: optuna.Trial,
        cfg: Config,
        run_dir: Path,
        reporter: _Reporter,
        log_update: Callable[[UpdateRecord], None],
    ) -> float:
        try:
            result = train(cfg, run_dir, callbacks=[log_update, reporter])
            value = evaluate(result.checkpoint, cfg.evaluate).mean_return
            if not math.isfinite(value):
                raise DivergenceError(f"final evaluation return {value}")
            return value
        except DivergenceError as err:
            reason = str(err)
        except (ValueError, RuntimeError, FloatingPointError) as err:
            # torch rejects NaN logits / scales with a ValueError naming the values.
            if not _NAN_MESSAGE.search(str(err)):
                raise
            what = f"{type(err).__name__}: {_first_line(err)}"
            reason = f"update {reporter.update + 1}: nan/inf values ({what})"
        trial.set_user_attr("diverged", reason)
        raise optuna.TrialPruned(f"diverged at {reason}")

    @staticmethod
    def _record_steps(trial: optuna.Trial, reporter: _Reporter) -> None:
        trial.set_user_attr("updates", reporter.update)
        trial.set_user_attr("env_steps", reporter.env_steps)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- the study loop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySummary:
    study_name: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best_number: int | None
    best_value: float | None
    best_values: dict[str, Any]
    wall_time_s: float  # this worker
    seconds_complete: float  # trial time of all complete trials of the study
    seconds_pruned: float
    env_steps_complete: int  # trained by all complete trials
    env_steps_pruned: int  # trained by all pruned trials before they were stopped
    tuned_config: Path | None
    report_dir: Path | None

    @property
    def n_finished(self) -> int:
        return self.n_complete + self.n_pruned

    @property
    def seconds_saved_estimate(self) -> float:
        """Trial time pruning saved: the env steps pruned trials did not train, at the
        complete trials' seconds per env step (intermediate evaluations included)."""
        if not self.n_complete or not self.n_pruned or not self.env_steps_complete:
            return 0.0
        return self.seconds_complete / self.env_steps_complete * self.env_steps_skipped

    @property
    def env_steps_skipped(self) -> int:
        full = self.env_steps_complete / max(self.n_complete, 1)
        return max(round(self.n_pruned * full) - self.env_steps_pruned, 0)


class _Progress:
    """A line per finished trial: number, params, value, state, best so far."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "not_run" in trial.user_attrs:
            self.echo(f"trial {trial.number}: not run ({trial.user_attrs['not_run']})")
            return
        params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.user_attrs.get("config", {}).items())
        if trial.state == TrialState.COMPLETE:
            outcome = f"complete  return {trial.value:.2f}"
        elif "diverged" in trial.user_attrs:
            outcome = f"diverged  at {trial.user_attrs['diverged']}"
        elif "invalid" in trial.user_attrs:
            outcome = f"pruned    invalid config: {trial.user_attrs['invalid']}"
        elif trial.state == TrialState.PRUNED:
            where = (
                f"update {trial.last_step}, return {trial.intermediate_values[trial.last_step]:.2f}"
                if trial.last_step is not None
                else "its start"
            )
            outcome = f"pruned    at {where}"
        else:
            outcome = trial.state.name.lower()
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.echo(
            f"trial {trial.number:>3} {outcome} | {params} | {seconds:.0f} s | {_best(study)}"
        )


def _best(study: optuna.Study) -> str:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "no complete trial yet"
    best = max(complete, key=lambda t: t.value)
    return f"best {best.value:.2f} (trial {best.number})"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class _StaleTrials:
    """Storage callback for a trial whose worker stopped beating: mark it failed in MLflow and
    re-queue it (its params, as a new trial number) for whichever worker is free."""

    def __init__(self, max_retry: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracker: NoTracker = NoTracker()
        self.echo: Echo = say

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.tracker.lost_trial(trial)
        self.retry(study, trial)
        self.echo(f"trial {trial.number} lost its worker: marked failed and re-queued")


def open_study(cfg: Config, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or load it (load_if_exists), with a sampler seeded for this worker."""
    t = cfg.tune
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=t.study_name,
            direction="maximize",
            load_if_exists=t.load_if_exists,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise ConfigError(
            "tune.study_name",
            f"study {t.study_name!r} already exists; pass tune.load_if_exists=true to continue "
            "it, or another tune.study_name",
        ) from None
    n_existing = len(study.get_trials(deepcopy=False))
    return optuna.load_study(
        study_name=t.study_name,
        storage=storage,
        sampler=make_sampler(t.sampler, n_existing),
        pruner=make_pruner(cfg),
    )


def run_study(
    cfg: Config,
    *,
    compose_trial: ComposeTrial,
    study_dir: Path,
    default: Config | None = None,
    tuned_config: Path | None = None,
    echo: Echo = say,
) -> StudySummary:
    """Run trials of ``cfg.tune``'s study until it holds ``n_trials`` finished ones.

    ``compose_trial(values)`` returns the config of one trial ({dotted key: value} applied to
    the experiment). At the end the best trial is written to ``tuned_config`` (as the
    experiment's differences from ``default`` plus the best values) and a report into
    ``study_dir/report``. KeyboardInterrupt marks the running trial failed and propagates: the
    same command continues the study.
    """
    validate_tune(cfg)
    t = cfg.tune
    if tuned_config is not None:
        check_tuned_config(tuned_config, t.study_name, overwrite=t.overwrite)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stale = _StaleTrials(t.storage.max_retry)
    storage = open_storage(t.storage, on_stale=stale)
    label = storage_label(storage_url(t.storage))
    study = open_study(cfg, storage)
    tracker = make_tracker(cfg, study, label)
    stale.tracker, stale.echo = tracker, echo
    count_running = heartbeat_enabled(storage)
    objective = Objective(cfg, compose_trial, study_dir, tracker, count_running=count_running)
    study_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    finished = _finished(study)
    echo(
        f"study {t.study_name!r} in {label}: {finished} of {t.n_trials} trials finished; "
        f"sampler {t.sampler.name}, pruner {t.pruner.name}, "
        f"{cfg.train.total_steps:,} env steps a trial, evaluated every {t.report_every} updates"
    )

    def wait_or_stop(study: optuna.Study, _: FrozenTrial) -> None:
        if not _wait_for_room(study, cfg, count_running, echo):
            study.stop()

    try:
        if _wait_for_room(study, cfg, count_running, echo):
            study.optimize(
                objective,
                callbacks=[
                    # Stops this worker once the study holds n_trials finished trials ...
                    optuna.study.MaxTrialsCallback(t.n_trials, states=FINISHED),
                    _Progress(echo),
                    # ... and this one waits while others run the last ones, or stops.
                    wait_or_stop,
                ],
                catch=(CapReachedError,),
            )
    except BaseException:
        tracker.finish_study(summarize(study, cfg, time.perf_counter() - start), None, done=False)
        raise
    summary = summarize(study, cfg, time.perf_counter() - start)
    report_dir = study_dir / "report"
    written = None
    if summary.best_number is not None and tuned_config is not None:
        best = study.best_trial
        text = tuned_config_yaml(cfg, default or cfg, best, label)
        written = write_tuned_config(tuned_config, text, t.study_name, overwrite=t.overwrite)
    summary = dataclasses.replace(summary, tuned_config=written, report_dir=report_dir)
    write_report(study, summary, report_dir)
    tracker.finish_study(summary, report_dir, done=True)
    return summary


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _wait_for_room(study: optuna.Study, cfg: Config, count_running: bool, echo: Echo) -> bool:
    """True when this worker should start a trial; False when the study has its n_trials.

    Trials other workers are running count towards the cap while their heartbeat is alive, so
    this worker waits (rather than overshooting the cap) and takes over a lost trial's retry.
    """
    cap = cfg.tune.n_trials
    said = False
    while True:
        if count_running:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        if finished >= cap:
            return False
        if not count_running:
            return True
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if waiting or finished + running < cap:
            return True
        if not said:
            s = cfg.tune.storage
            grace = s.grace_period or 2 * (s.heartbeat_interval or 0)  # optuna's default
            echo(
                f"waiting for {running} trial(s) of other workers to finish "
                f"({finished} of {cap} finished; a lost one is re-queued after "
                f"{grace} s without heartbeat)"
            )
            said = True
        time.sleep(min(cfg.tune.storage.heartbeat_interval or 1, 5))


def summarize(study: optuna.Study, cfg: Config, wall_time_s: float) -> StudySummary:
    trials = study.get_trials(deepcopy=False)

    def of(state: TrialState) -> list[FrozenTrial]:
        return [t for t in trials if t.state == state]

    def seconds(ts: list[FrozenTrial]) -> float:
        return sum(t.duration.total_seconds() for t in ts if t.duration)

    complete, pruned = of(TrialState.COMPLETE), of(TrialState.PRUNED)
    best = max(complete, key=lambda t: t.value) if complete else None
    return StudySummary(
        study_name=study.study_name,
        storage=storage_label(storage_url(cfg.tune.storage)),
        n_complete=len(complete),
        n_pruned=len(pruned),
        n_failed=len(of(TrialState.FAIL)),
        best_number=None if best is None else best.number,
        best_value=None if best is None else best.value,
        best_values={} if best is None else dict(best.user_attrs.get("config", {})),
        wall_time_s=wall_time_s,
        seconds_complete=seconds(complete),
        seconds_pruned=seconds(pruned),
        env_steps_complete=sum(int(t.user_attrs.get("env_steps", 0)) for t in complete),
        env_steps_pruned=sum(int(t.user_attrs.get("env_steps", 0)) for t in pruned),
        tuned_config=None,
        report_dir=None,
    )


def format_summary(s: StudySummary) -> str:
    lines = [
        f"study {s.study_name!r} ({s.storage}): {s.n_complete} complete, {s.n_pruned} pruned, "
        f"{s.n_failed} failed; this worker ran for {s.wall_time_s:.0f} s",
    ]
    if s.best_number is not None:
        params = " ".join(f"{k}={_fmt(v)}" for k, v in s.best_values.items())
        lines.append(f"best: trial {s.best_number}, return {s.best_value:.2f} | {params}")
    if s.n_pruned:
        lines.append(
            f"pruning: stopped {s.n_pruned} of {s.n_finished} trials early, "
            f"{s.env_steps_skipped:,} env steps not trained; about "
            f"{s.seconds_saved_estimate:.0f} s saved (complete trials: "
            f"{s.seconds_complete:.0f} s for {s.env_steps_complete:,} env steps)"
        )
    if s.tuned_config is not None:
        lines.append(
            f"tuned config: {s.tuned_config} (trpo-train experiment={s.tuned_config.stem})"
        )
    if s.report_dir is not None:
        lines.append(f"report: {s.report_dir / 'report.md'}")
    return "\n".join(lines)


# --- the best trial as a Hydra experiment --------------------------------------------------------

_MARK = "# Written by trpo-tune from study "
_NOT_PART_OF_AN_EXPERIMENT = ("tune", "tracking", "resume", "overwrite")


def _written_by(path: Path, study_name: str) -> bool:
    head = path.read_text().splitlines()[:3]
    return any(line.startswith(f"{_MARK}{study_name!r}") for line in head)


def check_tuned_config(path: Path, study_name: str, *, overwrite: bool) -> None:
    """Refuse (before any trial runs) to replace a file this study did not write."""
    if path.exists() and not overwrite and not _written_by(path, study_name):
        raise ConfigError(
            "tune.overwrite",
            f"{path} exists and was not written by study {study_name!r}; pass "
            "tune.overwrite=true to replace it, or another tune.study_name",
        )


def _diff(values: Mapping[str, Any], default: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            sub = _diff(value, default.get(key) or {})
            if sub:
                out[key] = sub
        elif default.get(key, object()) != value:
            out[key] = value
    return out


def tuned_config_yaml(base: Config, default: Config, best: FrozenTrial, storage: str) -> str:
    """The experiment of the best trial: the tuned experiment's differences from the default
    config, the best values, and the checkpoint schedule the trials trained with (envs restart
    at checkpoints, so the same schedule retrains the best trial exactly)."""
    base_tree, default_tree = to_dict(base), to_dict(default)
    for key in (*_NOT_PART_OF_AN_EXPERIMENT, "name"):
        base_tree.pop(key, None)
    base_tree["train"].pop("progress", None)
    values: dict[str, Any] = {"name": f"tuned_{base.tune.study_name}"}
    values |= _diff(base_tree, default_tree)
    best_values = dict(best.user_attrs.get("config", {}))
    best_values["train.checkpoint_every"] = base.tune.report_every
    for dotted, value in best_values.items():
        group, key = dotted.split(".")
        values.setdefault(group, {})[key] = value
    header = (
        "# @package _global_\n"
        f"{_MARK}{base.tune.study_name!r} ({storage}): trial {best.number}, "
        f"evaluation return {best.value:.2f}.\n"
        f"# Train it: trpo-train experiment=tuned_{base.tune.study_name}  "
        f"(or dvc exp run -S experiment=tuned_{base.tune.study_name})\n"
    )
    return header + yaml.safe_dump(values, sort_keys=False)


def write_tuned_config(path: Path, text: str, study_name: str, *, overwrite: bool) -> Path:
    check_tuned_config(path, study_name, overwrite=overwrite)
    return atomic_write(path, text)


# --- the study report ----------------------------------------------------------------------------


def write_report(study: optuna.Study, summary: StudySummary, out_dir: Path) -> Path:
    """report.md with the summary, a trial table and matplotlib figures: optimisation history,
    intermediate values, parameter importances, slice and contour plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    out_dir.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "too few trials for ..." is expected
    params = sorted({k for t in study.trials for k in t.params})
    figures = {
        "optimization_history": lambda: vis.plot_optimization_history(study),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
        "param_importances": lambda: vis.plot_param_importances(study),
        "slice": lambda: vis.plot_slice(study),
        "contour": lambda: vis.plot_contour(study, params=params[:2]),
    }
    lines = [f"# Study `{summary.study_name}`", "", "```", format_summary(summary), "```", ""]
    for name, plot in figures.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot()
                first = ax.flat[0] if isinstance(ax, np.ndarray) else ax
                if first.get_legend() is not None and len(study.trials) > 10:
                    first.get_legend().remove()  # a line per trial: the legend would dwarf it
                fig = first.get_figure()
                png = io.BytesIO()
                fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
                plt.close(fig)
                atomic_write(out_dir / f"{name}.png", png.getvalue())
            lines += [f"## {name.replace('_', ' ')}", "", f"![{name}]({name}.png)", ""]
        except Exception as err:  # too few trials for this figure
            lines += [f"## {name.replace('_', ' ')}", "", f"(not drawn: {_first_line(err)})", ""]
    lines += ["## Trials", "", "| trial | state | value | " + " | ".join(params) + " | s |"]
    lines.append("|---" * (len(params) + 4) + "|")
    for t in study.trials:
        value = f"{t.value:.2f}" if t.state == TrialState.COMPLETE else ""
        if t.state == TrialState.PRUNED:
            value = (
                t.user_attrs.get("diverged")
                or t.user_attrs.get("invalid")
                or (
                    f"{t.intermediate_values[t.last_step]:.2f} at update {t.last_step}"
                    if t.last_step is not None
                    else ""
                )
            )
        cells = [_fmt(t.params[p]) if p in t.params else "" for p in params]
        seconds = f"{t.duration.total_seconds():.0f}" if t.duration else ""
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | {value} | {' | '.join(cells)} | {seconds} |"
        )
    optuna.logging.set_verbosity(verbosity)
    return atomic_write(out_dir / "report.md", "\n".join(lines) + "\n")
