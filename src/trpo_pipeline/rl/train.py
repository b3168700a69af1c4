"""The training loop: collect -> advantages -> policy step -> critic -> log -> checkpoint.

The pieces a run is made of, in the order the loop uses them: :class:`Agent` (what learns,
:func:`build_agent`), :class:`Progress` (how far the run is, :func:`restore` from a
checkpoint, :func:`checkpoint_of` to save one), :func:`learn_from_batch` (one TRPO update from
a collected batch) and :class:`UpdateRecord` (what each update reports).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from tqdm import tqdm

from trpo_pipeline.rl import advantages, trpo
from trpo_pipeline.rl.adam import Adam
from trpo_pipeline.rl.checkpoint import (
    Checkpoint,
    check_resumable,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trpo_pipeline.rl.config import AlgoConfig, RunConfig, engine_dict
from trpo_pipeline.rl.envs import make_vector_env, seed_everything, space_dims
from trpo_pipeline.rl.files import atomic_write
from trpo_pipeline.rl.learning_curve import open_curve
from trpo_pipeline.rl.normalizers import ObsNormalizer, RewardScaler
from trpo_pipeline.rl.policies import Actor, Critic, make_actor
from trpo_pipeline.rl.rollout import Batch, EnvState, collect
from trpo_pipeline.rl.run_files import (
    CHECKPOINT,
    CONFIG,
    LEARNING_CURVE,
    TRAIN_METRICS,
    check_run_dir,
)
from trpo_pipeline.rl.runtime import resolve_device

RETURN_WINDOW = 100  # episodes averaged into the reported training return


# --- what learns ------------------------------------------------------------------------------


@dataclass
class Agent:
    """What one update changes: the policy pi_theta, the critic V and its optimiser, and the
    running statistics observations and rewards are normalised with (None when disabled)."""

    actor: Actor
    critic: Critic
    critic_optimizer: Adam
    obs_normalizer: ObsNormalizer | None
    reward_scaler: RewardScaler | None


def build_agent(
    cfg: RunConfig, obs_dim: int, action_space: gym.Space, device: torch.device
) -> Agent:
    """A fresh agent for ``cfg``.

    The initial weights are drawn from torch's global RNG, the actor's first, then the critic's.
    """
    actor = make_actor(obs_dim, action_space, cfg.policy).to(device)
    critic = Critic(obs_dim, cfg.policy).to(device)
    return Agent(
        actor=actor,
        critic=critic,
        critic_optimizer=Adam(critic.parameters(), lr=cfg.algo.vf_lr),
        obs_normalizer=(
            ObsNormalizer.create(obs_dim, cfg.env.clip_obs) if cfg.env.normalize_obs else None
        ),
        reward_scaler=(
            RewardScaler(cfg.algo.gamma, cfg.env.clip_reward) if cfg.env.normalize_reward else None
        ),
    )


# --- how far the run is -----------------------------------------------------------------------


@dataclass
class EpisodeStats:
    """Episodes finished so far, and the last RETURN_WINDOW of them for the reported means."""

    count: int = 0
    returns: deque[float] = field(default_factory=lambda: deque(maxlen=RETURN_WINDOW))
    lengths: deque[int] = field(default_factory=lambda: deque(maxlen=RETURN_WINDOW))

    def add(self, batch: Batch) -> None:
        """Count the episodes that ended during ``batch``."""
        self.count += len(batch.episode_returns)
        self.returns.extend(batch.episode_returns)
        self.lengths.extend(batch.episode_lengths)

    @property
    def mean_return(self) -> float:
        """Mean undiscounted return of the recent episodes (nan before the first one ends)."""
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths)) if self.lengths else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "returns": list(self.returns), "lengths": list(self.lengths)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EpisodeStats:
        episodes = cls(count=state["count"])
        episodes.returns.extend(state["returns"])
        episodes.lengths.extend(state["lengths"])
        return episodes


@dataclass
class Progress:
    """How far the run is, counted over the whole run (a resumed run continues the counts)."""

    global_step: int = 0  # env transitions trained on
    updates: int = 0  # TRPO updates done
    episodes: EpisodeStats = field(default_factory=EpisodeStats)

    def advance(self, batch: Batch) -> None:
        """Count one update on ``batch``."""
        self.global_step += batch.num_transitions
        self.updates += 1
        self.episodes.add(batch)


def restore(agent: Agent, checkpoint: Checkpoint) -> Progress:
    """Load ``checkpoint`` into ``agent`` and the global RNGs; returns where the run was.

    A normaliser disabled in the agent stays disabled, whatever the checkpoint holds.
    """
    agent.actor.load_state_dict(checkpoint.actor)
    agent.critic.load_state_dict(checkpoint.critic)
    agent.critic_optimizer.load_state_dict(checkpoint.critic_optimizer)
    if agent.obs_normalizer is not None and checkpoint.obs_normalizer is not None:
        agent.obs_normalizer = ObsNormalizer.from_state_dict(checkpoint.obs_normalizer)
    if agent.reward_scaler is not None and checkpoint.reward_scaler is not None:
        agent.reward_scaler = RewardScaler.from_state_dict(checkpoint.reward_scaler)
    set_rng_state(checkpoint.rng)
    return Progress(
        global_step=checkpoint.global_step,
        updates=checkpoint.updates,
        episodes=EpisodeStats.from_state_dict(checkpoint.episodes),
    )


def checkpoint_of(agent: Agent, progress: Progress, run_config: dict[str, Any]) -> Checkpoint:
    """Everything a resumed run needs to continue bit-identically, the RNG states as of now."""
    normalizer, scaler = agent.obs_normalizer, agent.reward_scaler
    return Checkpoint(
        actor=agent.actor.state_dict(),
        critic=agent.critic.state_dict(),
        critic_optimizer=agent.critic_optimizer.state_dict(),
        obs_normalizer=None if normalizer is None else normalizer.state_dict(),
        reward_scaler=None if scaler is None else scaler.state_dict(),
        rng=rng_state(),
        episodes=progress.episodes.state_dict(),
        global_step=progress.global_step,
        updates=progress.updates,
        config=run_config,
    )


# --- one update ---------------------------------------------------------------------------------


def training_batch(
    agent: Agent, batch: Batch, cfg: AlgoConfig, device: torch.device
) -> trpo.TrainingBatch:
    """The flat batch of real transitions TRPO learns from, with GAE advantages and returns.

    Rewards are scaled first (when enabled); V(s_0..s_T) comes from the critic before the
    update, so the last row bootstraps the cut episodes (Spinning Up's ``last_val``).
    """
    valid = batch.valid
    rewards = batch.rewards
    if agent.reward_scaler is not None:
        done = (batch.terminated | batch.truncated).cpu().numpy()
        scaled = agent.reward_scaler.scale(rewards.cpu().numpy(), done, valid.cpu().numpy())
        rewards = torch.from_numpy(scaled).to(device)
    with torch.no_grad():
        values = agent.critic(batch.obs)  # V(s_0..s_T), one batched forward
    adv, returns = advantages.gae(
        rewards,
        values[:-1],
        values[1:],
        batch.terminated,
        batch.truncated,
        cfg.gamma,
        cfg.gae_lambda,
    )
    adv = adv[valid]
    if cfg.normalize_advantages:
        adv = advantages.normalize(adv)
    return trpo.TrainingBatch(
        obs=batch.obs[:-1][valid],
        actions=batch.actions[valid],
        advantages=adv,
        returns=returns[valid],
        values=values[:-1][valid],
    )


def learn_from_batch(
    agent: Agent, batch: Batch, cfg: AlgoConfig, device: torch.device
) -> trpo.UpdateStats:
    """One TRPO update of ``agent`` from a collected batch, then the observation statistics.

    The normaliser learns from the batch only after the update, so the batch was seen and
    trained on with the same statistics.
    """
    stats = trpo.update(
        agent.actor,
        agent.critic,
        agent.critic_optimizer,
        training_batch(agent, batch, cfg, device),
        cfg,
    )
    if agent.obs_normalizer is not None:
        agent.obs_normalizer.update(batch.raw_obs[batch.valid.cpu().numpy()])
    return stats


# --- what each update reports -------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateRecord:
    """One row of the learning curve: where training is, and what the update did."""

    update: int
    env_steps: int
    episode_return: float  # mean over the last RETURN_WINDOW finished episodes (nan before one)
    episode_length: float
    episodes: int  # episodes finished so far
    time_s: float  # wall-clock since this process started training
    steps_per_s: float  # env steps per second over this update, collection and learning
    stats: trpo.UpdateStats

    @classmethod
    def of(
        cls, progress: Progress, stats: trpo.UpdateStats, *, time_s: float, steps_per_s: float
    ) -> UpdateRecord:
        """The record of the update that brought the run to ``progress``."""
        return cls(
            update=progress.updates,
            env_steps=progress.global_step,
            episode_return=progress.episodes.mean_return,
            episode_length=progress.episodes.mean_length,
            episodes=progress.episodes.count,
            time_s=time_s,
            steps_per_s=steps_per_s,
            stats=stats,
        )

    def row(self) -> dict[str, float | int | str]:
        """The learning curve's columns; booleans as 0/1, which CSV readers and plots take."""
        flat = {k: v for k, v in dataclasses.asdict(self).items() if k != "stats"}
        row = flat | dataclasses.asdict(self.stats)
        return {k: int(v) if isinstance(v, bool) else v for k, v in row.items()}


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint: Path
    env_steps: int
    updates: int
    episode_return: float
    wall_time_s: float
    steps_per_s: float
    history: list[UpdateRecord]


Callback = Callable[[UpdateRecord], None]


# --- the loop -----------------------------------------------------------------------------------


def train(cfg: RunConfig, run_dir: Path, *, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train a TRPO agent as ``cfg`` says, writing checkpoint and metrics into ``run_dir``.

    ``callbacks`` see every :class:`UpdateRecord` as it is made (trackers, pruners); one may
    raise to stop training, after the update's results are written.
    """
    check_run_dir(run_dir, cfg)
    device = resolve_device(cfg.train.device)
    torch.set_num_threads(cfg.train.torch_threads)
    seed_everything(cfg.seed)
    envs = make_vector_env(
        cfg.env.id,
        cfg.algo.num_envs,
        kwargs=cfg.env.kwargs,
        vectorization=cfg.env.vectorization,
        envpool_threads=cfg.env.envpool_threads,
    )
    try:
        agent = build_agent(cfg, *space_dims(envs), device)
        progress = _start(agent, cfg)
        run_config = _write_config(cfg, run_dir)
        history: list[UpdateRecord] = []
        curve = open_curve(run_dir / LEARNING_CURVE, keep_updates=progress.updates)
        env_state = EnvState.reset(envs, _env_seed(cfg.seed, progress.updates))
        bar = _progress_bar(cfg, progress.global_step)
        start, start_step = time.perf_counter(), progress.global_step
        with curve, bar:
            while progress.global_step < cfg.train.total_steps:
                t0 = time.perf_counter()
                batch = collect(
                    env_state, agent.actor, cfg.algo.steps_per_env, agent.obs_normalizer, device
                )
                stats = learn_from_batch(agent, batch, cfg.algo, device)
                progress.advance(batch)
                now = time.perf_counter()
                record = UpdateRecord.of(
                    progress,
                    stats,
                    time_s=now - start,
                    steps_per_s=batch.num_transitions / max(now - t0, 1e-9),
                )
                history.append(record)
                curve.write(record.row())
                if progress.updates % cfg.train.checkpoint_every == 0:
                    save_checkpoint(
                        run_dir / CHECKPOINT, checkpoint_of(agent, progress, run_config)
                    )
                    # Episodes in flight are cut here (the batch end already bootstrapped them
                    # like a truncation) and every env restarts from a seed of (seed, updates):
                    # a run resumed from this checkpoint continues bit-identically.
                    env_state = EnvState.reset(envs, _env_seed(cfg.seed, progress.updates))
                    if agent.reward_scaler is not None:
                        agent.reward_scaler.restart()
                bar.update(min(progress.global_step, cfg.train.total_steps) - bar.n)
                bar.set_postfix(
                    ret=f"{record.episode_return:.1f}", kl=f"{stats.kl:.4f}", refresh=False
                )
                for callback in callbacks:
                    callback(record)
        save_checkpoint(run_dir / CHECKPOINT, checkpoint_of(agent, progress, run_config))
    finally:
        envs.close()
    wall = time.perf_counter() - start
    return _finish(run_dir, progress, history, wall, progress.global_step - start_step)


def _start(agent: Agent, cfg: RunConfig) -> Progress:
    """Where the run starts: at zero, or where the checkpoint ``cfg.resume`` left it (which
    is loaded into ``agent``)."""
    if cfg.resume is None:
        return Progress()
    path = Path(cfg.resume)
    checkpoint = load_checkpoint(path)
    check_resumable(checkpoint, cfg, path)
    return restore(agent, checkpoint)


def _write_config(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Write ``cfg`` into ``run_dir``; returns the config its checkpoints record."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG, yaml.safe_dump(engine_dict(cfg), sort_keys=False))
    # What the checkpoint records is the run, not how it was launched: a run resumed after
    # a kill then writes the same bytes as one that was never interrupted.
    return engine_dict(dataclasses.replace(cfg, resume=None, overwrite=False))


def _env_seed(seed: int, updates: int) -> int:
    # A fresh stream per (seed, update count), so envs restarted at a checkpoint boundary
    # (and a run resumed there) get the same seeds.
    return int(np.random.SeedSequence([seed, updates]).generate_state(1)[0])


def _progress_bar(cfg: RunConfig, global_step: int) -> tqdm:
    """Env steps towards ``total_steps`` on stderr, for the person waiting (off with progress)."""
    return tqdm(
        total=cfg.train.total_steps,
        initial=min(global_step, cfg.train.total_steps),
        unit="step",
        unit_scale=True,
        disable=not cfg.train.progress,
        file=sys.stderr,
        dynamic_ncols=True,
        desc=cfg.name,
    )


def _finish(
    run_dir: Path, progress: Progress, history: list[UpdateRecord], wall: float, steps: int
) -> TrainResult:
    """The run's result, also written to TRAIN_METRICS; ``steps`` were taken in ``wall`` s."""
    result = TrainResult(
        run_dir=run_dir,
        checkpoint=run_dir / CHECKPOINT,
        env_steps=progress.global_step,
        updates=progress.updates,
        # The run's (a checkpoint carries it): a resume with nothing left to train has no rows.
        episode_return=progress.episodes.mean_return,
        wall_time_s=wall,
        steps_per_s=steps / wall if wall > 0 else 0.0,
        history=history,
    )
    _write_json(
        run_dir / TRAIN_METRICS,
        {
            "env_steps": result.env_steps,
            "updates": result.updates,
            "episode_return": result.episode_return,
            "wall_time_s": result.wall_time_s,
            "steps_per_s": result.steps_per_s,
        },
    )
    return result


def _write_json(path: Path, data: dict[str, object]) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")
