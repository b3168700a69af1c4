"""Running statistics the learner normalises with: observations (mean and std) and rewards
(the std of the discounted return). Their state is part of the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
