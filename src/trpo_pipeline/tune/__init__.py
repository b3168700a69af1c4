"""Optuna studies over the config: sampler, pruner, storage, and an objective that calls train().

The package knows neither Hydra nor conf/: tune_cli.py passes it a function that composes a
trial's config. Who owns what:

- space: the tuned keys (Dimension), how a trial samples them, a config with sampled values;
- validation: checks of the tune section and the search space before any trial runs;
- storage: the storage URL and opening it (heartbeats), the sampler, the pruner, the study;
- mlflow_runs: the study as an MLflow parent run, each trial a child run;
- objective: a trial trained by train(), its intermediate reports, pruning and divergence;
- study: the study loop shared by workers, and the cap on finished trials;
- summary: the counts, best trial and pruning savings of a study;
- tuned_config: the best trial written as a Hydra experiment;
- report: the study report (report.md and figures);
- text: progress lines and how they show sampled values.
"""

from trpo_pipeline.tune.report import write_report
from trpo_pipeline.tune.space import dimensions, suggest, with_values
from trpo_pipeline.tune.storage import storage_url
from trpo_pipeline.tune.study import run_study
from trpo_pipeline.tune.summary import StudySummary, format_summary, summarize
from trpo_pipeline.tune.tuned_config import check_tuned_config
from trpo_pipeline.tune.validation import validate_tune

__all__ = [
    "StudySummary",
    "check_tuned_config",
    "dimensions",
    "format_summary",
    "run_study",
    "storage_url",
    "suggest",
    "summarize",
    "validate_tune",
    "with_values",
    "write_report",
]
