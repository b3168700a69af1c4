"""Runs recorded while MLflow was unreachable, and `trpo-sync`, which pushes them later.

When the tracking store cannot be reached at the start of a run, or goes away during it,
training goes on: the run folder already holds the local record (learning_curve.csv,
train_metrics.json, the checkpoint, eval_metrics.json) and tracking/ writes beside it a small
:data:`PENDING` file naming what MLflow is still missing: the run (its id, or what is needed to
create it: experiment, name, tags, params), metrics that live in no file, the files to upload
as artifacts, the policy model and the run's final status.

``trpo-sync RUN_DIR [RUN_DIR ...]`` creates the run if it never got one, logs missing params,
tags and artifacts, and logs only the (metric key, step) pairs the MLflow run does not already
hold, so afterwards the run holds every metric exactly once; then it removes the marker.
Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trpo_pipeline.credentials import MASK, mask
from trpo_pipeline.errors import first_line
from trpo_pipeline.files import atomic_write

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

PENDING = "mlflow_pending.json"
PROG = "trpo-sync"


class SyncError(Exception):
    """A folder that cannot be synced now; ``str(err)`` is one line."""


@dataclass
class Pending:
    """What MLflow is missing of the run recorded in ``folder`` (the marker file's content).

    Paths are kept relative to ``folder`` so that the folder can be moved or copied whole.
    """

    folder: Path
    tracking_uri: str = ""  # masked: credentials never reach a file
    run_id: str | None = None  # None: the run was never created
    experiment: str | None = None
    run_name: str | None = None
    start_time: int | None = None  # ms since the epoch
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    curves: list[str] = field(default_factory=list)  # learning curves: train/* metrics per row
    metrics: list[list[Any]] = field(default_factory=list)  # [key, value, step, timestamp ms]
    artifacts: list[list[Any]] = field(default_factory=list)  # [file or folder, artifact path]
    model: dict[str, str] | None = None  # {"checkpoint": path, "env_id": ...}: the pyfunc policy
    status: str | None = None  # FINISHED / FAILED / KILLED once the run ended
    end_time: int | None = None
    reason: str = ""  # the first error, one line, masked

    @property
    def path(self) -> Path:
        return self.folder / PENDING

    @classmethod
    def load(cls, folder: Path) -> Pending | None:
        """The marker in ``folder``; None if there is none."""
        path = Path(folder) / PENDING
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise SyncError(f"{path}: unreadable ({err})") from None
        names = {f.name for f in fields(cls)} - {"folder"}
        return cls(folder=Path(folder), **{k: v for k, v in data.items() if k in names})

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "folder"}
        data["tracking_uri"] = mask(self.tracking_uri)
        data["reason"] = mask(self.reason)
        atomic_write(self.path, json.dumps(data, indent=2) + "\n")

    # what tracking/ records while MLflow is unreachable

    def _relative(self, path: Path) -> str:
        return os.path.relpath(Path(path).resolve(), self.folder.resolve())

    def add_curve(self, csv_path: Path) -> bool:
        rel = self._relative(csv_path)
        if rel in self.curves:
            return False
        self.curves.append(rel)
        return True

    def add_metrics(self, metrics: Iterable[Metric], curve: Path | None) -> bool:
        """Metrics a failed call did not deliver; train/* ones are rows of ``curve``."""
        changed = False
        for m in metrics:
            if curve is not None and m.key.startswith("train/"):
                changed |= self.add_curve(curve)
            else:
                self.metrics.append([m.key, m.value, m.step, m.timestamp])
                changed = True
        return changed

    def add_artifact(self, path: Path, artifact_path: str | None) -> bool:
        entry = [self._relative(path), artifact_path]
        if entry in self.artifacts:
            return False
        self.artifacts.append(entry)
        return True

    def set_model(self, checkpoint: Path, env_id: str) -> bool:
        self.model = {"checkpoint": self._relative(checkpoint), "env_id": env_id}
        return True

    def set_tag(self, key: str, value: str) -> bool:
        if self.tags.get(key) == value:
            return False
        self.tags[key] = value
        return True

    def set_status(self, status: str, end_time: int) -> bool:
        self.status, self.end_time = status, end_time
        return True


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
    from trpo_pipeline.config import TrackingConfig
    from trpo_pipeline.tracking import resolve_tracking_uri

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
        pending = Pending.load(folder)
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

    from trpo_pipeline import tracking

    client = tracking.mlflow_client(uri)
    created = False
    if pending.run_id is None:
        if not pending.experiment:
            raise SyncError("the marker names neither a run nor an experiment to create it in")
        exp_id = tracking.experiment_id(client, uri, pending.experiment)
        run = client.create_run(
            exp_id, start_time=pending.start_time, tags=pending.tags, run_name=pending.run_name
        )
        pending.run_id, created = run.info.run_id, True
        pending.save()  # before anything else: a sync that dies here never makes a second run
    run_id = pending.run_id
    run = client.get_run(run_id)
    pushed = Pushed(run_id, created=created)

    params = [Param(k, v) for k, v in pending.params.items() if k not in run.data.params]
    for i in range(0, len(params), tracking.PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[i : i + tracking.PARAMS_PER_BATCH])
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
            tracking.log_policy_model(uri, run_id, checkpoint, pending.model["env_id"])
            pushed.model = True
    status = pending.status or "KILLED"
    if run.info.status != status:
        client.set_terminated(run_id, status, end_time=pending.end_time)
        pushed.status = status
    return pushed


def wanted_metrics(pending: Pending) -> dict[tuple[str, int], tuple[float, int]]:
    """{(key, step): (value, timestamp ms)} of every metric the run should hold."""
    from trpo_pipeline.tracking import row_metrics

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

    from trpo_pipeline.tracking import MAX_BATCH

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
    from trpo_pipeline.tracking import upload_artifact

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
    from trpo_pipeline.tracking import MODEL_NAME

    found = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'"
    )
    return bool(found)


def _update_ref(folder: Path, run_id: str, uri: str) -> None:
    """The folder's run reference names the run it now has (it was null while offline)."""
    from trpo_pipeline import tracking

    path = folder / tracking.RUN_REF
    if not path.is_file():
        return
    ref = tracking.read_ref(path)
    if ref.get("run_id") not in (None, run_id) and not ref.get("pending_sync"):
        return
    ref = {k: v for k, v in ref.items() if k != "pending_sync"}
    ref |= {"run_id": run_id, "tracking_uri": mask(uri)}
    atomic_write(path, json.dumps(ref, indent=2) + "\n")


# --- the command -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Push to MLflow what run folders recorded while MLflow was unreachable "
        f"(the folders holding {PENDING}). Safe to repeat: only what the MLflow run lacks is "
        "sent, so every metric ends up there exactly once.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="push to this store (default: the one the run was tracked in)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="also push a run that never ended (killed): it is marked KILLED",
    )
    args = parser.parse_args(argv)
    from trpo_pipeline.tracking import quiet_http

    failed = 0
    with quiet_http():
        for folder in args.run_dirs:
            try:
                pushed = sync_folder(folder, args.tracking_uri, force=args.force)
            except SyncError as err:
                print(f"{PROG}: error: {folder}: {mask(str(err))}", file=sys.stderr)
                failed += 1
                continue
            print(f"{folder}: " + ("nothing to sync" if pushed is None else pushed.describe()))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
