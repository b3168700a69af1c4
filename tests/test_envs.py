"""envs.py: the reward scaler (the observation normaliser is tested with the rollouts)."""

from __future__ import annotations

import numpy as np
import pytest

from trpo_pipeline.rl.normalizers import RewardScaler


def test_rewards_are_divided_by_the_std_of_the_discounted_return():
    scaler = RewardScaler(gamma=0.5, clip=10.0)
    rewards = np.array([[1.0], [1.0], [1.0]])
    no = np.zeros((3, 1), bool)

    scaled = scaler.scale(rewards, done=no, valid=~no)

    returns = np.array([1.0, 1.5, 1.75])  # R_t = r_t + 0.5 R_{t-1}, worked by hand
    # The merge starts from (mean 0, var 1, count 1e-4): the batch's variance, nudged a hair.
    assert scaler.var == pytest.approx(returns.var(), rel=1e-3)
    np.testing.assert_allclose(scaled[:, 0], 1.0 / np.sqrt(scaler.var + 1e-8), rtol=1e-6)


def test_the_discounted_return_restarts_after_an_episode_end_and_skips_autoreset_steps():
    scaler = RewardScaler(gamma=1.0, clip=10.0)
    rewards = np.array([[2.0], [2.0], [0.0], [2.0]])
    done = np.array([[False], [True], [False], [False]])
    valid = np.array([[True], [True], [False], [True]])  # step 2 is the env's reset

    scaler.scale(rewards, done, valid)

    # Returns seen on valid steps: 2, 4 (episode ends), then 2 again: not 6.
    seen = np.array([2.0, 4.0, 2.0])
    assert scaler.mean == pytest.approx(seen.mean(), rel=1e-3)
    assert scaler.var == pytest.approx(seen.var(), rel=1e-3)


def test_scaled_rewards_are_clipped_and_the_state_round_trips():
    scaler = RewardScaler(gamma=0.9, clip=0.5)
    rewards = np.array([[100.0, -100.0], [0.0, 0.0]])
    none = np.zeros((2, 2), bool)

    scaled = scaler.scale(rewards, none, ~none)

    assert scaled.max() <= 0.5 and scaled.min() >= -0.5
    restored = RewardScaler.from_state_dict(scaler.state_dict())
    later = np.array([[1.0, 2.0]])
    restored.restart()
    scaler.restart()
    one = np.zeros((1, 2), bool)
    np.testing.assert_array_equal(restored.scale(later, one, ~one), scaler.scale(later, one, ~one))
