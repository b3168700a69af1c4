"""The one configuration schema: frozen dataclasses, range checks, and conversion from Hydra.

Every entry point composes conf/ with Hydra, then calls :func:`load_config` once; the rest of
the package only ever sees these plain, validated objects. A bad value raises
:class:`ConfigError`, whose message is one line naming the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ACTIVATIONS = ("tanh", "relu", "elu")
DEVICES = ("cpu", "cuda", "auto")
# Upper bounds: beyond them a value is a typo that would crash or exhaust the machine after
# minutes, not an experiment (torch segfaults on 10^5 threads, 10^8 units allocate terabytes).
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes seeds in [0, 2^32)
MAX_LAYER = 8192  # units per hidden layer
MAX_LAYERS = 64  # hidden layers
MAX_EPISODES = 10_000  # evaluation runs its episodes side by side, one env each
MAX_NAME = 100  # characters of a run or study name (a folder name, inside longer paths)
MAX_PATH = 4096  # characters of a file path or URI (Linux's PATH_MAX)
# Upper bounds of the keys above which training would not finish, blow up memory or diverge
# at once; the lower bounds are in validate().
UPPER_BOUNDS = {
    "algo.vf_lr": 1.0,
    "algo.cg_damping": 1000.0,
    "algo.entropy_coef": 1.0,
    "algo.vf_epochs": 10_000,
    "algo.cg_iters": 10_000,
    "algo.line_search_steps": 1000,
    "algo.steps_per_update": 10_000_000,  # the batch is held in memory
    "algo.vf_minibatch": 10_000_000,
    "algo.num_envs": 1024,
    "train.torch_threads": 1024,  # torch segfaults on 10^5 threads
    "evaluate.episodes": 10_000,  # evaluation runs its episodes side by side, one env each
}
LOG_STD_RANGE = (-20.0, 2.0)  # exp() of it is the initial action std: 2e-9 to 7.4
MAX_MESSAGE = 300  # characters of an error line: a huge value is shown cut short
# MLflow stores: scheme://... (SQLAlchemy dialects may add +driver), or a plain folder.
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")


class ConfigError(ValueError):
    """A user-caused configuration problem; ``str(err)`` is the one line to show them."""

    def __init__(self, key: str, problem: str) -> None:
        text = " ".join((f"{key}: {problem}" if key else problem).split("\n"))
        if len(text) > MAX_MESSAGE:  # a 100 kB value would otherwise be echoed in full
            text = f"{text[: MAX_MESSAGE - 40]}... ({len(text):,} characters in all)"
        super().__init__(text)
        self.key = key


@dataclass(frozen=True)
class EnvConfig:
    """Which gymnasium environment, and how its observations are preprocessed."""

    id: str = "CartPole-v1"  # any id gymnasium's registry knows (classic control, MuJoCo)
    normalize_obs: bool = False  # running mean/std normalisation, saved in the checkpoint
    clip_obs: float = 10.0  # normalised observations are clipped to [-clip_obs, clip_obs]
    normalize_reward: bool = False  # divide rewards by the running std of the discounted return
    clip_reward: float = 10.0  # scaled rewards are clipped to [-clip_reward, clip_reward]


@dataclass(frozen=True)
class PolicyConfig:
    """Network shapes. Actor and critic are separate networks with separate parameters."""

    hidden_sizes: tuple[int, ...] = (64, 64)  # actor MLP hidden layers
    critic_hidden_sizes: tuple[int, ...] = (64, 64)  # critic MLP hidden layers
    activation: str = "tanh"  # one of ACTIVATIONS
    log_std_init: float = 0.0  # Gaussian policies: initial state-independent log std


@dataclass(frozen=True)
class AlgoConfig:
    """TRPO (Schulman et al. 2015) with GAE (Schulman et al. 2016) and a fitted value function."""

    max_kl: float = 0.01  # delta: trust-region radius on mean KL(old || new); 0.001-0.05 typical
    gamma: float = 0.99  # discount in (0, 1]
    gae_lambda: float = 0.95  # GAE lambda in [0, 1]: 0 = one-step TD, 1 = Monte Carlo
    vf_lr: float = 3e-3  # Adam learning rate of the critic
    vf_epochs: int = 4  # passes over the batch when fitting the critic
    vf_minibatch: int = 512  # critic minibatch size
    cg_iters: int = 10  # conjugate-gradient iterations for F^-1 g
    cg_damping: float = 0.1  # F + damping * I keeps CG well conditioned
    line_search_steps: int = 10  # backtracking steps before giving up on the update
    line_search_shrink: float = 0.8  # step fraction multiplier per backtracking step
    steps_per_update: int = 2048  # transitions per batch, across all envs
    num_envs: int = 16  # parallel environments in the vector env
    entropy_coef: float = 0.0  # weight of the entropy bonus in the surrogate
    normalize_advantages: bool = True  # standardise advantages per batch
    fvp_subsample: float = 0.1  # fraction of the batch used for Fisher-vector products

    @property
    def steps_per_env(self) -> int:
        return self.steps_per_update // self.num_envs


@dataclass(frozen=True)
class TrainConfig:
    """The training budget and run-time settings."""

    total_steps: int = 50_000  # environment transitions to train for
    checkpoint_every: int = 10  # updates between periodic checkpoints
    torch_threads: int = 1  # small MLPs run fastest (and reproducibly) on one thread
    device: str = "cpu"  # one of DEVICES
    progress: bool = True  # progress bar on stderr


@dataclass(frozen=True)
class EvaluateConfig:
    """Deterministic evaluation of a checkpoint."""

    episodes: int = 20  # episodes, each with its own fixed seed
    seed: int = 1_000_000  # episode i is reset with seed + i (disjoint from training seeds)
    deterministic: bool = True  # argmax / mean action instead of sampling
    checkpoint: str | None = None  # defaults to the run folder's checkpoint.pt


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how runs are recorded in MLflow (tracking/)."""

    enabled: bool = True  # false: nothing is sent to MLflow
    uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///<repo root>/mlflow.db
    experiment: str = "trpo-pipeline"  # MLflow experiment the runs go to
    log_model: bool = True  # also log the policy as an MLflow pyfunc model (obs -> actions)


@dataclass(frozen=True)
class SearchParam:
    """How Optuna samples one config key (conf/tune/*.yaml, under search_space.<group>.<key>)."""

    type: str = "float"  # float | int | categorical
    low: float | None = None  # float/int: smallest value sampled (of x when one_minus)
    high: float | None = None  # float/int: largest value sampled (of x when one_minus)
    log: bool = False  # uniform in log space (low > 0): for scales like learning rates
    step: float | None = None  # float/int: sample on a grid low, low + step, ... (not with log)
    one_minus: bool = False  # sample x, set the key to 1 - x: log resolution near 1 (lambda)
    choices: tuple[Any, ...] | None = None  # categorical: numbers, strings or booleans


@dataclass(frozen=True)
class SamplerConfig:
    """Which Optuna sampler proposes the next trial."""

    name: str = "tpe"  # tpe | random | qmc | gp | cmaes
    seed: int | None = 0  # null: unseeded; mixed with the trial count, so a resume is fresh
    n_startup_trials: int = 5  # tpe / gp: random trials before the model is used


@dataclass(frozen=True)
class PrunerConfig:
    """When a trial whose intermediate returns lag the others is stopped early."""

    name: str = "median"  # median | hyperband | none
    n_startup_trials: int = 3  # median: finished trials needed before any is pruned
    n_warmup_steps: int = 0  # median: updates a trial runs before it may be pruned
    min_resource: int = 1  # hyperband: updates a trial gets in the first rung
    reduction_factor: int = 3  # hyperband: 1 / fraction of trials promoted per rung


@dataclass(frozen=True)
class StorageConfig:
    """Where the study lives; several workers share one study through an RDB or journal file."""

    url: str | None = None  # null: sqlite:///<repo root>/optuna.db; postgresql://; journal:<file>
    heartbeat_interval: int | None = 60  # s between heartbeats of a running trial (RDB only)
    grace_period: int | None = 120  # s without a heartbeat before a trial is marked failed
    max_retry: int = 2  # times a failed (stale) trial is re-queued for another worker


@dataclass(frozen=True)
class TuneConfig:
    """An Optuna study over this config (`trpo-tune`): budget, sampler, pruner, storage."""

    study_name: str = "cartpole"  # the study (and conf/experiment/tuned_<study_name>.yaml)
    n_trials: int = 20  # cap on finished (complete + pruned) trials, across all workers
    load_if_exists: bool = True  # continue a study of this name instead of refusing
    report_every: int = 5  # updates between intermediate evaluations (and checkpoints)
    report_episodes: int = 5  # deterministic episodes per intermediate evaluation
    output_dir: str = "runs/tune"  # trials train in <output_dir>/<study_name>/trial_<n>/
    overwrite: bool = False  # replace an existing conf/experiment/tuned_<study_name>.yaml
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    search_space: dict[str, dict[str, SearchParam]] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """The whole composed configuration of one run."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    name: str = "cartpole"  # experiment name: runs/<name>/seed<seed>
    seed: int = 0  # seeds python, numpy, torch, the envs and their action spaces
    resume: str | None = None  # checkpoint path to continue training from
    overwrite: bool = False  # allow replacing the results already in the run folder


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value}")


def _in_range(key: str, value: float, low: float, high: float, *, low_open: bool) -> None:
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(key, f"must be in {bracket}{low}, {high}], got {value}")


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    a, p, t, e = cfg.algo, cfg.policy, cfg.train, cfg.evaluate
    _positive("algo.max_kl", a.max_kl)
    _in_range("algo.gamma", a.gamma, 0.0, 1.0, low_open=True)
    _in_range("algo.gae_lambda", a.gae_lambda, 0.0, 1.0, low_open=False)
    _in_range("algo.line_search_shrink", a.line_search_shrink, 0.0, 1.0, low_open=True)
    if a.line_search_shrink == 1.0:
        raise ConfigError("algo.line_search_shrink", "must be in (0, 1), got 1.0")
    _in_range("algo.fvp_subsample", a.fvp_subsample, 0.0, 1.0, low_open=True)
    for key in (
        "vf_lr",
        "vf_epochs",
        "vf_minibatch",
        "cg_iters",
        "line_search_steps",
        "steps_per_update",
        "num_envs",
    ):
        _positive(f"algo.{key}", getattr(a, key))
    for dotted, high in UPPER_BOUNDS.items():
        group, key = dotted.split(".")
        _at_most(dotted, getattr(getattr(cfg, group), key), high)
    if a.cg_damping < 0:
        raise ConfigError("algo.cg_damping", f"must be >= 0, got {a.cg_damping}")
    if a.entropy_coef < 0:
        raise ConfigError("algo.entropy_coef", f"must be >= 0, got {a.entropy_coef}")
    if a.steps_per_update % a.num_envs:
        raise ConfigError(
            "algo.steps_per_update",
            f"must be a multiple of algo.num_envs={a.num_envs}, got {a.steps_per_update}",
        )
    if a.steps_per_env < 2:
        raise ConfigError("algo.steps_per_update", "must give at least 2 steps per env")
    for key in ("hidden_sizes", "critic_hidden_sizes"):
        sizes = getattr(p, key)
        if not sizes or len(sizes) > MAX_LAYERS or any(not 0 < s <= MAX_LAYER for s in sizes):
            raise ConfigError(
                f"policy.{key}",
                f"must be a non-empty list of sizes > 0 (at most {MAX_LAYERS} sizes of at most "
                f"{MAX_LAYER}), got {list(sizes)}",
            )
    _in_range("policy.log_std_init", p.log_std_init, *LOG_STD_RANGE, low_open=False)
    if p.activation not in ACTIVATIONS:
        raise ConfigError(
            "policy.activation", f"must be one of {', '.join(ACTIVATIONS)}, got {p.activation!r}"
        )
    _positive("env.clip_obs", cfg.env.clip_obs)
    _positive("env.clip_reward", cfg.env.clip_reward)
    for key in ("total_steps", "checkpoint_every", "torch_threads"):
        _positive(f"train.{key}", getattr(t, key))
    if t.device not in DEVICES:
        raise ConfigError("train.device", f"must be one of {', '.join(DEVICES)}, got {t.device!r}")
    if not cfg.tracking.experiment.strip() or not cfg.tracking.experiment.isprintable():
        raise ConfigError("tracking.experiment", "must be a non-empty MLflow experiment name")
    _check_tracking_uri(cfg.tracking.uri)
    _positive("evaluate.episodes", e.episodes)
    if len(cfg.tracking.experiment) > 256:  # MLflow's column
        raise ConfigError("tracking.experiment", "must be at most 256 characters")
    for key, path in (("resume", cfg.resume), ("evaluate.checkpoint", e.checkpoint)):
        check_path(key, path)
    for key, seed in (("evaluate.seed", e.seed), ("seed", cfg.seed)):
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(key, f"must be in [0, {MAX_SEED}], got {seed}")
    check_folder_name("name", cfg.name)
    _check_env_id(cfg.env.id)


def _at_most(key: str, value: float, high: float) -> None:
    if value > high:
        raise ConfigError(key, f"must be <= {high}, got {value}")


def check_path(key: str, path: str | None) -> None:
    """A file path the user gives (null allowed): one the OS could open, or ConfigError."""
    if path is None:
        return
    parts = path.split("/")
    if (
        not path.strip()
        or len(path) > MAX_PATH
        or not path.isprintable()
        or any(len(part.encode()) > 255 for part in parts)
    ):
        raise ConfigError(key, f"must be null or a file path, got {path!r}")


def check_folder_name(key: str, name: str) -> None:
    """A name that becomes a folder (runs/<name>/, a study's folder): ConfigError if not."""
    if (
        not name
        or len(name) > MAX_NAME
        or "/" in name
        or name.startswith(".")
        or not name.isprintable()
    ):
        raise ConfigError(
            key,
            f"must be a folder name of 1-{MAX_NAME} printable characters, without '/' and "
            f"not starting with '.', got {name!r}",
        )


def _check_tracking_uri(uri: str | None) -> None:
    if uri is None:
        return
    scheme = uri.partition("://")[0].partition("+")[0].lower() if "://" in uri else ""
    if (
        not uri.strip()
        or len(uri) > MAX_PATH
        or not uri.isprintable()
        or ("://" in uri and scheme not in TRACKING_SCHEMES)
    ):
        raise ConfigError(
            "tracking.uri",
            f"must be null, a folder, or a {'/'.join(TRACKING_SCHEMES)}:// URI, got {uri!r}",
        )


def check_runtime(cfg: Config) -> None:
    """What depends on this machine, for commands that train: a CUDA device if one is asked
    for (torch is imported only then)."""
    if cfg.train.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device", "cuda was asked for but torch sees no CUDA device (use cpu or auto)"
            )


def _check_env_id(env_id: str) -> None:
    import gymnasium as gym

    if env_id not in gym.registry:
        close = sorted(
            k for k in gym.registry if k.split("-")[0].lower() == env_id.split("-")[0].lower()
        )
        hint = (
            f" (did you mean {', '.join(close)}?)"
            if close
            else " (see gymnasium.pprint_registry())"
        )
        raise ConfigError("env.id", f"unknown gymnasium environment {env_id!r}{hint}")


# --- conversion from a (composed, resolved) mapping ------------------------------------------

_NoneType = type(None)


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists -> tuples)."""
    if tp is Any:  # checked by its user (search-space choices)
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and _NoneType in args:
            return None
        (inner,) = [a for a in args if a is not _NoneType]
        return _convert(key, value, inner)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a group of keys, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if origin is dict:  # a group whose keys are data (the tune search space)
        (_, inner) = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a group of keys, got {value!r}")
        return {k: _convert(f"{key}.{k}", v, inner) for k, v in value.items()}
    if origin is tuple:
        (inner, _) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"must be a list of {inner.__name__}, got {value!r}")
        return tuple(_convert(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    # bool is an int subclass: reject it where a number is expected, and vice versa.
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} for {key}")


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"{prefix}{unknown[0]}", f"unknown key (allowed under {where}: {', '.join(names)})"
        )
    kwargs = {k: _convert(f"{prefix}{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a plain nested mapping."""
    cfg = _build(Config, values)
    validate(cfg)
    return cfg


def load_config(cfg: Any) -> Config:
    """Turn a composed Hydra ``DictConfig`` (or plain mapping) into a validated :class:`Config`."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, DictConfig):
        try:
            values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", "") or ""
            raise ConfigError(key, str(err).splitlines()[0]) from None
    else:
        values = cfg
    return config_from_dict(values)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict with lists (not tuples): what YAML, JSON and checkpoints store."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def describe_override_key(dotted: str) -> ConfigError:
    """The error for overriding a key the schema does not have, listing what is allowed there."""
    cls: Any = Config
    parts = dotted.split(".")
    new_entry = ConfigError(dotted, "is not in the composed config; add it with a leading '+'")
    in_data = False  # below a dict field (the search space), whose keys are free names
    for depth, part in enumerate(parts):
        if typing.get_origin(cls) is dict:
            cls, in_data = typing.get_args(cls)[1], True
            continue
        hints = typing.get_type_hints(cls)
        prefix = ".".join(parts[:depth])
        if part not in hints:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            return ConfigError(
                dotted, f"unknown key (allowed under {prefix or 'the top level'}: {allowed})"
            )
        if in_data:
            return new_entry
        if not dataclasses.is_dataclass(hints[part]) and typing.get_origin(hints[part]) is not dict:
            return ConfigError(
                dotted, f"{prefix + '.' if prefix else ''}{part} takes a single value"
            )
        cls = hints[part]
    if in_data or typing.get_origin(cls) is dict:
        return new_entry
    return ConfigError(dotted, "is a group of keys; override one of its keys instead")
