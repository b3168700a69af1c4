"""One training run of each library, timed and evaluated the same way.

Each runner starts the training clock before it builds envs and models, pauses it around
every evaluation, stops it when training returns, and then evaluates the final policy. The
library is imported inside its runner, so a child process only loads the library it runs.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import yaml
from harness import CONF_DIR, BenchEnv, EvalEpisodes, EvalLog, TrainingClock, run_record

# --- trpo-pipeline ----------------------------------------------------------------------------


def ours_overrides(env: BenchEnv, seed: int, budget: int) -> tuple[list[str], str]:
    """Hydra overrides for one run, and where the hyperparameters come from."""
    experiment = CONF_DIR / "experiment" / f"{env.key}.yaml"
    if experiment.is_file():
        group, source = f"experiment={env.key}", f"conf/experiment/{env.key}.yaml"
    else:
        group = f"env={env.key}"
        source = (
            f"conf/experiment/{env.key}.yaml does not exist yet: env={env.key} with the "
            "default algo/policy groups"
        )
    run = [
        f"seed={seed}",
        f"train.total_steps={budget}",
        "train.torch_threads=1",
        "train.device=cpu",
        "train.progress=false",
    ]
    return [group, *run], source


@contextmanager
def capture_policy(engine: ModuleType) -> Iterator[SimpleNamespace]:
    """The actor and observation normaliser that ``engine.train`` builds, live.

    train() hands callbacks an UpdateRecord only; wrapping the two constructors it calls
    (by their names in trpo_pipeline.rl.train) gives the benchmark the very objects training
    updates, so evaluating needs no checkpoint.
    """
    live = SimpleNamespace(actor=None, normalizer=None)
    make_actor, normalizer_cls = engine.make_actor, engine.ObsNormalizer

    def recording_make_actor(*args: Any, **kwargs: Any) -> Any:
        live.actor = make_actor(*args, **kwargs)
        return live.actor

    class RecordingNormalizer(normalizer_cls):
        @classmethod
        def create(cls, *args: Any, **kwargs: Any) -> Any:
            live.normalizer = normalizer_cls.create(*args, **kwargs)
            return live.normalizer

    engine.make_actor, engine.ObsNormalizer = recording_make_actor, RecordingNormalizer
    try:
        yield live
    finally:
        engine.make_actor, engine.ObsNormalizer = make_actor, normalizer_cls


def run_ours(env: BenchEnv, seed: int, budget: int, eval_every: int) -> dict[str, object]:
    import torch

    from trpo_pipeline.launch.compose import compose, load_config
    from trpo_pipeline.rl import train as engine
    from trpo_pipeline.rl.normalizers import preprocess
    from trpo_pipeline.rl.policies import env_action
    from trpo_pipeline.rl.schema import to_dict

    overrides, source = ours_overrides(env, seed, budget)
    composed = compose(overrides, CONF_DIR)
    if "tracking" in composed:  # the benchmark times training, not an MLflow store
        composed.tracking.enabled = False
    cfg = load_config(composed)
    if cfg.env.kwargs != env.env_kwargs:  # the evaluation's envs and sb3-contrib's get these
        raise RuntimeError(f"{env.key}: env.kwargs {cfg.env.kwargs} != {env.env_kwargs}")

    episodes = EvalEpisodes(env)
    clock = TrainingClock()
    log = EvalLog(eval_every, env.threshold, clock, episodes)
    with capture_policy(engine) as live, tempfile.TemporaryDirectory() as tmp:

        def act(obs: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                x = torch.from_numpy(preprocess(obs, live.normalizer))
                return env_action(live.actor.mode(x), episodes.action_space)

        def on_update(record: Any) -> None:
            if live.actor is None:
                raise RuntimeError("trpo_pipeline.rl.train built no actor through make_actor")
            log.maybe(record.env_steps, act)

        clock.start()
        result = engine.train(cfg, Path(tmp) / "run", callbacks=[on_update])
        clock.stop()
        log.final(result.env_steps, act)
    episodes.close()
    config = {"source": source, "overrides": overrides, "config": to_dict(cfg)}
    return run_record(env_steps=result.env_steps, clock=clock, log=log, config=config, note="")


# --- sb3-contrib with rl-zoo's hyperparameters ----------------------------------------------

# Keys of rl-zoo's hyperparameter files that configure the harness, not the algorithm.
_ZOO_HARNESS_KEYS = {"n_envs", "n_timesteps", "policy", "normalize"}
_ZOO_UNSUPPORTED = {"env_wrapper", "vec_env_wrapper", "frame_stack", "callback", "env_kwargs"}


def zoo_hyperparams_path() -> Path:
    """rl_zoo3's hyperparams/trpo.yml, found without importing rl_zoo3.

    rl_zoo3's package imports (its optuna and plotting helpers) need not agree with this
    project's pins; only its data file is used.
    """
    spec = importlib.util.find_spec("rl_zoo3")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("rl_zoo3 is not installed: run `make bench` (it installs .venv-bench)")
    return Path(next(iter(spec.submodule_search_locations))) / "hyperparams" / "trpo.yml"


def zoo_hyperparams(env: BenchEnv) -> tuple[dict[str, Any], str]:
    """rl-zoo's block for the env, with the benchmark's overrides, and a line saying so."""
    blocks = yaml.safe_load(zoo_hyperparams_path().read_text())
    if env.zoo_block not in blocks:
        raise RuntimeError(f"rl-zoo's trpo.yml has no {env.zoo_block} block")
    hp = dict(blocks[env.zoo_block]) | env.zoo_overrides
    source = f"rl_zoo3 hyperparams/trpo.yml [{env.zoo_block}]"
    if env.zoo_overrides:
        source += " with " + ", ".join(f"{k}: {v}" for k, v in env.zoo_overrides.items())
        # rl-zoo also tunes HalfCheetah-v4 (mujoco); say whether it is the same block.
        twin = blocks.get(env.env_id.replace("-v5", "-v4"))
        if twin is not None and _without_budget(twin) == _without_budget(hp):
            source += f" (identical to its {env.env_id.replace('-v5', '-v4')} block)"
    unsupported = sorted(_ZOO_UNSUPPORTED & hp.keys())
    if unsupported:
        raise RuntimeError(f"{env.zoo_block}: rl-zoo keys {unsupported} are not supported here")
    return hp, source


def _without_budget(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "n_timesteps"}


def sb3_model_kwargs(hp: dict[str, Any]) -> dict[str, Any]:
    """TRPO keyword arguments from a zoo block, converted as rl-zoo's ExperimentManager does."""
    from torch import nn

    kwargs = {k: v for k, v in hp.items() if k not in _ZOO_HARNESS_KEYS}
    if isinstance(kwargs.get("policy_kwargs"), str):
        kwargs["policy_kwargs"] = eval(kwargs["policy_kwargs"], {"nn": nn, "dict": dict})
    lr = kwargs.get("learning_rate")
    if isinstance(lr, str):  # "lin_0.001": linear decay to 0 over training
        initial = float(lr.split("_")[1])
        kwargs["learning_rate"] = lambda progress_remaining: progress_remaining * initial
    return kwargs


def vec_normalize_kwargs(hp: dict[str, Any]) -> dict[str, Any] | None:
    """VecNormalize arguments as rl-zoo builds them (None: no normalisation)."""
    normalize = hp.get("normalize", False)
    if not normalize:
        return None
    if isinstance(normalize, str):  # e.g. "dict(norm_obs=True, norm_reward=False)"
        kwargs = dict(eval(normalize, {"dict": dict}))
    elif isinstance(normalize, dict):
        kwargs = dict(normalize)
    else:
        kwargs = {}
    if "gamma" in hp:  # rl-zoo discounts the reward normalisation with the algorithm's gamma
        kwargs["gamma"] = hp["gamma"]
    return kwargs


def zoo_venv(env: BenchEnv, hp: dict[str, Any], seed: int) -> Any:
    """The training envs as rl-zoo builds them: a DummyVecEnv of Monitor-wrapped envs, env i
    seeded seed + i, under VecNormalize when the block normalises."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = make_vec_env(
        env.env_id, n_envs=hp.get("n_envs", 1), seed=seed, env_kwargs=env.env_kwargs
    )
    norm_kwargs = vec_normalize_kwargs(hp)
    return venv if norm_kwargs is None else VecNormalize(venv, **norm_kwargs)


def run_sb3(env: BenchEnv, seed: int, budget: int, eval_every: int) -> dict[str, object]:
    from sb3_contrib import TRPO
    from stable_baselines3.common.callbacks import BaseCallback

    hp, source = zoo_hyperparams(env)
    model_kwargs, norm_kwargs = sb3_model_kwargs(hp), vec_normalize_kwargs(hp)

    class EvaluateEvery(BaseCallback):
        """Evaluates (clock paused) at the first env step past every interval."""

        def _on_step(self) -> bool:
            log.maybe(self.num_timesteps, act)
            return True

    episodes = EvalEpisodes(env)
    clock = TrainingClock()
    log = EvalLog(eval_every, env.threshold, clock, episodes)
    clock.start()
    venv = zoo_venv(env, hp, seed)
    model = TRPO(hp.get("policy", "MlpPolicy"), venv, seed=seed, device="cpu", **model_kwargs)

    def act(obs: np.ndarray) -> np.ndarray:
        if norm_kwargs is not None:  # the training statistics, frozen (normalize_obs is pure)
            obs = venv.normalize_obs(obs)
        return model.predict(obs, deterministic=True)[0]

    model.learn(total_timesteps=budget, callback=EvaluateEvery())
    clock.stop()
    log.final(model.num_timesteps, act)
    venv.close()
    episodes.close()
    config = {
        "source": source,
        "hyperparams": {k: v for k, v in hp.items() if k != "n_timesteps"},
        "vec_normalize": norm_kwargs,
        "env_kwargs": env.env_kwargs,
    }
    note = "budget from the issue; rl-zoo's n_timesteps not used"
    return run_record(env_steps=model.num_timesteps, clock=clock, log=log, config=config, note=note)


RUNNERS = {"ours": run_ours, "sb3": run_sb3}
