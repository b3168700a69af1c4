"""MLflow: where runs are recorded, and what each run records.

A run gets the whole config as flattened params, per-update and evaluation metrics, provenance
tags and artifacts (config, checkpoint, learning curve, the policy as a pyfunc model). MLflow
never stops training: a store that cannot be reached makes the run offline, and ``trpo-sync``
pushes what it missed later.

- ``store``: where runs go (the tracking URI, checks, clients, retries on a locked SQLite
  store, outage and refusal detection, the user a server sees, experiments);
- ``access``: the pre-flight check that the store can be used and this user may write there;
- ``records``: what is recorded (params, config hash, provenance tags, metrics);
- ``artifacts``: files uploaded with passwords masked, the policy model;
- ``run``: one run (:class:`TrackedRun`, opening, reopening and closing it, its reference file);
- ``stage_records``: what the training and evaluation stages record;
- ``registry``: policies as versions of ``trpo-<env id>``, the alias ``champion`` on the best;
- ``parents``: parent runs of a Hydra multirun or an Optuna study;
- ``history``: reading metric histories back;
- ``ui``: the UI's addresses (the training view of an experiment, a run's page).
"""

from __future__ import annotations

from trpo_pipeline.tracking.access import check_store
from trpo_pipeline.tracking.artifacts import MODEL_NAME, log_policy_model, upload_artifact
from trpo_pipeline.tracking.history import metric_histories
from trpo_pipeline.tracking.parents import (
    PARENT_TAG,
    close_runs,
    finish_parent_run,
    start_parent_run,
)
from trpo_pipeline.tracking.records import (
    TIMING_METRICS,
    config_hash,
    eval_metrics,
    flatten,
    flatten_config,
    git_state,
    provenance_tags,
    result_params,
    row_metrics,
    source_tags,
    update_metrics,
)
from trpo_pipeline.tracking.registry import (
    CHAMPION,
    Registration,
    register_policy,
    registered_model_name,
)
from trpo_pipeline.tracking.run import (
    FLUSH_EVERY,
    MAX_BATCH,
    PARAMS_PER_BATCH,
    RUN_REF,
    TrackedRun,
    default_run_name,
    read_ref,
    recording,
    reopen_run,
    start_run,
)
from trpo_pipeline.tracking.stage_records import (
    log_curve,
    log_evaluation,
    log_training,
    register_evaluation,
    run_for_evaluation,
)
from trpo_pipeline.tracking.store import (
    TrackingUnavailableError,
    experiment_id,
    is_outage,
    mlflow_client,
    open_experiment,
    project_root,
    quiet_http,
    refusal_status,
    resolve_tracking_uri,
    retry_locked,
    sqlite_path,
    tracking_user,
    warn_unreachable,
)
from trpo_pipeline.tracking.ui import experiment_url, run_url, serve_command, ui_command

__all__ = [
    "CHAMPION",
    "FLUSH_EVERY",
    "MAX_BATCH",
    "MODEL_NAME",
    "PARAMS_PER_BATCH",
    "PARENT_TAG",
    "RUN_REF",
    "TIMING_METRICS",
    "Registration",
    "TrackedRun",
    "TrackingUnavailableError",
    "check_store",
    "close_runs",
    "config_hash",
    "default_run_name",
    "eval_metrics",
    "experiment_id",
    "experiment_url",
    "finish_parent_run",
    "flatten",
    "flatten_config",
    "git_state",
    "is_outage",
    "log_curve",
    "log_evaluation",
    "log_policy_model",
    "log_training",
    "metric_histories",
    "mlflow_client",
    "open_experiment",
    "project_root",
    "provenance_tags",
    "quiet_http",
    "read_ref",
    "recording",
    "refusal_status",
    "register_evaluation",
    "register_policy",
    "registered_model_name",
    "reopen_run",
    "resolve_tracking_uri",
    "result_params",
    "retry_locked",
    "row_metrics",
    "run_for_evaluation",
    "run_url",
    "serve_command",
    "source_tags",
    "sqlite_path",
    "start_parent_run",
    "start_run",
    "tracking_user",
    "ui_command",
    "update_metrics",
    "upload_artifact",
    "warn_unreachable",
]
