"""EnvPool's C++ MuJoCo envs behind the vector-env interface the engine uses.

EnvPool (``env.vectorization=envpool``) steps its envs on worker threads in C++, without
gymnasium's Python wrappers, which are much of a MuJoCo step's cost (docs/benchmarks.md has
the training speed). It differs from gymnasium's sync vector env in four ways;
:class:`EnvPoolVectorEnv` gives the engine gymnasium's behaviour for each:

- **Seeds at creation.** EnvPool ignores ``reset(seed=...)``; here such a reset builds a fresh
  pool with that seed, so the same seed gives the same episodes, also after a resume.
- **Time limits.** EnvPool reports an episode that terminates on its time-limit step as
  truncated only, which would bootstrap a terminal state. The pool here has no time limit of
  its own; this class counts the steps and reports ``truncated`` as gymnasium's ``TimeLimit``
  does (both flags when both hold), then resets the truncated envs on their next step.
- **float32 rewards** are returned as float64, like gymnasium's.
- **Its own MuJoCo build**: the same seed and actions give different trajectories than
  gymnasium's envs. Evaluation always runs on gymnasium's own envs (rl/evaluate.py).

Autoreset is NEXT_STEP, as in gymnasium: the observation returned with done is the true final
observation, the next step returns the reset observation with reward 0 and ignores the action.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

NO_TIME_LIMIT = 10**9  # the pool's own limit, never reached: this class applies the real one


def _as_int32(seed: int) -> int:
    """EnvPool takes int32 seeds; the engine's are in [0, 2^32): the same bits, one to one."""
    if not 0 <= seed < 2**32:
        raise ValueError(f"EnvPool seeds must be in [0, 2^32), got {seed}")
    return seed - 2**32 if seed >= 2**31 else seed


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` EnvPool envs of ``env_id`` on ``threads`` worker threads (0: EnvPool
    chooses), with gymnasium's seeding, time limits, reward dtype and spaces."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(self, env_id: str, num_envs: int, *, threads: int = 0) -> None:
        reference = gym.make(env_id)  # gymnasium's spaces and time limit, so both agree
        self.single_observation_space = reference.observation_space
        self.single_action_space = reference.action_space
        self.max_episode_steps = reference.spec.max_episode_steps or NO_TIME_LIMIT
        reference.close()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.env_id, self.num_envs, self.threads = env_id, num_envs, threads
        self._pool = self._make_pool(seed=0)
        # Envs this class truncated on the last step: EnvPool did not see an episode end, so
        # they are reset here on their next step.
        self._cut = np.zeros(num_envs, bool)

    def _make_pool(self, seed: int) -> Any:
        # Deferred: an optional fast path whose import takes about 2 s.
        import envpool

        pool = envpool.make_gymnasium(
            self.env_id,
            num_envs=self.num_envs,
            seed=_as_int32(seed),
            num_threads=self.threads,
            max_episode_steps=NO_TIME_LIMIT,
        )
        shapes = (pool.observation_space.shape, pool.action_space.shape)
        if shapes != (self.single_observation_space.shape, self.single_action_space.shape):
            pool.close()
            raise ValueError(f"{self.env_id}: EnvPool's spaces {shapes} differ from gymnasium's")
        return pool

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env; with ``seed``, a fresh pool seeded with it (EnvPool seeds there)."""
        if options:
            raise ValueError(f"EnvPoolVectorEnv.reset takes no options, got {options}")
        if seed is not None:
            self._pool.close()
            self._pool = self._make_pool(seed)
        obs, _ = self._pool.reset()
        self._cut[:] = False
        return obs, {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One step of every env (an env truncated on the last step resets instead)."""
        if self._cut.any():
            obs, reward, terminated, elapsed = self._step_and_reset(np.asarray(actions))
        else:
            obs, reward, terminated, _, info = self._pool.step(np.asarray(actions))
            elapsed = info["elapsed_step"]
        # gymnasium's TimeLimit: truncated at the limit whether or not the step also terminated.
        truncated = elapsed >= self.max_episode_steps
        self._cut = truncated & ~terminated
        return obs, reward.astype(np.float64), terminated, truncated, {}

    def _step_and_reset(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step the envs that go on, reset the ones cut by the time limit (reward 0)."""
        going, cut = np.flatnonzero(~self._cut), np.flatnonzero(self._cut)
        obs = np.empty((self.num_envs, *self.single_observation_space.shape), np.float64)
        reward = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        elapsed = np.zeros(self.num_envs, np.int64)
        if going.size:
            o, r, term, _, info = self._pool.step(actions[going], going.astype(np.int32))
            ids = info["env_id"]
            obs[ids], reward[ids], terminated[ids], elapsed[ids] = o, r, term, info["elapsed_step"]
        o, info = self._pool.reset(cut.astype(np.int32))
        obs[info["env_id"]] = o
        return obs, reward, terminated, elapsed

    def close_extras(self, **kwargs: Any) -> None:
        self._pool.close()
