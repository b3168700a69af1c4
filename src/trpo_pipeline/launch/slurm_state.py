"""What SLURM says of a sweep's jobs: which still run, and how one that ended without closing its
MLflow run ended.

`scancel`, a node failure or the out-of-memory killer end a job with SIGKILL (submitit lets
SIGTERM pass, and SLURM's SIGKILL follows within KillWait), so the job cannot close its run
itself. The multirun that launched it asks SLURM's accounting once it has ended. Hydra's
launcher collects the jobs' results in array order and gives up at the first job that ended so;
the multirun then waits for the others itself (:func:`queued`), so that it ends after its jobs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

_JOB_FOLDER = re.compile(r"\d+(_\d+)?")  # submitit's folder of one job: <job id>[_<task>]

# SLURM's final states of a job that did not succeed, and the MLflow status its run gets.
# Any other state (PENDING, RUNNING, REQUEUED, COMPLETED, ...) leaves the run alone: the job may
# still run, or will close the run itself.
_ENDED = {
    "CANCELLED": "KILLED",
    "FAILED": "FAILED",
    "TIMEOUT": "FAILED",
    "NODE_FAIL": "FAILED",
    "OUT_OF_MEMORY": "FAILED",
    "BOOT_FAIL": "FAILED",
    "DEADLINE": "FAILED",
}


def ended_state(job: str) -> tuple[str, str] | None:
    """(SLURM's state, the run's MLflow status) of ``job`` (``slurm:<id>``, as
    restart.scheduler_job_id names it) if it ended without success; None otherwise, and where
    `sacct` is missing or does not answer."""
    if not job.startswith("slurm:"):
        return None
    command = ["sacct", "-j", job.removeprefix("slurm:"), "-X", "-n", "-P", "-o", "State"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split("\n")
    state = lines[0].split(" ")[0] if done.returncode == 0 and lines[0] else ""  # "CANCELLED by 0"
    return (state, _ENDED[state]) if state in _ENDED else None


def sweep_jobs(submitit_folder: str) -> list[str]:
    """The SLURM jobs a sweep submitted, from submitit's folder pattern (the slurm preset's
    ``<sweep dir>/.submitit/%j``: one folder per job, named by its id)."""
    root = Path(submitit_folder.split("%", 1)[0])
    try:
        return sorted(d.name for d in root.iterdir() if _JOB_FOLDER.fullmatch(d.name))
    except OSError:
        return []


def queued(jobs: list[str]) -> list[str]:
    """Those of ``jobs`` SLURM still has pending or running ([] where `squeue` is missing, does
    not answer, or no longer knows any of them)."""
    if not jobs:
        return []
    command = ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(jobs)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.split() if done.returncode == 0 else []
