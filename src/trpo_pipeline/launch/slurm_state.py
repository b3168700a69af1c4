"""What SLURM says of a job that ended without closing its MLflow run.

`scancel`, a node failure or the out-of-memory killer end a job with SIGKILL (submitit lets
SIGTERM pass, and SLURM's SIGKILL follows within KillWait), so the job cannot close its run
itself. The multirun that launched it asks SLURM's accounting once it has ended.
"""

from __future__ import annotations

import subprocess

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
