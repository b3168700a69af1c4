"""rollout.py: batches from real vector envs under gymnasium's NEXT_STEP autoreset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from trpo_pipeline.rl.config import PolicyConfig
from trpo_pipeline.rl.envs import make_vector_env
from trpo_pipeline.rl.normalizers import ObsNormalizer
from trpo_pipeline.rl.policies import CategoricalActor, GaussianActor
from trpo_pipeline.rl.rollout import EnvState, collect

SMALL = PolicyConfig(hidden_sizes=(8,))
# CartPole-v1 ends an episode when |x| > 2.4 or |theta| > 12 degrees; resets draw U(-0.05, 0.05).
X_LIMIT, THETA_LIMIT, RESET_RANGE = 2.4, 12 * 2 * np.pi / 360, 0.05


@pytest.fixture
def cartpole():
    envs = make_vector_env("CartPole-v1", 4)
    yield envs
    envs.close()


def hand_count(dones: np.ndarray) -> tuple[list[bool], list[int]]:
    """From done flags [T, N] alone: which steps are real, and the lengths of finished episodes
    (in the order they end). The step after a done is the env's reset, not a transition."""
    T, N = dones.shape
    valid = np.ones((T, N), bool)
    valid[1:] = ~dones[:-1]
    start = np.zeros(N, int)
    lengths = []
    for t in range(T):
        for i in range(N):
            if dones[t, i]:
                lengths.append(t - start[i] + 1)
                start[i] = t + 2
    return valid, lengths


def test_cartpole_batch_marks_autoreset_steps_and_counts_episodes(cartpole):
    torch.manual_seed(0)
    state = EnvState.reset(cartpole, seed=0)

    batch = collect(state, CategoricalActor(4, 2, SMALL), 80, None)

    dones = (batch.terminated | batch.truncated).numpy()
    assert dones.sum() >= 8  # a near-uniform policy drops the pole every ~20 steps
    valid, lengths = hand_count(dones)
    np.testing.assert_array_equal(batch.valid.numpy(), valid)
    assert batch.num_transitions == valid.sum()
    # CartPole pays 1 per real step, so an episode's return is its length.
    assert batch.episode_lengths == lengths
    assert batch.episode_returns == [float(n) for n in lengths]
    assert (batch.rewards[batch.valid] == 1.0).all()

    obs = batch.obs.numpy()  # no normaliser: what the networks see is the raw observation
    for t, i in zip(*np.nonzero(batch.terminated.numpy()), strict=True):
        final = obs[t + 1, i]
        assert abs(final[0]) > X_LIMIT or abs(final[2]) > THETA_LIMIT  # the true final state
        if t + 2 < obs.shape[0]:
            assert np.all(np.abs(obs[t + 2, i]) <= RESET_RANGE)  # then the reset state
    for t, i in zip(*np.nonzero(~dones), strict=True):
        following = obs[t + 1, i]
        assert abs(following[0]) <= X_LIMIT and abs(following[2]) <= THETA_LIMIT


def test_episodes_and_autoreset_steps_carry_over_between_batches(cartpole):
    torch.manual_seed(1)
    state = EnvState.reset(cartpole, seed=1)
    actor = CategoricalActor(4, 2, SMALL)

    batches = [collect(state, actor, 1, None) for _ in range(60)]

    dones = np.concatenate([(b.terminated | b.truncated).numpy() for b in batches])
    valid = np.concatenate([b.valid.numpy() for b in batches])
    expected_valid, lengths = hand_count(dones)
    assert dones[:-1].sum() >= 4  # episodes ended on batch boundaries
    np.testing.assert_array_equal(valid, expected_valid)
    assert [n for b in batches for n in b.episode_lengths] == lengths
    assert [r for b in batches for r in b.episode_returns] == [float(n) for n in lengths]


def test_pendulum_batch_replays_exactly_in_single_envs():
    """Each env row is what a plain gymnasium env does with the clipped actions: the final
    observation of a truncated episode, then the reset step (invalid), then the new episode."""
    torch.manual_seed(0)
    actor = GaussianActor(3, 1, PolicyConfig(hidden_sizes=(8,), log_std_init=1.0))
    envs = make_vector_env("Pendulum-v1", 2)
    try:
        state = EnvState.reset(envs, seed=7)
        torch.manual_seed(1)
        batch = collect(state, actor, 203, None)
    finally:
        envs.close()

    # The batch keeps the policy's own samples (what log-probs are taken of), unclipped.
    torch.manual_seed(1)
    with torch.no_grad():
        resampled = torch.stack([actor(batch.obs[t]).sample() for t in range(203)])
    assert torch.equal(batch.actions, resampled)
    actions = batch.actions.numpy()
    assert (np.abs(actions) > 2.0).any()
    truncated_at = np.flatnonzero(batch.truncated[:, 0].numpy())
    np.testing.assert_array_equal(truncated_at, [199])  # Pendulum's 200-step time limit
    assert not batch.terminated.any()
    assert not batch.valid[200].any() and batch.valid[201:].all() and batch.valid[:200].all()

    for i in range(2):
        env = gym.make("Pendulum-v1")
        obs, _ = env.reset(seed=7 + i)  # env i of the vector env is seeded seed + i
        np.testing.assert_array_equal(batch.obs[0, i].numpy(), obs)
        total = 0.0
        for t in range(200):
            obs, reward, _, truncated, _ = env.step(actions[t, i].clip(-2.0, 2.0))
            total += reward
            np.testing.assert_array_equal(batch.obs[t + 1, i].numpy(), obs)
            assert batch.rewards[t, i].item() == pytest.approx(reward, rel=1e-6)
        assert truncated  # obs[200] is the final observation, which truncation bootstraps from
        assert batch.episode_returns[i] == pytest.approx(total, rel=1e-6)
        obs, _ = env.reset()  # what NEXT_STEP autoreset does at step 200, ignoring the action
        np.testing.assert_array_equal(batch.obs[201, i].numpy(), obs)
        obs, *_ = env.step(actions[201, i].clip(-2.0, 2.0))
        np.testing.assert_array_equal(batch.obs[202, i].numpy(), obs)
        env.close()
    assert batch.episode_lengths == [200, 200]


def test_normalised_batch_keeps_raw_observations_for_the_normaliser():
    torch.manual_seed(0)
    envs = make_vector_env("Pendulum-v1", 2)
    normalizer = ObsNormalizer.create(3, clip=1.5)
    normalizer.update(np.array([[0.5, 0.0, 2.0], [-0.5, 0.2, -1.0], [0.1, -0.3, 0.0]]))
    try:
        state = EnvState.reset(envs, seed=0)
        batch = collect(state, GaussianActor(3, 1, SMALL), 20, normalizer)
    finally:
        envs.close()

    raw = batch.raw_obs
    by_hand = (raw - normalizer.mean) / np.sqrt(normalizer.var + 1e-8)
    np.testing.assert_allclose(batch.obs[:-1].numpy(), by_hand.clip(-1.5, 1.5), rtol=1e-5)
    assert np.abs(by_hand).max() > 1.5  # the clip mattered
    assert batch.obs.abs().max() <= 1.5


def test_obs_normalizer_merges_batches_like_one_pass():
    rng = np.random.default_rng(0)
    data = rng.normal(loc=[3.0, -1.0], scale=[2.0, 0.1], size=(300, 2))
    normalizer = ObsNormalizer.create(2, clip=10.0)
    for chunk in np.array_split(data, [1, 50, 51, 170]):
        normalizer.update(chunk)
    # One pass over the data plus the prior: 1e-4 pseudo-observations of mean 0, variance 1.
    total = len(data) + 1e-4
    mean = data.sum(0) / total
    var = (1e-4 * 1.0 + (data**2).sum(0)) / total - mean**2
    np.testing.assert_allclose(normalizer.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(normalizer.var, var, rtol=1e-9)
    assert normalizer.count == pytest.approx(total)
    restored = ObsNormalizer.from_state_dict(normalizer.state_dict())
    np.testing.assert_array_equal(restored.normalize(data), normalizer.normalize(data))
