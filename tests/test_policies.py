"""policies.py: the distributions the actors return, action clipping, and a separate critic."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from trpo_pipeline.rl.adam import Adam
from trpo_pipeline.rl.config import PolicyConfig
from trpo_pipeline.rl.policies import (
    CategoricalActor,
    Critic,
    GaussianActor,
    env_action,
    make_actor,
    mlp,
)

CFG = PolicyConfig(hidden_sizes=(8,), critic_hidden_sizes=(8,), log_std_init=0.5)
BOX = gym.spaces.Box(low=-2.0, high=2.0, shape=(2,), dtype=np.float32)
DISCRETE = gym.spaces.Discrete(3)


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["categorical", "gaussian"])
def test_actor_and_critic_share_no_parameters(space):
    torch.manual_seed(0)
    actor, critic = make_actor(4, space, CFG), Critic(4, CFG)
    actor_storage = {p.untyped_storage().data_ptr() for p in actor.parameters()}
    critic_storage = {p.untyped_storage().data_ptr() for p in critic.parameters()}
    assert actor_storage.isdisjoint(critic_storage)

    # Training the critic as train.py does cannot move the policy.
    before = [p.detach().clone() for p in actor.parameters()]
    optimizer = Adam(critic.parameters(), lr=0.1)
    obs = torch.randn(32, 4)
    loss = (critic(obs) - 10.0).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(actor.parameters(), before, strict=True))


def test_make_actor_follows_the_action_space():
    assert isinstance(make_actor(4, DISCRETE, CFG), CategoricalActor)
    assert isinstance(make_actor(4, BOX, CFG), GaussianActor)
    with pytest.raises(ValueError, match="unsupported action space"):
        make_actor(4, gym.spaces.MultiBinary(3), CFG)


def test_gaussian_log_prob_is_the_diagonal_normal_density():
    torch.manual_seed(0)
    actor = GaussianActor(4, 2, CFG)
    obs = torch.randn(5, 4)
    actions = 3.0 * torch.randn(5, 2)
    with torch.no_grad():
        mu = actor.mode(obs)
        log_prob = actor(obs).log_prob(actions)
    std = math.exp(CFG.log_std_init)
    by_hand = -((actions - mu) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(log_prob, by_hand.sum(-1))


def test_categorical_mode_is_the_most_likely_action():
    torch.manual_seed(0)
    actor = CategoricalActor(4, 3, CFG)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(torch.randn_like(p))
        obs = torch.randn(64, 4)
        probs = actor(obs).probs
    torch.testing.assert_close(actor.mode(obs), probs.argmax(-1))


def test_gaussian_actions_are_clipped_for_the_env_only():
    torch.manual_seed(0)
    actor = GaussianActor(4, 2, PolicyConfig(hidden_sizes=(8,), log_std_init=1.5))
    obs = torch.randn(256, 4)
    with torch.no_grad():
        dist = actor(obs)
        sample = dist.sample()
    sample_copy = sample.clone()

    to_env = env_action(sample, BOX)

    assert (sample.abs() > 2.0).any()  # std e^1.5: many samples leave the box
    assert np.all(to_env >= BOX.low) and np.all(to_env <= BOX.high)
    np.testing.assert_array_equal(to_env, sample.numpy().clip(-2.0, 2.0))
    assert torch.equal(sample, sample_copy)  # the sample itself (what log-probs use) is kept
    # Where the sample was clipped, the density of the clipped action is a different number.
    clipped = torch.from_numpy(to_env)
    outside = (sample.abs() > 2.0).any(-1)
    assert not torch.allclose(dist.log_prob(sample)[outside], dist.log_prob(clipped)[outside])


def test_discrete_actions_pass_through():
    action = torch.tensor([0, 2, 1])
    np.testing.assert_array_equal(env_action(action, DISCRETE), np.array([0, 2, 1]))


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["categorical", "gaussian"])
def test_the_rollout_shortcut_samples_what_the_distribution_samples(space):
    # Rollouts call actor.sample(obs) to skip building a distribution per step; the draws (and
    # so every result) are the ones actor(obs).sample() would have made.
    actor = make_actor(3, space, CFG)
    obs = torch.randn(256, 3)
    torch.manual_seed(7)
    expected = actor(obs).sample()
    torch.manual_seed(7)
    assert torch.equal(actor.sample(obs), expected)


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_the_mlp_computes_what_nn_sequential_computes_bit_for_bit(activation):
    # Its forward skips the per-layer module calls; checkpoints, curves and resumes rely on
    # the numbers (and the state_dict keys) being nn.Sequential's exactly, with gradients.
    torch.manual_seed(0)
    net = mlp(5, (16, 16), 3, activation, out_gain=0.01)
    x = torch.randn(7, 5)
    fast, slow = net(x), torch.nn.Sequential.forward(net, x)
    assert torch.equal(fast, slow)
    grad_fast = torch.autograd.grad(fast.square().sum(), list(net.parameters()))
    grad_slow = torch.autograd.grad(slow.square().sum(), list(net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grad_fast, grad_slow, strict=True))
    assert list(net.state_dict()) == [f"{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")]
