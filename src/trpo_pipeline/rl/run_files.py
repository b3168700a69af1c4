"""The files of a run folder, named once: what train() and evaluate write, and what the
pipeline (DVC stages, MLflow, trpo-sync) reads back."""

from __future__ import annotations

from pathlib import Path

from trpo_pipeline.rl.config import RunConfig
from trpo_pipeline.rl.errors import ConfigError

CONFIG = "config.yaml"  # the run's config, as plain YAML
CHECKPOINT = "checkpoint.pt"  # rl/checkpoint.py: the one checkpoint format
LEARNING_CURVE = "learning_curve.csv"  # a row per update (rl/learning_curve.py)
TRAIN_METRICS = "train_metrics.json"  # the training summary
EVAL_METRICS = "eval_metrics.json"  # rl/evaluate.py's result
VIDEO_DIR = "video"  # rl/video.py: episode-<i>.mp4 and its poster episode-<i>.png
RESULT_FILES = (CHECKPOINT, LEARNING_CURVE, TRAIN_METRICS)  # never replaced silently


def check_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to silently replace results already in ``run_dir``.

    Resuming may continue the results of its own run (the checkpoint lives in ``run_dir``), not
    replace another run's.
    """
    existing = [name for name in RESULT_FILES if (run_dir / name).exists()]
    if not existing or cfg.overwrite:
        return
    if cfg.resume is not None and Path(cfg.resume).resolve().parent == run_dir.resolve():
        return
    hint = "overwrite=true" if cfg.resume is not None else "resume=<checkpoint>, overwrite=true"
    raise ConfigError(
        "",
        f"{run_dir} already holds results ({', '.join(existing)}); pass {hint}, or another name=",
    )
