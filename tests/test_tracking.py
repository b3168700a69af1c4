"""MLflow tracking, checked through MlflowClient on the stores the pipeline wrote.

One run per pipeline execution (the three DVC stage commands on a params.yaml) holding the
whole config as params, per-update metric histories, evaluation metrics, provenance tags,
artifacts and a pyfunc model that predicts actions; a Hydra multirun is one parent run with a
child per job, with the basic, the joblib and submitit's local launcher.
"""

from __future__ import annotations

import csv
import json
import platform
import sys
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline_support import BIN, TINY, TRAIN_METRICS, command_env, new_store, run
from trpo_pipeline import tracking
from trpo_pipeline.config import TrackingConfig, config_from_dict
from trpo_pipeline.rl.checkpoint import load_checkpoint
from trpo_pipeline.rl.policies import make_actor
from trpo_pipeline.stages.common import read_params

CONTRACT_TAGS = (
    "git_commit",
    "git_dirty",
    "dvc_exp_name",
    "config_hash",
    "python_version",
    "torch_version",
    "gymnasium_version",
    "seed",
    "env_id",
)


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def all_runs(uri: str) -> list[Any]:
    client = client_for(uri)
    experiment = client.get_experiment_by_name("trpo-pipeline")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline's three stage commands, run in a tmp folder on a tiny params.yaml."""
    tmp = tmp_path_factory.mktemp("stages")
    work = tmp / "work"
    work.mkdir()
    uri = new_store(tmp / "store")
    env = command_env({"MLFLOW_TRACKING_URI": uri})
    run([str(BIN / "trpo-params"), *TINY], work, env)
    for stage in ("train", "evaluate", "report"):
        run([sys.executable, "-m", f"trpo_pipeline.stages.{stage}"], work, env)
    run_id = tracking.read_ref(work / "outputs/eval/mlflow_run.json")["run_id"]
    return {"work": work, "uri": uri, "run_id": run_id, "cfg": read_params(work / "params.yaml")}


@pytest.mark.slow
def test_one_run_per_pipeline_execution_with_all_params(stages: dict[str, Any]) -> None:
    (only,) = all_runs(stages["uri"])
    assert only.info.run_id == stages["run_id"]
    assert only.info.status == "FINISHED"
    assert (
        tracking.read_ref(stages["work"] / "outputs/train/mlflow_run.json")["run_id"]
        == (stages["run_id"])
    )
    assert only.data.params == tracking.flatten_config(stages["cfg"])
    assert only.data.params["algo.max_kl"] == "0.01"
    assert only.data.params["policy.hidden_sizes"] == "[64, 64]"
    assert only.data.params["evaluate.checkpoint"] == "null"


@pytest.mark.slow
def test_metric_histories_follow_the_learning_curve(stages: dict[str, Any]) -> None:
    client = client_for(stages["uri"])
    with (stages["work"] / "outputs/train/learning_curve.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["env_steps"]) for r in rows]
    for name in TRAIN_METRICS:
        history = client.get_metric_history(stages["run_id"], f"train/{name}")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == steps, name
    kl = {m.step: m.value for m in client.get_metric_history(stages["run_id"], "train/kl")}
    assert kl == {int(r["env_steps"]): float(r["kl"]) for r in rows}
    improvement = client.get_metric_history(stages["run_id"], "train/surrogate_improvement")
    expected = [float(r["surrogate_after"]) - float(r["surrogate_before"]) for r in rows]
    assert [m.value for m in sorted(improvement, key=lambda m: m.step)] == expected
    accepted = client.get_metric_history(stages["run_id"], "train/line_search_accepted")
    assert {m.value for m in accepted} <= {0.0, 1.0}

    evaluation = json.loads((stages["work"] / "outputs/eval/eval_metrics.json").read_text())
    metrics = client.get_run(stages["run_id"]).data.metrics
    for key in ("mean_return", "std_return", "min_return", "max_return", "mean_length"):
        assert metrics[f"eval/{key}"] == evaluation[key]


@pytest.mark.slow
def test_provenance_tags(stages: dict[str, Any]) -> None:
    tags = client_for(stages["uri"]).get_run(stages["run_id"]).data.tags
    assert set(CONTRACT_TAGS) <= set(tags)
    cfg = stages["cfg"]
    assert tags["config_hash"] == tracking.config_hash(cfg)
    assert tags["seed"] == "0" and tags["env_id"] == "CartPole-v1"
    assert tags["python_version"] == platform.python_version()
    assert tags["torch_version"] == torch.__version__
    assert tags["gymnasium_version"] == gymnasium.__version__
    assert tags["git_dirty"] in ("true", "false", "unknown")
    assert tags["dvc_exp_name"] == ""  # not run by `dvc exp run`


@pytest.mark.slow
def test_artifacts(stages: dict[str, Any]) -> None:
    client = client_for(stages["uri"])

    def listing(path: str | None = None) -> set[str]:
        found = set()
        for item in client.list_artifacts(stages["run_id"], path):
            found |= listing(item.path) if item.is_dir else {item.path}
        return found

    artifacts = listing()
    assert {
        "config/params.yaml",
        "config/config.yaml",
        "checkpoint/checkpoint.pt",
        "train/learning_curve.csv",
        "train/train_metrics.json",
        "eval/eval_metrics.json",
        "report/report.html",
        "report/report.md",
    } <= artifacts
    assert any(a.startswith("report/") and a.endswith(".png") for a in artifacts)


@pytest.mark.slow
def test_pyfunc_model_predicts_the_policy_actions(stages: dict[str, Any]) -> None:
    import mlflow

    mlflow.set_tracking_uri(stages["uri"])
    model = mlflow.pyfunc.load_model(f"runs:/{stages['run_id']}/policy")

    ckpt = load_checkpoint(stages["work"] / "outputs/train/checkpoint.pt")
    cfg = config_from_dict(ckpt.config)
    actor = make_actor(4, gymnasium.spaces.Discrete(2), cfg.policy)
    actor.load_state_dict(ckpt.actor)
    obs = np.random.default_rng(0).normal(size=(64, 4))
    expected = actor.mode(torch.as_tensor(obs, dtype=torch.float32)).numpy()

    actions = model.predict(obs)
    assert actions.shape == (64,) and set(np.unique(actions)) <= {0, 1}
    np.testing.assert_array_equal(actions, expected)
    np.testing.assert_array_equal(model.predict(obs.astype(np.float32)), expected)
    np.testing.assert_array_equal(model.predict(pd.DataFrame(obs)), expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "sweep", "children"),
    [
        ([], ["seed=0,1", "algo.max_kl=0.005,0.01"], 4),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["seed=0,1"], 2),
        (["hydra/launcher=local"], ["seed=0,1"], 2),  # submitit's local executor (conf/)
    ],
    ids=["basic", "joblib", "submitit-local"],
)
def test_multirun_is_a_parent_with_a_child_per_job(
    tmp_path: Path, launcher: list[str], sweep: list[str], children: int
) -> None:
    uri = new_store(tmp_path / "store")
    env = command_env({"MLFLOW_TRACKING_URI": uri})
    run(
        [
            str(BIN / "trpo-train"),
            "-m",
            *launcher,
            *sweep,
            *TINY,
            "tracking.log_model=false",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
        env,
    )
    runs = all_runs(uri)
    parents = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    (parent,) = parents
    kids = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
    assert len(kids) == children == len(runs) - 1
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["launcher"] == "hydra-multirun"
    assert all(k.info.status == "FINISHED" for k in kids)
    combos = {(k.data.params["seed"], k.data.params["algo.max_kl"]) for k in kids}
    assert len(combos) == children  # one child per job, each with its own config
    assert all(len(k.data.metrics) > len(TRAIN_METRICS) // 2 for k in kids)


def test_update_metrics_are_sent_in_batches(tiny_config: Any, tmp_path: Path) -> None:
    """log_batch every FLUSH_EVERY updates and at the end, never a call per number."""
    from mlflow import MlflowClient

    from trpo_pipeline.rl.train import train

    class CountingClient(MlflowClient):  # a real client on the real store, counting its calls
        batches = 0

        def log_batch(self, *args: Any, **kwargs: Any) -> Any:
            CountingClient.batches += 1
            return super().log_batch(*args, **kwargs)

    class CountingRun(tracking.TrackedRun):
        @property
        def client(self) -> MlflowClient:
            return CountingClient(self.uri)

    uri = new_store(tmp_path / "store")
    cfg = tiny_config(train={"total_steps": 256 * 12}, tracking={"uri": uri, "log_model": False})
    opened = tracking.start_run(cfg)
    counted = CountingRun(opened.uri, opened.run_id, opened.experiment_id)
    with tracking.recording(counted):
        result = train(cfg, tmp_path / "run", callbacks=[counted.log_update])
    assert result.updates >= 12
    history = MlflowClient(uri).get_metric_history(opened.run_id, "train/kl")
    assert len(history) == result.updates
    assert CountingClient.batches == -(-result.updates // tracking.FLUSH_EVERY)


# --- the rules, without training ---------------------------------------------------------------


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    assert tracking.resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path}/mlflow.db"
    # A DVC stage (an experiment's temporary copy included) writes to the real repo root.
    monkeypatch.setenv("DVC_ROOT", "/somewhere/repo")
    assert tracking.resolve_tracking_uri(TrackingConfig()) == "sqlite:////somewhere/repo/mlflow.db"
    assert (
        tracking.resolve_tracking_uri(TrackingConfig(uri="sqlite:///rel/m.db"))
        == "sqlite:////somewhere/repo/rel/m.db"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_tracking_uri(TrackingConfig()) == "http://127.0.0.1:5000"
    assert (
        tracking.resolve_tracking_uri(TrackingConfig(uri="sqlite:////abs/m.db"))
        == "sqlite:////abs/m.db"
    )


def test_params_are_dotted_and_metrics_numeric(tiny_config: Any) -> None:
    cfg = tiny_config()
    params = tracking.flatten_config(cfg)
    assert params["algo.steps_per_update"] == "256"
    assert params["env.normalize_obs"] == "false"
    assert params["resume"] == "null"
    assert params["policy.hidden_sizes"] == "[16]"
    row = {"update": 3, "env_steps": 768, "kl": 0.004, "line_search_accepted": True}
    row |= {
        "surrogate_before": 0.5,
        "surrogate_after": 0.75,
        "skipped": "",
        "episode_return": np.nan,
    }
    assert tracking.row_metrics(row) == {
        "train/update": 3.0,
        "train/kl": 0.004,
        "train/line_search_accepted": 1.0,
        "train/surrogate_before": 0.5,
        "train/surrogate_after": 0.75,
        "train/surrogate_improvement": 0.25,
    }


def test_config_hash_ignores_what_cannot_change_results(tiny_config: Any) -> None:
    a = tiny_config()
    b = tiny_config(tracking={"uri": "http://x", "log_model": False}, train={"progress": True})
    assert tracking.config_hash(a) == tracking.config_hash(b)
    assert tracking.config_hash(a) != tracking.config_hash(tiny_config(algo={"max_kl": 0.02}))


def test_disabled_tracking_writes_nothing(tiny_config: Any, tmp_path: Path) -> None:
    cfg = tiny_config(tracking={"enabled": False, "uri": f"sqlite:///{tmp_path}/m.db"})
    run_ = tracking.start_run(cfg)
    assert not run_.enabled
    run_.log_metrics({"train/kl": 1.0}, step=1)
    run_.write_ref(tmp_path / "ref.json")
    run_.finish()
    assert tracking.read_ref(tmp_path / "ref.json")["run_id"] is None
    assert not (tmp_path / "m.db").exists()
