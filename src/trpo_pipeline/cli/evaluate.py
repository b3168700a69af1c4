"""`trpo-evaluate`: deterministic episodes of a run folder's checkpoint (or any checkpoint)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from trpo_pipeline.cli.train import is_file
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.launch.app import guarded, run_hydra_app
from trpo_pipeline.launch.command_line import CommandLine
from trpo_pipeline.launch.compose import load_config
from trpo_pipeline.rl.errors import CheckpointError
from trpo_pipeline.rl.run_files import CHECKPOINT, EVAL_METRICS, VIDEO_DIR

PROG = "trpo-evaluate"


def _evaluate_task(dcfg: Any) -> float:
    # Deferred: evaluation imports torch, which only a running task needs.
    from trpo_pipeline.rl.evaluate import evaluate, write_eval

    def body(run_dir: Path) -> float:
        cfg = load_config(dcfg)
        checkpoint = (
            Path(cfg.evaluate.checkpoint) if cfg.evaluate.checkpoint else run_dir / CHECKPOINT
        )
        out = run_dir / EVAL_METRICS
        if out.exists() and not cfg.overwrite:
            raise ConfigError("", f"{out} already exists; pass overwrite=true to replace it")
        videos = run_dir / VIDEO_DIR
        shutil.rmtree(videos, ignore_errors=True)  # videos of an earlier evaluation
        result = evaluate(checkpoint, cfg.evaluate, video_dir=videos)
        write_eval(result, out)
        recorded = f"\nvideos: {videos}" if cfg.evaluate.video_episodes else ""
        print(
            f"evaluated {checkpoint} on {result.episodes} episodes: return "
            f"{result.mean_return:.1f} +- {result.std_return:.1f} "
            f"(min {result.min_return:.1f}, max {result.max_return:.1f})\n"
            f"outputs: {out}{recorded}"
        )
        return result.mean_return

    return guarded(PROG, body)


def _check_checkpoint_given(cfg: Config, folder: Path | None, multirun: bool) -> None:
    if cfg.evaluate.checkpoint is not None:
        if not is_file(Path(cfg.evaluate.checkpoint)):
            raise ConfigError(
                "evaluate.checkpoint", f"no checkpoint file at {cfg.evaluate.checkpoint}"
            )
    elif multirun and folder is not None and not folder.is_dir():
        raise ConfigError(
            "evaluate.checkpoint",
            f"no trained runs in {folder}: pass hydra.sweep.dir=<a training multirun's "
            "folder>, or evaluate.checkpoint=<file>",
        )
    elif not multirun and folder is not None and not is_file(folder / CHECKPOINT):
        raise ConfigError(
            "evaluate.checkpoint",
            f"no checkpoint at {folder / CHECKPOINT}: train it first, or pass "
            "evaluate.checkpoint=<file>",
        )


def check_evaluation(configs: list[Config], folder: Path | None, command: CommandLine) -> None:
    """Before Hydra: the checkpoint to evaluate is there and loads (the run folder's, when it
    is known in advance), and its evaluation would not replace another without overwrite."""
    for cfg in configs:
        _check_checkpoint_given(cfg, folder, command.multirun)
    if command.multirun or folder is None:
        return
    cfg = configs[0]
    # Deferred: loading a checkpoint imports torch.
    from trpo_pipeline.rl.checkpoint import load_checkpoint

    try:
        load_checkpoint(Path(cfg.evaluate.checkpoint or folder / CHECKPOINT))
    except CheckpointError as err:
        raise ConfigError("evaluate.checkpoint", str(err)) from None
    out = folder / EVAL_METRICS
    if out.exists() and not cfg.overwrite:
        raise ConfigError("", f"{out} already exists; pass overwrite=true to replace it")


def main() -> None:
    run_hydra_app(PROG, _evaluate_task, check_evaluation)
