"""The engine's configuration: what an environment, a policy, TRPO, a training run and an
evaluation take. Each field's type, default, bounds and doc are declared once, beside it
(schema.py); :func:`run_config_from_dict` builds and checks a whole :class:`RunConfig`.

Upper bounds are where a value stops being an experiment and becomes a typo that would crash or
exhaust the machine after minutes (torch segfaults on 10^5 threads, 10^8 units allocate
terabytes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trpo_pipeline.rl import runtime
from trpo_pipeline.rl.errors import ConfigError
from trpo_pipeline.rl.schema import (
    build,
    file_path,
    folder_name,
    group,
    setting,
    to_dict,
)

ACTIVATIONS = ("tanh", "relu", "elu")
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes seeds in [0, 2^32)
MAX_LAYER = 8192  # units per hidden layer
MAX_LAYERS = 64  # hidden layers
MAX_EPISODES = 10_000  # evaluation runs its episodes side by side, one env each
MAX_VIDEO_FRAMES = 100_000  # frames are held in memory before encoding (~0.7 MB each)


def layer_sizes(sizes: tuple[int, ...]) -> str | None:
    if not sizes or len(sizes) > MAX_LAYERS or any(not 0 < s <= MAX_LAYER for s in sizes):
        return (
            f"must be a non-empty list of sizes > 0 (at most {MAX_LAYERS} sizes of at most "
            f"{MAX_LAYER}), got {list(sizes)}"
        )
    return None


@dataclass(frozen=True)
class EnvConfig:
    """Which gymnasium environment, and how its observations and rewards are preprocessed."""

    id: str = setting("CartPole-v1", "any id gymnasium's registry knows (classic control, MuJoCo)")
    kwargs: dict[str, Any] = setting(
        {},
        "arguments of the env's constructor, given to gymnasium.make (Ant-v5: "
        "include_cfrc_ext_in_observation: false)",
        check=runtime.env_kwargs_data,
    )
    normalize_obs: bool = setting(False, "running mean/std normalisation, saved in the checkpoint")
    clip_obs: float = setting(10.0, "normalised observations are clipped to +-clip_obs", gt=0)
    normalize_reward: bool = setting(False, "divide rewards by the running std of the return")
    clip_reward: float = setting(10.0, "scaled rewards are clipped to +-clip_reward", gt=0)
    vectorization: str = setting(
        "sync",
        "how training steps its envs: sync (gymnasium, one after another) or envpool (C++ "
        "threads, MuJoCo ids); evaluation always uses gymnasium's envs",
        one_of=runtime.VECTORIZATIONS,
    )
    envpool_threads: int = setting(
        0,
        "EnvPool's worker threads (0: EnvPool chooses); results do not depend on it",
        ge=0,
        le=1024,
    )

    def check(self) -> None:
        if problem := runtime.env_id_problem(self.id):
            raise ConfigError("id", problem)
        if problem := runtime.vectorization_problem(self.vectorization, self.id):
            raise ConfigError("vectorization", problem)
        if self.kwargs and self.vectorization != "sync":
            raise ConfigError(
                "kwargs", f"env.vectorization={self.vectorization} takes none (allowed: sync)"
            )
        if found := runtime.env_kwargs_problem(self.id, self.kwargs):
            key, problem = found
            raise ConfigError(f"kwargs.{key}" if key else "kwargs", problem)


@dataclass(frozen=True)
class PolicyConfig:
    """Network shapes. Actor and critic are separate networks with separate parameters."""

    hidden_sizes: tuple[int, ...] = setting((64, 64), "actor MLP hidden layers", check=layer_sizes)
    critic_hidden_sizes: tuple[int, ...] = setting(
        (64, 64), "critic MLP hidden layers", check=layer_sizes
    )
    activation: str = setting("tanh", "hidden-layer nonlinearity", one_of=ACTIVATIONS)
    # exp() of it is the initial action std: 2e-9 to 7.4
    log_std_init: float = setting(0.0, "Gaussian policies: initial log std", ge=-20.0, le=2.0)


@dataclass(frozen=True)
class AlgoConfig:
    """TRPO (Schulman et al. 2015) with GAE (Schulman et al. 2016) and a fitted value function."""

    # The KL of the whole action, as in the paper; sb3-contrib's target_kl is the KL per action
    # dimension, so its value is act_dim x target_kl here (docs/benchmarks.md).
    max_kl: float = setting(
        0.01, "delta: trust-region radius on mean KL(old || new) of the whole action", gt=0
    )
    gamma: float = setting(0.99, "discount", gt=0.0, le=1.0)
    gae_lambda: float = setting(
        0.95, "GAE lambda: 0 = one-step TD, 1 = Monte Carlo", ge=0.0, le=1.0
    )
    vf_lr: float = setting(3e-3, "Adam learning rate of the critic", gt=0, le=1.0)
    vf_epochs: int = setting(4, "passes over the batch when fitting the critic", gt=0, le=10_000)
    vf_minibatch: int = setting(512, "critic minibatch size", gt=0, le=10_000_000)
    cg_iters: int = setting(10, "conjugate-gradient iterations for F^-1 g", gt=0, le=10_000)
    cg_damping: float = setting(0.1, "F + damping * I keeps CG well conditioned", ge=0, le=1000.0)
    line_search_steps: int = setting(10, "backtracking steps before giving up", gt=0, le=1000)
    line_search_shrink: float = setting(0.8, "step multiplier per backtracking step", gt=0, lt=1)
    # The batch is held in memory.
    steps_per_update: int = setting(2048, "transitions per batch, all envs", gt=0, le=10_000_000)
    num_envs: int = setting(16, "parallel environments in the vector env", gt=0, le=1024)
    entropy_coef: float = setting(0.0, "weight of the entropy bonus in the surrogate", ge=0, le=1.0)
    normalize_advantages: bool = setting(True, "standardise advantages per batch")
    fvp_subsample: float = setting(
        0.1, "fraction of the batch used for Fisher-vector products", gt=0.0, le=1.0
    )

    @property
    def steps_per_env(self) -> int:
        return self.steps_per_update // self.num_envs

    def check(self) -> None:
        if self.steps_per_update % self.num_envs:
            raise ConfigError(
                "steps_per_update",
                f"must be a multiple of algo.num_envs={self.num_envs}, got {self.steps_per_update}",
            )
        if self.steps_per_env < 2:
            raise ConfigError("steps_per_update", "must give at least 2 steps per env")


@dataclass(frozen=True)
class TrainConfig:
    """The training budget and run-time settings."""

    total_steps: int = setting(50_000, "environment transitions to train for", gt=0)
    checkpoint_every: int = setting(10, "updates between periodic checkpoints", gt=0)
    # Small MLPs run fastest (and reproducibly) on one thread; torch segfaults on 10^5.
    torch_threads: int = setting(1, "torch intra-op threads", gt=0, le=1024)
    device: str = setting("cpu", "where the networks run", one_of=runtime.DEVICES)
    progress: bool = setting(True, "progress bar on stderr")


@dataclass(frozen=True)
class EvaluateConfig:
    """Deterministic evaluation of a checkpoint."""

    episodes: int = setting(20, "episodes, each with its own fixed seed", gt=0, le=MAX_EPISODES)
    # Episode i is reset with seed + i: disjoint from training seeds.
    seed: int = setting(1_000_000, "seed of the first episode", ge=0, le=MAX_SEED)
    deterministic: bool = setting(True, "argmax / mean action instead of sampling")
    checkpoint: str | None = setting(
        None, "checkpoint to evaluate (null: the run folder's checkpoint.pt)", check=file_path
    )
    video_episodes: int = setting(
        0, "the first episodes also recorded as MP4 (video/episode-<i>.mp4)", ge=0
    )
    # A MuJoCo frame renders in about 0.1 s on a CPU: a 1000-step episode would take minutes.
    video_max_frames: int = setting(
        500, "frames a video records at most (the episode's first ones)", gt=0, le=MAX_VIDEO_FRAMES
    )

    def check(self) -> None:
        if self.video_episodes > self.episodes:
            raise ConfigError(
                "video_episodes",
                f"must be <= evaluate.episodes={self.episodes}, got {self.video_episodes}",
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run and its evaluation take."""

    env: EnvConfig = group(EnvConfig, "the environment")
    policy: PolicyConfig = group(PolicyConfig, "the networks")
    algo: AlgoConfig = group(AlgoConfig, "TRPO's hyperparameters")
    train: TrainConfig = group(TrainConfig, "the training budget")
    evaluate: EvaluateConfig = group(EvaluateConfig, "the evaluation")
    name: str = setting("cartpole", "experiment name: runs/<name>/seed<seed>", check=folder_name)
    seed: int = setting(0, "seeds python, numpy, torch, the envs", ge=0, le=MAX_SEED)
    resume: str | None = setting(None, "checkpoint path to continue training from", check=file_path)
    overwrite: bool = setting(False, "allow replacing the results already in the run folder")


def run_config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """The engine's part of a config mapping (a checkpoint's config, a whole pipeline config),
    checked; keys of other groups (tracking, tune) are left out."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return build(RunConfig, {k: v for k, v in values.items() if k in names})


def engine_dict(cfg: RunConfig) -> dict[str, Any]:
    """The engine's fields of ``cfg`` (a RunConfig, or a pipeline config holding one) as plain
    data: what a run folder and a checkpoint record."""
    values = to_dict(cfg)
    return {f.name: values[f.name] for f in dataclasses.fields(RunConfig)}
