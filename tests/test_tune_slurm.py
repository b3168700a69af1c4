"""trpo-tune -m: Optuna workers of one study as a SLURM job array (.ci/slurm.sh starts the
cluster), sharing the study in a real PostgreSQL server (.ci/run starts it).

Two workers share a study; one is cancelled mid-trial (scancel: SIGTERM, then SIGKILL after
KillWait): its trial ends FAIL and is retried at once by the other worker with the same params,
the cap on finished trials holds, and no trial number is taken twice. Without a cluster: a
multirun that would not be workers of one study is refused before anything is submitted, and a
single worker SIGTERMed mid-trial re-queues its trial for the next run.

The cluster test is skipped only where SLURM or PostgreSQL is absent and CI is unset.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from pipeline_support import (
    BIN,
    POSTGRES_WORKER_PASSWORD,
    command_env,
    copy_conf,
    load_study,
    new_store,
    postgres_database,
    require_slurm,
    slurm_up,
    tune_budget,
)
from trpo_pipeline.cli import tune as tune_cli
from trpo_pipeline.config import ConfigError

STUDY = "shared"
# Trials of a few seconds (24,576 env steps, an evaluation every 2 updates of 512 steps): the
# trial seen RUNNING with an intermediate value is still running when its job is cancelled.
TRIALS = tune_budget(24576)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A copy of conf/: the tuned experiment is written there, not into the repository."""
    return copy_conf(tmp_path)


@pytest.fixture
def postgres_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with postgres_database(monkeypatch) as url:
        yield url


def _jobs_submitted_from(folder: Path) -> list[str]:
    """The SLURM jobs (of anyone: the cluster may be shared) submitted from ``folder``."""
    listed = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-o", "JobID,WorkDir", "-S", "2000-01-01"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [line.split("|")[0] for line in listed if line.split("|")[-1] == str(folder)]


def _running_trial(url: str) -> FrozenTrial | None:
    """A trial that a worker job is training and has already reported on."""
    try:
        trials = load_study(url, STUDY).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return None
    for trial in trials:
        if trial.state == TrialState.RUNNING and trial.intermediate_values:
            return trial  # (every trial of a worker job records the job: user attr job)
    return None


def _job_logs(tmp_path: Path) -> str:
    """The end of every worker's logs: what a failed wait shows."""
    logs = sorted((tmp_path / "runs" / "tune" / STUDY / ".submitit").glob("*/*_log.*"))
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)


def _in_queue(array_id: str) -> bool:
    """Some job of the array is still pending or running."""
    listed = subprocess.run(["squeue", "-h", "-j", array_id], capture_output=True, text=True)
    return bool(listed.stdout.strip())


@pytest.mark.slow  # two SLURM jobs training a few trials of a few seconds: 30-90 s
def test_a_cancelled_workers_trial_is_retried_by_the_other_and_the_cap_holds(
    postgres_url: str, conf: Path, tmp_path: Path
) -> None:
    require_slurm()
    env = command_env(
        {
            "TRPO_CONF_DIR": str(conf),
            "MLFLOW_TRACKING_URI": new_store(tmp_path / "store"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    cap = 3
    argv = [
        str(BIN / "trpo-tune"),
        "-m",
        "hydra/launcher=slurm",
        "tune.sampler.seed=1,2",
        *TRIALS,
        f"tune.storage.url={postgres_url}",
        f"tune.n_trials={cap}",
        f"tune.study_name={STUDY}",
        "tune.storage.heartbeat_interval=1",
        # Should the cancelled worker not re-queue its trial, the other one would after 20 s
        # without heartbeat: the test then fails on the cancelled worker's log, not a timeout.
        "tune.storage.grace_period=20",
        "tune.storage.max_retry=1",
    ]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 240
        lost = None
        while lost is None:
            assert proc.poll() is None, proc.communicate()[0][-6000:]
            assert time.monotonic() < deadline, "no worker ran a trial"
            lost = _running_trial(postgres_url)
            time.sleep(0.2)
        victim = lost.user_attrs["job"].removeprefix("slurm:")
        subprocess.run(["scancel", victim], check=True, capture_output=True)
        # Hydra's launcher collects results in array order: when task 0 is the one cancelled,
        # the multirun reports it at once while task 1 finishes the study.
        array_id, task = victim.split("_")
        deadline = time.monotonic() + 300
        while proc.poll() is None or _in_queue(array_id):
            assert time.monotonic() < deadline, _job_logs(tmp_path)
            time.sleep(0.5)
        out = proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    print(out)  # shown when the test fails

    # What the user sees: the study finished, but a job of the multirun did not (exit 1, as
    # for trpo-train -m), named with its SLURM state.
    assert proc.returncode == 1, out[-6000:]
    assert f"UncompletedJobError: Job {victim} (task: 0)" in out
    assert "(state: CANCELLED" in out
    assert POSTGRES_WORKER_PASSWORD not in out
    states = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    survivor = f"{array_id}_{1 - int(task)}"
    assert sorted(_jobs_submitted_from(tmp_path)) == [f"{array_id}_0", f"{array_id}_1"]
    assert f"{survivor}|COMPLETED" in states and f"{victim}|CANCELLED by 0" in " ".join(states)

    trials = load_study(postgres_url, STUDY).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == cap
    assert trials[lost.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.system_attrs["retry_history"] == [lost.number]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.params == lost.params and retry.number > lost.number
    assert retry.user_attrs["job"] == f"slurm:{survivor}"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    # The victim said so in its job logs, in the study's folder (the multirun's sweep folder).
    logs = tmp_path / "runs" / "tune" / STUDY / ".submitit" / victim
    assert (
        f"trial {lost.number}: this worker was stopped (scancel, a requeue, kill); marked "
        "failed and re-queued for another worker"
    ) in (logs / f"{victim}_0_log.out").read_text()
    assert (
        "trpo-tune: stopped by SIGTERM; the running trial is marked failed and re-queued"
        in (logs / f"{victim}_0_log.err").read_text()
    )

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("trpo-pipeline").experiment_id])
    (study_run,) = [r for r in runs if r.data.tags.get("tune_role") != "trial"]  # no multirun run
    assert study_run.data.tags["tune_role"] == "study"
    (lost_run,) = [r for r in runs if r.info.run_id == lost.user_attrs["mlflow_run_id"]]
    assert (lost_run.data.tags["trial_state"], lost_run.info.status) == ("failed", "FAILED")


PG_URL = "tune.storage.url=postgresql://trpo_worker@127.0.0.1:5432/study"  # never reached
SEEDS = ("-m", "hydra/launcher=slurm", "tune.sampler.seed=1,2")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ((*SEEDS, "algo.max_kl=0.01,0.02", PG_URL), "algo.max_kl"),
        (("-m", "hydra/launcher=slurm", "seed=0,1", PG_URL), "seed"),
        ((*SEEDS, "hydra.launcher.mem_gb=4,8", PG_URL), "hydra.launcher.mem_gb"),
        (SEEDS, "tune.storage.url"),  # the default SQLite file
        ((*SEEDS, "tune.storage.url=sqlite:///optuna.db"), "tune.storage.url"),
        ((*SEEDS, "tune.storage.url=journal:optuna.log"), "tune.storage.url"),
        (
            (*SEEDS, PG_URL, "tune.storage.heartbeat_interval=null"),
            "tune.storage.heartbeat_interval",
        ),
        (("-m", "hydra/launcher=slurm", "tune.sampler.seed=1,1", PG_URL), "tune.sampler.seed"),
    ],
)
def test_a_multirun_is_refused_unless_its_jobs_are_workers_of_one_study(
    overrides: tuple[str, ...], key: str, conf: Path, tmp_path: Path
) -> None:
    store = f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(ConfigError) as refused:
        tune_cli._check([*overrides, store], conf)
    assert refused.value.key == key


def test_a_refused_multirun_is_one_line_and_submits_nothing(conf: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [str(BIN / "trpo-tune"), "-m", "hydra/launcher=slurm", "seed=0,1", PG_URL],
        cwd=work,
        env=command_env(
            {"TRPO_CONF_DIR": str(conf), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/m.db"}
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        "trpo-tune: error: seed: trpo-tune -m runs workers of one study and sweeps only "
        "tune.sampler.seed (a seed per worker, e.g. tune.sampler.seed=1,2,3); give seed one value"
    ]
    assert list(work.iterdir()) == []  # no study folder, no MLflow store
    if slurm_up():
        assert _jobs_submitted_from(work) == []  # nothing reached SLURM


@pytest.mark.slow  # two trpo-tune runs, a trial and a half of a few seconds: 15-40 s
def test_a_sigtermed_worker_requeues_its_trial_and_the_next_run_retries_it(
    conf: Path, tmp_path: Path
) -> None:
    """The same on one machine, no cluster: SIGTERM (kill) mid-trial; the trial is FAIL, its
    retry WAITING with the same params; the same command runs the retry and ends the study."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    env = command_env(
        {
            "TRPO_CONF_DIR": str(conf),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [str(BIN / "trpo-tune"), *TRIALS, f"tune.storage.url={storage}", "tune.n_trials=1"]
    argv += [f"tune.study_name={STUDY}", "tune.pruner.name=none"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        lost = None
        while lost is None:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the trial never reported"
            lost = _running_trial(storage)
            time.sleep(0.2)
        first.terminate()  # SIGTERM
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, out + err
    assert (
        f"trial {lost.number}: this worker was stopped (scancel, a requeue, kill); marked "
        "failed and re-queued for another worker"
    ) in out
    assert "trpo-tune: stopped by SIGTERM; the running trial is marked failed and re-queued" in err
    failed, retry = load_study(storage, STUDY).trials
    assert (failed.number, failed.state, retry.state) == (
        lost.number,
        TrialState.FAIL,
        TrialState.WAITING,
    )
    assert retry.params == lost.params
    assert retry.system_attrs == {"failed_trial": lost.number, "retry_history": [lost.number]}

    second = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert second.returncode == 0, second.stdout + second.stderr
    failed, retry = load_study(storage, STUDY).trials  # the retry ran: no new trial
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
