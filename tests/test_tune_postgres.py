"""Several trpo-tune workers sharing one study in a real PostgreSQL server.

The server is the one .ci/run installs and starts; TRPO_TEST_POSTGRES_URL names a role that
may create databases (default postgresql://trpo:trpo@127.0.0.1:5432/postgres). Each test gets
a database of its own, dropped afterwards. Without a reachable server the tests skip, unless
CI is set: there they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline_support import (
    POSTGRES_ADMIN_URL,
    POSTGRES_WORKER,
    POSTGRES_WORKER_PASSWORD,
    copy_conf,
    load_study,
    postgres_database,
    tune_budget,
)
from trpo_pipeline.config import StorageConfig

ADMIN_URL = POSTGRES_ADMIN_URL
WORKER, WORKER_PASSWORD = POSTGRES_WORKER, POSTGRES_WORKER_PASSWORD
BIN = Path(sys.executable).parent
TINY = tune_budget()


@pytest.fixture
def postgres_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database on the test server, for the workers' least-privilege role."""
    with postgres_database(monkeypatch) as url:
        yield url


def _load(url: str) -> optuna.Study:
    return load_study(url, "shared")


def _running_trial_of(url: str, pid: int) -> optuna.trial.FrozenTrial | None:
    """A trial that worker ``pid`` is training and has already reported on."""
    try:
        trials = _load(url).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return None
    for trial in trials:
        if (
            trial.state == TrialState.RUNNING
            and trial.user_attrs.get("worker", "").endswith(f":{pid}")
            and trial.intermediate_values
        ):
            return trial
    return None


@pytest.mark.slow  # two worker processes and a heartbeat grace period: 20-60 s
def test_two_workers_share_a_study_and_a_killed_workers_trial_is_retried(
    postgres_url: str, tmp_path: Path
) -> None:
    conf = copy_conf(tmp_path)
    env = os.environ | {
        "TRPO_CONF_DIR": str(conf),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "PYTHONUNBUFFERED": "1",
    }
    cap = 5
    # Trials of a few seconds, so that the trial seen RUNNING is still running when its worker
    # is killed (with TINY's one-second trials it could finish in between on a quiet machine).
    argv = [
        str(BIN / "trpo-tune"),
        *tune_budget(24576),
        f"tune.storage.url={postgres_url}",
        f"tune.n_trials={cap}",
        "tune.study_name=shared",
        "tune.storage.heartbeat_interval=1",
        "tune.storage.grace_period=3",
        "tune.storage.max_retry=1",
    ]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workers = [
        subprocess.Popen(
            [*argv, f"tune.sampler.seed={seed}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in (1, 2)
    ]
    survivor, victim = workers
    try:
        deadline = time.monotonic() + 120
        lost = None
        while lost is None:
            assert victim.poll() is None, victim.communicate()[0]
            assert time.monotonic() < deadline, "the second worker never ran a trial"
            lost = _running_trial_of(postgres_url, victim.pid)
            time.sleep(0.2)
        victim.kill()  # SIGKILL mid-trial: no clean-up, its heartbeat just stops
        victim.wait(timeout=30)
        out, _ = survivor.communicate(timeout=240)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    print(out)  # shown when the test fails
    assert survivor.returncode == 0, out
    assert WORKER_PASSWORD not in out  # nor in any file the workers wrote:
    assert [
        p for p in tmp_path.rglob("*") if p.is_file() and WORKER_PASSWORD.encode() in p.read_bytes()
    ] == []

    trials = _load(postgres_url).trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == cap
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials if "worker" in t.user_attrs}
    assert pids == {str(survivor.pid), str(victim.pid)}  # both workers ran trials
    assert trials[lost.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.params == lost.params and retry.number > lost.number
    assert retry.user_attrs["worker"].endswith(f":{survivor.pid}")
    assert f"trial {lost.number} lost its worker: marked failed and re-queued" in out
    assert [t.state for t in trials].count(TrialState.RUNNING) == 0

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("trpo-pipeline").experiment_id])
    assert len([r for r in runs if r.data.tags.get("tune_role") == "study"]) == 1
    (lost_run,) = [r for r in runs if r.info.run_id == lost.user_attrs["mlflow_run_id"]]
    assert (lost_run.data.tags["trial_state"], lost_run.info.status) == ("failed", "FAILED")
    # MLflow holds one run per trial that ran, no more (no duplicate) and no fewer (none lost).
    by_trial = {t.user_attrs["mlflow_run_id"]: t for t in trials if "mlflow_run_id" in t.user_attrs}
    trial_runs = [r for r in runs if r.data.tags.get("tune_role") == "trial"]
    assert sorted(r.info.run_id for r in trial_runs) == sorted(by_trial)
    for r in trial_runs:
        trial = by_trial[r.info.run_id]
        assert r.data.tags["trial_number"] == str(trial.number)
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}
        assert r.data.tags["trial_state"] == state.get(trial.state, "failed")


def test_the_workers_role_is_least_privileged_and_a_pgpass_file_replaces_pgpassword(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    from trpo_pipeline.tune.storage import open_storage

    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:{WORKER}:{WORKER_PASSWORD}\n")
    pgpass.chmod(0o600)  # libpq ignores a .pgpass that others may read
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles"
            " WHERE rolname = current_user"
        )
        assert cur.fetchone() == (False, False, False, False)
    conn.close()
    storage = open_storage(StorageConfig(url=postgres_url, heartbeat_interval=None))
    study = optuna.create_study(study_name="pgpass", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2

    from trpo_pipeline.config import ConfigError

    pgpass.write_text(f"*:*:*:{WORKER}:not-the-password\n")
    with pytest.raises(ConfigError) as refused:
        open_storage(StorageConfig(url=postgres_url, heartbeat_interval=None))
    assert "password authentication failed" in str(refused.value)
    assert WORKER_PASSWORD not in str(refused.value)


MLFLOW_ROLE = os.environ.get("TRPO_TEST_POSTGRES_MLFLOW", "trpo_mlflow")
MLFLOW_PASSWORD = os.environ.get("TRPO_TEST_POSTGRES_MLFLOW_PASSWORD", "Pg-Mlflow-4Rz7")


@pytest.mark.slow  # MLflow's schema migrations on PostgreSQL: 10-60 s
def test_the_mlflow_role_owns_its_database_and_runs_mlflows_migrations(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/security.md's role for the tracking server's backend store: no superuser, it owns
    its database (CREATE DATABASE ... OWNER, run by the DBA), MLflow creates its schema there.
    (``postgres_url``: for its skip-or-fail when PostgreSQL is not there.)"""
    import psycopg2
    from mlflow import MlflowClient
    from sqlalchemy.engine import make_url

    name = f"trpo_mlflow_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(ADMIN_URL, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" OWNER "{MLFLOW_ROLE}"')
        cur.execute(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
    try:
        monkeypatch.setenv("PGPASSWORD", MLFLOW_PASSWORD)
        host = make_url(ADMIN_URL)
        uri = f"postgresql+psycopg2://{MLFLOW_ROLE}@{host.host}:{host.port or 5432}/{name}"
        client = MlflowClient(tracking_uri=uri)  # creates and migrates the schema
        run = client.create_run(client.create_experiment("least-privilege"))
        client.log_metric(run.info.run_id, "x", 1.0, step=0)
        assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}
        with psycopg2.connect(make_url(uri).set(drivername="postgresql").render_as_string(
            hide_password=False
        )) as conn, conn.cursor() as cur:  # fmt: skip
            cur.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
                " WHERE rolname = current_user"
            )
            assert cur.fetchone() == (False, False, False)
        conn.close()
    finally:
        with admin.cursor() as cur:  # FORCE: MLflow's engine keeps its connections open
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
