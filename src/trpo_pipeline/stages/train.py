"""The train stage: params.yaml trained from scratch into outputs/train/, opening the MLflow run."""

from __future__ import annotations

from pathlib import Path

from trpo_pipeline import tracking
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.rl.runtime import check_device
from trpo_pipeline.stages.common import TRAIN_DIR, TRAIN_RUN_REF, fresh, run_stage


def train_stage(cfg: Config, params: Path) -> None:
    # Deferred: the training loop imports torch; a bad params.yaml ends before that.
    from trpo_pipeline.rl.train import train

    if cfg.resume is not None:
        raise ConfigError("resume", "must be null in the DVC pipeline, which trains from scratch")
    check_device(cfg.train.device)
    tracking.check_store(cfg.tracking)
    fresh(TRAIN_DIR)
    run = tracking.start_run(
        cfg, tags={"launcher": "dvc", **tracking.source_tags("dvc stage train")}, folder=TRAIN_DIR
    )
    with tracking.recording(run):
        result = train(cfg, TRAIN_DIR, callbacks=[run.log_update])
        tracking.log_training(run, cfg, TRAIN_DIR, params_file=params)
        run.write_ref(TRAIN_RUN_REF)
    print(
        f"train: {result.env_steps:,} env steps, {result.updates} updates in "
        f"{result.wall_time_s:.1f} s; training return {result.episode_return:.1f}"
    )


if __name__ == "__main__":
    run_stage("train", train_stage)
