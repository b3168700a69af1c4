"""The model registry (tracking/registry.py) on a real SQLite store: versions of
``trpo-<env id>``, the alias ``champion`` on the best evaluation, and the champion served by
``mlflow models serve`` playing a real episode."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import gymnasium as gym
import pytest
import requests
from mlflow import MlflowClient

from pipeline_support import BIN, new_store
from trpo_pipeline.rl.config import EvaluateConfig
from trpo_pipeline.rl.evaluate import evaluate
from trpo_pipeline.rl.train import train
from trpo_pipeline.tracking import CHAMPION, log_policy_model, register_policy

ENV_ID = "CartPole-v1"
NAME = "trpo-CartPole-v1"
SEED = 1_000_000  # the default evaluate.seed


@pytest.fixture(scope="module")
def logged(tmp_path_factory, tiny_config) -> dict:
    """A trained tiny CartPole policy, logged as the ``policy`` model of a run."""
    tmp = tmp_path_factory.mktemp("registry")
    checkpoint = train(tiny_config(ENV_ID), tmp / "run").checkpoint
    uri = new_store(tmp / "store")
    client = MlflowClient(uri)
    experiment = client.create_experiment("trpo", artifact_location=str(tmp / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    log_policy_model(uri, run_id, checkpoint, ENV_ID)
    client.set_terminated(run_id)
    return {"uri": uri, "client": client, "run_id": run_id, "experiment": experiment,
            "checkpoint": checkpoint}  # fmt: skip


def register(logged: dict, mean_return: float):
    tags = {"git_commit": "abc123", "config_hash": "cfg42"}
    return register_policy(
        logged["client"], logged["run_id"], logged["experiment"], ENV_ID, mean_return, tags
    )


def champion(logged: dict) -> str:
    return str(logged["client"].get_model_version_by_alias(NAME, CHAMPION).version)


def test_the_champion_moves_only_to_a_better_return(logged):
    first = register(logged, 200.0)
    assert (first.name, first.version, first.champion) == (NAME, "1", "1")
    assert first.line() == f"registry: {NAME} version 1 (return 200.0) is the champion"

    worse = register(logged, 150.0)
    assert (worse.version, worse.champion, champion(logged)) == ("2", "1", "1")
    assert worse.line() == (
        f"registry: {NAME} version 2 (return 150.0) registered; champion stays version 1 (200.0)"
    )
    tie = register(logged, 200.0)
    assert (tie.version, champion(logged)) == ("3", "1")  # a tie keeps the champion

    better = register(logged, 250.5)
    assert (better.version, champion(logged)) == ("4", "4") and better.moved
    assert better.line() == (
        f"registry: {NAME} version 4 (return 250.5) is the new champion, beating version 1 (200.0)"
    )
    version = logged["client"].get_model_version(NAME, "4")
    assert version.run_id == logged["run_id"]
    assert version.tags == {"eval/mean_return": "250.5", "run_id": logged["run_id"],
                            "git_commit": "abc123", "config_hash": "cfg42"}  # fmt: skip


def test_a_run_without_a_model_registers_nothing(logged):
    client = logged["client"]
    bare = client.create_run(logged["experiment"]).info.run_id
    assert register_policy(client, bare, logged["experiment"], ENV_ID, 1e9, {}) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@pytest.mark.slow
def test_the_served_champion_plays_its_evaluated_episode(logged, tmp_path: Path):
    expected = evaluate(logged["checkpoint"], EvaluateConfig(episodes=1, seed=SEED)).mean_return
    registration = register(logged, 1e6)  # the champion from now on
    assert registration.moved
    port = _free_port()
    # mlflow models serve starts uvicorn from PATH: the venv's bin comes first.
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"],
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@{CHAMPION}",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{port}/ping", proc, 120)
        env_ = gym.make(ENV_ID)
        obs, _ = env_.reset(seed=SEED)
        total, done = 0.0, False
        with requests.Session() as http:
            while not done:
                answer = http.post(
                    f"http://127.0.0.1:{port}/invocations",
                    json={"inputs": [obs.tolist()]},
                    timeout=10,
                )
                assert answer.ok, answer.text
                (action,) = answer.json()["predictions"]
                obs, reward, terminated, truncated, _ = env_.step(int(action))
                total, done = total + float(reward), terminated or truncated
        env_.close()
        bad = requests.post(
            f"http://127.0.0.1:{port}/invocations", json={"inputs": [[0.0, 1.0]]}, timeout=10
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert total == expected
    assert bad.status_code == 400 and "observations must have shape (n, 4)" in bad.text
