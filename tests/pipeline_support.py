"""Helpers for the pipeline tests (DVC, MLflow, reproduce, SLURM, PostgreSQL): tiny budgets, tmp
stores, commands, and the test cluster and database server.

Every test writes into tmp folders only: MLflow stores are SQLite files under tmp_path, passed
through MLFLOW_TRACKING_URI, and the DVC tests work on a copy of the repository. A PostgreSQL
test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
TEAM_SERVER = REPO / "tools" / "mlflow-team-server.sh"

# Trains in a couple of seconds: 2048 env steps, batches of 512 over 4 envs, 3 eval episodes.
TINY = [
    "train.total_steps=2048",
    "algo.steps_per_update=512",
    "algo.num_envs=4",
    "evaluate.episodes=3",
    "train.progress=false",
]

STAGES = ("train", "evaluate", "report")  # dvc.yaml's, in order
# Every per-update metric a run records, as train/<name> (the learning curve's columns, with
# surrogate_improvement added): written out here, not read from the code, so a lost one fails.
TRAIN_METRICS = (
    "episode_return",
    "episode_length",
    "episodes",
    "kl",
    "surrogate_before",
    "surrogate_after",
    "surrogate_improvement",
    "line_search_steps",
    "line_search_accepted",
    "cg_residual",
    "step_size",
    "grad_norm",
    "entropy",
    "value_loss",
    "explained_variance",
    "steps_per_s",
    "time_s",
)


def tune_budget(total_steps: int = 4096) -> list[str]:
    """A study's trials at a tiny budget: updates of 512 env steps over 4 envs, an evaluation
    (3 episodes) every 2 updates; 4096 steps (8 updates) take about a second."""
    return [
        f"train.total_steps={total_steps}",
        "algo.steps_per_update=512",
        "algo.num_envs=4",
        "evaluate.episodes=3",
        "tune.report_every=2",
        "tune.report_episodes=3",
        "tracking.log_model=false",
    ]


def copy_conf(dest: Path) -> Path:
    """A copy of conf/ in ``dest`` (without tuned experiments): trpo-tune writes its tuned
    experiment there, not into the repository (point TRPO_CONF_DIR at it)."""
    conf = dest / "conf"
    shutil.copytree(REPO / "conf", conf, ignore=shutil.ignore_patterns("tuned_*"))
    return conf


_template: Path | None = None
# Untracked folders that are not the project (another virtualenv, generated reports).
_NOT_COPIED = (".venv", "reports/")


def new_store(folder: Path) -> str:
    """A SQLite MLflow store in ``folder`` (a copy of one migrated once per test session:
    creating MLflow's schema takes seconds)."""
    global _template
    if _template is None:
        from mlflow import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()
        _template = path
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    shutil.copyfile(_template, db)
    return f"sqlite:///{db}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_env(extra: Mapping[str, str] | None = None, *, drop: Sequence[str] = ()) -> dict:
    """The environment for a pipeline command: this venv first on PATH (DVC stages call
    `python`, DVC's queue calls `dvc`), no DVC/Hydra variables leaking in from outside."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DVC_", "MLFLOW_", "TRPO_")) and k not in drop
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return env | dict(extra or {})


def run(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output when it fails."""
    proc = subprocess.run(
        list(argv), cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(argv)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-6000:]}"
    )
    return proc


def copy_repository(dest: Path) -> Path:
    """The repository's files (tracked, plus new ones git does not ignore) in a fresh git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if name.startswith(_NOT_COPIED):
            continue
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git(dest, "init", "-q", "-b", "main")
    commit_all(dest, "copy of the repository")
    return dest


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


def ran_stages(output: str) -> list[str]:
    """The stages of dvc.yaml that a `dvc repro` or `dvc exp run` output says it ran."""
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def exp_sets(*overrides: str) -> list[str]:
    """`dvc exp run` arguments for the tiny budget plus ``overrides``: with Hydra composition,
    -S recomposes params.yaml from conf/, so the tiny budget is set again each time."""
    return [arg for override in (*TINY, *overrides) for arg in ("-S", override)]


def repro_tiny(repo: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """In a repository copy: params.yaml at the tiny budget, committed; `dvc repro`; dvc.lock
    committed (the results of HEAD, as a user commits them). Returns the repro's output."""
    run([str(BIN / "trpo-params"), *TINY], repo, env)
    commit_all(repo, "tiny budget")
    done = run([DVC, "repro"], repo, env)
    git(repo, "add", "dvc.lock")
    git(repo, "commit", "-q", "-m", "pipeline results")
    return done


@contextlib.contextmanager
def credentials(user: str, password: str) -> Iterator[None]:
    """MLflow's client in this process talks as ``user`` (as a command's environment would)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_team_server(folder: Path, settings: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """tools/mlflow-team-server.sh as `make team-server` runs it (MLFLOW: this venv's), in
    ``folder``/team unless ``settings`` name TEAM_DIR, its output in ``folder``/server.log."""
    env = command_env({"MLFLOW": str(BIN / "mlflow"), "TEAM_DIR": str(folder / "team"), **settings})
    with (folder / "server.log").open("w") as log:  # the server writes to its own copy
        return subprocess.Popen(
            ["bash", str(TEAM_SERVER)],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the server and its workers, stopped together
        )


@contextlib.contextmanager
def mlflow_server(store_uri: str, folder: Path) -> Iterator[str]:
    """`mlflow server` on ``store_uri`` at 127.0.0.1 and a free port; yields its address.

    One worker and no job runner: it answers in about 10 s instead of 50 on two cores.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = command_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", store_uri,
            "--artifacts-destination", str(folder / "server-artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    with (folder / "server.log").open("w") as log:
        # its workers form one process group, stopped together
        proc = subprocess.Popen(
            argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(base, proc, folder / "server.log")
            yield base
        finally:
            stop_group(proc)


def wait_until_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until the server at ``base`` answers /health; fails with its log's tail if it dies."""
    deadline = time.monotonic() + timeout
    while not _answers(f"{base}/health"):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{base} did not come up in {timeout:.0f} s"
        time.sleep(1)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True and its workers: SIGTERM, then
    SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def slurm_up() -> bool:
    """A SLURM node answers and takes jobs (idle, mixed or allocated)."""
    if shutil.which("sinfo") is None:
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout
    return any(s.strip().rstrip("*") in {"idle", "mix", "alloc"} for s in states.splitlines())


def require_slurm() -> None:
    """Skip the test where no SLURM cluster is up, unless CI is set: there it fails."""
    if slurm_up():
        return
    if os.environ.get("CI"):
        pytest.fail("CI is set but no SLURM node is up: .ci/slurm.sh starts one")
    pytest.skip("no SLURM cluster here (run .ci/slurm.sh to start one)")


# The PostgreSQL server .ci/run installs and starts; TRPO_TEST_POSTGRES_URL names a role that
# may create databases.
POSTGRES_ADMIN_URL = os.environ.get(
    "TRPO_TEST_POSTGRES_URL", "postgresql://trpo:trpo@127.0.0.1:5432/postgres"
)
POSTGRES_WORKER = os.environ.get("TRPO_TEST_POSTGRES_WORKER", "trpo_worker")
POSTGRES_WORKER_PASSWORD = os.environ.get("TRPO_TEST_POSTGRES_WORKER_PASSWORD", "Pg-Worker-8Jw3")
# docs/security.md: what the database's owner grants the workers' role
WORKER_GRANTS = (
    'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC',
    'GRANT CONNECT ON DATABASE "{db}" TO "{role}"',
    'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"',  # Optuna creates its tables on first use
)


@contextlib.contextmanager
def postgres_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL (no password: that is in PGPASSWORD) of a fresh database on the test server,
    for the workers' least-privilege role; dropped afterwards. Without a reachable server the
    test skips, unless CI is set: there it fails."""
    import psycopg2
    from sqlalchemy.engine import make_url

    try:
        admin = psycopg2.connect(POSTGRES_ADMIN_URL, connect_timeout=5)
    except psycopg2.Error as err:
        where = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
        message = (
            f"PostgreSQL is not reachable at {where} ({str(err).strip().splitlines()[0]}); "
            ".ci/run installs and starts one; TRPO_TEST_POSTGRES_URL names another"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    admin.autocommit = True
    name = f"trpo_tune_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(POSTGRES_ADMIN_URL).set(database=name)
        owner = psycopg2.connect(url.render_as_string(hide_password=False))
        with owner, owner.cursor() as cur:  # one transaction, committed
            for grant in WORKER_GRANTS:
                cur.execute(grant.format(db=name, role=POSTGRES_WORKER))
        owner.close()
        monkeypatch.setenv("PGPASSWORD", POSTGRES_WORKER_PASSWORD)  # libpq's own: here too
        yield f"postgresql://{POSTGRES_WORKER}@{url.host}:{url.port or 5432}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def load_study(url: str, name: str) -> Any:
    """The Optuna study ``name`` as the workers see it (their URL, with the installed driver)."""
    import optuna

    from trpo_pipeline.config import StorageConfig
    from trpo_pipeline.tune import storage_url

    return optuna.load_study(study_name=name, storage=storage_url(StorageConfig(url=url)))
