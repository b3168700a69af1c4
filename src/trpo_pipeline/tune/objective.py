"""The objective: a trial samples the keys of ``tune.search_space``, asks the entry point for the
composed config with those values, trains it in ``<output_dir>/<study>/trial_<n>/`` and returns
the mean deterministic evaluation return. Every ``tune.report_every`` updates the fresh
checkpoint is evaluated and reported, and the pruner may stop the trial there. A diverging trial
(a NaN anywhere) is pruned with the reason in its user attrs; it never stops the study."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import optuna
from optuna.trial import TrialState

from trpo_pipeline import stops
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.errors import first_line
from trpo_pipeline.launch.restart import scheduler_job_id
from trpo_pipeline.rl.checkpoint import rng_state, set_rng_state
from trpo_pipeline.rl.config import EvaluateConfig
from trpo_pipeline.rl.evaluate import evaluate
from trpo_pipeline.rl.run_files import CHECKPOINT
from trpo_pipeline.rl.train import UpdateRecord, train
from trpo_pipeline.tune.mlflow_runs import NoTracker
from trpo_pipeline.tune.space import dimensions, suggest

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what tune.n_trials counts
# UpdateStats fields that are finite in any healthy update; NaN or inf there means divergence.
_HEALTH_STATS = ("surrogate_after", "kl", "value_loss", "grad_norm")
_NAN_MESSAGE = re.compile(r"\b(nan|inf)\b", re.IGNORECASE)

ComposeTrial = Callable[[Mapping[str, Any]], Config]


class DivergenceError(Exception):
    """A trial's numbers stopped being finite; the trial is pruned with this reason."""


class WorkerStopped(KeyboardInterrupt):
    """SIGTERM: the scheduler (scancel, a requeue or preemption) or ``kill`` stops this worker.

    A KeyboardInterrupt, so that Optuna marks the running trial failed as it does for Ctrl-C.
    """


def stop_worker() -> NoReturn:
    """What trpo-tune's SIGTERM handler calls. Where Python drops the exception (a garbage-
    collector callback, a destructor) the trial raises it again at its next update
    (trpo_pipeline.stops)."""
    raise WorkerStopped


class CapReachedError(Exception):
    """Other workers already run the last trials the cap allows; this one is not run."""


class _Reporter:
    """train() callback: divergence checks every update, an intermediate evaluation every
    ``report_every`` updates (the checkpoint is written there), and the pruning decision."""

    def __init__(self, trial: optuna.Trial, cfg: Config, run_dir: Path, tracker: NoTracker) -> None:
        self.trial, self.cfg, self.run_dir, self.tracker = trial, cfg, run_dir, tracker
        self.eval_cfg = EvaluateConfig(
            episodes=cfg.tune.report_episodes, seed=cfg.evaluate.seed, deterministic=True
        )
        self.update, self.env_steps = 0, 0

    def __call__(self, record: UpdateRecord) -> None:
        stops.raise_again()
        self.update, self.env_steps = record.update, record.env_steps
        bad = [k for k in _HEALTH_STATS if not math.isfinite(getattr(record.stats, k))]
        if bad:
            raise DivergenceError(f"update {record.update}: {', '.join(bad)} not finite")
        if record.update % self.cfg.tune.report_every:
            return
        # evaluate() seeds torch's global RNG; training must go on as if it had not run, so
        # that the trial is the same run `trpo-train experiment=tuned_<study>` repeats.
        state = rng_state()
        try:
            result = evaluate(self.run_dir / CHECKPOINT, self.eval_cfg)
        finally:
            set_rng_state(state)
        if result.env_steps_trained != record.env_steps:  # train() checkpoints before callbacks
            raise RuntimeError(
                f"checkpoint at {result.env_steps_trained} env steps, expected {record.env_steps}"
            )
        value = result.mean_return
        if not math.isfinite(value):
            raise DivergenceError(f"update {record.update}: evaluation return {value}")
        self.trial.report(value, step=record.update)
        self.tracker.intermediate(self.trial, value, record.update, record.env_steps)
        last = record.env_steps >= self.cfg.train.total_steps  # trained: nothing left to save
        if not last and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"update {record.update} ({record.env_steps} env steps): "
                f"evaluation return {value:.1f} below the pruner's threshold"
            )


class Objective:
    """Sample a config, train it in its own folder, return its mean evaluation return."""

    def __init__(
        self,
        base: Config,
        compose_trial: ComposeTrial,
        study_dir: Path,
        tracker: NoTracker,
        *,
        count_running: bool,
    ) -> None:
        self.base = base
        self.dims = dimensions(base.tune)
        self.compose_trial = compose_trial
        self.study_dir = study_dir
        self.tracker = tracker
        self.count_running = count_running
        self.trial_number: int | None = None  # the trial this worker took last
        self._close_run: Callable[[], None] = lambda: None  # of a trial cut by WorkerStopped

    def __call__(self, trial: optuna.Trial) -> float:
        stops.raise_again()  # before the trial counts as this worker's: it has no params yet
        self.trial_number = trial.number
        self._check_cap(trial)
        values = suggest(trial, self.dims)
        trial.set_user_attr("config", values)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        job = scheduler_job_id()
        if job is not None:  # the SLURM (or submitit local) job of a trpo-tune -m worker
            trial.set_user_attr("job", job)
        try:
            cfg = self.trial_config(values)
        except ConfigError as err:  # a combination of values the schema rejects
            trial.set_user_attr("invalid", str(err))
            raise optuna.TrialPruned(f"invalid config: {err}") from None
        run_dir = self.study_dir / f"trial_{trial.number}"
        log_update = self.tracker.start_trial(trial, cfg, run_dir)
        reporter = _Reporter(trial, cfg, run_dir, self.tracker)
        try:
            value = self._train_and_evaluate(trial, cfg, run_dir, reporter, log_update)
        except optuna.TrialPruned:
            self._record_steps(trial, reporter)
            self.tracker.finish_trial(trial, "pruned", None, reporter.env_steps)
            raise
        except (WorkerStopped, SystemExit):
            # SIGKILL follows within seconds: the study re-queues the trial first, then closes
            # its MLflow run (close_interrupted_run), which may wait for a busy store.
            self._close_run = lambda: self.tracker.finish_trial(
                trial, "failed", None, reporter.env_steps
            )
            raise
        except BaseException:
            self.tracker.finish_trial(trial, "failed", None, reporter.env_steps)
            raise
        self._record_steps(trial, reporter)
        self.tracker.finish_trial(trial, "complete", value, reporter.env_steps)
        return value

    def close_interrupted_run(self) -> None:
        """Mark the MLflow run of the trial WorkerStopped cut failed (nothing if none was)."""
        close, self._close_run = self._close_run, lambda: None
        close()

    def trial_config(self, values: Mapping[str, Any]) -> Config:
        """The composed config of these values, checkpointing at every report (the intermediate
        evaluation reads that checkpoint), quiet, and free to replace its own trial folder."""
        cfg = self.compose_trial(values)
        train_cfg = dataclasses.replace(
            cfg.train, checkpoint_every=cfg.tune.report_every, progress=False
        )
        return dataclasses.replace(cfg, train=train_cfg, resume=None, overwrite=True)

    def _check_cap(self, trial: optuna.Trial) -> None:
        # Two workers that both saw room for the last trial both asked for one: the later is
        # not run, so finished trials never exceed the cap.
        trials = trial.study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
        if finished + (ahead if self.count_running else 0) >= self.base.tune.n_trials:
            trial.set_user_attr("not_run", "the cap was reached by other workers")
            raise CapReachedError(f"tune.n_trials={self.base.tune.n_trials} reached")

    def _train_and_evaluate(
        self,
        trial: optuna.Trial,
        cfg: Config,
        run_dir: Path,
        reporter: _Reporter,
        log_update: Callable[[UpdateRecord], None],
    ) -> float:
        try:
            result = train(cfg, run_dir, callbacks=[log_update, reporter])
            value = evaluate(result.checkpoint, cfg.evaluate).mean_return
            if not math.isfinite(value):
                raise DivergenceError(f"final evaluation return {value}")
            return value
        except DivergenceError as err:
            reason = str(err)
        except (ValueError, RuntimeError, FloatingPointError) as err:
            # torch rejects NaN logits / scales with a ValueError naming the values.
            if not _NAN_MESSAGE.search(str(err)):
                raise
            what = f"{type(err).__name__}: {first_line(err)}"
            reason = f"update {reporter.update + 1}: nan/inf values ({what})"
        trial.set_user_attr("diverged", reason)
        raise optuna.TrialPruned(f"diverged at {reason}")

    @staticmethod
    def _record_steps(trial: optuna.Trial, reporter: _Reporter) -> None:
        trial.set_user_attr("updates", reporter.update)
        trial.set_user_attr("env_steps", reporter.env_steps)
