"""Videos of evaluation episodes: replayed in a rendering env, written as H.264 MP4.

An episode is recorded by replaying its seed and the actions evaluation took in a separate env
made with ``render_mode="rgb_array"``; the evaluation's own envs, RNG and returns are untouched.
Gymnasium envs are deterministic given the reset seed and the actions, so the replay is the
episode that was scored. One frame per action: the state the policy acted on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from trpo_pipeline.rl.config import EnvConfig

# Headless rendering: pygame (classic control) without a display, MuJoCo through EGL (Mesa's
# software renderer works with no GPU; MUJOCO_GL=osmesa is the other choice). Both are read
# when the renderer is first imported, so they are set before any env is made; a user's own
# setting wins.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")

DEFAULT_FPS = 30  # envs whose metadata names no render_fps


@dataclass(frozen=True)
class Video:
    path: Path  # the MP4
    poster: Path  # its first frame as PNG
    frames: int
    episode: int


def video_name(episode: int) -> str:
    return f"episode-{episode}.mp4"


def record_episode(
    env: EnvConfig,
    seed: int,
    actions: Sequence[np.ndarray],
    folder: Path,
    *,
    episode: int,
    max_frames: int,
) -> Video:
    """Replay one episode (reset with ``seed``, then ``actions``) and write its first
    ``max_frames`` frames to ``folder/episode-<episode>.mp4``, the first one as its poster."""
    import imageio.v2 as imageio  # deferred: only a recording evaluation needs it

    if not len(actions):
        raise ValueError(f"episode with seed {seed} took no actions: nothing to record")
    out = folder / video_name(episode)
    folder.mkdir(parents=True, exist_ok=True)
    sim = gym.make(env.id, render_mode="rgb_array", **env.kwargs)
    fps = int(sim.metadata.get("render_fps") or DEFAULT_FPS)
    # Each frame goes to ffmpeg as soon as it is rendered: ffmpeg (a process of its own)
    # encodes on another core while the next frames render, instead of after all of them.
    # macro_block_size=1: frames keep their size (600 px wide CartPole is not padded to 608).
    writer = imageio.get_writer(out, fps=fps, codec="libx264", macro_block_size=1)
    poster_frame = None  # the first frame
    count = 0
    try:
        sim.reset(seed=seed)
        for action in actions[:max_frames]:
            frame = np.asarray(sim.render())
            writer.append_data(frame)
            poster_frame = frame if count == 0 else poster_frame
            count += 1
            sim.step(action)
    finally:
        sim.close()
        writer.close()
    poster = out.with_suffix(".png")
    imageio.imwrite(poster, poster_frame)
    return Video(out, poster, count, episode)
