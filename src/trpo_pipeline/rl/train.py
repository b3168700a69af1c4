"""The training loop: collect -> advantages -> policy step -> critic -> log -> checkpoint."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
from trpo_pipeline.rl.config import RunConfig, engine_dict
from trpo_pipeline.rl.envs import make_vector_env, seed_everything, space_dims
from trpo_pipeline.rl.files import atomic_output, atomic_write
from trpo_pipeline.rl.normalizers import ObsNormalizer, RewardScaler
from trpo_pipeline.rl.policies import Critic, make_actor
from trpo_pipeline.rl.rollout import EnvState, collect
from trpo_pipeline.rl.run_files import (
    CHECKPOINT,
    CONFIG,
    LEARNING_CURVE,
    TRAIN_METRICS,
    check_run_dir,
)
from trpo_pipeline.rl.runtime import resolve_device

RETURN_WINDOW = 100  # episodes averaged into the reported training return


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


def _env_seed(seed: int, updates: int) -> int:
    # A fresh stream per (seed, update count), so envs restarted at a checkpoint boundary
    # (and a run resumed there) get the same seeds.
    return int(np.random.SeedSequence([seed, updates]).generate_state(1)[0])


def train(cfg: RunConfig, run_dir: Path, *, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train a TRPO agent as ``cfg`` says, writing checkpoint and metrics into ``run_dir``.

    ``callbacks`` see every :class:`UpdateRecord` as it is made (trackers, pruners); one may
    raise to stop training, after the update's results are written.
    """
    check_run_dir(run_dir, cfg)
    device = resolve_device(cfg.train.device)
    torch.set_num_threads(cfg.train.torch_threads)
    seed_everything(cfg.seed)
    a = cfg.algo

    envs = make_vector_env(cfg.env.id, a.num_envs)
    try:
        obs_dim, action_space = space_dims(envs)
        actor = make_actor(obs_dim, action_space, cfg.policy).to(device)
        critic = Critic(obs_dim, cfg.policy).to(device)
        critic_optimizer = Adam(critic.parameters(), lr=a.vf_lr)
        normalizer = (
            ObsNormalizer.create(obs_dim, cfg.env.clip_obs) if cfg.env.normalize_obs else None
        )
        reward_scaler = (
            RewardScaler(a.gamma, cfg.env.clip_reward) if cfg.env.normalize_reward else None
        )
        global_step, updates = 0, 0
        recent_returns: deque[float] = deque(maxlen=RETURN_WINDOW)
        recent_lengths: deque[int] = deque(maxlen=RETURN_WINDOW)
        episodes = 0
        history: list[UpdateRecord] = []

        if cfg.resume is not None:
            path = Path(cfg.resume)
            ckpt = load_checkpoint(path)
            check_resumable(ckpt, cfg, path)
            actor.load_state_dict(ckpt.actor)
            critic.load_state_dict(ckpt.critic)
            critic_optimizer.load_state_dict(ckpt.critic_optimizer)
            if normalizer is not None and ckpt.obs_normalizer is not None:
                normalizer = ObsNormalizer.from_state_dict(ckpt.obs_normalizer)
            if reward_scaler is not None and ckpt.reward_scaler is not None:
                reward_scaler = RewardScaler.from_state_dict(ckpt.reward_scaler)
            set_rng_state(ckpt.rng)
            global_step, updates = ckpt.global_step, ckpt.updates
            episodes = ckpt.episodes["count"]
            recent_returns.extend(ckpt.episodes["returns"])
            recent_lengths.extend(ckpt.episodes["lengths"])

        # What the checkpoint records is the run, not how it was launched: a run resumed after
        # a kill then writes the same bytes as one that was never interrupted.
        run_config = engine_dict(dataclasses.replace(cfg, resume=None, overwrite=False))
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / CONFIG, yaml.safe_dump(engine_dict(cfg), sort_keys=False))
        curve = _open_curve(run_dir / LEARNING_CURVE, keep_updates=updates)

        def checkpoint() -> None:
            save_checkpoint(
                run_dir / CHECKPOINT,
                Checkpoint(
                    actor=actor.state_dict(),
                    critic=critic.state_dict(),
                    critic_optimizer=critic_optimizer.state_dict(),
                    obs_normalizer=None if normalizer is None else normalizer.state_dict(),
                    reward_scaler=None if reward_scaler is None else reward_scaler.state_dict(),
                    rng=rng_state(),
                    episodes={
                        "count": episodes,
                        "returns": list(recent_returns),
                        "lengths": list(recent_lengths),
                    },
                    global_step=global_step,
                    updates=updates,
                    config=run_config,
                ),
            )

        env_state = EnvState.reset(envs, _env_seed(cfg.seed, updates))
        bar = tqdm(
            total=cfg.train.total_steps,
            initial=min(global_step, cfg.train.total_steps),
            unit="step",
            unit_scale=True,
            disable=not cfg.train.progress,
            file=sys.stderr,
            dynamic_ncols=True,
            desc=cfg.name,
        )
        start, start_step = time.perf_counter(), global_step
        try:
            while global_step < cfg.train.total_steps:
                t0 = time.perf_counter()
                batch = collect(env_state, actor, a.steps_per_env, normalizer, device)
                valid = batch.valid
                rewards = batch.rewards
                if reward_scaler is not None:
                    done = (batch.terminated | batch.truncated).cpu().numpy()
                    scaled = reward_scaler.scale(rewards.cpu().numpy(), done, valid.cpu().numpy())
                    rewards = torch.from_numpy(scaled).to(device)
                with torch.no_grad():
                    values = critic(batch.obs)  # V(s_0..s_T), one batched forward
                adv, returns = advantages.gae(
                    rewards,
                    values[:-1],
                    values[1:],
                    batch.terminated,
                    batch.truncated,
                    a.gamma,
                    a.gae_lambda,
                )
                adv = adv[valid]
                if a.normalize_advantages:
                    adv = advantages.normalize(adv)
                stats = trpo.update(
                    actor,
                    critic,
                    critic_optimizer,
                    batch.obs[:-1][valid],
                    batch.actions[valid],
                    adv,
                    returns[valid],
                    values[:-1][valid],
                    a,
                )
                if normalizer is not None:
                    normalizer.update(batch.raw_obs[valid.cpu().numpy()])

                n = batch.num_transitions
                global_step += n
                updates += 1
                episodes += len(batch.episode_returns)
                recent_returns.extend(batch.episode_returns)
                recent_lengths.extend(batch.episode_lengths)
                now = time.perf_counter()
                record = UpdateRecord(
                    update=updates,
                    env_steps=global_step,
                    episode_return=float(np.mean(recent_returns))
                    if recent_returns
                    else float("nan"),
                    episode_length=float(np.mean(recent_lengths))
                    if recent_lengths
                    else float("nan"),
                    episodes=episodes,
                    time_s=now - start,
                    steps_per_s=n / max(now - t0, 1e-9),
                    stats=stats,
                )
                history.append(record)
                curve.write(record)
                if updates % cfg.train.checkpoint_every == 0:
                    checkpoint()
                    # Episodes in flight are cut here (the batch end already bootstrapped them
                    # like a truncation) and every env restarts from a seed of (seed, updates):
                    # a run resumed from this checkpoint continues bit-identically.
                    env_state = EnvState.reset(envs, _env_seed(cfg.seed, updates))
                    if reward_scaler is not None:
                        reward_scaler.restart()
                bar.update(min(global_step, cfg.train.total_steps) - bar.n)
                bar.set_postfix(
                    ret=f"{record.episode_return:.1f}", kl=f"{stats.kl:.4f}", refresh=False
                )
                for callback in callbacks:
                    callback(record)
        finally:
            bar.close()
            curve.close()
        checkpoint()
    finally:
        envs.close()

    wall = time.perf_counter() - start
    result = TrainResult(
        run_dir=run_dir,
        checkpoint=run_dir / CHECKPOINT,
        env_steps=global_step,
        updates=updates,
        episode_return=history[-1].episode_return if history else float("nan"),
        wall_time_s=wall,
        steps_per_s=(global_step - start_step) / wall if wall > 0 else 0.0,
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


class _CurveWriter:
    """Appends learning-curve rows to a CSV, flushed per update so a crash loses at most one."""

    def __init__(self, path: Path, *, append: bool) -> None:
        self.file = path.open("a" if append else "w", newline="")
        self.writer: csv.DictWriter | None = None
        self.header_written = append

    def write(self, record: UpdateRecord) -> None:
        row = record.row()
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            if not self.header_written:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _open_curve(path: Path, keep_updates: int) -> _CurveWriter:
    """Start the learning curve; on resume keep the rows up to the checkpoint's update.

    Rows written after the checkpoint (and a row cut short by a kill) are dropped, by writing
    the kept rows to a temporary file that replaces the old one.
    """
    if not (keep_updates and path.exists()):
        return _CurveWriter(path, append=False)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [
            r
            for r in reader
            if None not in r.values() and r["update"].isdigit() and int(r["update"]) <= keep_updates
        ]
    with atomic_output(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return _CurveWriter(path, append=True)


def _write_json(path: Path, data: dict[str, object]) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")
