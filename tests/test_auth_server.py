"""A team's tracking server: a real `mlflow server --app-name basic-auth` (deploy/mlflow-auth.ini)
started by tools/mlflow-team-server.sh as `make team-server` runs it, users created through its
API, permissions granted by an experiment's owner. Who may write records runs under their own
name; a refusal (wrong password, unknown user, read-only user, a user without a grant, no
credentials) stops trpo-train, the DVC train stage and trpo-tune in one line before anything is
written; the read-only user still reports and reproduces; no password reaches a file, a run, an
artifact, a trial or the terminal.

One server for the whole module. Without one (it cannot start here) the tests skip, unless CI
is set: there they fail.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import (
    BIN,
    REPO,
    command_env,
    copy_repository,
    credentials,
    free_port,
    new_store,
    run,
    start_team_server,
)
from trpo_pipeline import tracking
from trpo_pipeline.tracking.store import is_outage, refusal_status

ADMIN_PASSWORD = "Adm-Q7v2Lx9Tk4"
PASSWORDS = {  # each appears nowhere else: searched for, byte by byte
    "alice": "Pw-Alice-3Fq8Zr",  # the experiment's owner (it creates it: MANAGE)
    "carol": "Pw-Carol-9Kd2Wm",  # granted EDIT by alice
    "bob": "Pw-Bob-5Hn7Yc1",  # granted READ by alice
    "dave": "Pw-Dave-2Tg6Vs",  # granted nothing: NO_PERMISSIONS (deploy/mlflow-auth.ini)
}
EXPERIMENT = "team"
# A tiny training: 2 updates of 256 steps, a 16-unit policy and critic.
TRAIN = [
    "train.total_steps=512",
    "algo.steps_per_update=256",
    "algo.num_envs=4",
    "policy.hidden_sizes=[16]",
    "policy.critic_hidden_sizes=[16]",
    "evaluate.episodes=2",
    "train.progress=false",
    "tracking.log_model=false",
]
TUNE = [
    *(o for o in TRAIN if not o.startswith("train.total_steps=")),
    "train.total_steps=1024",
    "tune.n_trials=2",
    "tune.report_every=2",
    "tune.report_episodes=2",
    "tune.study_name=team",
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``: its name, and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        )
        for p in sorted(folder.rglob("*"))
    }


def as_env(user: str | None, password: str | None = None, **extra: str) -> dict[str, str]:
    """A command's environment with MLflow's credential variables (and only those) set."""
    creds = {} if user is None else {"MLFLOW_TRACKING_USERNAME": user}
    if password is not None:
        creds["MLFLOW_TRACKING_PASSWORD"] = password
    return command_env(creds | extra)


def _start(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    return start_team_server(
        tmp,
        {
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret-key",
            "TEAM_STORE": new_store(tmp / "store"),
            "TEAM_PORT": str(port),
            "TEAM_WORKERS": "1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # 2 processes, not 15
        },
    )


def _wait_for(proc: subprocess.Popen[bytes], base: str, log: Path) -> str | None:
    """None once the server answers /health, else why it did not come up."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"mlflow server exited {proc.returncode}: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5):
                return None
        except OSError:
            time.sleep(0.5)
    return "mlflow server did not answer /health in 180 s"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The auth server, its users (created by the admin) and the experiment: alice creates it
    (she owns it) and grants carol EDIT and bob READ, through MLflow's permission API."""
    tmp = tmp_path_factory.mktemp("auth-server")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(tmp, port)
    try:
        problem = _wait_for(proc, base, tmp / "server.log")
        if problem is not None:
            if os.environ.get("CI"):
                pytest.fail(problem)
            pytest.skip(problem)
        from mlflow import MlflowClient
        from mlflow.server.auth.client import AuthServiceClient

        with credentials("admin", ADMIN_PASSWORD):
            for user, password in PASSWORDS.items():
                AuthServiceClient(base).create_user(user, password)
        with credentials("alice", PASSWORDS["alice"]):
            experiment_id = MlflowClient(base).create_experiment(EXPERIMENT)
            owner = AuthServiceClient(base)
            owner.grant_user_permission("carol", "experiment", experiment_id, "EDIT")
            owner.grant_user_permission("bob", "experiment", experiment_id, "READ")
        yield {"tmp": tmp, "uri": base, "experiment_id": experiment_id}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def runs_of(server: dict[str, Any]) -> list[Any]:
    from mlflow import MlflowClient

    with credentials("alice", PASSWORDS["alice"]):
        return MlflowClient(server["uri"]).search_runs([server["experiment_id"]])


def new_work(folder: Path) -> Path:
    """A project folder: conf/ (so trpo-tune can write its tuned config) and nothing else."""
    shutil.copytree(REPO / "conf", folder / "conf", ignore=shutil.ignore_patterns("tuned_*"))
    return folder


def track(server: dict[str, Any]) -> list[str]:
    return [
        "tracking=auth_server",
        f"tracking.uri={server['uri']}",
        f"tracking.experiment={EXPERIMENT}",
    ]


@pytest.fixture(scope="module")
def recorded(server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One trpo-train run of carol's (EDIT), her credentials in ~/.mlflow/credentials."""
    work = new_work(tmp_path_factory.mktemp("carol"))
    home = work / "home"
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = carol\n"
        f"mlflow_tracking_password = {PASSWORDS['carol']}\n"
    )
    out = work / "run"
    done = run(
        [str(BIN / "trpo-train"), *TRAIN, *track(server), f"hydra.run.dir={out}"],
        work,
        as_env(None, HOME=str(home)),
    )
    return {"run_id": tracking.read_ref(out / tracking.RUN_REF)["run_id"], "done": done}


# --- refusals are not outages (in-process) -------------------------------------------------------


def test_a_refusal_is_never_an_outage() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

    text = "API request to endpoint /api/2.0/mlflow/runs/create failed with error code {} != 200"
    for status, code in ((401, UNAUTHENTICATED), (403, PERMISSION_DENIED)):
        err = MlflowException(text.format(status), error_code=code)
        assert refusal_status(err) == status and not is_outage(err)
        assert refusal_status(RuntimeError(text.format(status))) == status
    outage = MlflowException(text.format(503))
    assert refusal_status(outage) is None and is_outage(outage)


# --- who may write, and who is refused -----------------------------------------------------------


@pytest.mark.slow  # an auth server and a tiny training: 20-60 s
def test_an_edit_user_records_a_run_under_their_own_name(server, recorded) -> None:
    from mlflow import MlflowClient

    with credentials("carol", PASSWORDS["carol"]):
        got = MlflowClient(server["uri"]).get_run(recorded["run_id"])
    assert got.info.status == "FINISHED" and got.info.experiment_id == server["experiment_id"]
    assert got.info.user_id == "carol" and got.data.tags["mlflow.user"] == "carol"
    assert "train/kl" in got.data.metrics
    assert got.data.params["tracking.uri"] == server["uri"]


REFUSALS = {  # user, password in the environment, what the line says
    "wrong password": ("alice", "not-alices-password", "refused user 'alice': not authenticated"),
    "unknown user": ("mallory", "Pw-Mallory-1", "refused user 'mallory': not authenticated"),
    "read-only user": (
        "bob",
        PASSWORDS["bob"],
        f"refused user 'bob': may not write to experiment '{EXPERIMENT}'",
    ),
    "no grant": (
        "dave",
        PASSWORDS["dave"],
        "refused user 'dave': permission denied (HTTP 403) to read or create experiment "
        f"'{EXPERIMENT}'",
    ),
    "no credentials": (None, None, "refused a request without credentials: not authenticated"),
}


@pytest.mark.slow  # 17 refused commands, a few seconds each
def test_refusals_stop_every_command_before_training_and_change_nothing(server, tmp_path) -> None:
    work = new_work(tmp_path / "work")
    # the DVC train stage reads params.yaml: the team server, the tiny budget
    run([str(BIN / "trpo-params"), *TRAIN, *track(server)], work, command_env())
    commands = {
        "trpo-train": [str(BIN / "trpo-train"), *TRAIN, *track(server)],
        "trpo-train -m": [str(BIN / "trpo-train"), "-m", *TRAIN, *track(server), "seed=0,1"],
        "train stage": [sys.executable, "-m", "trpo_pipeline.stages.train"],
        "trpo-tune": [str(BIN / "trpo-tune"), *TUNE, *track(server)],
    }
    runs_before = len(runs_of(server))
    before = snapshot(work)
    tried = 0
    for case, (user, password, says) in REFUSALS.items():
        for name, argv in commands.items():
            if name == "trpo-train -m" and case != "read-only user":
                continue  # a multirun is checked job by job like one run: once is enough
            done = subprocess.run(
                argv, cwd=work, env=as_env(user, password), capture_output=True, text=True
            )
            where = f"{case}, {name}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            assert done.returncode == 2, where
            assert done.stdout == "" and len(done.stderr.splitlines()) == 1, where
            assert f"the MLflow server {server['uri']} {says}" in done.stderr, where
            assert snapshot(work) == before, where
            tried += 1
    # a password inside the URI is sent like the environment's, and masked in the line
    uri = f"http://alice:{PASSWORDS['bob']}@127.0.0.1:{server['uri'].rsplit(':', 1)[1]}"
    done = subprocess.run(
        [str(BIN / "trpo-train"), *TRAIN, *track(server), f"tracking.uri={uri}"],
        cwd=work, env=as_env(None), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and PASSWORDS["bob"] not in done.stdout + done.stderr
    assert "http://alice:***@127.0.0.1" in done.stderr and "not authenticated" in done.stderr
    assert snapshot(work) == before
    assert tried + 1 == 17  # 5 cases x 3 commands, a multirun, a password in the URI
    assert len(runs_of(server)) == runs_before  # nothing reached the server either


@pytest.mark.slow  # a report and a re-run of carol's run, as bob (READ)
def test_a_read_only_user_reports_and_reproduces_the_teams_runs(server, recorded, tmp_path) -> None:
    env = as_env("bob", PASSWORDS["bob"])
    done = run(
        [str(BIN / "trpo-report"), "--experiment", EXPERIMENT, "--tracking-uri", server["uri"],
         "--out", str(tmp_path / "report")],
        tmp_path,
        env,
    )  # fmt: skip
    assert (tmp_path / "report" / "report.html").is_file(), done.stdout
    done = run(
        [str(BIN / "trpo-reproduce"), recorded["run_id"], "--tracking-uri", server["uri"]],
        tmp_path,
        env,
    )
    assert "result: exact match" in done.stdout


# --- no password anywhere ------------------------------------------------------------------------


def files_holding(folder: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    ]


@pytest.mark.slow  # dvc repro, a multirun of 2, a study of 2 trials, a report: 2-5 min
def test_no_password_reaches_a_file_a_run_an_artifact_a_trial_or_the_terminal(
    server, tmp_path, monkeypatch
) -> None:
    import optuna
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    secret = PASSWORDS["carol"]
    work = copy_repository(tmp_path / "repo")  # a git repository with DVC: `dvc repro` runs
    env = as_env("carol", secret, PYTHONUNBUFFERED="1")
    outputs: list[str] = []
    commands = [
        [str(BIN / "trpo-params"), *TRAIN, *track(server)],
        [str(BIN / "dvc"), "repro"],  # train -> evaluate -> report, dvc.lock, DVC's cache
        [str(BIN / "trpo-train"), "-m", *TRAIN, *track(server), "seed=0,1", "name=multi"],
        [str(BIN / "trpo-tune"), *TUNE, *track(server)],
        [str(BIN / "trpo-report"), "--experiment", EXPERIMENT, "--tracking-uri", server["uri"],
         "--out", str(work / "report")],
    ]  # fmt: skip
    for argv in commands:
        done = run(argv, work, env)
        outputs += [done.stdout, done.stderr]

    assert [o for o in outputs if secret in o] == []
    assert files_holding(work, secret) == ["tests/test_auth_server.py"]  # the copy of this file
    assert files_holding(server["tmp"], secret) == []  # the stores, artifacts, the server's log

    with credentials("carol", secret):
        client = MlflowClient(server["uri"])
        runs = client.search_runs([server["experiment_id"]])
        roles = {r.data.tags.get("tune_role") or r.data.tags.get("launcher") for r in runs}
        assert {"dvc", "hydra", "study", "trial"} <= roles
        for r in runs:
            assert secret not in str(r.data.params) + str(r.data.tags) + str(r.info.run_name)
            assert r.info.user_id == "carol"
            artifacts = Path(client.download_artifacts(r.info.run_id, "", str(tmp_path / "a")))
            assert files_holding(artifacts, secret) == []
            shutil.rmtree(artifacts)

    assert (work / "dvc.lock").is_file() and (work / "outputs" / "report").is_dir()
    storage = f"sqlite:///{work / 'optuna.db'}"
    study = optuna.load_study(study_name="team", storage=storage)
    assert len(study.trials) == 2
    attrs = [study.user_attrs, *(a for t in study.trials for a in (t.user_attrs, t.params))]
    assert any("mlflow_run_id" in a for a in attrs)  # the attributes a trial gets are there
    assert secret not in str(attrs)  # (and optuna.db, a file of the work folder, was searched)
