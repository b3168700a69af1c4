"""`trpo-tune`: an Optuna study over the composed experiment, as a Hydra app.

    trpo-tune                                   # the default study (conf/tune/default.yaml)
    trpo-tune env=acrobot tune.n_trials=50      # tune another experiment, a bigger budget
    trpo-tune tune.storage.url=postgresql://... # one of several workers sharing a study
    trpo-tune -m hydra/launcher=slurm tune.sampler.seed=1,2,3 tune.storage.url=postgresql://...
                                                # three workers of one study as a SLURM job array

The command line is the experiment (any trpo-train override) plus tune.* settings. Everything,
the search space included, is validated before the first trial; bad input ends with one line
and exit status 2. Each trial composes the same command line plus its sampled values. Ctrl-C
marks the running trial failed; the same command continues the study.

A multirun (-m) is one study run by several workers, one Hydra job each (hydra/launcher=slurm:
a job array, docs/cluster.md; hydra/launcher=local: processes on this machine). The only key it
may sweep is tune.sampler.seed (a seed per worker), and the storage must be a database server
with heartbeats, shared by the jobs. All workers write into the study's folder
(<tune.output_dir>/<study>/: trial_<n>/, report/, and submitit's logs in .submitit/<job id>/).
A worker stopped by SIGTERM (scancel, a requeue, a preemption) marks its trial failed and
re-queues it for another worker; a requeued job continues the study.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trpo_pipeline import tracking
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.errors import fail
from trpo_pipeline.launch.app import guarded, run_hydra_app
from trpo_pipeline.launch.command_line import CommandLine, preflight, read, swept_keys
from trpo_pipeline.launch.compose import CONFIG_NAME, composition_error, find_conf_dir, load_config
from trpo_pipeline.rl.runtime import check_device
from trpo_pipeline.tune.command import (
    PROG,
    interrupt_on_sigterm,
    run_study_command,
    tuned_config_path,
)
from trpo_pipeline.tune.storage import storage_url
from trpo_pipeline.tune.tuned_config import check_tuned_config
from trpo_pipeline.tune.validation import validate_tune

STUDY_DIR = "hydra.run.dir=${tune.output_dir}/${tune.study_name}"
# A multirun's jobs are workers of one study: each writes into the study's folder (trial
# folders are numbered by the study, so they never collide), and the study is its own MLflow
# parent run (the multirun's parent run would stay empty).
WORKERS_DIR = [
    "hydra.sweep.dir=${tune.output_dir}/${tune.study_name}",
    "hydra.sweep.subdir=.",
    "~hydra.callbacks.mlflow_parent_run",
]
WORKER_KEY = "tune.sampler.seed"  # the one key a multirun may sweep: a seed per worker


def override(key: str, value: Any) -> str:
    """A Hydra override that sets (or adds) ``key`` to ``value`` exactly."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    elif value is None:
        text = "null"
    else:
        text = "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"++{key}={text}"


def _compose(overrides: Sequence[str]) -> Any:
    """Compose conf/ inside the running Hydra app (its config dir is already set up)."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(CONFIG_NAME, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise composition_error(err) from None


def _check(argv: Sequence[str], conf_dir: Path) -> CommandLine | None:
    """Everything that can be checked before Hydra starts; ConfigError on the first problem.
    The command line as Hydra reads it (None when it runs no job)."""
    command = read(argv)
    if command is None:
        return None
    if command.multirun:
        _check_sweep(command)
    configs = preflight(command, conf_dir)
    if command.multirun:
        _check_workers(configs)
    cfg = configs[0]  # the workers' configs differ in their sampler seed only
    check_device(cfg.train.device)
    tracking.check_store(cfg.tracking)
    validate_tune(cfg)
    check_tuned_config(
        tuned_config_path(conf_dir, cfg.tune.study_name),
        cfg.tune.study_name,
        overwrite=cfg.tune.overwrite,
    )
    return command


def _check_sweep(command: CommandLine) -> None:
    """A multirun's jobs are workers of one study: they may differ in their sampler seed only."""
    for key in swept_keys(command.overrides + command.hydra_overrides):
        if key != WORKER_KEY:
            raise ConfigError(
                key,
                f"trpo-tune -m runs workers of one study and sweeps only {WORKER_KEY} "
                f"(a seed per worker, e.g. {WORKER_KEY}=1,2,3); give {key} one value",
            )


def _check_workers(configs: Sequence[Config]) -> None:
    """The workers share a database server's study, with heartbeats, and each its own seed."""
    storage = configs[0].tune.storage
    url = storage_url(storage)
    if url.startswith(("sqlite:", "journal:")):
        given = "the default SQLite file" if storage.url is None else url.split(":", 1)[0]
        raise ConfigError(
            "tune.storage.url",
            f"the workers of trpo-tune -m share one study in a database server "
            f"(tune.storage.url=postgresql://...), not {given}",
        )
    if storage.heartbeat_interval is None:
        raise ConfigError(
            "tune.storage.heartbeat_interval",
            "trpo-tune -m needs heartbeats (seconds), so that a lost worker's trial is re-queued",
        )
    seeds = [c.tune.sampler.seed for c in configs]
    twice = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(
            WORKER_KEY, f"each worker needs a seed of its own; {', '.join(twice)} given twice"
        )


def _tune_task(dcfg: Any) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    conf_dir = find_conf_dir()
    base_overrides = list(HydraConfig.get().overrides.task)

    def compose_trial(values: Mapping[str, Any]) -> Config:
        kept = [o for o in base_overrides if o.lstrip("+~").split("=")[0] not in values]
        return load_config(_compose(kept + [override(k, v) for k, v in values.items()]))

    interrupt_on_sigterm()  # again in a submitit job: it replaces submitit's own handler

    def body(study_dir: Path) -> float | None:
        cfg = load_config(dcfg)
        return run_study_command(cfg, compose_trial, study_dir, load_config(_compose([])), conf_dir)

    return guarded(PROG, body)


def main() -> None:
    conf_dir = find_conf_dir()
    argv = sys.argv[1:]
    try:
        command = _check(argv, conf_dir)
    except ConfigError as err:
        fail(PROG, str(err))
    if command is not None and command.multirun:
        given = {a.split("=", 1)[0] for a in argv}
        sys.argv += [o for o in WORKERS_DIR if o.split("=", 1)[0] not in given]
    elif not any(a.startswith("hydra.run.dir=") for a in argv):
        sys.argv.append(STUDY_DIR)  # Hydra's folder is the study's: runs/tune/<study>/
    interrupt_on_sigterm()
    run_hydra_app(PROG, _tune_task)


if __name__ == "__main__":
    main()
