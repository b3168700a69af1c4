"""A job that submitit runs again knows it from its folder (launch/restart.py), without SLURM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trpo_pipeline.launch import restart

SCHEDULER_VARS = (
    "SUBMITIT_EXECUTOR",
    "SUBMITIT_LOCAL_JOB_ID",
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
)


@pytest.fixture(autouse=True)
def no_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SCHEDULER_VARS:
        monkeypatch.delenv(name, raising=False)


def test_the_job_id_is_submitits_and_stays_across_requeues(monkeypatch) -> None:
    assert restart.scheduler_job_id() is None
    monkeypatch.setenv("SLURM_JOB_ID", "41")  # an salloc shell: not a submitit job
    assert restart.scheduler_job_id() is None
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert restart.scheduler_job_id() == "slurm:41"
    # An array task: named by its array's id and index, as squeue and scancel name it.
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert restart.scheduler_job_id() == "slurm:40_1"
    for name in SCHEDULER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "1234")
    assert restart.scheduler_job_id() == "local:1234"


def test_only_the_job_that_claimed_a_folder_restarts_in_it(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert not restart.is_restart(tmp_path)
    restart.claim(tmp_path / "job")
    assert restart.is_restart(tmp_path / "job")
    monkeypatch.setenv("SLURM_JOB_ID", "8")  # another job, another sweep
    assert not restart.is_restart(tmp_path / "job")
    (tmp_path / "job" / restart.JOB_REF).write_text("not json")
    assert not restart.is_restart(tmp_path / "job")
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    monkeypatch.delenv("SLURM_JOB_ID")
    restart.claim(tmp_path / "plain")  # outside a scheduler job nothing is written
    assert not (tmp_path / "plain").exists()


def test_a_restart_resumes_from_its_checkpoint_or_starts_over(
    tiny_config: Any, tmp_path: Path
) -> None:
    cfg = tiny_config()
    again = restart.continued(cfg, tmp_path)
    assert again.resume is None and again.overwrite  # killed before its first checkpoint
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    again = restart.continued(cfg, tmp_path)
    assert again.resume == str(tmp_path / "checkpoint.pt") and not again.overwrite
