"""A training process killed with SIGKILL resumes from its last checkpoint, bit-identically."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trpo_pipeline.rl.checkpoint import load_checkpoint

TRAIN = str(Path(sys.executable).parent / "trpo-train")
OVERRIDES = [
    "train.total_steps=30000",
    "algo.steps_per_update=512",
    "algo.num_envs=4",
    "train.checkpoint_every=3",
    "train.progress=false",
    "tracking.enabled=false",  # MLflow is not under test here
]
TIMING = {"time_s", "steps_per_s"}
# EnvPool seeds only when a pool is made: the restarts at checkpoint boundaries make new ones.
TASKS = {
    "cartpole": [],
    "halfcheetah": ["env=halfcheetah", "env.vectorization=envpool", "env.envpool_threads=2"],
}


def _env(tmp: Path) -> dict[str, str]:
    # Belt and braces: even if tracking were on, nothing reaches the repository's store.
    return os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}


def _curve(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "learning_curve.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _rows(run_dir: Path) -> int:
    path = run_dir / "learning_curve.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path, task: str) -> None:
    killed_cwd, reference_cwd = tmp_path / "killed", tmp_path / "reference"
    killed_cwd.mkdir()
    reference_cwd.mkdir()
    run_dir = killed_cwd / "runs" / task / "seed0"
    overrides = [*OVERRIDES, *TASKS[task]]

    proc = subprocess.Popen(
        [TRAIN, *overrides],
        cwd=killed_cwd,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _rows(run_dir) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; raise the budget"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows_at_kill = _rows(run_dir)

    # The checkpoint on disk is whole (atomic writes) and at most one interval behind.
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt.updates % 3 == 0
    assert rows_at_kill - ckpt.updates <= 3 + 1  # +1: the row being written when the kill came

    resumed = subprocess.run(
        [TRAIN, *overrides, f"resume={run_dir / 'checkpoint.pt'}"],
        cwd=killed_cwd,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    reference = subprocess.run(
        [TRAIN, *overrides], cwd=reference_cwd, env=_env(tmp_path), capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr
    ref_dir = reference_cwd / "runs" / task / "seed0"

    assert (run_dir / "checkpoint.pt").read_bytes() == (ref_dir / "checkpoint.pt").read_bytes()
    assert _curve(run_dir) == _curve(ref_dir)
