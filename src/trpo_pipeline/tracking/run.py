"""One run: opening it, writing to it, closing it; offline when MLflow goes away.

Per-update metrics go at step = env steps, sent in batches. Training reaches this module only
through ``train(..., callbacks=[run.log_update])``. MLflow never stops training: a store that
is unreachable at the start, or goes away mid-run, costs one warning line and a pending-sync
marker in the run folder (sync.py); ``trpo-sync RUN_DIR`` pushes what is missing later.
Passwords in URIs are masked (credentials.py) in every param, tag, file and message.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trpo_pipeline import stops
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.credentials import mask
from trpo_pipeline.errors import first_line
from trpo_pipeline.rl.files import atomic_write
from trpo_pipeline.rl.run_files import LEARNING_CURVE
from trpo_pipeline.tracking.artifacts import log_policy_model, upload_artifact
from trpo_pipeline.tracking.parents import PARENT_TAG
from trpo_pipeline.tracking.pending import PENDING, Pending
from trpo_pipeline.tracking.records import flatten_config, provenance_tags, update_metrics
from trpo_pipeline.tracking.registry import Registration, register_policy
from trpo_pipeline.tracking.store import (
    is_outage,
    mlflow_client,
    open_experiment,
    quiet_http,
    resolve_tracking_uri,
    user_tag,
    warn_unreachable,
)
from trpo_pipeline.tracking.system_metrics import start_monitor

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from trpo_pipeline.rl.train import UpdateRecord

T = TypeVar("T")

RUN_REF = "mlflow_run.json"  # {"run_id": ..., ...}: how a later stage finds its run
FLUSH_EVERY = 10  # updates per log_batch call (about 20 metrics each)
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
PARAMS_PER_BATCH = 100  # MLflow's limit of params per log_batch


@dataclass
class TrackedRun:
    """An MLflow run being written to; with tracking disabled every method does nothing.

    The first MLflow call that fails makes the run *offline*: one warning line, no more calls,
    and from then on what would have been sent is noted in the pending-sync marker of
    ``folder`` (sync.py) for ``trpo-sync``. Training never sees an MLflow error.
    """

    uri: str
    run_id: str | None = None
    experiment_id: str | None = None
    folder: Path | None = None  # the run's local folder: where its pending-sync marker goes
    offline: bool = False
    _pending: list[Metric] = field(default_factory=list, repr=False)
    _curve: Path | None = field(default=None, repr=False)  # the CSV holding the train/* rows
    _creation: dict[str, Any] = field(default_factory=dict, repr=False)
    _marker: Pending | None = field(default=None, repr=False)
    _monitor: Any = field(default=None, repr=False)  # MLflow's system metrics monitor
    # A reopened run sends only the (key, step) pairs MLflow lacks: {key: steps it holds}, each
    # key's history read once, when the key is first sent; None for a new run.
    _held: dict[str, set[int]] | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        """Tracking is on for this run (sent to MLflow, or noted for trpo-sync)."""
        return self.run_id is not None or self.offline

    @property
    def online(self) -> bool:
        return self.run_id is not None and not self.offline

    @property
    def client(self) -> MlflowClient:
        return mlflow_client(self.uri)

    # MLflow, or the marker

    def _call(self, send: Callable[[], T], keep: Callable[[Pending], bool]) -> T | None:
        """``send()`` to MLflow while online; after a failure ``keep(marker)`` notes it."""
        if not self.enabled:
            return None
        if self.online:
            try:
                with quiet_http():
                    return send()
            except Exception as err:
                self.go_offline(err)
        marker = self.marker()
        if marker is not None and keep(marker):
            marker.save()
        return None

    def marker(self) -> Pending | None:
        """The pending-sync marker of ``folder`` (None without a folder)."""
        if self.folder is None:
            return None
        if self._marker is None:
            existing = Pending.load(self.folder)
            if existing is not None and existing.run_id == self.run_id and self.run_id:
                self._marker = existing  # another stage of the same run noted things already
            else:
                self._marker = Pending(folder=self.folder, **self._creation)
            self._marker.run_id = self.run_id
            self._marker.tracking_uri = mask(self.uri)
        return self._marker

    def go_offline(self, err: BaseException) -> None:
        """Stop calling MLflow: warn once, start the marker (with what was not sent)."""
        if stops.is_stop(err):  # the scheduler stopping the job, not MLflow failing
            raise err
        if self.offline:
            return
        self.offline = True
        self._monitor = None  # its thread ends at its next failing call, without a word
        where = f" in {self.folder}" if self.folder is not None else ""
        hint = (
            f"push them later with: trpo-sync {self.folder}"
            if self.folder is not None
            else "this run's MLflow record stays incomplete"
        )
        warn_unreachable(self.uri, err, f"training goes on, results stay{where}; {hint}")
        marker = self.marker()
        if marker is not None:
            marker.reason = first_line(err)
            if self._pending:
                marker.add_metrics(self._pending, self._curve)
                self._pending = []
            marker.save()

    # metrics

    def log_update(self, record: UpdateRecord) -> None:
        """train() callback: buffer the update's metrics, send every FLUSH_EVERY updates."""
        if not self.enabled:
            return
        if self.folder is not None:
            self._curve = self.folder / LEARNING_CURVE
        self.queue_metrics(update_metrics(record), step=record.env_steps)
        if record.update % FLUSH_EVERY == 0 or self.offline:
            self.flush()

    def queue_metrics(
        self, values: Mapping[str, float], step: int, timestamp_ms: int | None = None
    ) -> None:
        from mlflow.entities import Metric

        if not self.enabled:
            return
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self._pending.extend(Metric(k, float(v), ts, int(step)) for k, v in values.items())

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        self.queue_metrics(values, step)
        self.flush()

    def flush(self) -> None:
        """Send the buffered metrics, up to MAX_BATCH per call."""
        if not self.enabled or not self._pending:
            return
        metrics, self._pending = self._pending, []

        def send() -> None:
            lacking = self._lacking(metrics)
            for i in range(0, len(lacking), MAX_BATCH):
                self.client.log_batch(self.run_id, metrics=lacking[i : i + MAX_BATCH])

        self._call(send, lambda marker: marker.add_metrics(metrics, self._curve))

    def _lacking(self, metrics: list[Metric]) -> list[Metric]:
        """``metrics`` less the steps a reopened run already holds (a restarted job logs the
        updates after its checkpoint again: each metric stays in MLflow once)."""
        if self._held is None:
            return metrics
        for key in {m.key for m in metrics} - self._held.keys():
            self._held[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        lacking = []
        for m in metrics:
            if m.step not in self._held[m.key]:
                self._held[m.key].add(m.step)
                lacking.append(m)
        return lacking

    # artifacts

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled and Path(path).is_file():
            self._call(
                lambda: upload_artifact(self.client, self.run_id, Path(path), artifact_path),
                lambda marker: marker.add_artifact(Path(path), artifact_path),
            )

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        if self.enabled and Path(folder).is_dir():
            self._call(
                lambda: self.client.log_artifacts(self.run_id, str(folder), artifact_path),
                lambda marker: marker.add_artifact(Path(folder), artifact_path),
            )

    def log_policy_model(self, checkpoint: Path, cfg: Config) -> str | None:
        """Log the checkpoint's policy as a pyfunc model; returns its model URI.

        ``mlflow.pyfunc.load_model(uri).predict(observations)`` gives deterministic actions,
        with the saved observation normaliser applied (see policy_model.py).
        """
        return self._call(
            lambda: log_policy_model(self.uri, self.run_id, checkpoint, cfg.env.id),
            lambda marker: marker.set_model(Path(checkpoint), cfg.env.id),
        )

    def register_policy(
        self, env_id: str, mean_return: float, tags: Mapping[str, str]
    ) -> Registration | None:
        """Register this run's policy model (registry.py); None offline or without a model.
        Not noted for trpo-sync: a later pipeline execution registers its own."""
        return self._call(
            lambda: register_policy(
                self.client, self.run_id, self.experiment_id, env_id, mean_return, tags
            ),
            lambda marker: False,
        )

    def set_tag(self, key: str, value: str) -> None:
        self._call(
            lambda: self.client.set_tag(self.run_id, key, mask(value)),
            lambda marker: marker.set_tag(key, mask(value)),
        )

    # lifecycle

    def write_ref(self, path: Path) -> None:
        """Record which run this is, for the next pipeline stage (or a person)."""
        ref: dict[str, Any] = {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": mask(self.uri) if self.enabled else None,
        }
        if self.offline:
            ref["pending_sync"] = PENDING
        atomic_write(path, json.dumps(ref, indent=2) + "\n")

    def watch_system(self, *, resume: bool = False) -> None:
        """Record the machine's CPU, memory, disk and network use until :meth:`finish`."""
        if self.online and self._monitor is None:
            self._monitor = self._call(
                lambda: start_monitor(self.uri, self.run_id, resume=resume), lambda m: False
            )

    def finish(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            monitor.finish()  # its last samples, before the run is closed
        if self.enabled:
            self.flush()
            end = int(time.time() * 1000)
            self._call(
                lambda: self.client.set_terminated(self.run_id, status, end_time=end),
                lambda marker: marker.set_status(status, end),
            )


def start_run(
    cfg: Config,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    folder: Path | None = None,
) -> TrackedRun:
    """Open a run for ``cfg`` with its params and provenance tags (a no-op one if disabled).

    A store that cannot be reached gives an offline run (see :class:`TrackedRun`) whose marker
    in ``folder`` holds what trpo-sync needs to create the run later.
    """
    uri = resolve_tracking_uri(cfg.tracking)
    if not cfg.tracking.enabled:
        return TrackedRun(uri)
    from mlflow.entities import Param

    own = provenance_tags(cfg) | user_tag(uri) | dict(tags or {})
    all_tags = {k: mask(v) for k, v in own.items()}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    name = mask(run_name or default_run_name(cfg))
    params = flatten_config(cfg)
    run = TrackedRun(uri, folder=folder)
    run._creation = {
        "experiment": cfg.tracking.experiment,
        "run_name": name,
        "start_time": int(time.time() * 1000),
        "tags": all_tags,
        "params": params,
    }
    try:
        client, exp_id = open_experiment(uri, cfg.tracking.experiment)
        with quiet_http():
            created = client.create_run(exp_id, tags=all_tags, run_name=name)
    except ConfigError:
        raise
    except Exception as err:
        if not is_outage(err):
            raise
        run.go_offline(err)
        return run
    run.run_id, run.experiment_id = created.info.run_id, exp_id
    batches = [
        [Param(k, v) for k, v in list(params.items())[i : i + PARAMS_PER_BATCH]]
        for i in range(0, len(params), PARAMS_PER_BATCH)
    ]
    for batch in batches:
        run._call(lambda b=batch: run.client.log_batch(run.run_id, params=b), lambda m: False)
    if cfg.tracking.system_metrics:
        run.watch_system()
    return run


def default_run_name(cfg: Config) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{cfg.name}-seed{cfg.seed}" + (f"-{exp}" if exp else "")


def read_ref(path: Path) -> dict[str, Any]:
    """The reference a previous stage wrote ({} when there is none)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def reopen_run(cfg: Config, ref: Path, *, folder: Path | None = None) -> TrackedRun:
    """Continue the run recorded in ``ref`` (a no-op run if tracking is off or none recorded);
    offline (noting for trpo-sync in ``folder``) if the store cannot be reached."""
    uri = resolve_tracking_uri(cfg.tracking)
    run_id = read_ref(ref).get("run_id")
    if not cfg.tracking.enabled or not run_id:
        return TrackedRun(uri)
    tracked = TrackedRun(uri, run_id, folder=folder)
    try:
        with quiet_http():
            client = mlflow_client(uri)
            run = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
    except Exception as err:
        if not is_outage(err):
            raise
        tracked.go_offline(err)
        return tracked
    tracked.experiment_id = run.info.experiment_id
    if cfg.tracking.system_metrics:
        tracked.watch_system(resume=True)
    tracked._held = {}
    return tracked


@contextlib.contextmanager
def recording(run: TrackedRun, *, close_on_exit: bool = True) -> Iterator[TrackedRun]:
    """Close ``run`` on leaving: FINISHED, FAILED on an error, KILLED on Ctrl-C. With
    ``close_on_exit=False`` a SystemExit leaves it open, sending what is buffered: submitit
    exits so when it has requeued the job, whose next attempt continues the run."""
    try:
        yield run
    except KeyboardInterrupt:
        run.finish("KILLED")
        raise
    except SystemExit:
        if close_on_exit:
            run.finish("FAILED")
        else:
            run.flush()
        raise
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED")
