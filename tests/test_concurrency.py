"""Several writers on one SQLite MLflow store: a Hydra multirun of 4 parallel joblib jobs
records every run, every metric (full histories) and every artifact; processes that open a
fresh store at the same moment take turns creating its schema instead of failing."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import BIN, TINY, command_env, run
from trpo_pipeline import tracking
from trpo_pipeline.tracking.pending import PENDING

ARTIFACTS = {
    "config/config.yaml",
    "checkpoint/checkpoint.pt",
    "train/learning_curve.csv",
    "train/train_metrics.json",
}


def curve(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    with (run_dir / "learning_curve.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in tracking.row_metrics(row).items():
                out.setdefault(key, []).append((int(row["env_steps"]), value))
    return out


@pytest.mark.slow  # four jobs training and logging models side by side: 30-90 s
def test_parallel_multirun_on_one_sqlite_store_records_everything(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    db = tmp_path / "store" / "mlflow.db"  # fresh: nobody has created its schema yet
    uri = f"sqlite:///{db}"
    sweep = tmp_path / "sweep"
    result = run(
        [
            str(BIN / "trpo-train"),
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=4",
            "seed=0,1,2,3",
            *TINY,
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        command_env({"MLFLOW_TRACKING_URI": uri}),
    )
    assert "warning: MLflow" not in result.stderr, result.stderr  # never went offline

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("trpo-pipeline")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1", "2", "3"]

    job_dirs = sorted(p.parent for p in sweep.glob("*/checkpoint.pt"))
    assert len(job_dirs) == 4
    by_id: dict[str, Any] = {c.info.run_id: c for c in children}
    for job_dir in job_dirs:
        assert not (job_dir / PENDING).exists()  # nothing was left for trpo-sync
        run_id = tracking.read_ref(job_dir / tracking.RUN_REF)["run_id"]
        child = by_id.pop(run_id)
        assert child.info.status == "FINISHED"
        assert f"seed={child.data.params['seed']}" in job_dir.name
        expected = curve(job_dir)
        histories = tracking.metric_histories(uri, run_id, expected)
        for key, points in expected.items():
            assert histories[key] == sorted(points), (job_dir.name, key)
        listed = {
            f.path
            for folder in ("config", "checkpoint", "train")
            for f in client.list_artifacts(run_id, folder)
        }
        assert listed == ARTIFACTS
        (model,) = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        assert model.name == tracking.MODEL_NAME
    assert not by_id  # every child run belongs to a job folder


_START_TOGETHER = """
import sys, time
from trpo_pipeline import tracking
from trpo_pipeline.config import config_from_dict

uri, start_at, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
cfg = config_from_dict({"tracking": {"uri": uri}, "seed": seed, "train": {"progress": False}})
while time.time() < start_at:
    time.sleep(0.001)
run = tracking.start_run(cfg)
run.log_metrics({"train/kl": 0.01 * seed}, step=1)
run.finish()
print(run.run_id)
"""


@pytest.mark.slow  # four processes importing torch and migrating a store: 20-40 s
def test_processes_opening_a_fresh_store_together_take_turns(tmp_path: Path) -> None:
    """Unserialised, MLflow's schema migrations collide ("duplicate column name", "table
    _alembic_tmp_... already exists"); tracking.start_run takes the store's lock first."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    start_at = time.time() + 6  # past every process's imports
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _START_TOGETHER, uri, str(start_at), str(seed)],
            cwd=tmp_path,
            env=command_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    run_ids = {out.strip() for out, _ in outputs}
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("trpo-pipeline").experiment_id])
    assert {r.info.run_id for r in runs} == run_ids and len(run_ids) == 4
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.metrics["train/kl"] for r in runs) == [0.0, 0.01, 0.02, 0.03]
