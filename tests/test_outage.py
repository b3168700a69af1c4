"""MLflow outages never stop training nor lose a metric: a real `mlflow server` (127.0.0.1, a
tmp SQLite store) that is down when training starts, or stopped mid-run, then restarted; after
`trpo-sync` the MLflow run holds every train/* metric exactly once per update, equal to the
learning curve. A briefly locked SQLite store is retried, not fatal.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import BIN, command_env, new_store
from trpo_pipeline import tracking
from trpo_pipeline.tracking.pending import PENDING

# About 40 updates of 128 transitions: short, but long enough to be caught in the middle.
BUDGET = [
    "train.total_steps=5120",
    "algo.steps_per_update=128",
    "algo.num_envs=4",
    "algo.vf_minibatch=64",
    "evaluate.episodes=3",
    "train.progress=false",
]
FEW_UPDATES = 30  # fewer than any run of BUDGET does


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1:<port> over one SQLite store; stopped and started at will."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = new_store(tmp / "store")
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        if self.proc is not None:
            return
        self.starts += 1
        log = (self.tmp / f"server{self.starts}.log").open("w")
        self.proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                self.store,
                "--artifacts-destination",
                str(self.tmp / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            cwd=self.tmp,
            env=command_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers form one process group, stopped together
        )
        deadline = time.monotonic() + 180
        while True:
            assert self.proc.poll() is None, (self.tmp / f"server{self.starts}.log").read_text()
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not come up in 180 s"
            time.sleep(0.5)

    def stop(self) -> None:
        """Gone at once, as a crashed or unplugged server is (SIGKILL, no goodbye)."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("outage"))
    try:
        yield s
    finally:
        s.stop()


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def curve_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{train/<column>: [(env steps, value), ...]} as the learning curve has them."""
    out: dict[str, list[tuple[int, float]]] = {}
    with (run_dir / "learning_curve.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in tracking.row_metrics(row).items():
                out.setdefault(key, []).append((int(row["env_steps"]), value))
    return out


def assert_exactly_the_curve(uri: str, run_id: str, run_dir: Path) -> None:
    expected = curve_metrics(run_dir)
    updates = json.loads((run_dir / "train_metrics.json").read_text())["updates"]
    assert len(expected["train/kl"]) == updates > FEW_UPDATES
    got = tracking.metric_histories(uri, run_id, expected)
    for key, points in expected.items():
        assert got[key] == sorted(points), key  # one value per update step, the CSV's


def train(cwd: Path, uri: str, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "trpo-train"), *BUDGET, f"name={name}", f"tracking.uri={uri}"],
        cwd=cwd,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sync(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "trpo-sync"), *args],
        cwd=cwd,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.slow  # a real server started and stopped: 30-60 s
def test_server_down_at_start_then_sync_creates_the_whole_run(server: Server, tmp_path: Path):
    server.stop()
    t0 = time.monotonic()
    proc = train(tmp_path, server.uri, "down")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    run_dir = tmp_path / "runs" / "down" / "seed0"
    (line,) = warning_lines(err)  # one line, no traceback, no retry chatter
    assert line.startswith(f"warning: MLflow at {server.uri} failed") and "trpo-sync" in line
    assert time.monotonic() - t0 < 90  # a dead server costs seconds
    pending = (run_dir / PENDING).read_text()
    assert '"run_id": null' in pending
    assert tracking.read_ref(run_dir / tracking.RUN_REF)["run_id"] is None

    server.start()
    first = sync(tmp_path, str(run_dir))
    assert first.returncode == 0, first.stderr
    assert "(created)" in first.stdout
    assert not (run_dir / PENDING).exists()
    run_id = tracking.read_ref(run_dir / tracking.RUN_REF)["run_id"]
    assert run_id

    run = client(server.uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "down-seed0"
    assert run.data.params["algo.steps_per_update"] == "128"
    assert run.data.params["tracking.uri"] == server.uri
    assert run.data.tags["launcher"] == "hydra" and run.data.tags["env_id"] == "CartPole-v1"
    assert_exactly_the_curve(server.uri, run_id, run_dir)
    artifacts = {
        f.path
        for folder in ("config", "checkpoint", "train")
        for f in client(server.uri).list_artifacts(run_id, folder)
    }
    assert artifacts == {
        "config/config.yaml",
        "checkpoint/checkpoint.pt",
        "train/learning_curve.csv",
        "train/train_metrics.json",
    }
    (model,) = client(server.uri).search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    assert model.name == "policy"

    again = sync(tmp_path, str(run_dir))  # nothing left to do: changes nothing
    assert again.returncode == 0 and "nothing to sync" in again.stdout
    assert_exactly_the_curve(server.uri, run_id, run_dir)


@pytest.mark.slow  # a real server started, killed mid-run and restarted: 40-80 s
def test_server_killed_mid_run_then_sync_fills_the_gap_exactly_once(server: Server, tmp_path: Path):
    server.start()
    proc = train(tmp_path, server.uri, "midrun")
    mlflow = client(server.uri)
    logged = 0
    deadline = time.monotonic() + 180
    try:
        while logged < tracking.FLUSH_EVERY:  # the first batch of updates reached MLflow
            assert proc.poll() is None, "training ended before the server could be stopped"
            assert time.monotonic() < deadline, "no metrics reached the server in 180 s"
            runs = mlflow.search_runs(
                [e.experiment_id for e in mlflow.search_experiments()],
                filter_string="tags.launcher = 'hydra' and attributes.run_name = 'midrun-seed0'",
            )
            if runs:
                run_id = runs[0].info.run_id
                logged = len(mlflow.get_metric_history(run_id, "train/kl"))
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)  # hold training while the server goes away
        server.stop()
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    run_dir = tmp_path / "runs" / "midrun" / "seed0"
    (line,) = warning_lines(err)
    assert line.startswith(f"warning: MLflow at {server.uri} failed") and "trpo-sync" in line
    updates = json.loads((run_dir / "train_metrics.json").read_text())["updates"]
    assert (run_dir / "learning_curve.csv").read_text().count("\n") == updates + 1

    server.start()
    before = len(client(server.uri).get_metric_history(run_id, "train/kl"))
    assert tracking.FLUSH_EVERY <= before < updates  # MLflow really has a gap
    assert client(server.uri).get_run(run_id).info.status == "RUNNING"

    synced = sync(tmp_path, str(run_dir))
    assert synced.returncode == 0, synced.stderr
    assert f"MLflow run {run_id};" in synced.stdout and "(created)" not in synced.stdout
    assert_exactly_the_curve(server.uri, run_id, run_dir)
    run = client(server.uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    listed = {f.path for f in client(server.uri).list_artifacts(run_id, "train")}
    assert listed == {"train/learning_curve.csv", "train/train_metrics.json"}

    again = sync(tmp_path, str(run_dir))
    assert again.returncode == 0 and "nothing to sync" in again.stdout
    assert_exactly_the_curve(server.uri, run_id, run_dir)


def test_a_briefly_locked_sqlite_store_is_retried(tmp_path: Path, monkeypatch) -> None:
    """Another writer holds the SQLite file longer than MLflow's own 20 s busy timeout: the
    batch is retried with backoff, and lands once."""
    uri = new_store(tmp_path / "store")
    run = tracking.TrackedRun(uri)
    mlflow = tracking.mlflow_client(uri)
    exp = tracking.experiment_id(mlflow, uri, "locked")
    run.run_id = mlflow.create_run(exp).info.run_id

    calls = []
    real_log_batch = type(mlflow._client).log_batch

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        return real_log_batch(self, *args, **kwargs)

    monkeypatch.setattr(type(mlflow._client), "log_batch", counting)
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        db = sqlite3.connect(tracking.sqlite_path(uri), timeout=60)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(60)
        db.rollback()
        db.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    locked.wait(10)
    threading.Timer(21.0, release.set).start()  # past MLflow's 20 s busy timeout
    run.log_metrics({"eval/mean_return": 1.5}, step=7)
    holder.join()
    assert not run.offline  # retried, not given up
    assert len(calls) >= 2
    history = mlflow.get_metric_history(run.run_id, "eval/mean_return")
    assert [(m.step, m.value) for m in history] == [(7, 1.5)]


def test_retry_locked_gives_up_on_other_errors_at_once() -> None:
    attempts = []

    def fails(message: str) -> None:
        attempts.append(message)
        raise RuntimeError(message)

    with pytest.raises(RuntimeError):
        tracking.retry_locked(lambda: fails("no such table"))
    assert len(attempts) == 1
    with pytest.raises(RuntimeError):
        tracking.retry_locked(lambda: fails("database is locked"), attempts=3)
    assert len(attempts) == 4


def test_offline_run_keeps_what_it_could_not_send(tmp_path: Path, tiny_config) -> None:
    """In-process: a store that is unreachable from the start; train() never notices."""
    from trpo_pipeline.rl.train import train as train_fn
    from trpo_pipeline.tracking.pending import Pending

    cfg = tiny_config(tracking={"uri": f"http://127.0.0.1:{free_port()}", "log_model": True})
    run_dir = tmp_path / "run"
    run = tracking.start_run(cfg, folder=run_dir)
    assert run.offline and run.enabled and not run.online
    with tracking.recording(run):
        result = train_fn(cfg, run_dir, callbacks=[run.log_update])
        tracking.log_training(run, cfg, run_dir)
        run.log_metrics({"eval/mean_return": 9.0}, step=result.env_steps)
    pending = Pending.load(run_dir)
    assert pending is not None
    assert pending.run_id is None and pending.status == "FINISHED"
    assert pending.curves == ["learning_curve.csv"]
    assert pending.metrics[0][:3] == ["eval/mean_return", 9.0, result.env_steps]
    assert ["checkpoint.pt", "checkpoint"] in pending.artifacts
    assert pending.model == {"checkpoint": "checkpoint.pt", "env_id": "CartPole-v1"}
    assert pending.params == tracking.flatten_config(cfg)
