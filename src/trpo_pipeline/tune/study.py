"""The study loop: a worker runs trials until the study holds ``tune.n_trials`` finished ones.

Several workers (processes, machines, the jobs of ``trpo-tune -m``) share a study through an RDB
storage (PostgreSQL); a worker that dies stops beating, its trial is marked failed after the
grace period and re-queued for the others. A worker the scheduler stops (SIGTERM: scancel, a
requeue, a preemption) re-queues its trial itself at once, the same way. ``tune.n_trials`` caps
the finished (complete + pruned) trials of the study across all workers."""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from trpo_pipeline import stops
from trpo_pipeline.config import Config
from trpo_pipeline.credentials import mask
from trpo_pipeline.tune.mlflow_runs import NoTracker, make_tracker
from trpo_pipeline.tune.objective import (
    FINISHED,
    CapReachedError,
    ComposeTrial,
    Objective,
    WorkerStopped,
)
from trpo_pipeline.tune.report import write_report
from trpo_pipeline.tune.storage import (
    heartbeat_enabled,
    open_storage,
    open_study,
    storage_url,
)
from trpo_pipeline.tune.summary import StudySummary, summarize
from trpo_pipeline.tune.text import Echo, format_value, say
from trpo_pipeline.tune.tuned_config import (
    check_tuned_config,
    tuned_config_yaml,
    write_tuned_config,
)
from trpo_pipeline.tune.validation import validate_tune


class _Progress:
    """A line per finished trial: number, params, value, state, best so far."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "not_run" in trial.user_attrs:
            self.echo(f"trial {trial.number}: not run ({trial.user_attrs['not_run']})")
            return
        params = " ".join(
            f"{k}={format_value(v)}" for k, v in trial.user_attrs.get("config", {}).items()
        )
        if trial.state == TrialState.COMPLETE:
            outcome = f"complete  return {trial.value:.2f}"
        elif "diverged" in trial.user_attrs:
            outcome = f"diverged  at {trial.user_attrs['diverged']}"
        elif "invalid" in trial.user_attrs:
            outcome = f"pruned    invalid config: {trial.user_attrs['invalid']}"
        elif trial.state == TrialState.PRUNED:
            where = (
                f"update {trial.last_step}, return {trial.intermediate_values[trial.last_step]:.2f}"
                if trial.last_step is not None
                else "its start"
            )
            outcome = f"pruned    at {where}"
        else:
            outcome = trial.state.name.lower()
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        self.echo(
            f"trial {trial.number:>3} {outcome} | {params} | {seconds:.0f} s | {_best(study)}"
        )


def _best(study: optuna.Study) -> str:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "no complete trial yet"
    best = max(complete, key=lambda t: t.value)
    return f"best {best.value:.2f} (trial {best.number})"


class _StaleTrials:
    """Storage callback for a trial whose worker stopped beating: mark it failed in MLflow and
    re-queue it (its params, as a new trial number) for whichever worker is free."""

    def __init__(self, max_retry: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.tracker: NoTracker = NoTracker()
        self.echo: Echo = say

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.tracker.lost_trial(trial)
        self.retry(study, trial)
        self.echo(f"trial {trial.number} lost its worker: marked failed and re-queued")


def run_study(
    cfg: Config,
    *,
    compose_trial: ComposeTrial,
    study_dir: Path,
    default: Config | None = None,
    tuned_config: Path | None = None,
    echo: Echo = say,
) -> StudySummary:
    """Run trials of ``cfg.tune``'s study until it holds ``n_trials`` finished ones.

    ``compose_trial(values)`` returns the config of one trial ({dotted key: value} applied to
    the experiment). At the end the best trial is written to ``tuned_config`` (as the
    experiment's differences from ``default`` plus the best values) and a report into
    ``study_dir/report``. KeyboardInterrupt marks the running trial failed and propagates: the
    same command continues the study.
    """
    validate_tune(cfg)
    t = cfg.tune
    if tuned_config is not None:
        check_tuned_config(tuned_config, t.study_name, overwrite=t.overwrite)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stale = _StaleTrials(t.storage.max_retry)
    storage = open_storage(t.storage, on_stale=stale)
    label = mask(storage_url(t.storage))
    study = open_study(cfg, storage)
    tracker = make_tracker(cfg, study, label)
    stale.tracker, stale.echo = tracker, echo
    count_running = heartbeat_enabled(storage)
    objective = Objective(cfg, compose_trial, study_dir, tracker, count_running=count_running)
    study_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    finished = _finished(study)
    echo(
        f"study {t.study_name!r} in {label}: {finished} of {t.n_trials} trials finished; "
        f"sampler {t.sampler.name}, pruner {t.pruner.name}, "
        f"{cfg.train.total_steps:,} env steps a trial, evaluated every {t.report_every} updates"
    )

    def wait_or_stop(study: optuna.Study, _: FrozenTrial) -> None:
        stops.raise_again()
        if not _wait_for_room(study, cfg, count_running, echo):
            study.stop()

    try:
        if _wait_for_room(study, cfg, count_running, echo):
            study.optimize(
                objective,
                callbacks=[
                    # Stops this worker once the study holds n_trials finished trials ...
                    optuna.study.MaxTrialsCallback(t.n_trials, states=FINISHED),
                    _Progress(echo),
                    # ... and this one waits while others run the last ones, or stops.
                    wait_or_stop,
                ],
                catch=(CapReachedError,),
            )
    except BaseException as err:
        # The scheduler took the worker away (SIGTERM; or submitit's exit after a USR2 requeue,
        # which Optuna does not catch): the trial is not at fault, so another worker retries it
        # now, not after the heartbeat's grace period. Ctrl-C is a person stopping the study:
        # its trial is only marked failed, and the study, continued, samples afresh.
        if isinstance(err, WorkerStopped | SystemExit):
            _requeue_lost_trial(study, objective.trial_number, stale.retry, echo)
            objective.close_interrupted_run()
        tracker.finish_study(summarize(study, cfg, time.perf_counter() - start), None, done=False)
        raise
    summary = _conclude(
        study, cfg, time.perf_counter() - start, study_dir, tuned_config, default or cfg, label
    )
    tracker.finish_study(summary, summary.report_dir, done=True)
    return summary


def _requeue_lost_trial(
    study: optuna.Study,
    number: int | None,
    retry: optuna.storages.RetryHeartbeatStaleTrialCallback,
    echo: Echo,
) -> None:
    """Mark this worker's interrupted trial failed (if Optuna has not) and re-queue it with
    Optuna's retry bookkeeping (``failed_trial``, ``retry_history``, ``tune.storage.max_retry``),
    as for a trial whose worker stopped beating."""
    trial = _trial(study, number)
    if trial is None or "not_run" in trial.user_attrs:
        return
    if trial.state == TrialState.RUNNING:
        study.tell(trial.number, state=TrialState.FAIL)
        trial = _trial(study, trial.number)
    if trial is None or trial.state != TrialState.FAIL:
        return  # it had finished: nothing was lost
    retry(study, trial)
    requeued = any(
        t.system_attrs.get("retry_history", [])[-1:] == [trial.number]
        for t in study.get_trials(deepcopy=False)
    )
    echo(
        f"trial {trial.number}: this worker was stopped (scancel, a requeue, kill); marked "
        "failed and "
        + ("re-queued for another worker" if requeued else "not re-queued (tune.storage.max_retry)")
    )


def _trial(study: optuna.Study, number: int | None) -> FrozenTrial | None:
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return found[0] if found else None


def _conclude(
    study: optuna.Study,
    cfg: Config,
    wall_time_s: float,
    study_dir: Path,
    tuned_config: Path | None,
    default: Config,
    label: str,
) -> StudySummary:
    """The study's summary, its best trial as a Hydra experiment, and its report."""
    t = cfg.tune
    summary = summarize(study, cfg, wall_time_s)
    report_dir = study_dir / "report"
    written = None
    if summary.best_number is not None and tuned_config is not None:
        text = tuned_config_yaml(cfg, default, study.best_trial, label)
        written = write_tuned_config(tuned_config, text, t.study_name, overwrite=t.overwrite)
    summary = dataclasses.replace(summary, tuned_config=written, report_dir=report_dir)
    write_report(study, summary, report_dir)
    return summary


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _wait_for_room(study: optuna.Study, cfg: Config, count_running: bool, echo: Echo) -> bool:
    """True when this worker should start a trial; False when the study has its n_trials.

    Trials other workers are running count towards the cap while their heartbeat is alive, so
    this worker waits (rather than overshooting the cap) and takes over a lost trial's retry.
    """
    cap = cfg.tune.n_trials
    said = False
    while True:
        if count_running:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        if finished >= cap:
            return False
        if not count_running:
            return True
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if waiting or finished + running < cap:
            return True
        if not said:
            s = cfg.tune.storage
            grace = s.grace_period or 2 * (s.heartbeat_interval or 0)  # optuna's default
            echo(
                f"waiting for {running} trial(s) of other workers to finish "
                f"({finished} of {cap} finished; a lost one is re-queued after "
                f"{grace} s without heartbeat)"
            )
            said = True
        time.sleep(min(cfg.tune.storage.heartbeat_interval or 1, 5))
        stops.raise_again()
