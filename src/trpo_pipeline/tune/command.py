"""Running a study as a command (trpo-tune, and the DVC pipeline's tune stage): the summary it
prints, and how it ends when a person (Ctrl-C) or a scheduler (SIGTERM) stops it."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trpo_pipeline import stops
from trpo_pipeline.config import Config
from trpo_pipeline.tune.objective import WorkerStopped, stop_worker
from trpo_pipeline.tune.study import run_study
from trpo_pipeline.tune.summary import format_summary

PROG = "trpo-tune"


def tuned_config_path(conf_dir: Path, study_name: str) -> Path:
    """Where a study writes its best trial as an experiment: conf/experiment/tuned_<study>.yaml."""
    return conf_dir / "experiment" / f"tuned_{study_name}.yaml"


def run_study_command(
    cfg: Config,
    compose_trial: Callable[[Mapping[str, Any]], Config],
    study_dir: Path,
    default: Config,
    conf_dir: Path,
) -> float | None:
    """Run the study and print its summary; the best value (None: no trial finished). Stopped,
    it says how and exits 143 (SIGTERM) or 130 (Ctrl-C)."""
    try:
        summary = run_study(
            cfg,
            compose_trial=compose_trial,
            study_dir=study_dir,
            default=default,
            tuned_config=tuned_config_path(conf_dir, cfg.tune.study_name),
        )
    except WorkerStopped:
        print(
            f"{PROG}: stopped by SIGTERM; the running trial is marked failed and re-queued. "
            f"The other workers, or the same command, continue study {cfg.tune.study_name!r}.",
            file=sys.stderr,
        )
        # SystemExit, not an error: under submitit no result is written, so a job SLURM
        # requeues is waited for, and one cancelled counts as not finished.
        raise SystemExit(128 + signal.SIGTERM) from None
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; the running trial is marked failed. Run the same "
            f"command again to continue study {cfg.tune.study_name!r}.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    print(format_summary(summary))
    return summary.best_value


def interrupt_on_sigterm() -> None:
    """kill / a batch scheduler's SIGTERM ends the trial like Ctrl-C (marked failed at once, not
    left to go stale), and the study re-queues it (WorkerStopped). A second SIGTERM (SLURM may
    signal every process of the job) is ignored, so that the re-queue is not cut short."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_worker()

    signal.signal(signal.SIGTERM, handler)
    stops.remember(signal.SIGTERM, signal.SIGUSR2)  # USR2: submitit's handler, in its jobs
