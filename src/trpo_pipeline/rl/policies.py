"""Actor (categorical or diagonal Gaussian) and a separate critic.

The actor maps observations to a ``torch.distributions`` object; the critic maps observations
to V(s). They share no parameters, so the critic's optimiser can never move the policy.
"""

from __future__ import annotations

import itertools
import math

import gymnasium as gym
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal
from torch.nn import functional

from trpo_pipeline.rl.config import PolicyConfig

# Argument validation costs more than the forward pass of a small MLP; shapes are fixed here.
torch.distributions.Distribution.set_default_validate_args(False)

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
_ACTIVATION_FUNCTIONS = {nn.Tanh: torch.tanh, nn.ReLU: torch.relu, nn.ELU: functional.elu}


class MLP(nn.Sequential):
    """Linear layers and activations, as ``nn.Sequential`` (same parameters, same state_dict
    keys, the same arithmetic), run without a module call per layer: on a rollout step's batch
    of a few observations those calls cost as much as the arithmetic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, nn.Linear):
                x = functional.linear(x, layer.weight, layer.bias)
            else:
                x = _ACTIVATION_FUNCTIONS[type(layer)](x)
        return x


def mlp(
    in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: str, out_gain: float
) -> MLP:
    """An MLP with orthogonal init (gain sqrt(2) inside, ``out_gain`` on the last layer)."""
    layers: list[nn.Module] = []
    sizes = (in_dim, *hidden)
    for a, b in itertools.pairwise(sizes):
        layers += [_init(nn.Linear(a, b), math.sqrt(2)), _ACTIVATIONS[activation]()]
    layers.append(_init(nn.Linear(sizes[-1], out_dim), out_gain))
    return MLP(*layers)


def _init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class CategoricalActor(nn.Module):
    """pi(a|s) = softmax(logits(s)) for Discrete action spaces."""

    def __init__(self, obs_dim: int, n_actions: int, cfg: PolicyConfig) -> None:
        super().__init__()
        # A small last-layer gain starts the policy near uniform: maximal exploration.
        self.logits = mlp(obs_dim, cfg.hidden_sizes, n_actions, cfg.activation, out_gain=0.01)

    def forward(self, obs: torch.Tensor) -> Distribution:
        return Categorical(logits=self.logits(obs))

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.logits(obs).argmax(-1)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """a ~ pi(.|s), the draw Categorical.sample makes, without building the distribution
        (its argument handling costs as much as the network on a rollout step)."""
        return torch.multinomial(torch.softmax(self.logits(obs), -1), 1, True).squeeze(-1)


class GaussianActor(nn.Module):
    """pi(a|s) = N(mu(s), diag(exp(log_std))^2) with a state-independent log std."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: PolicyConfig) -> None:
        super().__init__()
        self.mu = mlp(obs_dim, cfg.hidden_sizes, act_dim, cfg.activation, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(cfg.log_std_init)))

    def forward(self, obs: torch.Tensor) -> Distribution:
        mu = self.mu(obs)
        return Independent(Normal(mu, self.log_std.exp().expand_as(mu)), 1)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mu(obs)

    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """a ~ pi(.|s), without building the distribution."""
        mu = self.mu(obs)
        return torch.normal(mu, self.log_std.exp().expand_as(mu))


Actor = CategoricalActor | GaussianActor


class Critic(nn.Module):
    """V(s), fitted by regression on lambda-returns."""

    def __init__(self, obs_dim: int, cfg: PolicyConfig) -> None:
        super().__init__()
        self.v = mlp(obs_dim, cfg.critic_hidden_sizes, 1, cfg.activation, out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.v(obs).squeeze(-1)


def make_actor(obs_dim: int, action_space: gym.Space, cfg: PolicyConfig) -> Actor:
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalActor(obs_dim, int(action_space.n), cfg)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return GaussianActor(obs_dim, int(action_space.shape[0]), cfg)
    raise ValueError(f"unsupported action space {action_space}")


def env_action(action: torch.Tensor, action_space: gym.Space) -> object:
    """Turn sampled actions into what the env accepts (Box actions are clipped to its bounds;
    the log-probability stays that of the unclipped sample)."""
    a = action.cpu().numpy()
    if isinstance(action_space, gym.spaces.Box):
        return a.clip(action_space.low, action_space.high)
    return a
