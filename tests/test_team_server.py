"""The team's tracking server (tools/mlflow-team-server.sh): `mlflow server` on PostgreSQL with
proxied artifacts, bound to 127.0.0.1. Under load (8 training jobs at once writing through it)
every run is complete and holds every metric exactly once, read back through the REST API.

The PostgreSQL server is the one .ci/run starts (TRPO_TEST_POSTGRES_URL names a role that may
create databases); without one the test skips, unless CI is set.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import BIN, REPO, command_env, run, stop_group, wait_until_healthy
from test_mlflow_server import free_port

ADMIN_URL = os.environ.get(
    "TRPO_TEST_POSTGRES_URL", "postgresql://trpo:trpo@127.0.0.1:5432/postgres"
)
SCRIPT = REPO / "tools" / "mlflow-team-server.sh"
JOBS = 8
PER_UPDATE = ("train/kl", "train/episode_return", "train/update", "train/time_s")


def _get(base: str, endpoint: str, **query: str) -> dict[str, Any]:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _post(base: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
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
    port = free_port()
    artifacts = tmp_path / "artifacts"
    log = (tmp_path / "server.log").open("w")
    env = command_env({"MLFLOW_BACKEND_STORE_URI": database, "MLFLOW": str(BIN / "mlflow")})
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), str(artifacts), str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the server and its workers, stopped together
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, proc, tmp_path / "server.log")
        yield {"base": base, "artifacts": artifacts, "port": port}
    finally:
        stop_group(proc)
        log.close()


def test_the_script_refuses_a_store_that_is_not_postgresql(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)],
        env=command_env({"MLFLOW_BACKEND_STORE_URI": "sqlite:///x.db"}),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "must be postgresql://" in done.stderr


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
        command_env(),
    )

    base = server["base"]
    experiment = _get(
        base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="trpo-pipeline"
    )
    found = _post(
        base,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100},
    )["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in found]
    children = [r for r, tag in zip(found, tags, strict=True) if "mlflow.parentRunId" in tag]
    assert len(children) == JOBS == len(found) - 1
    for child in children:
        assert child["info"]["status"] == "FINISHED"
        folder = sweep / child["info"]["run_name"]
        with (folder / "learning_curve.csv").open(newline="") as f:
            steps = sorted(int(r["env_steps"]) for r in csv.DictReader(f))
        for key in PER_UPDATE:
            history = _get(
                base,
                "/api/2.0/mlflow/metrics/get-history",
                run_id=child["info"]["run_id"],
                metric_key=key,
            )["metrics"]
            assert sorted(int(m["step"]) for m in history) == steps, key
        listed = _get(
            base,
            "/api/2.0/mlflow/artifacts/list",
            run_id=child["info"]["run_id"],
            path="checkpoint",
        )
        assert "checkpoint/checkpoint.pt" in {f["path"] for f in listed["files"]}
    # Proxied: the artifacts went through the server into its destination folder.
    assert len(list(server["artifacts"].rglob("checkpoint.pt"))) == JOBS
