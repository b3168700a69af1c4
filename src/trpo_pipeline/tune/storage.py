"""Where the study lives (an RDB URL with heartbeats, or a journal file) and how it samples and
prunes: the storage, the sampler, the pruner, and the study opened with them."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from trpo_pipeline.config import Config, ConfigError, SamplerConfig, StorageConfig
from trpo_pipeline.credentials import mask
from trpo_pipeline.errors import first_line
from trpo_pipeline.retrying import retry
from trpo_pipeline.tracking.store import project_root

DEFAULT_DB = "optuna.db"  # at the repo root (tracking.project_root), like MLflow's store


def storage_url(cfg: StorageConfig) -> str:
    """The storage URL with file paths made absolute, so every worker and folder agrees."""
    url = cfg.url or f"sqlite:///{project_root() / DEFAULT_DB}"
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

        def rdb_storage() -> optuna.storages.RDBStorage:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True}, **heartbeat
                )

        # Workers starting together race to create the tables: the loser tries again.
        return retry(rdb_storage, attempts=3, transient=lambda err: True, pause=lambda i: 1.0 + i)
    except Exception as err:
        raise ConfigError(
            "tune.storage.url", f"cannot open {mask(url)}: {first_line(err)}"
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
