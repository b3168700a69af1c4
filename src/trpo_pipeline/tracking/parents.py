"""Parent runs: one per Hydra multirun or Optuna study, its jobs or trials nested under it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trpo_pipeline.config import ConfigError, TrackingConfig
from trpo_pipeline.credentials import mask
from trpo_pipeline.tracking.records import provenance_tags
from trpo_pipeline.tracking.store import (
    is_outage,
    mlflow_client,
    open_experiment,
    quiet_http,
    resolve_tracking_uri,
    user_tag,
    warn_unreachable,
)

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a child under this run


def start_parent_run(
    tracking: TrackingConfig, run_name: str, tags: Mapping[str, str] | None = None
) -> str | None:
    """Open a parent run; children pass its id as ``parent_run_id``. None if tracking is off,
    or (after one warning line) if the store cannot be reached: the children then track, or
    keep for trpo-sync, on their own."""
    if not tracking.enabled:
        return None
    uri = resolve_tracking_uri(tracking)
    try:
        client, exp_id = open_experiment(uri, tracking.experiment)
        with quiet_http():
            run = client.create_run(
                exp_id,
                tags={
                    k: mask(v)
                    for k, v in (provenance_tags() | user_tag(uri) | dict(tags or {})).items()
                },
                run_name=mask(run_name),
            )
    except ConfigError:
        raise
    except Exception as err:
        if not is_outage(err):
            raise
        warn_unreachable(uri, err, "no parent run; each job keeps its own results for trpo-sync")
        return None
    return run.info.run_id


def child_runs(uri: str, parent_run_id: str) -> list[Any]:
    client = mlflow_client(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    )


def finish_parent_run(tracking: TrackingConfig, run_id: str, *, failed: bool = False) -> list[Any]:
    """FAILED if ``failed`` or a child failed, else FINISHED; a parent without children is
    deleted (nothing ran under it). Returns the children that did not finish (FAILED, KILLED,
    or still RUNNING when the multirun ended). A store gone away meanwhile costs one warning
    line."""
    uri = resolve_tracking_uri(tracking)
    try:
        with quiet_http():
            children = child_runs(uri, run_id)
            client = mlflow_client(uri)
            if not children and not failed:
                client.delete_run(run_id)
                return []
            unfinished = [c for c in children if c.info.status != "FINISHED"]
            failed = failed or bool({c.info.status for c in children} & {"FAILED", "KILLED"})
            client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
            return unfinished
    except Exception as err:
        if not is_outage(err):
            raise
        warn_unreachable(uri, err, f"parent run {run_id} was left open")
        return []


def close_runs(tracking: TrackingConfig, statuses: Mapping[str, str]) -> None:
    """Set each run's final status ({run id: status}); a store gone away costs one line."""
    uri = resolve_tracking_uri(tracking)
    try:
        with quiet_http():
            client = mlflow_client(uri)
            for run_id, status in statuses.items():
                client.set_terminated(run_id, status)
    except Exception as err:
        if not is_outage(err):
            raise
        warn_unreachable(uri, err, f"runs {', '.join(statuses)} were left open")
