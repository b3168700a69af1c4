"""Vector environments, seeding, and the running observation normaliser."""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

# NEXT_STEP is the one mode every gymnasium vector env supports (the native CartPole vector env
# supports nothing else): the step after a done returns the reset observation, reward 0 and
# ignores the action. Rollouts mark that transition invalid (see rollout.py), and in exchange
# the observation returned with done=True is the true final observation, which truncated
# episodes bootstrap from.
AUTORESET_MODE = AutoresetMode.NEXT_STEP


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _route_mujoco_warnings() -> None:
    """MuJoCo prints its model-compiler warnings to stderr once per env (16 envs, 16 copies);
    sent through Python's warnings they are shown once and can be filtered."""
    import mujoco

    def warn(message: str) -> None:
        warnings.warn(f"MuJoCo: {message.strip()}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(warn)


def make_vector_env(
    env_id: str, num_envs: int, *, seed_per_env: bool = False
) -> gym.vector.VectorEnv:
    """A vector env: gymnasium's native vectorised implementation when the env has one.

    ``seed_per_env`` asks for one gymnasium env per slot instead, so that ``reset(seed=s)``
    seeds env i with s + i: a native vector env (CartPole's) draws every env from one generator.
    """
    spec = gym.spec(env_id)
    if "mujoco" in str(spec.entry_point):
        _route_mujoco_warnings()
    if spec.vector_entry_point is not None and not seed_per_env:
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    else:
        envs = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AUTORESET_MODE},
        )
    mode = envs.metadata.get("autoreset_mode")
    if mode != AUTORESET_MODE:
        envs.close()
        raise ValueError(f"{env_id}: vector env autoresets with {mode}, expected {AUTORESET_MODE}")
    return envs


def space_dims(envs: gym.vector.VectorEnv) -> tuple[int, gym.Space]:
    """Flat observation size and the single-env action space (Discrete or Box)."""
    obs_space = envs.single_observation_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"only flat Box observations are supported, got {obs_space}")
    act_space = envs.single_action_space
    if not isinstance(act_space, gym.spaces.Discrete | gym.spaces.Box):
        raise ValueError(f"only Discrete and Box action spaces are supported, got {act_space}")
    return int(obs_space.shape[0]), act_space


def _merge_moments(
    mean: np.ndarray, var: np.ndarray, count: float, batch: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Running (mean, var, count) merged with a [B, ...] batch (Chan et al.'s parallel update)."""
    batch = batch.astype(np.float64)
    b_mean, b_var, b_count = batch.mean(0), batch.var(0), batch.shape[0]
    delta = b_mean - mean
    total = count + b_count
    m2 = var * count + b_var * b_count + delta**2 * count * b_count / total
    return mean + delta * b_count / total, m2 / total, total


@dataclass
class ObsNormalizer:
    """Running mean and variance of observations (parallel Welford / Chan et al. merge).

    Statistics are frozen while a batch is collected and updated after it, so the policy that
    acted and the policy that is updated see identically normalised observations.
    """

    mean: np.ndarray
    var: np.ndarray
    count: float
    clip: float

    @classmethod
    def create(cls, dim: int, clip: float) -> ObsNormalizer:
        # count starts at a tiny epsilon so the first merge is (numerically) a plain copy.
        return cls(np.zeros(dim), np.ones(dim), 1e-4, clip)

    def update(self, batch: np.ndarray) -> None:
        batch = batch.reshape(-1, self.mean.shape[0])
        self.mean, self.var, self.count = _merge_moments(self.mean, self.var, self.count, batch)

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        out = (obs - self.mean) / np.sqrt(self.var + 1e-8)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, object]:
        return {
            "mean": torch.from_numpy(self.mean.copy()),
            "var": torch.from_numpy(self.var.copy()),
            "count": float(self.count),
            "clip": float(self.clip),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> ObsNormalizer:
        return cls(
            state["mean"].numpy().astype(np.float64),  # type: ignore[union-attr]
            state["var"].numpy().astype(np.float64),  # type: ignore[union-attr]
            float(state["count"]),  # type: ignore[arg-type]
            float(state["clip"]),  # type: ignore[arg-type]
        )


@dataclass
class RewardScaler:
    """Rewards divided by the running std of the discounted return, as VecNormalize does
    (Engstrom et al. 2020, "Implementation matters in deep policy gradients").

    Value targets then stay O(1) whatever the env's reward scale (Pendulum's hundreds,
    HalfCheetah's thousands), so the critic fits them in a few Adam steps. Only the learner
    sees scaled rewards; reported episode returns stay raw.
    """

    gamma: float
    clip: float
    var: float = 1.0
    mean: float = 0.0
    count: float = 1e-4
    running: np.ndarray | None = None  # each env's discounted return so far (not saved)

    def scale(self, rewards: np.ndarray, done: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """[T, N] raw rewards -> scaled, after merging this batch's discounted returns into the
        statistics. ``done`` ends an episode after its step; invalid (autoreset) steps add 0."""
        if self.running is None:
            self.running = np.zeros(rewards.shape[1])
        returns = np.empty(rewards.shape)
        for t in range(rewards.shape[0]):
            self.running = self.gamma * self.running + np.where(valid[t], rewards[t], 0.0)
            returns[t] = self.running
            self.running = np.where(done[t], 0.0, self.running)
        mean, var, count = _merge_moments(
            np.array(self.mean), np.array(self.var), self.count, returns[valid]
        )
        self.mean, self.var, self.count = float(mean), float(var), count
        scaled = rewards / np.sqrt(self.var + 1e-8)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def restart(self) -> None:
        """The envs were reset: every episode's discounted return starts again at 0."""
        self.running = None

    def state_dict(self) -> dict[str, float]:
        return {
            "gamma": self.gamma,
            "clip": self.clip,
            "var": self.var,
            "mean": self.mean,
            "count": self.count,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, float]) -> RewardScaler:
        return cls(**state)


def preprocess(obs: np.ndarray, normalizer: ObsNormalizer | None) -> np.ndarray:
    """What the networks see: normalised when a normaliser is on, float32 always."""
    if normalizer is None:
        return np.asarray(obs, dtype=np.float32)
    return normalizer.normalize(obs)
