"""The DVC pipeline end to end, on a copy of the repository in a tmp folder.

dvc repro runs train -> evaluate -> report, a second repro runs nothing, `dvc exp run -S`
recomposes params.yaml from conf/ and records an experiment whose metrics `dvc exp show`
reports, and an evaluation param re-runs evaluate and report but never train. The committed
params.yaml must be what composing conf/ gives (what `dvc exp run` would write).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import pytest
import yaml

from pipeline_support import (
    BIN,
    DVC,
    REPO,
    command_env,
    copy_repository,
    exp_sets,
    git,
    new_store,
    ran_stages,
    repro_tiny,
    run,
)
from trpo_pipeline import tracking


def exp_metrics(repo: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{experiment name: {metrics file: values}} from `dvc exp show --json`."""
    shown = json.loads(run([DVC, "exp", "show", "--json"], repo, env).stdout)
    out: dict[str, dict[str, Any]] = {}
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for rev in group.get("revs", []):
                metrics = (rev.get("data") or {}).get("metrics") or {}
                out[rev["name"]] = {path: m.get("data") for path, m in metrics.items()}
    return out


def reset_to_baseline(repo: Path, env: dict[str, str]) -> None:
    git(repo, "checkout", "--", "params.yaml", "dvc.lock")
    run([DVC, "checkout", "--force"], repo, env)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A repository copy with tiny params, `dvc repro` run once and its results committed."""
    tmp = tmp_path_factory.mktemp("dvc")
    repo = copy_repository(tmp / "repo")
    uri = new_store(tmp / "store")
    env = command_env({"MLFLOW_TRACKING_URI": uri})
    first = repro_tiny(repo, env)
    return {"repo": repo, "env": env, "uri": uri, "first": first}


def test_committed_params_yaml_is_conf_composed_as_dvc_does(tmp_path: Path) -> None:
    from dvc.utils.hydra import compose_and_dump

    composed = tmp_path / "params.yaml"
    compose_and_dump(composed, str(REPO / "conf"), None, "config", str(REPO), [])
    assert (REPO / "params.yaml").read_text() == composed.read_text(), (
        "params.yaml differs from conf/: run `make params` (trpo-params) and commit it"
    )
    check = run([str(BIN / "trpo-params"), "--check"], REPO, command_env())
    assert "up to date" in check.stdout


def test_dvc_is_set_up_for_hydra_composition() -> None:
    config = (REPO / ".dvc" / "config").read_text()
    assert "[hydra]" in config and "enabled = true" in config
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["train", "evaluate", "report"]
    # Each stage declares only what it reads: evaluation params never retrain.
    assert "evaluate" not in stages["train"]["params"]
    assert "algo" not in stages["evaluate"]["params"]


@pytest.mark.slow
def test_repro_runs_train_evaluate_report_once(pipeline: dict[str, Any]) -> None:
    repo, env = pipeline["repo"], pipeline["env"]
    assert ran_stages(pipeline["first"].stdout) == ["train", "evaluate", "report"]
    evaluation = json.loads((repo / "outputs/eval/eval_metrics.json").read_text())
    assert evaluation["episodes"] == 3
    assert json.loads((repo / "outputs/train/train_metrics.json").read_text())["env_steps"] >= 2048
    assert (repo / "outputs/report/report.html").is_file()
    assert (repo / "outputs/train/checkpoint.pt").is_file()
    # evaluate.video_episodes=1 by default: episode 0, one frame per step, shown in the report
    with imageio.get_reader(repo / "outputs/eval/video/episode-0.mp4") as reader:
        assert sum(1 for _ in reader) == evaluation["lengths"][0]
    assert "<video controls" in (repo / "outputs/report/report.html").read_text()
    assert "(video/" in (repo / "outputs/report/report.md").read_text()
    # a quiet terminal: no third-party warnings, progress bars or INFO lines
    output = pipeline["first"].stdout + pipeline["first"].stderr
    noise = [
        line
        for line in output.splitlines()
        if re.search(r"Warning|Downloading artifacts| INFO |\x1b\[", line)
    ]
    assert noise == [], noise

    again = run([DVC, "repro"], repo, env)
    assert ran_stages(again.stdout) == []
    assert "up to date" in again.stdout
    assert git(repo, "status", "--porcelain") == "", "outputs and stores must be git-ignored"


@pytest.mark.slow
def test_repro_records_one_mlflow_run(pipeline: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    repo, uri = pipeline["repo"], pipeline["uri"]
    run_id = tracking.read_ref(repo / "outputs/eval/mlflow_run.json")["run_id"]
    assert tracking.read_ref(repo / "outputs/train/mlflow_run.json")["run_id"] == run_id
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("trpo-pipeline").experiment_id])
    (only,) = [r for r in runs if not r.data.tags["dvc_exp_name"]]  # not an experiment's
    assert only.info.run_id == run_id and only.info.status == "FINISHED"
    assert only.data.params["algo.steps_per_update"] == "512"
    assert only.data.tags["git_commit"] == git(repo, "rev-parse", "HEAD~1").strip()
    assert only.data.tags["launcher"] == "dvc"
    artifacts = {a.path for a in client.list_artifacts(run_id, "config")}
    assert {"config/params.yaml", "config/dvc.lock", "config/config.yaml"} <= artifacts
    assert "report/report.html" in {a.path for a in client.list_artifacts(run_id, "report")}
    videos = {a.path for a in client.list_artifacts(run_id, "video")}
    assert videos == {"video/episode-0.mp4", "video/episode-0.png"}
    # the policy is version 1 of trpo-CartPole-v1, and the champion
    champion = client.get_model_version_by_alias("trpo-CartPole-v1", "champion")
    assert champion.run_id == run_id and str(champion.version) == "1"
    assert champion.tags["eval/mean_return"] == repr(only.data.metrics["eval/mean_return"])
    assert champion.tags["git_commit"] == only.data.tags["git_commit"]
    assert "registry: trpo-CartPole-v1 version 1 (return " in pipeline["first"].stdout


@pytest.mark.slow
def test_exp_run_recomposes_params_and_shows_metrics(pipeline: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    repo, env = pipeline["repo"], pipeline["env"]
    reset_to_baseline(repo, env)
    out = run([DVC, "exp", "run", "--name", "kl02", *exp_sets("algo.max_kl=0.02")], repo, env)
    assert ran_stages(out.stdout) == ["train", "evaluate", "report"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["algo"]["max_kl"] == 0.02
    assert params["train"]["total_steps"] == 2048
    # What the train stage read is what DVC recorded for the experiment.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["algo"]["max_kl"] == 0.02
    run_id = tracking.read_ref(repo / "outputs/eval/mlflow_run.json")["run_id"]
    logged = MlflowClient(pipeline["uri"]).get_run(run_id).data
    assert logged.params["algo.max_kl"] == "0.02"
    assert logged.tags["dvc_exp_name"] == "kl02"

    plots = json.loads(run([DVC, "plots", "diff", "--json", "kl02"], repo, env).stdout)["data"]
    assert {"Return vs env steps", "KL per update", "Line-search acceptance per update"} <= set(
        plots
    )
    assert all(p["content"]["data"]["values"] for plot in plots.values() for p in plot)

    metrics = exp_metrics(repo, env)["kl02"]
    evaluation = metrics["outputs/eval/eval_metrics.json"]
    assert evaluation["episodes"] == 3 and isinstance(evaluation["mean_return"], float)
    assert metrics["outputs/train/train_metrics.json"]["env_steps"] >= 2048


@pytest.mark.slow
def test_evaluation_param_reruns_evaluate_and_report_not_train(pipeline: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    repo, env = pipeline["repo"], pipeline["env"]
    reset_to_baseline(repo, env)
    checkpoint_before = (repo / "outputs/train/checkpoint.pt").read_bytes()
    train_run = tracking.read_ref(repo / "outputs/train/mlflow_run.json")["run_id"]
    sets = exp_sets("evaluate.episodes=4")
    out = run([DVC, "exp", "run", "--name", "eval4", *sets], repo, env)

    assert ran_stages(out.stdout) == ["evaluate", "report"]
    assert (repo / "outputs/train/checkpoint.pt").read_bytes() == checkpoint_before
    assert json.loads((repo / "outputs/eval/eval_metrics.json").read_text())["episodes"] == 4
    # This execution is its own MLflow run (params are immutable), pointing at its training.
    run_id = tracking.read_ref(repo / "outputs/eval/mlflow_run.json")["run_id"]
    assert run_id != train_run
    recorded = MlflowClient(pipeline["uri"]).get_run(run_id).data
    assert recorded.params["evaluate.episodes"] == "4"
    assert recorded.tags["train_run_id"] == train_run
    assert recorded.tags["dvc_exp_name"] == "eval4"
    assert "train/episode_return" in recorded.metrics and "eval/mean_return" in recorded.metrics


@pytest.mark.slow
def test_queued_experiments_share_the_repository_store(pipeline: dict[str, Any]) -> None:
    """`dvc queue start -j 2` runs experiments in temporary copies; with no tracking URI set,
    each still writes to mlflow.db at the real repository root ($DVC_ROOT)."""
    from mlflow import MlflowClient

    repo = pipeline["repo"]
    env = command_env()  # the default store: <repo>/mlflow.db
    reset_to_baseline(repo, env)
    sets = exp_sets("tracking.log_model=false", "seed=range(1,3)")
    run([DVC, "exp", "run", "--queue", *sets], repo, env)
    run([DVC, "queue", "start", "-j", "2"], repo, env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run([DVC, "queue", "status"], repo, env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(5)
    run([DVC, "queue", "stop"], repo, env)
    assert "Failed" not in status, status

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("trpo-pipeline").experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"]
    assert all(r.info.status == "FINISHED" and r.data.tags["dvc_exp_name"] for r in runs)
    assert all("eval/mean_return" in r.data.metrics for r in runs)
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db")), "a store in a temporary copy"
