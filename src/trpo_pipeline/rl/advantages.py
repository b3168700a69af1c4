"""Generalised advantage estimation (Schulman et al. 2016, "High-dimensional continuous control
using generalized advantage estimation"), pure tensors in and out."""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) advantages and lambda-returns over a [T, N] batch.

    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)            (GAE eq. 10)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},  A_T = 0        (GAE eq. 16)

    A terminated step does not bootstrap: the value after a terminal state is 0. A truncated
    step does bootstrap from V(s_{t+1}) (the true final observation): the episode was cut by a
    time limit, not ended by the MDP. Either way the recursion stops at an episode end, and the
    last step of the batch bootstraps from V(s_T) like a truncation.

    Returns ``(advantages, returns)`` with ``returns = advantages + values`` (the critic's
    regression target; with lambda = 1 these are discounted Monte-Carlo returns).
    """
    not_terminal = (~terminated).to(values.dtype)
    keep = (~(terminated | truncated)).to(values.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values
    advantages = torch.empty_like(values)
    running = torch.zeros_like(values[0])
    decay = gamma * gae_lambda
    for t in range(values.shape[0] - 1, -1, -1):
        running = deltas[t] + decay * keep[t] * running
        advantages[t] = running
    return advantages, advantages + values


def normalize(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit std. A single sample has no spread to divide by: it is only centred."""
    if advantages.numel() < 2:
        return advantages - advantages.mean()
    return (advantages - advantages.mean()) / (advantages.std() + eps)
