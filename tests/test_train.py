"""train.py: what a run writes, when it refuses to run, and how it resumes."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from trpo_pipeline.config import ConfigError, config_from_dict
from trpo_pipeline.rl.checkpoint import CheckpointError, load_checkpoint
from trpo_pipeline.rl.train import (
    RETURN_WINDOW,
    EpisodeStats,
    Progress,
    UpdateRecord,
    build_agent,
    checkpoint_of,
    restore,
    train,
)
from trpo_pipeline.rl.trpo import UpdateStats

TIMING = {"time_s", "steps_per_s"}


def read_curve(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_a_run_writes_config_checkpoint_curve_and_metrics(tmp_path, tiny_config):
    cfg = tiny_config(algo={"steps_per_update": 512, "num_envs": 4}, train={"total_steps": 1024})
    seen: list[UpdateRecord] = []

    result = train(cfg, tmp_path, callbacks=[seen.append])

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "learning_curve.csv",
        "train_metrics.json",
    ]
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg

    rows = read_curve(tmp_path / "learning_curve.csv")
    assert len(rows) == result.updates == len(result.history) >= 2
    assert seen == result.history
    stats_columns = {f.name for f in dataclasses.fields(UpdateStats)}
    assert stats_columns <= set(rows[0]) and {"update", "env_steps", "episode_return"} <= set(
        rows[0]
    )
    assert [int(r["update"]) for r in rows] == list(range(1, result.updates + 1))
    steps = [int(r["env_steps"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] == result.env_steps >= cfg.train.total_steps
    # A batch holds steps_per_update env steps, less the autoreset steps that are not trained on.
    assert all(0 < b - a <= 512 for a, b in zip([0, *steps], steps, strict=False))

    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert metrics["env_steps"] == result.env_steps and metrics["updates"] == result.updates
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ckpt.global_step, ckpt.updates) == (result.env_steps, result.updates)
    assert ckpt.episodes["count"] == int(rows[-1]["episodes"]) > 0


def test_a_run_refuses_a_folder_that_holds_results(tmp_path, tiny_config):
    cfg = tiny_config()
    train(cfg, tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    with pytest.raises(ConfigError, match="already holds results") as caught:
        train(cfg, tmp_path)
    assert str(tmp_path) in str(caught.value) and "overwrite=true" in str(caught.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before

    other_seed = dataclasses.replace(cfg, seed=1, overwrite=True)
    train(other_seed, tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() != before


def test_resume_continues_bit_identically_from_a_periodic_checkpoint(tmp_path, tiny_config):
    cfg = tiny_config(
        algo={"steps_per_update": 128, "num_envs": 2},
        train={"total_steps": 512, "checkpoint_every": 2},
    )
    mid = tmp_path / "update2.pt"

    def keep_update_2(record: UpdateRecord) -> None:
        if record.update == 2:
            shutil.copy(tmp_path / "straight" / "checkpoint.pt", mid)

    straight = train(cfg, tmp_path / "straight", callbacks=[keep_update_2])
    resumed = [train(dataclasses.replace(cfg, resume=str(mid)), tmp_path / f"r{i}") for i in (1, 2)]

    assert straight.updates > 3
    assert load_checkpoint(mid).global_step == straight.history[1].env_steps
    assert resumed[0].history[0].update == 3  # continues from the checkpoint's counters
    assert [r.env_steps for r in resumed[0].history] == [r.env_steps for r in straight.history[2:]]
    straight_bytes = (tmp_path / "straight" / "checkpoint.pt").read_bytes()
    for i in (1, 2):
        assert (tmp_path / f"r{i}" / "checkpoint.pt").read_bytes() == straight_bytes
    straight_rows = without_timing(read_curve(tmp_path / "straight" / "learning_curve.csv"))
    assert without_timing(read_curve(tmp_path / "r1" / "learning_curve.csv")) == straight_rows[2:]


def test_resume_in_place_keeps_the_curve_up_to_the_checkpoint(tmp_path, tiny_config):
    first = train(tiny_config(train={"total_steps": 512}), tmp_path)
    cfg = tiny_config(train={"total_steps": 1024}, resume=str(tmp_path / "checkpoint.pt"))

    second = train(cfg, tmp_path)

    rows = read_curve(tmp_path / "learning_curve.csv")
    assert [int(r["update"]) for r in rows] == list(range(1, second.updates + 1))
    assert second.updates > first.updates
    assert int(rows[first.updates - 1]["env_steps"]) == first.env_steps
    assert load_checkpoint(tmp_path / "checkpoint.pt").global_step == second.env_steps >= 1024


def test_resuming_a_finished_run_reports_its_training_return(tmp_path, tiny_config):
    """A job requeued after its last update resumes with nothing left to train: its result is
    still the run's training return, not nan."""
    cfg = tiny_config(train={"total_steps": 1024})
    first = train(cfg, tmp_path)
    again = train(dataclasses.replace(cfg, resume=str(tmp_path / "checkpoint.pt")), tmp_path)

    assert again.history == [] and again.updates == first.updates
    assert math.isfinite(first.episode_return)
    assert again.episode_return == first.episode_return
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert metrics["episode_return"] == first.episode_return


def test_resume_refuses_to_replace_another_runs_results(tmp_path, tiny_config):
    train(tiny_config(), tmp_path / "a")
    train(tiny_config(seed=1), tmp_path / "b")
    before = (tmp_path / "b" / "checkpoint.pt").read_bytes()
    cfg = tiny_config(train={"total_steps": 1024}, resume=str(tmp_path / "a" / "checkpoint.pt"))

    with pytest.raises(ConfigError, match="already holds results"):
        train(cfg, tmp_path / "b")
    assert (tmp_path / "b" / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_a_checkpoint_of_another_env(tmp_path, tiny_config):
    train(tiny_config(), tmp_path / "cartpole")
    cfg = tiny_config("Acrobot-v1", resume=str(tmp_path / "cartpole" / "checkpoint.pt"))

    with pytest.raises(CheckpointError, match=r"env\.id"):
        train(cfg, tmp_path / "acrobot")
    assert not (tmp_path / "acrobot").exists()


def test_episode_stats_average_the_last_return_window_episodes():
    episodes = EpisodeStats()
    assert math.isnan(episodes.mean_return) and math.isnan(episodes.mean_length)
    returns = [float(i) for i in range(RETURN_WINDOW + 10)]
    lengths = [i % 7 for i in range(RETURN_WINDOW + 10)]

    episodes.add(SimpleNamespace(episode_returns=returns[:10], episode_lengths=lengths[:10]))
    episodes.add(SimpleNamespace(episode_returns=returns[10:], episode_lengths=lengths[10:]))

    assert episodes.count == RETURN_WINDOW + 10
    assert episodes.mean_return == pytest.approx(sum(returns[10:]) / RETURN_WINDOW)
    assert episodes.mean_length == pytest.approx(sum(lengths[10:]) / RETURN_WINDOW)
    assert EpisodeStats.from_state_dict(episodes.state_dict()) == episodes


def same(a: object, b: object) -> bool:
    """Equal state: tensors and arrays element by element, containers recursively."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_restoring_a_checkpoint_gives_back_the_agent_and_progress_it_was_made_of(tiny_config):
    cfg = tiny_config("Pendulum-v1", env={"normalize_reward": True})
    space, cpu = gym.spaces.Box(-2.0, 2.0, (1,), np.float32), torch.device("cpu")
    torch.manual_seed(0)
    agent = build_agent(cfg, 3, space, cpu)
    agent.obs_normalizer.update(np.random.default_rng(0).normal(size=(10, 3)))
    rewards = np.ones((4, 2))
    agent.reward_scaler.scale(rewards, np.zeros((4, 2), bool), np.ones((4, 2), bool))
    progress = Progress(global_step=1000, updates=4)
    progress.episodes.add(SimpleNamespace(episode_returns=[1.0, 2.5], episode_lengths=[5, 9]))
    checkpoint = checkpoint_of(agent, progress, {"seed": 0})
    torch.manual_seed(1)
    fresh = build_agent(cfg, 3, space, cpu)
    assert not same(fresh.actor.state_dict(), agent.actor.state_dict())

    restored = restore(fresh, checkpoint)

    assert restored == progress
    # The RNG states too: the checkpoint of the restored agent is the same, field by field.
    again = checkpoint_of(fresh, restored, {"seed": 0})
    for f in dataclasses.fields(checkpoint):
        assert same(getattr(again, f.name), getattr(checkpoint, f.name)), f.name
