"""Vector environments and seeding."""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from trpo_pipeline.rl.envpool_env import EnvPoolVectorEnv

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
    env_id: str,
    num_envs: int,
    *,
    kwargs: Mapping[str, Any] | None = None,
    seed_per_env: bool = False,
    vectorization: str = "sync",
    envpool_threads: int = 0,
) -> gym.vector.VectorEnv:
    """A vector env: gymnasium's native vectorised implementation when the env has one.

    ``kwargs`` go to each env's constructor (``env.kwargs``). ``seed_per_env``, or any
    ``kwargs``, asks for one gymnasium env per slot instead: ``reset(seed=s)`` then seeds env i
    with s + i (a native vector env, CartPole's, draws every env from one generator), and the
    arguments are the env's own (a native vector env's constructor takes others).
    ``vectorization="envpool"`` gives EnvPool's C++ envs on ``envpool_threads`` threads instead
    (MuJoCo ids; the config checks the id first, runtime.vectorization_problem).
    """
    spec = gym.spec(env_id)
    if "mujoco" in str(spec.entry_point):
        _route_mujoco_warnings()
    if vectorization == "envpool":
        return EnvPoolVectorEnv(env_id, num_envs, threads=envpool_threads)
    if spec.vector_entry_point is not None and not seed_per_env and not kwargs:
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    else:
        envs = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AUTORESET_MODE},
            **dict(kwargs or {}),
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
