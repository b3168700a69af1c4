"""Pushing what a run folder's pending-sync marker (pending.py) names, once MLflow is back.

``trpo-sync RUN_DIR [RUN_DIR ...]`` creates the run if it never got one, logs missing params,
tags and artifacts, and logs only the (metric key, step) pairs the MLflow run does not already
hold, so afterwards the run holds every metric exactly once; then it removes the marker.
Running it again changes nothing.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trpo_pipeline.config import TrackingConfig
from trpo_pipeline.credentials import MASK, mask
from trpo_pipeline.errors import first_line
from trpo_pipeline.rl.files import atomic_write
from trpo_pipeline.tracking.artifacts import MODEL_NAME, log_policy_model, upload_artifact
from trpo_pipeline.tracking.pending import Pending, PendingError
from trpo_pipeline.tracking.records import row_metrics
from trpo_pipeline.tracking.run import MAX_BATCH, PARAMS_PER_BATCH, RUN_REF, read_ref
from trpo_pipeline.tracking.store import experiment_id, mlflow_client, resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient


class SyncError(Exception):
    """A folder that cannot be synced now; ``str(err)`` is one line."""


# --- pushing a folder ----------------------------------------------------------------------------


@dataclass
class Pushed:
    """What one sync sent."""

    run_id: str
    created: bool = False
    params: int = 0
    tags: int = 0
    metrics: int = 0
    artifacts: int = 0
    model: bool = False
    status: str | None = None

    def describe(self) -> str:
        parts = [f"MLflow run {self.run_id}" + (" (created)" if self.created else "")]
        parts.append(
            f"{self.params} params, {self.tags} tags, {self.metrics} metrics, "
            f"{self.artifacts} artifacts" + (", the policy model" if self.model else "") + " pushed"
        )
        if self.status:
            parts.append(f"status {self.status}")
        return "; ".join(parts)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One trpo-sync at a time per folder (a second would create a second run)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncError("another trpo-sync is pushing this folder") from None
        yield
    finally:
        os.close(fd)


def resolve_uri(pending: Pending, given: str | None) -> str:
    """--tracking-uri, else the recorded store, else $MLFLOW_TRACKING_URI when it is the
    recorded store with its credentials (the marker holds the URI masked)."""
    if given:
        return resolve_tracking_uri(TrackingConfig(uri=given))
    recorded = pending.tracking_uri
    if recorded and f":{MASK}@" not in recorded:
        return recorded
    env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if recorded and env and mask(resolve_tracking_uri(TrackingConfig(uri=env))) == recorded:
        return resolve_tracking_uri(TrackingConfig(uri=env))
    if not recorded:
        raise SyncError("the marker names no tracking store; pass --tracking-uri")
    raise SyncError(
        f"the run was tracked at {recorded}: give the URI with its credentials "
        "(--tracking-uri or MLFLOW_TRACKING_URI)"
    )


def sync_folder(
    folder: Path, tracking_uri: str | None = None, *, force: bool = False
) -> Pushed | None:
    """Push what ``folder``'s marker names; None if nothing is pending. SyncError if the folder
    cannot be synced now (the marker is then kept: run it again later)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SyncError("no such run folder")
    with _folder_lock(folder):
        try:
            pending = Pending.load(folder)
        except PendingError as err:
            raise SyncError(str(err)) from None
        if pending is None:
            return None
        if pending.status is None and not force:
            raise SyncError(
                "the run has not ended (still training, or killed): sync it after it ends, or "
                "pass --force to push what it has (a killed run is then marked KILLED)"
            )
        uri = resolve_uri(pending, tracking_uri)
        try:
            pushed = _push(pending, uri)
        except SyncError:
            raise
        except Exception as err:
            raise SyncError(f"MLflow at {mask(uri)}: {first_line(err)}") from None
        _update_ref(folder, pushed.run_id, uri)
        pending.path.unlink()
        return pushed


def _push(pending: Pending, uri: str) -> Pushed:
    from mlflow.entities import Param, RunTag

    client = mlflow_client(uri)
    created = False
    if pending.run_id is None:
        if not pending.experiment:
            raise SyncError("the marker names neither a run nor an experiment to create it in")
        exp_id = experiment_id(client, uri, pending.experiment)
        run = client.create_run(
            exp_id, start_time=pending.start_time, tags=pending.tags, run_name=pending.run_name
        )
        pending.run_id, created = run.info.run_id, True
        pending.save()  # before anything else: a sync that dies here never makes a second run
    run_id = pending.run_id
    run = client.get_run(run_id)
    pushed = Pushed(run_id, created=created)

    params = [Param(k, v) for k, v in pending.params.items() if k not in run.data.params]
    for i in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + PARAMS_PER_BATCH])
    pushed.params = len(params)
    tags = [RunTag(k, v) for k, v in pending.tags.items() if run.data.tags.get(k) != v]
    if tags and not created:
        client.log_batch(run_id, tags=tags)
    pushed.tags = len(tags)

    pushed.metrics = _push_metrics(client, run_id, pending)
    for rel, artifact_path in pending.artifacts:
        pushed.artifacts += _push_artifacts(client, run_id, pending.folder / rel, artifact_path)
    if pending.model and not _model_logged(client, run.info.experiment_id, run_id):
        checkpoint = pending.folder / pending.model["checkpoint"]
        if checkpoint.is_file():
            log_policy_model(uri, run_id, checkpoint, pending.model["env_id"])
            pushed.model = True
    status = pending.status or "KILLED"
    if run.info.status != status:
        client.set_terminated(run_id, status, end_time=pending.end_time)
        pushed.status = status
    return pushed


def wanted_metrics(pending: Pending) -> dict[tuple[str, int], tuple[float, int]]:
    """{(key, step): (value, timestamp ms)} of every metric the run should hold."""
    now = int(time.time() * 1000)
    start = pending.start_time or now
    wanted: dict[tuple[str, int], tuple[float, int]] = {}
    for rel in pending.curves:
        path = pending.folder / rel
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if None in row.values():  # a row cut short by a kill
                    continue
                try:
                    step = int(row["env_steps"])
                    stamp = start + int(float(row.get("time_s") or 0) * 1000)
                except (KeyError, ValueError):
                    continue
                for key, value in row_metrics(row).items():
                    wanted[(key, step)] = (value, stamp)
    for key, value, step, stamp in pending.metrics:
        if isinstance(value, int | float) and math.isfinite(value):
            wanted[(key, int(step))] = (float(value), int(stamp))
    return wanted


def _push_metrics(client: MlflowClient, run_id: str, pending: Pending) -> int:
    from mlflow.entities import Metric

    wanted = wanted_metrics(pending)
    have = {
        key: {m.step for m in client.get_metric_history(run_id, key)}
        for key in {k for k, _ in wanted}
    }
    missing = [
        Metric(key, value, stamp, step)
        for (key, step), (value, stamp) in sorted(wanted.items(), key=lambda kv: kv[0][1])
        if step not in have[key]
    ]
    for i in range(0, len(missing), MAX_BATCH):
        client.log_batch(run_id, metrics=missing[i : i + MAX_BATCH])
    return len(missing)


def _listed(client: MlflowClient, run_id: str, artifact_path: str | None) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id, artifact_path) if not f.is_dir}


def _push_artifacts(
    client: MlflowClient, run_id: str, path: Path, artifact_path: str | None
) -> int:
    """Upload a file, or every file under a folder, that the run's artifacts lack."""
    if path.is_file():
        files = [(path, artifact_path)]
    elif path.is_dir():
        files = [
            (f, "/".join(filter(None, [artifact_path, *f.parent.relative_to(path).parts])) or None)
            for f in sorted(path.rglob("*"))
            if f.is_file()
        ]
    else:
        return 0
    sent = 0
    listings: dict[str | None, set[str]] = {}
    for file, where in files:
        if where not in listings:
            listings[where] = _listed(client, run_id, where)
        if "/".join(filter(None, [where, file.name])) not in listings[where]:
            upload_artifact(client, run_id, file, where)
            sent += 1
    return sent


def _model_logged(client: MlflowClient, experiment_id: str, run_id: str) -> bool:
    found = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'"
    )
    return bool(found)


def _update_ref(folder: Path, run_id: str, uri: str) -> None:
    """The folder's run reference names the run it now has (it was null while offline)."""
    path = folder / RUN_REF
    if not path.is_file():
        return
    ref = read_ref(path)
    if ref.get("run_id") not in (None, run_id) and not ref.get("pending_sync"):
        return
    ref = {k: v for k, v in ref.items() if k != "pending_sync"}
    ref |= {"run_id": run_id, "tracking_uri": mask(uri)}
    atomic_write(path, json.dumps(ref, indent=2) + "\n")
