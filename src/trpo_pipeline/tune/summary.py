"""What a study has done so far: trial counts, the best trial, and the time pruning saved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from trpo_pipeline.config import Config
from trpo_pipeline.credentials import mask
from trpo_pipeline.tune.storage import storage_url
from trpo_pipeline.tune.text import format_value


@dataclass(frozen=True)
class StudySummary:
    study_name: str
    storage: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best_number: int | None
    best_value: float | None
    best_values: dict[str, Any]
    wall_time_s: float  # this worker
    seconds_complete: float  # trial time of all complete trials of the study
    seconds_pruned: float
    env_steps_complete: int  # trained by all complete trials
    env_steps_pruned: int  # trained by all pruned trials before they were stopped
    tuned_config: Path | None
    report_dir: Path | None

    @property
    def n_finished(self) -> int:
        return self.n_complete + self.n_pruned

    @property
    def seconds_saved_estimate(self) -> float:
        """Trial time pruning saved: the env steps pruned trials did not train, at the
        complete trials' seconds per env step (intermediate evaluations included)."""
        if not self.n_complete or not self.n_pruned or not self.env_steps_complete:
            return 0.0
        return self.seconds_complete / self.env_steps_complete * self.env_steps_skipped

    @property
    def env_steps_skipped(self) -> int:
        full = self.env_steps_complete / max(self.n_complete, 1)
        return max(round(self.n_pruned * full) - self.env_steps_pruned, 0)


def summarize(study: optuna.Study, cfg: Config, wall_time_s: float) -> StudySummary:
    trials = study.get_trials(deepcopy=False)

    def of(state: TrialState) -> list[FrozenTrial]:
        return [t for t in trials if t.state == state]

    def seconds(ts: list[FrozenTrial]) -> float:
        return sum(t.duration.total_seconds() for t in ts if t.duration)

    complete, pruned = of(TrialState.COMPLETE), of(TrialState.PRUNED)
    best = max(complete, key=lambda t: t.value) if complete else None
    return StudySummary(
        study_name=study.study_name,
        storage=mask(storage_url(cfg.tune.storage)),
        n_complete=len(complete),
        n_pruned=len(pruned),
        n_failed=len(of(TrialState.FAIL)),
        best_number=None if best is None else best.number,
        best_value=None if best is None else best.value,
        best_values={} if best is None else dict(best.user_attrs.get("config", {})),
        wall_time_s=wall_time_s,
        seconds_complete=seconds(complete),
        seconds_pruned=seconds(pruned),
        env_steps_complete=sum(int(t.user_attrs.get("env_steps", 0)) for t in complete),
        env_steps_pruned=sum(int(t.user_attrs.get("env_steps", 0)) for t in pruned),
        tuned_config=None,
        report_dir=None,
    )


def format_summary(s: StudySummary) -> str:
    lines = [
        f"study {s.study_name!r} ({s.storage}): {s.n_complete} complete, {s.n_pruned} pruned, "
        f"{s.n_failed} failed; this worker ran for {s.wall_time_s:.0f} s",
    ]
    if s.best_number is not None:
        params = " ".join(f"{k}={format_value(v)}" for k, v in s.best_values.items())
        lines.append(f"best: trial {s.best_number}, return {s.best_value:.2f} | {params}")
    if s.n_pruned:
        lines.append(
            f"pruning: stopped {s.n_pruned} of {s.n_finished} trials early, "
            f"{s.env_steps_skipped:,} env steps not trained; about "
            f"{s.seconds_saved_estimate:.0f} s saved (complete trials: "
            f"{s.seconds_complete:.0f} s for {s.env_steps_complete:,} env steps)"
        )
    if s.tuned_config is not None:
        lines.append(
            f"tuned config: {s.tuned_config} (trpo-train experiment={s.tuned_config.stem})"
        )
    if s.report_dir is not None:
        lines.append(f"report: {s.report_dir / 'report.md'}")
    return "\n".join(lines)
