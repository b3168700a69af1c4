"""Hydra multiruns on a real single-node SLURM cluster (.ci/slurm.sh starts one), through
Hydra's submitit launcher and conf/hydra/launcher/slurm.yaml.

A 4-job sweep is one MLflow parent with 4 children holding full metric histories; a job
preempted the way submitit expects (USR2) and one requeued from outside (`scontrol requeue`:
SIGTERM, then SIGKILL) each resume from their own checkpoint and end bit-identical to the same
jobs run without interruption, with every metric once in one MLflow run each.

Skipped only where SLURM is absent and CI is unset; in CI a missing cluster fails.
"""

from __future__ import annotations

import csv
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import BIN, command_env, new_store, require_slurm, run
from trpo_pipeline import tracking
from trpo_pipeline.launch.restart import JOB_REF

TINY = [
    "train.total_steps=1024",
    "algo.steps_per_update=256",
    "algo.num_envs=4",
    "policy.hidden_sizes=[16]",
    "policy.critic_hidden_sizes=[16]",
    "train.checkpoint_every=1",
    "train.progress=false",
    "tracking.log_model=false",
]
# Long enough (about 10 s a job here) to be caught mid-training; a checkpoint every 3 updates,
# so a restart drops rows (and MLflow already holds metrics) written after its checkpoint.
LONGER = [
    "train.total_steps=120000",  # a few seconds of training: a signal lands mid-way
    "algo.steps_per_update=256",
    "algo.num_envs=4",
    "policy.hidden_sizes=[16]",
    "policy.critic_hidden_sizes=[16]",
    "train.checkpoint_every=3",
    "train.progress=false",
    "tracking.log_model=false",
]
TIMING = {"time_s", "steps_per_s"}


WITHOUT_BUDGET = [o for o in LONGER if not o.startswith("train.total_steps=")]


def longer(total_steps: int) -> list[str]:
    """LONGER with another budget."""
    return [*WITHOUT_BUDGET, f"train.total_steps={total_steps}"]


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    require_slurm()


def runs_of(uri: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("trpo-pipeline")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def curve(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "learning_curve.csv").open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def rows(run_dir: Path) -> int:
    path = run_dir / "learning_curve.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def job_dir(sweep: Path, seed: int) -> Path:
    """The folder of the sweep's job with ``seed`` (Hydra names it after the job's overrides)."""
    (found,) = [d for d in sweep.iterdir() if f",seed={seed}," in f",{d.name},"]
    return found


def job_started(sweep: Path, seed: int) -> bool:
    return sweep.is_dir() and any(
        (d / JOB_REF).is_file() for d in sweep.iterdir() if f",seed={seed}," in f",{d.name},"
    )


def assert_each_metric_once(uri: str, run_id: str, run_dir: Path) -> None:
    """Every per-update key holds exactly one value per update, at the curve's env steps."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    steps = [int(r["env_steps"]) for r in curve(run_dir)]
    for key in ("train/kl", "train/episode_return", "train/update", "train/time_s"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == steps, key


def sweep_command(tmp_path: Path, sweep: Path, overrides: list[str]) -> list[str]:
    return [str(BIN / "trpo-train"), "-m", *overrides, f"hydra.sweep.dir={sweep}"]


def test_a_sweep_is_a_job_array_with_a_child_run_per_job(tmp_path: Path) -> None:
    uri = new_store(tmp_path / "store")
    env = command_env({"MLFLOW_TRACKING_URI": uri})
    sweep = tmp_path / "sweep"
    argv = sweep_command(
        tmp_path, sweep, ["hydra/launcher=slurm", "seed=0,1", "algo.max_kl=0.005,0.01", *TINY]
    )
    run(argv, tmp_path, env, timeout=300)

    runs = runs_of(uri)
    (parent,) = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    kids = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    assert len(kids) == 4 == len(runs) - 1
    assert parent.info.status == "FINISHED"
    assert all(k.info.status == "FINISHED" for k in kids)
    assert {(k.data.params["seed"], k.data.params["algo.max_kl"]) for k in kids} == {
        ("0", "0.005"),
        ("0", "0.01"),
        ("1", "0.005"),
        ("1", "0.01"),
    }
    for kid in kids:  # each job ran as a SLURM array task, its history complete
        folder = sweep / kid.info.run_name
        assert tracking.read_ref(folder / JOB_REF)["job_id"].startswith("slurm:")
        assert tracking.read_ref(folder / tracking.RUN_REF)["run_id"] == kid.info.run_id
        assert_each_metric_once(uri, kid.info.run_id, folder)


def wait_for(ready: Any, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stdout.read()[-6000:] if proc.stdout else ""
        assert time.monotonic() < deadline, "timed out waiting for the SLURM jobs"
        time.sleep(0.1)


def _signal_mid_training(folder: Path, signal: list[str], proc: subprocess.Popen) -> int:
    """Once the job writing ``folder`` is some updates in, signal it; the rows it had then."""
    deadline = time.monotonic() + 240
    while rows(folder) < 12 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the multirun ended before its job could be signalled"
    job_id = tracking.read_ref(folder / JOB_REF)["job_id"].removeprefix("slurm:")
    subprocess.run([*signal, job_id], check=True, capture_output=True)
    return rows(folder)


def test_preempted_and_requeued_jobs_end_bit_identical(tmp_path: Path) -> None:
    uri = new_store(tmp_path / "store")
    env = command_env({"MLFLOW_TRACKING_URI": uri})
    sweep = tmp_path / "sweep"
    argv = sweep_command(tmp_path, sweep, ["hydra/launcher=slurm", "seed=0,1", *LONGER])
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for seed in (0, 1):  # both jobs started
            wait_for(lambda s=seed: job_started(sweep, s), proc)
        at_usr2 = _signal_mid_training(job_dir(sweep, 0), ["scancel", "--signal=USR2"], proc)
        at_requeue = _signal_mid_training(job_dir(sweep, 1), ["scontrol", "requeue"], proc)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-6000:]

    reference = tmp_path / "reference"  # the same jobs, never interrupted (basic launcher)
    ref_env = command_env({"MLFLOW_TRACKING_URI": new_store(tmp_path / "ref-store")})
    run(sweep_command(tmp_path, reference, ["seed=0,1", *LONGER]), tmp_path, ref_env)

    runs = runs_of(uri)
    assert len(runs) == 3  # the parent and one child per job: a restart adds no run
    for seed, rows_at_signal in ((0, at_usr2), (1, at_requeue)):
        folder, ref = job_dir(sweep, seed), job_dir(reference, seed)
        assert rows_at_signal < rows(folder), "the job was signalled after it had finished"
        assert (folder / "checkpoint.pt").read_bytes() == (ref / "checkpoint.pt").read_bytes()
        assert curve(folder) == curve(ref)
        (child,) = [r for r in runs if r.info.run_name == folder.name]
        assert child.info.status == "FINISHED"
        assert_each_metric_once(uri, child.info.run_id, folder)
    # SLURM did requeue both (the accounting shows the first attempt of each as REQUEUED).
    array_id = tracking.read_ref(job_dir(sweep, 0) / JOB_REF)["job_id"].split(":")[1]
    states = subprocess.run(
        ["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", array_id.split("_")[0]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {f"{array_id.split('_')[0]}_{i}|REQUEUED" for i in (0, 1)} <= set(states)


def _jobs_known() -> int:
    """Jobs SLURM has accounted so far (those that ran, and those queued now)."""
    listed = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-o", "JobID", "-S", "2000-01-01"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(listed.split())


@pytest.mark.parametrize(
    ("override", "key"),
    [("algo.max_kl=0.01,-1", "algo.max_kl"), ("hydra.launcher.mem_gb=lots", "mem_gb")],
)
def test_every_job_is_checked_before_anything_is_submitted(
    tmp_path: Path, override: str, key: str
) -> None:
    before = _jobs_known()
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        sweep_command(tmp_path, sweep, ["hydra/launcher=slurm", "seed=0,1", override, *TINY]),
        cwd=tmp_path,
        env=command_env({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("trpo-train: error: ") and key in line
    assert not sweep.exists() and not (tmp_path / "mlflow.db").exists()
    assert _jobs_known() == before  # nothing reached SLURM


def test_a_job_that_fails_for_good_is_reported_and_the_sweep_fails(tmp_path: Path) -> None:
    """A job timed out once too often (no requeue left) fails; the other job still finishes."""
    uri = new_store(tmp_path / "store")
    env = command_env({"MLFLOW_TRACKING_URI": uri})
    sweep = tmp_path / "sweep"
    # Under 13 minutes submitit takes any USR2 for a timeout; with no timeouts allowed the job
    # is then not requeued but ends as failed.
    launcher = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=5"]
    # Long enough that the signal lands mid-training on a quiet machine too.
    argv = sweep_command(
        tmp_path,
        sweep,
        [*launcher, "hydra.launcher.max_num_timeout=0", "seed=0,1", *longer(400_000)],
    )
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: job_started(sweep, 0), proc)
        _signal_mid_training(job_dir(sweep, 0), ["scancel", "--signal=USR2"], proc)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-4000:]

    runs = runs_of(uri)
    (parent,) = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    status = {r.info.run_name: r.info.status for r in runs if r is not parent}
    failed, finished = job_dir(sweep, 0).name, job_dir(sweep, 1).name
    assert status == {failed: "FAILED", finished: "FINISHED"}
    assert parent.info.status == "FAILED"
    assert "multirun: 1 job(s) did not finish" in out
    assert f"FAILED   {failed}" in out and finished not in out.split("did not finish")[1]


def test_a_cancelled_job_has_its_run_closed_and_the_multirun_waits_for_the_rest(
    tmp_path: Path,
) -> None:
    """`scancel` ends job 0 with SIGKILL after KillWait: Hydra's launcher gives up on the sweep
    there; the multirun waits for job 1, then closes job 0's run KILLED and its parent."""
    uri = new_store(tmp_path / "store")
    env = command_env({"MLFLOW_TRACKING_URI": uri})
    sweep = tmp_path / "sweep"
    # Job 0 trains on through KillWait (submitit lets SIGTERM pass): it must not end first; job
    # 1 is still training when job 0 is killed.
    budgets = "train.total_steps=4000000,800000"
    argv = sweep_command(
        tmp_path, sweep, ["hydra/launcher=slurm", "seed=0", budgets, *WITHOUT_BUDGET]
    )
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        long_job = "*train.total_steps=4000000*"
        wait_for(lambda: any((d / JOB_REF).is_file() for d in sweep.glob(long_job)), proc)
        (cancelled,) = sweep.glob(long_job)
        _signal_mid_training(cancelled, ["scancel"], proc)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-4000:]

    runs = runs_of(uri)
    (parent,) = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    status = {r.info.run_name: r.info.status for r in runs if r is not parent}
    finished = next(n for n in status if n != cancelled.name)
    assert status == {cancelled.name: "KILLED", finished: "FINISHED"}
    assert parent.info.status == "FAILED"
    assert all(r.info.end_time is not None for r in runs)
    assert "multirun: waiting for the 1 job(s) still queued or running" in out
    (child,) = [r for r in runs if r.info.run_name == cancelled.name]
    assert "multirun: 1 job(s) did not finish" in out
    assert f"KILLED   {child.info.run_name}  run {child.info.run_id}  (SLURM: CANCELLED)" in out
