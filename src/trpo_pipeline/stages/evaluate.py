"""The evaluate stage: outputs/train/'s checkpoint on deterministic episodes, added to the run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from trpo_pipeline import tracking
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.rl.run_files import CHECKPOINT, EVAL_METRICS
from trpo_pipeline.stages.common import (
    DVC_LOCK,
    EVAL_DIR,
    EVAL_RUN_REF,
    EVAL_VIDEO_DIR,
    OUTPUTS,
    TRAIN_DIR,
    TRAIN_RUN_REF,
    fresh,
    run_stage,
)
from trpo_pipeline.tracking.artifacts import VIDEO_ARTIFACTS


def evaluate_stage(cfg: Config, params: Path) -> None:
    # Deferred: evaluation imports torch; a bad params.yaml ends before that.
    from trpo_pipeline.rl.evaluate import evaluate, write_eval

    if cfg.evaluate.checkpoint is not None:
        raise ConfigError(
            "evaluate.checkpoint", f"must be null in the DVC pipeline (it uses {TRAIN_DIR})"
        )
    OUTPUTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUTPUTS) as tmp:  # a bad checkpoint: nothing lost
        videos = Path(tmp) / EVAL_VIDEO_DIR.name
        result = evaluate(TRAIN_DIR / CHECKPOINT, cfg.evaluate, video_dir=videos)
        fresh(EVAL_DIR)
        videos.mkdir(exist_ok=True)  # a DVC output even when no episode is recorded
        shutil.move(videos, EVAL_VIDEO_DIR)
    write_eval(result, EVAL_DIR / EVAL_METRICS)
    run = tracking.run_for_evaluation(
        cfg,
        TRAIN_RUN_REF,
        TRAIN_DIR,
        params_file=params,
        tags={"launcher": "dvc", **tracking.source_tags("dvc stage evaluate")},
        folder=EVAL_DIR,
    )
    with tracking.recording(run):
        tracking.log_evaluation(run, result, EVAL_DIR / EVAL_METRICS)
        run.log_artifacts(EVAL_VIDEO_DIR, VIDEO_ARTIFACTS)
        run.log_artifact(DVC_LOCK, "config")
        registration = tracking.register_evaluation(run, cfg, result)
        run.write_ref(EVAL_RUN_REF)
    print(
        f"evaluate: return {result.mean_return:.1f} +- {result.std_return:.1f} over "
        f"{result.episodes} episodes"
    )
    if registration is not None:
        print(registration.line())


if __name__ == "__main__":
    run_stage("evaluate", evaluate_stage)
