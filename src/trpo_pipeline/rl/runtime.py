"""What depends on this machine: the environments gymnasium and EnvPool know and the devices
torch sees.

The checks that need gymnasium, EnvPool or torch live here, and only here. They are imported
inside the functions so that reading a config stays fast for commands that end on a bad value
before anything runs.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trpo_pipeline.rl.errors import ConfigError, first_line

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


# Set by the engine itself, never by a config: rendering is evaluation's choice (video.py).
_ENGINE_ARGS = ("render_mode",)
_PLAIN = bool | int | float | str | None
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def env_kwargs_data(kwargs: Mapping[str, Any]) -> str | None:
    """What is wrong with ``env.kwargs`` as data: names, and values YAML, JSON and a checkpoint
    (loaded with weights_only) all hold: numbers, strings, booleans, null and lists of them."""
    for name, value in kwargs.items():
        if not isinstance(name, str) or not name.isidentifier():
            return f"argument names must be Python identifiers, got {name!r}"
        items = value if isinstance(value, list | tuple) else [value]
        if not all(isinstance(v, _PLAIN) for v in items):
            return f"{name}: values must be numbers, strings, booleans, null or lists of them"
    return None


def env_arguments(env_id: str) -> list[str]:
    """The keyword arguments the constructor of ``env_id`` names: its own and those of the
    classes it hands ``**kwargs`` on to (a MuJoCo env's MujocoEnv)."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    entry = gym.spec(env_id).entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    inits = (
        [vars(owner)["__init__"] for owner in creator.__mro__ if "__init__" in vars(owner)]
        if isinstance(creator, type)
        else [creator]
    )
    names: set[str] = set()
    for init in inits:
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind in _NAMED}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return sorted(names)


def env_kwargs_problem(env_id: str, kwargs: Mapping[str, Any]) -> tuple[str, str] | None:
    """(argument, what is wrong) when ``gymnasium.make(env_id, **kwargs)`` cannot build and
    reset the env (argument "" when the fault is not one argument's); None when it can. The
    env is built once to find out: a value's type or range is the env's own rule."""
    if not kwargs:
        return None
    import gymnasium as gym

    every = env_arguments(env_id)
    for name in kwargs:
        if name in _ENGINE_ARGS:
            return name, "is set by the engine (evaluation renders its videos itself)"
        if name not in every:
            close = difflib.get_close_matches(name, every, n=2)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            where = str(gym.spec(env_id).entry_point).replace(":", ".")
            return name, f"{env_id} takes no such argument ({hint}see help({where}))"
    try:
        env = gym.make(env_id, **kwargs)
        try:
            env.reset(seed=0)  # some arguments are first used here (reset_noise_scale)
        finally:
            env.close()
    except Exception as err:  # whatever the env raises (TypeError, ValueError, ...) answers
        first = first_line(str(err), type(err).__name__)
        return "", f"gymnasium.make({env_id!r}, **env.kwargs) failed: {first}"
    return None


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
