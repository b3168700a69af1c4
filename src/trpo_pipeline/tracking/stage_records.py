"""What the pipeline's stages record: a training's artifacts, an evaluation and its run."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trpo_pipeline.config import Config
from trpo_pipeline.rl.run_files import CHECKPOINT, CONFIG, LEARNING_CURVE, TRAIN_METRICS
from trpo_pipeline.tracking.records import (
    eval_metrics,
    flatten_config,
    provenance_tags,
    row_metrics,
)
from trpo_pipeline.tracking.registry import Registration
from trpo_pipeline.tracking.run import TrackedRun, read_ref, reopen_run, start_run
from trpo_pipeline.tracking.store import mlflow_client, quiet_http, resolve_tracking_uri

if TYPE_CHECKING:
    from trpo_pipeline.rl.evaluate import EvalResult


def log_training(
    run: TrackedRun, cfg: Config, run_dir: Path, *, params_file: Path | None = None
) -> None:
    """Artifacts of a finished training run: config, checkpoint, curve, metrics, the model."""
    if not run.enabled:
        return
    run.flush()
    if params_file is not None:
        run.log_artifact(Path(params_file).resolve(), "config")
    run.log_artifact(run_dir / CONFIG, "config")
    run.log_artifact(run_dir / CHECKPOINT, "checkpoint")
    run.log_artifact(run_dir / LEARNING_CURVE, "train")
    run.log_artifact(run_dir / TRAIN_METRICS, "train")
    if cfg.tracking.log_model:
        run.log_policy_model(run_dir / CHECKPOINT, cfg)


def log_curve(run: TrackedRun, curve_csv: Path) -> None:
    """Log the metrics of a learning-curve CSV (a run continuing another's training)."""
    if not run.enabled:
        return
    run._curve = Path(curve_csv)
    with Path(curve_csv).open(newline="") as f:
        for row in csv.DictReader(f):
            run.queue_metrics(row_metrics(row), step=int(row["env_steps"]))
    run.flush()


def log_evaluation(run: TrackedRun, result: EvalResult, eval_json: Path) -> None:
    run.log_metrics(eval_metrics(result), step=result.env_steps_trained)
    run.log_artifact(eval_json, "eval")


# The run's provenance a model version repeats: where its policy came from, without the run.
REGISTRY_TAGS = ("git_commit", "git_dirty", "config_hash", "seed", "dvc_exp_name")


def register_evaluation(run: TrackedRun, cfg: Config, result: EvalResult) -> Registration | None:
    """The evaluated policy as a new version of ``trpo-<env id>`` (champion if it is best)."""
    if not run.online:
        return None
    tags = {k: v for k, v in provenance_tags(cfg).items() if k in REGISTRY_TAGS and v}
    return run.register_policy(result.env_id, result.mean_return, tags)


def is_fresh(data: Any, cfg: Config) -> bool:
    """Whether a training run (its ``RunData``) can take the evaluation of ``cfg``.

    MLflow params are immutable and a run holds one evaluation: a run already evaluated, or
    trained under other params (DVC reused its cached training because only evaluation params
    changed), is not fresh, and this pipeline execution gets a run of its own.
    """
    return "eval/mean_return" not in data.metrics and data.params == flatten_config(cfg)


def run_for_evaluation(
    cfg: Config,
    train_ref: Path,
    train_dir: Path,
    *,
    params_file: Path | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    folder: Path | None = None,
) -> TrackedRun:
    """The run an evaluation of ``train_dir``'s checkpoint is recorded in (left RUNNING).

    The training run recorded in ``train_ref`` when it is fresh; otherwise a new run holding
    this execution's params, the training metrics (from the learning curve) and artifacts,
    tagged ``train_run_id`` with the run that trained the checkpoint.
    """
    uri = resolve_tracking_uri(cfg.tracking)
    if not cfg.tracking.enabled:
        return TrackedRun(uri)
    previous = read_ref(train_ref).get("run_id")
    if previous:
        try:
            with quiet_http():
                data = mlflow_client(uri).get_run(previous).data
        except Exception:  # recorded in another store, or unreachable: start afresh
            data = None
        if data is not None and is_fresh(data, cfg):
            return reopen_run(cfg, train_ref, folder=folder)
    extra = dict(tags or {}) | ({"train_run_id": previous} if previous else {})
    run = start_run(cfg, run_name=run_name, tags=extra, folder=folder)
    try:
        log_curve(run, train_dir / LEARNING_CURVE)
        log_training(run, cfg, train_dir, params_file=params_file)
    except BaseException:
        run.finish("FAILED")
        raise
    return run
