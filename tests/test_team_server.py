"""The team's tracking server as `make team-server` starts it (tools/mlflow-team-server.sh):
MLflow's basic-auth app on PostgreSQL with proxied artifacts, bound to 127.0.0.1. Under load (8
training jobs at once writing through it, as a user the admin created) every run is complete and
holds every metric exactly once, read back through the REST API; a request without credentials
is refused. Without its secrets, or with a store it does not know, the script starts nothing.

The PostgreSQL server is the one .ci/run starts (TRPO_TEST_POSTGRES_URL names a role that may
create databases); without one the test skips, unless CI is set.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import (
    BIN,
    command_env,
    credentials,
    free_port,
    run,
    start_team_server,
    stop_group,
    wait_until_healthy,
)

ADMIN_URL = os.environ.get(
    "TRPO_TEST_POSTGRES_URL", "postgresql://trpo:trpo@127.0.0.1:5432/postgres"
)
JOBS = 8
PER_UPDATE = ("train/kl", "train/episode_return", "train/update", "train/time_s")
SECRETS = {
    "MLFLOW_AUTH_ADMIN_PASSWORD": "Adm-Team-6Wp3Nc8",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret-key",
}
USER, PASSWORD = "runner", "Pw-Runner-7Hx2Qd"  # created by the admin; the jobs write as them


def _request(base: str, endpoint: str, body: dict[str, Any] | None = None, **query: str) -> Any:
    """A GET (or a POST of ``body``) to the server's REST API, as USER."""
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{base}{endpoint}?{urllib.parse.urlencode(query)}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL database for the server's backend store; dropped afterwards."""
    import psycopg2
    from sqlalchemy.engine import make_url

    try:
        admin = psycopg2.connect(ADMIN_URL, connect_timeout=5)
    except psycopg2.Error as err:
        message = f"PostgreSQL is not reachable ({str(err).strip().splitlines()[0]})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    admin.autocommit = True
    name = f"trpo_mlflow_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def server(database: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The server on the database, with its default 4 workers, and USER created by the admin."""
    from mlflow.server.auth.client import AuthServiceClient

    port = free_port()
    proc = start_team_server(tmp_path, {**SECRETS, "TEAM_STORE": database, "TEAM_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, proc, tmp_path / "server.log")
        with credentials("admin", SECRETS["MLFLOW_AUTH_ADMIN_PASSWORD"]):
            AuthServiceClient(base).create_user(USER, PASSWORD)
        yield {"base": base, "artifacts": tmp_path / "team" / "mlartifacts", "port": port}
    finally:
        stop_group(proc)


def test_the_script_starts_nothing_without_its_secrets_or_with_an_unknown_store(
    tmp_path: Path,
) -> None:
    cases = {  # the environment, what the one line says
        "no secrets": ({}, "set MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters) and"),
        "no secret key": (
            {"MLFLOW_AUTH_ADMIN_PASSWORD": SECRETS["MLFLOW_AUTH_ADMIN_PASSWORD"]},
            "MLFLOW_FLASK_SERVER_SECRET_KEY in the environment",
        ),
        "a MySQL store": (
            {**SECRETS, "TEAM_STORE": "mysql://team:Pw-Db-5Kq9@db/mlflow"},
            "TEAM_STORE must be postgresql://... or sqlite:///..., got mysql://...",
        ),
    }
    for case, (extra, says) in cases.items():
        proc = start_team_server(tmp_path, extra)
        assert proc.wait(timeout=30) == 2, case
        lines = (tmp_path / "server.log").read_text().splitlines()
        assert len(lines) == 1 and says in lines[0], (case, lines)
        assert "Pw-Db-5Kq9" not in lines[0]  # the store's password is never echoed


@pytest.mark.slow
def test_eight_concurrent_jobs_through_the_server_each_metric_once(
    server: dict[str, Any], tmp_path: Path
) -> None:
    listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    assert f"127.0.0.1:{server['port']}" in listening  # bound to this machine only

    sweep = tmp_path / "sweep"
    run(
        [
            str(BIN / "trpo-train"),
            "-m",
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={JOBS}",
            f"seed=range(0,{JOBS})",
            "train.total_steps=2048",
            "algo.steps_per_update=256",
            "algo.num_envs=4",
            "policy.hidden_sizes=[16]",
            "policy.critic_hidden_sizes=[16]",
            "train.progress=false",
            "tracking.log_model=false",
            f"tracking.uri={server['base']}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        command_env({"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}),
    )

    base = server["base"]
    experiment = _request(
        base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="trpo-pipeline"
    )
    found = _request(
        base,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100},
    )["runs"]
    assert all(r["info"]["user_id"] == USER for r in found)
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in found]
    children = [r for r, tag in zip(found, tags, strict=True) if "mlflow.parentRunId" in tag]
    assert len(children) == JOBS == len(found) - 1
    for child in children:
        assert child["info"]["status"] == "FINISHED"
        folder = sweep / child["info"]["run_name"]
        with (folder / "learning_curve.csv").open(newline="") as f:
            steps = sorted(int(r["env_steps"]) for r in csv.DictReader(f))
        for key in PER_UPDATE:
            history = _request(
                base,
                "/api/2.0/mlflow/metrics/get-history",
                run_id=child["info"]["run_id"],
                metric_key=key,
            )["metrics"]
            assert sorted(int(m["step"]) for m in history) == steps, key
        listed = _request(
            base,
            "/api/2.0/mlflow/artifacts/list",
            run_id=child["info"]["run_id"],
            path="checkpoint",
        )
        assert "checkpoint/checkpoint.pt" in {f["path"] for f in listed["files"]}
    # Proxied: the artifacts went through the server into its destination folder.
    assert len(list(server["artifacts"].rglob("checkpoint.pt"))) == JOBS
    # Authentication is on: the same read without credentials is refused.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
