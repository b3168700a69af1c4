"""`trpo-train`: train one run, or every job of a Hydra multirun (-m), each recorded in MLflow.

Everything that can be known before anything runs is checked first, for every job: the config,
the device, the MLflow store, a checkpoint to resume from, and a run folder that already holds
results. Bad input ends with one line naming the key, exit status 2, and nothing written.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from trpo_pipeline import stops, tracking
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.credentials import mask
from trpo_pipeline.launch import restart
from trpo_pipeline.launch.app import guarded, run_hydra_app
from trpo_pipeline.launch.command_line import CommandLine
from trpo_pipeline.launch.compose import load_config
from trpo_pipeline.launch.multirun import JOB_TAG, is_multirun_job, job_run_name, parent_run_id
from trpo_pipeline.rl.errors import CheckpointError
from trpo_pipeline.rl.run_files import LEARNING_CURVE, check_run_dir
from trpo_pipeline.rl.runtime import check_device
from trpo_pipeline.tracking.pending import PENDING

PROG = "trpo-train"


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a folder we may not read: as good as missing
        return False


def _train_task(dcfg: Any) -> float:
    # Deferred: the training loop imports torch, which only a running task needs.
    from trpo_pipeline.rl.train import train

    def body(run_dir: Path) -> float:
        cfg = load_config(dcfg)
        # A multirun job that SLURM requeued or preempted runs again from the start: it resumes
        # from its own checkpoint and continues its own MLflow run (launch/restart.py).
        scheduled = is_multirun_job() and restart.scheduler_job_id() is not None
        if scheduled:  # submitit's USR2 (timeout, preemption) stops the job, wherever it lands
            stops.remember(signal.SIGUSR2, signal.SIGTERM)
        restarted = scheduled and restart.is_restart(run_dir)
        if restarted:
            cfg = restart.continued(cfg, run_dir)
        check_run_dir(run_dir, cfg)  # before an MLflow run is opened for nothing
        if scheduled:
            restart.claim(run_dir)
        run = _open_run(cfg, run_dir, restarted=restarted)
        if scheduled:
            run.write_ref(run_dir / tracking.RUN_REF)  # what a restart of this job continues
        with tracking.recording(run, close_on_exit=not scheduled):
            result = train(cfg, run_dir, callbacks=[stops.raise_again, run.log_update])
            if restarted:  # the rows a killed attempt had not sent yet; none twice
                tracking.log_curve(run, run_dir / LEARNING_CURVE)
            tracking.log_training(run, cfg, run_dir)
            run.write_ref(run_dir / tracking.RUN_REF)
        if run.online:
            where = f"\nmlflow run {run.run_id} in {mask(run.uri)}"
        elif run.offline:
            where = f"\nmlflow: not (fully) recorded; push it with: trpo-sync {run_dir}"
        else:
            where = ""
        print(
            f"trained {result.env_steps:,} env steps in {result.updates} updates, "
            f"{result.wall_time_s:.1f} s ({result.steps_per_s:,.0f} steps/s); "
            f"training return {result.episode_return:.1f}\n"
            f"outputs: {run_dir}" + where
        )
        return result.episode_return

    return guarded(PROG, body)


def _open_run(cfg: Config, run_dir: Path, *, restarted: bool) -> tracking.TrackedRun:
    """A restarted job's MLflow run is the one its folder names; any other job gets a new run."""
    ref = run_dir / tracking.RUN_REF
    if restarted and tracking.read_ref(ref).get("run_id"):
        return tracking.reopen_run(cfg, ref, folder=run_dir)
    job = restart.scheduler_job_id() if is_multirun_job() else None
    return tracking.start_run(
        cfg,
        run_name=job_run_name(cfg),
        parent_run_id=parent_run_id(),
        tags={
            "launcher": "hydra",
            **tracking.source_tags("trpo-train"),
            **({JOB_TAG: job} if job else {}),  # what the multirun asks SLURM about
        },
        folder=run_dir,
    )


def check_resume(cfg: Config) -> None:
    """A checkpoint to resume from is there, loads, and fits ``cfg``."""
    if cfg.resume is None:
        return
    if not is_file(Path(cfg.resume)):
        raise ConfigError("resume", f"no checkpoint file at {cfg.resume}")
    # Deferred: loading a checkpoint imports torch.
    from trpo_pipeline.rl.checkpoint import check_resumable, load_checkpoint

    try:
        check_resumable(load_checkpoint(Path(cfg.resume)), cfg, Path(cfg.resume))
    except CheckpointError as err:
        raise ConfigError("resume", str(err)) from None


def check_training(configs: list[Config], folder: Path | None, command: CommandLine) -> None:
    """Before Hydra (and before an MLflow run is opened): the device exists, the MLflow store
    can be used, a checkpoint to resume from loads and fits the config, and a single run's
    folder holds no results yet."""
    for cfg in configs:
        check_device(cfg.train.device)
        tracking.check_store(cfg.tracking)
        if cfg.resume is not None and not is_file(Path(cfg.resume)):
            raise ConfigError("resume", f"no checkpoint file at {cfg.resume}")
    for cfg in configs:  # the cheap checks of every job first, then the checkpoints
        check_resume(cfg)
    if not command.multirun and folder is not None:
        check_run_dir(folder, configs[0])
        if (folder / PENDING).is_file():  # its curve would be rewritten under it
            raise ConfigError(
                "",
                f"{folder} holds a run MLflow has not got yet ({PENDING}): push it with "
                f"trpo-sync {folder} first, or train under another name=",
            )


def main() -> None:
    run_hydra_app(PROG, _train_task, check_training)
