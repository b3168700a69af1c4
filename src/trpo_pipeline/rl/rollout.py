"""Collecting a batch of transitions from a vector env with batched policy inference."""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from trpo_pipeline.rl.normalizers import ObsNormalizer, preprocess
from trpo_pipeline.rl.policies import Actor, env_action


@dataclass(frozen=True)
class Batch:
    """T steps of N envs. Index [t, i] is step t of env i.

    ``obs`` has T+1 rows: ``obs[t+1]`` is what followed action ``actions[t]``. With gymnasium's
    NEXT_STEP autoreset, when step t ends an episode ``obs[t+1]`` is its true final observation
    (what a truncated episode bootstraps from) and step t+1 is the env's reset, which is not a
    transition of the MDP: ``valid[t+1]`` is False and it is left out of every loss.
    """

    obs: torch.Tensor  # [T+1, N, obs_dim], as the networks see them (normalised if enabled)
    actions: torch.Tensor  # [T, N] (Discrete) or [T, N, act_dim] (Box)
    rewards: torch.Tensor  # [T, N]
    terminated: torch.Tensor  # [T, N] bool: reached a terminal state, V(next) = 0
    truncated: torch.Tensor  # [T, N] bool: cut by a time limit, bootstrap from V(next)
    valid: torch.Tensor  # [T, N] bool: a real transition (not an autoreset step)
    raw_obs: np.ndarray  # [T, N, obs_dim] unnormalised, to update the normaliser afterwards
    episode_returns: list[float]  # episodes that ended during this batch
    episode_lengths: list[int]

    @property
    def num_transitions(self) -> int:
        return int(self.valid.sum())


@dataclass
class EnvState:
    """What carries over from one batch to the next: the envs and their running episodes."""

    envs: gym.vector.VectorEnv
    obs: np.ndarray
    prev_done: np.ndarray
    episode_return: np.ndarray
    episode_length: np.ndarray
    action_space: gym.Space = field(init=False)

    def __post_init__(self) -> None:
        self.action_space = self.envs.single_action_space

    @classmethod
    def reset(cls, envs: gym.vector.VectorEnv, seed: int) -> EnvState:
        """Reset env i with seed ``seed + i`` (gymnasium's convention; EnvPool envs: a fresh pool
        seeded with ``seed``) and seed the action space."""
        obs, _ = envs.reset(seed=seed)
        envs.action_space.seed(seed)
        n = envs.num_envs
        return cls(envs, obs, np.zeros(n, bool), np.zeros(n), np.zeros(n, np.int64))


def collect(
    state: EnvState,
    actor: Actor,
    steps: int,
    normalizer: ObsNormalizer | None,
    device: torch.device | None = None,
) -> Batch:
    """Run ``steps`` steps in every env, sampling actions from ``actor`` (on ``device``)."""
    n = state.envs.num_envs
    obs_dim = state.obs.shape[-1]
    raw = np.empty((steps + 1, n, obs_dim), np.float32)
    seen = np.empty((steps + 1, n, obs_dim), np.float32)
    actions: list[torch.Tensor] = []
    rewards = np.empty((steps, n), np.float32)
    terminated = np.empty((steps, n), bool)
    truncated = np.empty((steps, n), bool)
    valid = np.empty((steps, n), bool)
    returns: list[float] = []
    lengths: list[int] = []

    with torch.inference_mode():
        for t in range(steps):
            raw[t] = state.obs
            seen[t] = preprocess(state.obs, normalizer)
            action = actor.sample(torch.from_numpy(seen[t]).to(device))
            actions.append(action)
            obs, reward, term, trunc, _ = state.envs.step(env_action(action, state.action_space))
            real = ~state.prev_done
            rewards[t], terminated[t], truncated[t], valid[t] = reward, term, trunc, real
            state.episode_return += np.where(real, reward, 0.0)
            state.episode_length += real
            done = term | trunc
            for i in np.flatnonzero(done):
                returns.append(float(state.episode_return[i]))
                lengths.append(int(state.episode_length[i]))
            state.episode_return[done] = 0.0
            state.episode_length[done] = 0
            state.prev_done = done
            state.obs = obs
    raw[steps] = state.obs
    seen[steps] = preprocess(state.obs, normalizer)
    return Batch(
        obs=torch.from_numpy(seen).to(device),
        actions=torch.stack(actions),
        rewards=torch.from_numpy(rewards).to(device),
        terminated=torch.from_numpy(terminated).to(device),
        truncated=torch.from_numpy(truncated).to(device),
        valid=torch.from_numpy(valid).to(device),
        raw_obs=raw[:steps],
        episode_returns=returns,
        episode_lengths=lengths,
    )
