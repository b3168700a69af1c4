"""evaluate.py: fixed-seed episodes of a trained checkpoint, reproducible and independent."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

from trpo_pipeline.config import config_from_dict
from trpo_pipeline.rl.checkpoint import load_checkpoint
from trpo_pipeline.rl.config import EvaluateConfig
from trpo_pipeline.rl.evaluate import evaluate, write_eval
from trpo_pipeline.rl.normalizers import ObsNormalizer, preprocess
from trpo_pipeline.rl.policies import make_actor
from trpo_pipeline.rl.train import train

# Pendulum at a tenth of its gravity: env.kwargs must reach the envs evaluation builds too.
RUNS = {
    "CartPole-v1": ("CartPole-v1", {}),
    "Pendulum-v1": ("Pendulum-v1", {}),
    "Pendulum-v1 g=1": ("Pendulum-v1", {"g": 1.0}),
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def checkpoint(request, tmp_path_factory, tiny_config):
    env_id, kwargs = RUNS[request.param]
    cfg = tiny_config(env_id, env={"kwargs": kwargs})
    return train(cfg, tmp_path_factory.mktemp("run")).checkpoint


def replay_episode(checkpoint, seed: int) -> tuple[float, int]:
    """One episode in a plain gymnasium env reset with ``seed``, acting with the policy mean."""
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt.config)
    env = gym.make(cfg.env.id, **cfg.env.kwargs)
    actor = make_actor(env.observation_space.shape[0], env.action_space, cfg.policy)
    actor.load_state_dict(ckpt.actor)
    normalizer = ckpt.obs_normalizer and ObsNormalizer.from_state_dict(ckpt.obs_normalizer)
    obs, _ = env.reset(seed=seed)
    total, steps, done = 0.0, 0, False
    with torch.no_grad():
        while not done:
            action = actor.mode(torch.from_numpy(preprocess(obs[None], normalizer)))[0].numpy()
            if isinstance(env.action_space, gym.spaces.Box):
                action = action.clip(env.action_space.low, env.action_space.high)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
    env.close()
    return total, steps


def test_evaluate_runs_the_asked_episodes_reproducibly(checkpoint):
    cfg = EvaluateConfig(episodes=3, seed=123)

    first, second = evaluate(checkpoint, cfg), evaluate(checkpoint, cfg)

    assert first == second
    assert first.episodes == 3 and len(first.returns) == 3 and len(first.lengths) == 3
    assert first.mean_return == pytest.approx(sum(first.returns) / 3)
    assert first.min_return == min(first.returns) and first.max_return == max(first.returns)
    assert first.env_steps_trained == load_checkpoint(checkpoint).global_step


def test_episode_i_is_a_plain_env_reset_with_seed_plus_i(checkpoint):
    result = evaluate(checkpoint, EvaluateConfig(episodes=3, seed=40))

    replayed = [replay_episode(checkpoint, 40 + i) for i in range(3)]

    assert result.returns == pytest.approx([r for r, _ in replayed], rel=1e-5)
    assert result.lengths == [n for _, n in replayed]


def test_an_episode_does_not_depend_on_how_many_are_run(checkpoint):
    two = evaluate(checkpoint, EvaluateConfig(episodes=2, seed=7))
    four = evaluate(checkpoint, EvaluateConfig(episodes=4, seed=7))
    # Equal up to float noise: a batch of 4 runs through other matmul kernels than one of 2.
    assert four.returns[:2] == pytest.approx(two.returns, rel=1e-6)
    assert four.lengths[:2] == two.lengths


def test_sampled_evaluation_is_seeded(checkpoint):
    cfg = EvaluateConfig(episodes=2, seed=5, deterministic=False)
    assert evaluate(checkpoint, cfg) == evaluate(checkpoint, cfg)


def test_evaluating_leaves_the_callers_random_stream_untouched(checkpoint):
    # Training code may evaluate between updates; its own draws must not change because of it.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    evaluate(checkpoint, EvaluateConfig(episodes=2, deterministic=False))
    assert torch.equal(torch.rand(3), expected)


def test_write_eval_writes_the_result_as_json(checkpoint, tmp_path):
    result = evaluate(checkpoint, EvaluateConfig(episodes=2, seed=0))
    path = tmp_path / "out" / "eval_metrics.json"

    write_eval(result, path)

    data = json.loads(path.read_text())
    assert data["returns"] == result.returns and data["episodes"] == 2
    assert data["checkpoint"] == str(checkpoint)
    assert [p.name for p in path.parent.iterdir()] == ["eval_metrics.json"]
