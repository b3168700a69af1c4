"""A multirun job started again (SLURM requeued or preempted it, submitit restarted it) knows
it from its run folder and continues there.

Hydra's submitit launcher reruns a requeued job from the start, with the same overrides and the
same folder, and gives the task no hook of its own. So each job notes in its folder which
scheduler job it is (:data:`JOB_REF`); a job that finds its own id there is a restart: it
resumes from the folder's checkpoint and continues the MLflow run the folder names. The ids
stay the same across requeues (SLURM's job id, or the array's id and index; submitit's local
job id), and differ between sweeps, so a folder written by another job is never taken over.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from trpo_pipeline.config import Config
from trpo_pipeline.rl.files import atomic_write
from trpo_pipeline.rl.run_files import CHECKPOINT

JOB_REF = "scheduler_job.json"  # {"job_id": ...}: the scheduler job that writes this folder


def scheduler_job_id() -> str | None:
    """The id of the job submitit started this process in, on SLURM or locally (None outside
    one: a plain multirun inside an salloc is not rerun by anyone, and never resumes)."""
    env = os.environ
    if env.get("SUBMITIT_EXECUTOR") != "slurm":
        local = env.get("SUBMITIT_LOCAL_JOB_ID")
        return f"local:{local}" if local else None
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"slurm:{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return f"slurm:{env['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in env else None


def is_restart(run_dir: Path) -> bool:
    """``run_dir`` was written by this very scheduler job before: it is being run again."""
    job_id = scheduler_job_id()
    if job_id is None:
        return False
    try:
        return json.loads((run_dir / JOB_REF).read_text()).get("job_id") == job_id
    except (OSError, ValueError, AttributeError):
        return False


def claim(run_dir: Path) -> None:
    """Note in ``run_dir`` which scheduler job writes it (nothing outside a scheduler job)."""
    job_id = scheduler_job_id()
    if job_id is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / JOB_REF, json.dumps({"job_id": job_id}) + "\n")


def continued(cfg: Config, run_dir: Path) -> Config:
    """The config a restarted job runs: from its own last checkpoint if it wrote one, else from
    the start again, replacing what its first attempt left."""
    checkpoint = run_dir / CHECKPOINT
    if checkpoint.is_file():
        return dataclasses.replace(cfg, resume=str(checkpoint))
    return dataclasses.replace(cfg, overwrite=True)
