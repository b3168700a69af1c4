"""MLflow: the study is a parent run, each trial a child run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from trpo_pipeline import tracking
from trpo_pipeline.config import Config
from trpo_pipeline.rl.schema import to_dict
from trpo_pipeline.rl.train import UpdateRecord
from trpo_pipeline.tune.summary import StudySummary


class NoTracker:
    """What the study reports to; this one records nothing (tracking.enabled=false)."""

    def start_trial(
        self, trial: optuna.Trial, cfg: Config, run_dir: Path | None = None
    ) -> Callable[[UpdateRecord], None]:
        """Open the trial's run; returns a train() callback for its per-update metrics."""
        return lambda record: None

    def intermediate(self, trial: optuna.Trial, value: float, update: int, env_steps: int) -> None:
        return None

    def finish_trial(
        self, trial: optuna.Trial, state: str, value: float | None, env_steps: int
    ) -> None:
        return None

    def lost_trial(self, trial: FrozenTrial) -> None:
        return None

    def finish_study(self, summary: StudySummary, report_dir: Path | None, done: bool) -> None:
        return None


class MlflowTracker(NoTracker):
    """Nested MLflow runs (tracking/): one parent per study, shared by all its workers and
    found again by its tags when the study resumes; a child run per trial with the trial's
    config as params, training metrics, ``tune/intermediate_return`` (step = env steps),
    ``tune/objective`` and the tag ``trial_state`` (complete / pruned / failed).

    A store that cannot be reached costs one warning line: the study goes on without a parent
    run, and each trial keeps what MLflow is missing in its folder for ``trpo-sync``."""

    def __init__(self, cfg: Config, study: optuna.Study, storage: str) -> None:
        self.uri = tracking.resolve_tracking_uri(cfg.tracking)
        self.study_tags = {"optuna_study": study.study_name, "optuna_storage": storage}
        self.runs: dict[int, tracking.TrackedRun] = {}
        self.parent_id: str | None = None
        try:
            # open_experiment creates the client under the store's lock (workers starting
            # together on a fresh SQLite store take turns) and retries while it is locked.
            self.client, self.experiment_id = tracking.open_experiment(
                self.uri, cfg.tracking.experiment
            )
            with tracking.quiet_http():
                self.parent_id = self._parent(cfg)
        except tracking.TrackingUnavailableError as err:
            tracking.warn_unreachable(
                self.uri, str(err), "the study goes on; trials keep their results for trpo-sync"
            )
        except Exception as err:
            if not tracking.is_outage(err):
                raise
            tracking.warn_unreachable(
                self.uri, err, "the study goes on; trials keep their results for trpo-sync"
            )

    def _best_effort(self, call: Callable[[], Any]) -> None:
        """A study-level MLflow call (parent run, another worker's trial) that may not stop
        the study: a store gone away costs one warning line."""
        if self.parent_id is None:
            return
        try:
            with tracking.quiet_http():
                call()
        except Exception as err:
            if not tracking.is_outage(err):
                raise
            tracking.warn_unreachable(self.uri, err, "the study's parent run is left incomplete")
            self.parent_id = None

    def _find_parents(self) -> list[Any]:
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in self.study_tags.items())
        return self.client.search_runs(
            [self.experiment_id],
            f"{query} and tags.tune_role = 'study'",
            order_by=["attributes.start_time ASC"],
        )

    def _parent(self, cfg: Config) -> str:
        from mlflow.entities import Param

        found = self._find_parents()
        if not found:
            run_id = tracking.start_parent_run(
                cfg.tracking,
                run_name=f"tune {self.study_tags['optuna_study']}",
                tags={
                    **self.study_tags,
                    "tune_role": "study",
                    "launcher": "optuna",
                    **tracking.source_tags("trpo-tune"),
                },
            )
            params = tracking.flatten(to_dict(cfg)).items()
            for i in range(0, len(params), tracking.PARAMS_PER_BATCH):
                batch = list(params)[i : i + tracking.PARAMS_PER_BATCH]
                self.client.log_batch(run_id, params=[Param(k, v) for k, v in batch])
            # Two workers starting together may each have created one: all keep the oldest.
            found = self._find_parents()
            if found[0].info.run_id != run_id:
                self.client.delete_run(run_id)
        parent_id = found[0].info.run_id
        self.client.update_run(parent_id, status="RUNNING")
        return parent_id

    def start_trial(
        self, trial: optuna.Trial, cfg: Config, run_dir: Path | None = None
    ) -> Callable[[UpdateRecord], None]:
        run = tracking.start_run(
            cfg,
            run_name=f"{self.study_tags['optuna_study']}/trial_{trial.number}",
            parent_run_id=self.parent_id,
            tags={
                **self.study_tags,
                "tune_role": "trial",
                "launcher": "optuna",
                **tracking.source_tags("trpo-tune"),
                "trial_number": str(trial.number),
                "trial_state": "running",
                "tuned_keys": ",".join(trial.user_attrs.get("config", {})),
            },
            folder=run_dir,
        )
        self.runs[trial.number] = run
        trial.set_user_attr("mlflow_run_id", run.run_id)
        return run.log_update

    def intermediate(self, trial: optuna.Trial, value: float, update: int, env_steps: int) -> None:
        self.runs[trial.number].log_metrics({"tune/intermediate_return": value}, step=env_steps)

    def finish_trial(
        self, trial: optuna.Trial, state: str, value: float | None, env_steps: int
    ) -> None:
        run = self.runs.pop(trial.number, None)
        if run is None:
            return
        if value is not None:
            run.log_metrics({"tune/objective": value}, step=env_steps)
        run.set_tag("trial_state", state)
        run.finish("FAILED" if state == "failed" else "FINISHED")

    def lost_trial(self, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:

            def mark_failed() -> None:
                self.client.set_tag(run_id, "trial_state", "failed")
                self.client.set_tag(run_id, "trial_fail_reason", "worker lost (no heartbeat)")
                self.client.set_terminated(run_id, "FAILED")

            self._best_effort(mark_failed)

    def finish_study(self, summary: StudySummary, report_dir: Path | None, done: bool) -> None:
        self._best_effort(lambda: self._finish_parent(summary, report_dir, done))

    def _finish_parent(self, summary: StudySummary, report_dir: Path | None, done: bool) -> None:
        assert self.parent_id is not None
        metrics = {
            "tune/trials_complete": summary.n_complete,
            "tune/trials_pruned": summary.n_pruned,
            "tune/trials_failed": summary.n_failed,
        }
        if summary.best_value is not None:
            metrics["tune/best_objective"] = summary.best_value
            self.client.set_tag(self.parent_id, "best_trial", str(summary.best_number))
        for key, value in metrics.items():
            self.client.log_metric(self.parent_id, key, value)
        if report_dir is not None and report_dir.is_dir():
            self.client.log_artifacts(self.parent_id, str(report_dir), "tune_report")
        self.client.set_terminated(self.parent_id, "FINISHED" if done else "KILLED")


def make_tracker(cfg: Config, study: optuna.Study, storage: str) -> NoTracker:
    return MlflowTracker(cfg, study, storage) if cfg.tracking.enabled else NoTracker()
