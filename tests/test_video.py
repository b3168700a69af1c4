"""Evaluation videos (rl/video.py): MP4s that decode to the episode's frames, and returns that
do not change because of them."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from trpo_pipeline.rl.config import EvaluateConfig
from trpo_pipeline.rl.errors import ConfigError
from trpo_pipeline.rl.evaluate import evaluate
from trpo_pipeline.rl.schema import build
from trpo_pipeline.rl.train import train


def decoded_frames(path: Path) -> list[np.ndarray]:
    with imageio.get_reader(path) as reader:  # list(reader) would trust its len(): infinite
        return [frame for frame in reader]


@pytest.fixture(scope="module", params=["CartPole-v1", "Pendulum-v1"])
def checkpoint(request, tmp_path_factory, tiny_config):
    return train(tiny_config(request.param), tmp_path_factory.mktemp("run")).checkpoint


@pytest.mark.parametrize("deterministic", [True, False])
def test_recording_leaves_the_returns_as_they_are(checkpoint, tmp_path, deterministic):
    cfg = EvaluateConfig(episodes=4, seed=11, deterministic=deterministic)
    recording = EvaluateConfig(
        episodes=4, seed=11, deterministic=deterministic, video_episodes=3, video_max_frames=1000
    )

    plain = evaluate(checkpoint, cfg)
    recorded = evaluate(checkpoint, recording, video_dir=tmp_path / "video")

    assert recorded == plain
    # One frame per action: the video is the scored episode, step for step.
    for i in range(3):
        frames = decoded_frames(tmp_path / "video" / f"episode-{i}.mp4")
        assert len(frames) == plain.lengths[i]
        poster = imageio.imread(tmp_path / "video" / f"episode-{i}.png")
        assert poster.shape == frames[0].shape and poster.ndim == 3
    assert sorted(p.name for p in (tmp_path / "video").iterdir()) == [
        f"episode-{i}.{ext}" for i in range(3) for ext in ("mp4", "png")
    ]


def test_a_video_stops_at_the_frame_cap(checkpoint, tmp_path):
    cfg = EvaluateConfig(episodes=1, seed=3, video_episodes=1, video_max_frames=7)
    result = evaluate(checkpoint, cfg, video_dir=tmp_path)
    assert result.lengths[0] > 7
    assert len(decoded_frames(tmp_path / "episode-0.mp4")) == 7


def test_no_video_without_a_folder_or_episodes(checkpoint, tmp_path):
    evaluate(checkpoint, EvaluateConfig(episodes=2, video_episodes=2))  # no folder: none
    evaluate(checkpoint, EvaluateConfig(episodes=2), video_dir=tmp_path / "video")
    assert not (tmp_path / "video").exists()


def test_more_videos_than_episodes_is_refused():
    with pytest.raises(ConfigError, match=r"video_episodes: must be <= evaluate.episodes=2"):
        build(EvaluateConfig, {"episodes": 2, "video_episodes": 3})


def test_mujoco_renders_headless(tmp_path, tiny_config):
    # HalfCheetah's episodes are 1000 steps; each frame renders in ~0.1 s: the cap keeps it short.
    cfg = tiny_config("HalfCheetah-v5", algo={"steps_per_update": 64, "num_envs": 2})
    ckpt = train(cfg, tmp_path / "run").checkpoint
    evaluate(
        ckpt,
        EvaluateConfig(episodes=1, video_episodes=1, video_max_frames=5),
        video_dir=tmp_path / "video",
    )
    frames = decoded_frames(tmp_path / "video" / "episode-0.mp4")
    assert len(frames) == 5
    assert frames[0].std() > 0  # a rendered scene, not a blank image


@pytest.mark.slow
def test_trpo_evaluate_records_a_mujoco_video(tmp_path, run_cli):
    # A fresh process with no display: MUJOCO_GL=egl is the package's default.
    tiny = ["experiment=halfcheetah", "train.total_steps=256", "algo.steps_per_update=128",
            "train.progress=false", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    (trained,) = run_cli(("trpo-train", [*tiny, "tracking.enabled=false"], tmp_path))
    assert trained.returncode == 0, trained.stderr
    (evaluated,) = run_cli(
        ("trpo-evaluate", [*tiny, "evaluate.episodes=1", "evaluate.video_max_frames=10"], tmp_path)
    )
    assert evaluated.returncode == 0, evaluated.stderr
    frames = decoded_frames(tmp_path / "run" / "video" / "episode-0.mp4")
    assert len(frames) == 10 and frames[0].std() > 0
