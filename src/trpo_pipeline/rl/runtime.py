"""What depends on this machine: the environments gymnasium and EnvPool know and the devices
torch sees.

The checks that need gymnasium, EnvPool or torch live here, and only here. They are imported
inside the functions so that reading a config stays fast for commands that end on a bad value
before anything runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trpo_pipeline.rl.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = ("cpu", "cuda", "auto")
VECTORIZATIONS = ("sync", "envpool")


def env_id_problem(env_id: str) -> str | None:
    """What is wrong with a gymnasium environment id (None: gymnasium knows it)."""
    import gymnasium as gym

    if env_id in gym.registry:
        return None
    close = sorted(
        k for k in gym.registry if k.split("-")[0].lower() == env_id.split("-")[0].lower()
    )
    hint = f" (did you mean {', '.join(close)}?)" if close else " (see gymnasium.pprint_registry())"
    return f"unknown gymnasium environment {env_id!r}{hint}"


def envpool_mujoco_ids() -> list[str]:
    """The gymnasium MuJoCo ids EnvPool has (rl/envpool_env.py runs them). ImportError when
    envpool is not installed; its import takes about 2 s, paid only when it is asked for."""
    import envpool
    import gymnasium as gym

    have = set(envpool.list_all_envs())
    return sorted(
        k for k, spec in gym.registry.items() if "mujoco" in str(spec.entry_point) and k in have
    )


def vectorization_problem(vectorization: str, env_id: str) -> str | None:
    """What is wrong with stepping ``env_id`` with ``vectorization`` here (None: it can)."""
    if vectorization != "envpool":
        return None
    allowed = f"allowed: {', '.join(VECTORIZATIONS)}"
    try:
        ids = envpool_mujoco_ids()
    except ImportError:
        return f"envpool is not installed (pip install envpool==1.2.5; {allowed})"
    if env_id in ids:
        return None
    latest = ", ".join(k for k in ids if k.endswith("-v5"))
    return f"envpool has no {env_id}: it runs the MuJoCo ids {latest} and older ({allowed})"


def device_problem(name: str) -> str | None:
    """What is wrong with ``train.device`` on this machine (None: torch can use it)."""
    if name != "cuda":
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return "cuda was asked for but torch sees no CUDA device (use cpu or auto)"


def check_device(name: str) -> None:
    """ConfigError on ``train.device`` if this machine cannot give it (before anything runs)."""
    if problem := device_problem(name):
        raise ConfigError("train.device", problem)


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device: auto is CUDA when there is one. ConfigError if a
    device is asked for that this machine lacks."""
    import torch

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
