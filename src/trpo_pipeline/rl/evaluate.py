"""Evaluate a checkpoint: N episodes with fixed seeds, deterministic actions by default."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trpo_pipeline.rl.checkpoint import load_checkpoint
from trpo_pipeline.rl.config import EnvConfig, EvaluateConfig, run_config_from_dict
from trpo_pipeline.rl.envs import make_vector_env, space_dims
from trpo_pipeline.rl.files import atomic_write
from trpo_pipeline.rl.normalizers import ObsNormalizer, preprocess
from trpo_pipeline.rl.policies import Actor, env_action, make_actor
from trpo_pipeline.rl.video import Video, record_episode


@dataclass(frozen=True)
class EvalResult:
    mean_return: float
    std_return: float
    min_return: float
    max_return: float
    mean_length: float
    episodes: int
    seed: int
    deterministic: bool
    env_id: str
    checkpoint: str
    env_steps_trained: int
    returns: list[float]
    lengths: list[int]


def evaluate(checkpoint: Path, cfg: EvaluateConfig, *, video_dir: Path | None = None) -> EvalResult:
    """Run ``cfg.episodes`` episodes of the checkpoint's policy; episode i is seeded seed + i.

    With ``video_dir``, the first ``cfg.video_episodes`` episodes are also written there as
    MP4 (see video.py): replayed afterwards, so the returns are the same with or without.
    """
    ckpt = load_checkpoint(checkpoint)
    run_cfg = run_config_from_dict(ckpt.config)
    # The networks run as training ran them: one thread for these small MLPs. Torch's default
    # (every core) took 2.1-3.8 s for 20 CartPole episodes on this 2-core machine, 1 thread 0.3 s.
    torch.set_num_threads(run_cfg.train.torch_threads)
    normalizer = (
        None if ckpt.obs_normalizer is None else ObsNormalizer.from_state_dict(ckpt.obs_normalizer)
    )
    envs = make_vector_env(run_cfg.env.id, 1, kwargs=run_cfg.env.kwargs)
    try:
        obs_dim, action_space = space_dims(envs)
    finally:
        envs.close()
    with torch.random.fork_rng(devices=[]):  # the init draws are overwritten by the checkpoint
        actor = make_actor(obs_dim, action_space, run_cfg.policy)
    actor.load_state_dict(ckpt.actor)
    recorded = cfg.video_episodes if video_dir is not None else 0
    returns, lengths, actions = _run_episodes(actor, normalizer, run_cfg.env, cfg, recorded)
    if video_dir is not None:
        record_videos(run_cfg.env, cfg, actions, video_dir)
    return EvalResult(
        mean_return=float(returns.mean()),
        std_return=float(returns.std()),
        min_return=float(returns.min()),
        max_return=float(returns.max()),
        mean_length=float(lengths.mean()),
        episodes=cfg.episodes,
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        env_id=run_cfg.env.id,
        checkpoint=str(checkpoint),
        env_steps_trained=ckpt.global_step,
        returns=[float(r) for r in returns],
        lengths=[int(v) for v in lengths],
    )


def record_videos(
    env: EnvConfig, cfg: EvaluateConfig, actions: list[list[np.ndarray]], folder: Path
) -> list[Video]:
    """Episode i of ``actions`` (seeded ``cfg.seed + i``) as ``folder/episode-<i>.mp4``."""
    return [
        record_episode(env, cfg.seed + i, acts, folder, episode=i, max_frames=cfg.video_max_frames)
        for i, acts in enumerate(actions)
    ]


def run_episodes(
    actor: Actor, normalizer: ObsNormalizer | None, env: EnvConfig, cfg: EvaluateConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of ``cfg.episodes`` episodes of a live policy; episode i is seeded
    ``cfg.seed + i``.

    The episodes run side by side in one vector env (one batched forward per step) and each
    env's first episode is the one counted, so the result depends only on the policy and the
    seeds. Sampling (deterministic=false) draws from a forked RNG: evaluating in the middle of
    training leaves training's random stream untouched.
    """
    returns, lengths, _ = _run_episodes(actor, normalizer, env, cfg, 0)
    return returns, lengths


def _run_episodes(
    actor: Actor, normalizer: ObsNormalizer | None, env: EnvConfig, cfg: EvaluateConfig, keep: int
) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]]]:
    """:func:`run_episodes`, plus the env actions of the first ``keep`` episodes (up to
    ``cfg.video_max_frames`` each): what a video replays."""
    n = cfg.episodes
    actions: list[list[np.ndarray]] = [[] for _ in range(min(keep, n))]
    envs = make_vector_env(env.id, n, kwargs=env.kwargs, seed_per_env=True)
    returns, lengths = np.zeros(n), np.zeros(n, np.int64)
    running = np.ones(n, bool)
    was_training = actor.training
    actor.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(cfg.seed)
            obs, _ = envs.reset(seed=cfg.seed)
            while running.any():
                x = torch.from_numpy(preprocess(obs, normalizer))
                action = actor.mode(x) if cfg.deterministic else actor(x).sample()
                act = env_action(action, envs.single_action_space)
                for i, kept in enumerate(actions):
                    if running[i] and len(kept) < cfg.video_max_frames:
                        kept.append(np.array(act[i]))
                obs, reward, terminated, truncated, _ = envs.step(act)
                returns += np.where(running, reward, 0.0)
                lengths += running
                running &= ~(terminated | truncated)
    finally:
        envs.close()
        actor.train(was_training)
    return returns, lengths, actions


def write_eval(result: EvalResult, path: Path) -> None:
    """Write the result as JSON, atomically."""
    atomic_write(path, json.dumps(asdict(result), indent=2) + "\n")
