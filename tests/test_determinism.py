"""Same config and seed, same bytes: checkpoints and learning curves are reproducible."""

from __future__ import annotations

import csv

import pytest

from trpo_pipeline.rl.train import train

TIMING = {"time_s", "steps_per_s"}


def curve_without_timing(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, tiny_config, env_id):
    runs = {
        name: train(tiny_config(env_id, seed=seed), tmp_path / name).run_dir
        for name, seed in (("a", 3), ("b", 3), ("other", 4))
    }

    checkpoint = {name: (d / "checkpoint.pt").read_bytes() for name, d in runs.items()}
    curve = {name: curve_without_timing(d / "learning_curve.csv") for name, d in runs.items()}
    assert checkpoint["a"] == checkpoint["b"]
    assert curve["a"] == curve["b"]
    assert checkpoint["other"] != checkpoint["a"]
    assert curve["other"] != curve["a"]
