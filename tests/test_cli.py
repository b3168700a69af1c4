"""cli.py end to end: the installed trpo-train / trpo-evaluate in a fresh working directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trpo_pipeline.launch.compose import compose

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = [
    "name=tiny",
    "train.total_steps=512",
    "algo.steps_per_update=256",
    "algo.num_envs=4",
    "algo.vf_epochs=2",
    "policy.hidden_sizes=[16]",
    "policy.critic_hidden_sizes=[16]",
    "train.progress=false",
]


def outputs(stdout: str) -> list[Path]:
    return [
        Path(line.removeprefix("outputs: "))
        for line in stdout.splitlines()
        if line.startswith("outputs: ")
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_cli):
    """One single run and one two-job multirun side by side, then, beside the single run's
    results, an evaluation and a second training into the same folder."""
    # MLflow tracking, where configured, has its own tests; here it would only add seconds.
    tiny = TINY + (["tracking.enabled=false"] if "tracking" in compose([], CONF) else [])
    single, multi = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("multi")
    train, multirun = run_cli(
        ("trpo-train", tiny, single), ("trpo-train", ["-m", "seed=0,1", *tiny], multi)
    )
    run_dir = single / "runs" / "tiny" / "seed0"
    checkpoint_before = (run_dir / "checkpoint.pt").read_bytes() if train.returncode == 0 else b""
    evaluate, again = run_cli(
        ("trpo-evaluate", [*tiny, "evaluate.episodes=2", "evaluate.video_episodes=2"], single),
        ("trpo-train", tiny, single),
    )
    return {
        "train": train,
        "multirun": multirun,
        "evaluate": evaluate,
        "again": again,
        "run_dir": run_dir,
        "multi": multi,
        "checkpoint_before": checkpoint_before,
    }


def test_train_writes_the_run_folder_and_prints_it(runs):
    result, run_dir = runs["train"], runs["run_dir"]
    assert result.returncode == 0, result.stderr
    for name in ("config.yaml", "checkpoint.pt", "learning_curve.csv", "train_metrics.json"):
        assert (run_dir / name).is_file(), name
    assert outputs(result.stdout) == [run_dir]


def test_evaluate_writes_eval_metrics(runs):
    result, run_dir = runs["evaluate"], runs["run_dir"]
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "eval_metrics.json").read_text())
    assert metrics["episodes"] == 2 and len(metrics["returns"]) == 2
    assert metrics["checkpoint"] == str(run_dir / "checkpoint.pt")
    assert outputs(result.stdout) == [run_dir / "eval_metrics.json"]
    assert f"videos: {run_dir / 'video'}" in result.stdout.splitlines()
    videos = sorted(p.name for p in (run_dir / "video").glob("*.mp4"))
    assert videos == ["episode-0.mp4", "episode-1.mp4"]


def test_training_again_into_the_same_folder_fails_and_keeps_the_results(runs):
    result, run_dir = runs["again"], runs["run_dir"]
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trpo-train: error: ") and "already holds results" in lines[0]
    assert (run_dir / "checkpoint.pt").read_bytes() == runs["checkpoint_before"]


def test_multirun_completes_every_job(runs):
    result = runs["multirun"]
    assert result.returncode == 0, result.stderr
    jobs = sorted(runs["multi"].glob("runs/tiny/multirun/*/*/checkpoint.pt"))
    assert len(jobs) == 2
    assert ["seed=0" in str(jobs[0]), "seed=1" in str(jobs[1])] == [True, True]
    assert sorted(outputs(result.stdout)) == [j.parent for j in jobs]
    # Another process, the same config and seed: the same bytes as the single run.
    assert jobs[0].read_bytes() == runs["checkpoint_before"]
    assert jobs[1].read_bytes() != runs["checkpoint_before"]
