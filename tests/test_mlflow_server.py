"""A real `mlflow server` on the project's SQLite store: runs read back through its REST API,
and runs written through it with the `tracking=server` config group."""

from __future__ import annotations

import csv
import json
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import BIN, TINY, command_env, mlflow_server, new_store, run
from trpo_pipeline import tracking


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, endpoint: str, **query: str) -> dict[str, Any]:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def post(base: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base}{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The project's store (SQLite) holding one trpo-train run."""
    tmp = tmp_path_factory.mktemp("server")
    uri = new_store(tmp / "store")
    out = tmp / "run"
    run(
        [str(BIN / "trpo-train"), *TINY, "tracking.log_model=false", f"hydra.run.dir={out}"],
        tmp,
        command_env({"MLFLOW_TRACKING_URI": uri}),
    )
    run_id = tracking.read_ref(out / tracking.RUN_REF)["run_id"]
    return {"tmp": tmp, "uri": uri, "run_dir": out, "run_id": run_id}


@pytest.fixture(scope="module")
def server(recorded: dict[str, Any]) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 and a free port, on that store; stopped afterwards."""
    with mlflow_server(recorded["uri"], recorded["tmp"]) as base:
        yield base


@pytest.mark.slow
def test_runs_read_back_through_the_rest_api(server: str, recorded: dict[str, Any]) -> None:
    experiment = get(
        server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="trpo-pipeline"
    )
    experiment_id = experiment["experiment"]["experiment_id"]
    found = post(server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})
    (only,) = found["runs"]
    assert only["info"]["run_id"] == recorded["run_id"]
    assert only["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in only["data"]["params"]}
    assert params["algo.steps_per_update"] == "512" and params["seed"] == "0"
    tags = {t["key"]: t["value"] for t in only["data"]["tags"]}
    assert tags["env_id"] == "CartPole-v1" and "config_hash" in tags

    history = get(
        server,
        "/api/2.0/mlflow/metrics/get-history",
        run_id=recorded["run_id"],
        metric_key="train/episode_return",
    )["metrics"]
    with (recorded["run_dir"] / "learning_curve.csv").open(newline="") as f:
        curve = {int(r["env_steps"]): float(r["episode_return"]) for r in csv.DictReader(f)}
    assert {m["step"]: m["value"] for m in history} == curve

    listed = get(server, "/api/2.0/mlflow/artifacts/list", run_id=recorded["run_id"], path="config")
    assert "config/config.yaml" in {f["path"] for f in listed["files"]}


@pytest.mark.slow
def test_tracking_server_config_group_writes_through_the_server(
    server: str, recorded: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run(
        [
            str(BIN / "trpo-train"),
            *TINY,
            "tracking=server",
            f"tracking.uri={server}",
            "seed=7",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        command_env(),  # no MLFLOW_TRACKING_URI: the config group decides
    )
    run_id = tracking.read_ref(out / tracking.RUN_REF)["run_id"]
    got = get(server, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    assert {p["key"]: p["value"] for p in got["data"]["params"]}["seed"] == "7"
    assert {p["key"]: p["value"] for p in got["data"]["params"]}["tracking.uri"] == server
    assert any(m["key"] == "train/kl" for m in got["data"]["metrics"])

    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(server)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/policy")
    assert model.predict(np.zeros((3, 4))).shape == (3,)
