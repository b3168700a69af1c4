"""envpool_env.py: EnvPool's MuJoCo envs with gymnasium's interface, seeding and time limits."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import envpool
import gymnasium as gym
import numpy as np
import pytest
import torch

from trpo_pipeline.rl import runtime
from trpo_pipeline.rl.checkpoint import load_checkpoint
from trpo_pipeline.rl.config import PolicyConfig
from trpo_pipeline.rl.envpool_env import EnvPoolVectorEnv
from trpo_pipeline.rl.envs import AUTORESET_MODE, make_vector_env
from trpo_pipeline.rl.errors import ConfigError
from trpo_pipeline.rl.evaluate import evaluate
from trpo_pipeline.rl.policies import GaussianActor
from trpo_pipeline.rl.rollout import EnvState, collect
from trpo_pipeline.rl.train import train

TIMING = {"time_s", "steps_per_s"}


def hopper_pair(limit: int, seed: int = 3) -> tuple[EnvPoolVectorEnv, object]:
    """Ours and EnvPool's own pool, same seed, both with a ``limit``-step time limit."""
    ours = EnvPoolVectorEnv("Hopper-v5", 4, threads=1)
    ours.max_episode_steps = limit
    ours.reset(seed=seed)
    native = envpool.make_gymnasium(
        "Hopper-v5", num_envs=4, seed=seed, num_threads=1, max_episode_steps=limit
    )
    native.reset()
    return ours, native


def test_spaces_and_autoreset_mode_are_gymnasiums():
    envs = make_vector_env("HalfCheetah-v5", 3, vectorization="envpool")
    reference = gym.make("HalfCheetah-v5")
    try:
        assert isinstance(envs, EnvPoolVectorEnv)
        assert envs.num_envs == 3
        assert envs.single_observation_space == reference.observation_space
        assert envs.single_action_space == reference.action_space
        assert envs.metadata["autoreset_mode"] == AUTORESET_MODE
        assert envs.max_episode_steps == 1000
        envs.action_space.seed(0)
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (3, 17) and obs.dtype == np.float64
        _, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
        assert reward.dtype == np.float64  # EnvPool's float32, cast like gymnasium's
        assert reward.shape == terminated.shape == truncated.shape == (3,)
    finally:
        envs.close()
        reference.close()


def rollout(envs: gym.vector.VectorEnv, seed: int, steps: int = 50) -> np.ndarray:
    obs, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(0)
    seen = [obs]
    for _ in range(steps):
        seen.append(envs.step(rng.uniform(-1, 1, (envs.num_envs, 6)))[0])
    return np.stack(seen)


def test_reset_with_a_seed_replays_and_thread_count_does_not_matter():
    one, two = (EnvPoolVectorEnv("HalfCheetah-v5", 4, threads=n) for n in (1, 2))
    try:
        first = rollout(one, seed=5)
        np.testing.assert_array_equal(rollout(one, seed=5), first)  # reset(seed=) is honoured
        np.testing.assert_array_equal(rollout(two, seed=5), first)
        assert not np.array_equal(rollout(one, seed=6), first)
    finally:
        one.close()
        two.close()


def test_time_limits_and_autoreset_match_envpools_own_when_no_episode_ends_on_the_limit():
    """EnvPool's own time limit, seen step by step: truncation returns the true final
    observation, the next step the reset observation with reward 0, the other envs go on."""
    ours, native = hopper_pair(limit=40)
    rng = np.random.default_rng(0)
    ended = {"terminated": 0, "truncated": 0}
    try:
        for _ in range(600):
            action = rng.uniform(-1, 1, (4, 3))
            obs, reward, terminated, truncated, _ = ours.step(action)
            n_obs, n_reward, n_terminated, n_truncated, _ = native.step(action)
            np.testing.assert_array_equal(obs, n_obs)
            np.testing.assert_array_equal(reward, n_reward.astype(np.float64))
            np.testing.assert_array_equal(terminated, n_terminated)
            np.testing.assert_array_equal(truncated, n_truncated)
            ended["terminated"] += terminated.sum()
            ended["truncated"] += truncated.sum()
    finally:
        ours.close()
        native.close()
    assert ended["terminated"] >= 20 and ended["truncated"] >= 5  # both paths were taken


def test_an_episode_terminating_on_its_time_limit_step_is_terminated_and_truncated():
    """As gymnasium's TimeLimit reports it (EnvPool alone says truncated only, which would
    bootstrap a terminal state), and the env resets on the next step."""
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, (300, 4, 3))
    free = EnvPoolVectorEnv("Hopper-v5", 4, threads=1)
    free.max_episode_steps = 10**9
    free.reset(seed=3)
    try:
        first_end = next(t for t in range(300) if free.step(actions[t])[2][0])
    finally:
        free.close()
    limit = first_end + 1  # env 0's first episode terminates on its last allowed step
    ours, native = hopper_pair(limit)
    try:
        for t in range(first_end):
            ours.step(actions[t])
            native.step(actions[t])
        _, _, terminated, truncated, _ = ours.step(actions[first_end])
        _, _, n_terminated, n_truncated, _ = native.step(actions[first_end])
        assert terminated[0] and truncated[0]
        assert not n_terminated[0] and n_truncated[0]  # what this class corrects
        obs, reward, *_ = ours.step(actions[first_end + 1])
        n_obs, n_reward, *_ = native.step(actions[first_end + 1])
        assert reward[0] == n_reward[0] == 0.0
        np.testing.assert_array_equal(obs[0], n_obs[0])  # the reset observation
    finally:
        ours.close()
        native.close()


def test_a_truncated_batch_bootstraps_from_the_true_final_observation():
    """HalfCheetah never terminates: every episode ends by truncation at step 1000."""
    torch.manual_seed(0)
    actor = GaussianActor(17, 6, PolicyConfig(hidden_sizes=(8,)))
    envs = make_vector_env("HalfCheetah-v5", 2, vectorization="envpool")
    try:
        batch = collect(EnvState.reset(envs, seed=7), actor, 1003, None)
    finally:
        envs.close()
    np.testing.assert_array_equal(np.flatnonzero(batch.truncated[:, 0].numpy()), [999])
    assert not batch.terminated.any()
    assert not batch.valid[1000].any() and batch.valid[1001:].all() and batch.valid[:1000].all()
    assert (batch.rewards[1000] == 0).all()
    assert batch.episode_lengths == [1000, 1000]
    # obs[1000] is the final state, far from rest; obs[1001] the reset one, reset noise 0.1.
    assert batch.obs[1000].abs().max() > 1.0
    assert batch.obs[1001].abs().max() < 1.0


def test_an_id_envpool_lacks_is_a_one_line_config_error(tiny_config):
    with pytest.raises(ConfigError) as err:
        tiny_config("CartPole-v1", env={"vectorization": "envpool"})
    message = str(err.value)
    assert message.startswith("env.vectorization: envpool has no CartPole-v1")
    assert "HalfCheetah-v5" in message and "allowed: sync, envpool" in message
    assert "\n" not in message


def test_envpool_missing_is_a_one_line_config_error(tiny_config, monkeypatch):
    def missing() -> list[str]:
        raise ImportError("No module named 'envpool'")

    monkeypatch.setattr(runtime, "envpool_mujoco_ids", missing)
    problem = runtime.vectorization_problem("envpool", "HalfCheetah-v5")
    assert (
        problem == "envpool is not installed (pip install envpool==1.2.5; allowed: sync, envpool)"
    )
    assert runtime.vectorization_problem("sync", "CartPole-v1") is None


def envpool_config(tiny_config, seed: int = 0, **train):
    return tiny_config(
        "HalfCheetah-v5",
        seed=seed,
        env={"vectorization": "envpool", "normalize_reward": True},
        algo={"steps_per_update": 128, "num_envs": 4},
        train={"total_steps": 1280, "checkpoint_every": 3, **train},
    )


def curve(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "learning_curve.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path, tiny_config):
    runs = {
        name: train(envpool_config(tiny_config, seed), tmp_path / name).run_dir
        for name, seed in (("a", 3), ("b", 3), ("other", 4))
    }
    checkpoint = {name: (d / "checkpoint.pt").read_bytes() for name, d in runs.items()}
    curves = {name: curve(d) for name, d in runs.items()}
    assert checkpoint["a"] == checkpoint["b"]
    assert curves["a"] == curves["b"]
    assert checkpoint["other"] != checkpoint["a"]
    assert curves["other"] != curves["a"]


class StoppedError(Exception):
    pass


def test_a_run_resumed_from_its_checkpoint_matches_an_uninterrupted_run(tmp_path, tiny_config):
    """Stopped after update 7, resumed from the checkpoint of update 6: the same bytes."""
    cfg = envpool_config(tiny_config)

    def kill_after_update_7(record) -> None:
        if record.update == 7:
            raise StoppedError

    stopped = tmp_path / "stopped"
    with pytest.raises(StoppedError):
        train(cfg, stopped, callbacks=[kill_after_update_7])
    assert load_checkpoint(stopped / "checkpoint.pt").updates == 6
    train(dataclasses.replace(cfg, resume=str(stopped / "checkpoint.pt")), stopped)
    reference = tmp_path / "reference"
    train(cfg, reference)

    assert (stopped / "checkpoint.pt").read_bytes() == (reference / "checkpoint.pt").read_bytes()
    assert curve(stopped) == curve(reference)
    assert len(curve(reference)) == 10


def test_evaluation_of_an_envpool_run_uses_gymnasiums_envs(tmp_path, tiny_config, monkeypatch):
    cfg = envpool_config(tiny_config, total_steps=256)
    result = train(cfg, tmp_path / "run")

    def no_envpool(*args, **kwargs):
        raise AssertionError("evaluation built an EnvPool env")

    monkeypatch.setattr("trpo_pipeline.rl.envs.EnvPoolVectorEnv", no_envpool)
    evaluated = evaluate(result.checkpoint, cfg.evaluate)
    assert evaluated.episodes == 3 and evaluated.env_id == "HalfCheetah-v5"
    assert evaluated.mean_length == 1000
