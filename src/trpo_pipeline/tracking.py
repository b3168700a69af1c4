"""MLflow: where runs are recorded, and what each run records.

A run gets the whole config as flattened params (``algo.max_kl``), per-update metrics
(``train/<column>`` at step = env steps, sent in batches), evaluation metrics (``eval/...``),
provenance tags (git commit and dirty flag, DVC experiment name, config hash, package
versions, seed) and artifacts (config, checkpoint, learning curve, the policy as a pyfunc
model). Training reaches this module only through ``train(..., callbacks=[run.log_update])``.

The default store is ``sqlite:///<repo root>/mlflow.db``. The repo root is ``$DVC_ROOT`` when
DVC runs a stage (DVC points it at the real repository even from its temporary experiment
copies), else the nearest folder above the working directory holding ``.dvc`` or ``.git``, so
Hydra runs, DVC stages and queued DVC experiments all write to one store.

MLflow never stops training. A store that is briefly locked (SQLite under several writers) is
retried with backoff. A server that is unreachable at the start, or goes away mid-run, costs a
few seconds (short HTTP timeouts), one warning line, and a pending-sync marker in the run
folder (sync.py); ``trpo-sync RUN_DIR`` pushes what is missing later. Passwords in URIs are
masked (credentials.py) in every param, tag, file and message.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from trpo_pipeline.config import Config, ConfigError, TrackingConfig, to_dict
from trpo_pipeline.credentials import mask

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from trpo_pipeline.evaluate import EvalResult
    from trpo_pipeline.sync import Pending
    from trpo_pipeline.train import UpdateRecord

T = TypeVar("T")

RUN_REF = "mlflow_run.json"  # {"run_id": ..., ...}: how a later stage finds its run
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # beside the SQLite file: artifacts of its experiments
FLUSH_EVERY = 10  # updates per log_batch call (about 20 metrics each)
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
PARAMS_PER_BATCH = 100  # MLflow's limit of params per log_batch
MODEL_NAME = "policy"
PARENT_TAG = "mlflow.parentRunId"
# Wall-clock measurements: the only metrics a re-run cannot reproduce exactly.
TIMING_METRICS = frozenset({"train/time_s", "train/steps_per_s"})
EVAL_METRICS = ("mean_return", "std_return", "min_return", "max_return", "mean_length")
# Keys that cannot change what a run computes: left out of the config hash.
UNHASHED = ("tracking", "overwrite", "train.progress")
# Written by DVC during a pipeline run; not counted as uncommitted changes.
_NOT_DIRTY = ("params.yaml", "dvc.lock", "outputs/")
# A dead server costs seconds, not MLflow's default minutes (7 retries, 120 s timeouts); the
# user's own settings of these variables win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # MLflow prints "View run <name> at: <tracking URI>/#/..." on stdout, password included.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
LOCKED_RETRIES = 10  # attempts of a call that found the SQLite store locked
_LOCKED = ("database is locked", "database table is locked")
# Text files uploaded as artifacts are masked first (params.yaml, dvc.lock may hold a URI).
_TEXT_ARTIFACTS = frozenset({".yaml", ".yml", ".json", ".lock", ".md", ".txt", ".csv", ".html"})


# --- where -------------------------------------------------------------------------------------


def project_root() -> Path:
    """The repository a run belongs to: $DVC_ROOT, else the nearest .dvc/.git folder above cwd."""
    if env := os.environ.get("DVC_ROOT"):
        return Path(env).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / ".dvc").is_dir() or (folder / ".git").exists():
            return folder
    return cwd


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else the SQLite file at the repo root.

    Relative SQLite paths and plain folders are made absolute against the repo root, so the
    answer does not depend on the working directory of the process asking.
    """
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{project_root() / DB_NAME}"
    if uri.startswith("sqlite:///"):
        path, sep, query = uri.removeprefix("sqlite:///").partition("?")
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{project_root() / path}{sep}{query}"
        return uri
    if "://" not in uri:  # a local folder (MLflow's file store)
        path = Path(uri)
        return str(path if path.is_absolute() else project_root() / path)
    if uri.startswith(("postgresql://", "postgres://")) and not _installed("psycopg"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the project ships psycopg2.
        return "postgresql+psycopg2://" + uri.split("://", 1)[1]
    return uri


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_store(cfg: TrackingConfig) -> None:
    """Read-only checks, before anything runs, that a SQLite store can be used: its file is a
    SQLite database (or can be created) and is writable. ConfigError on tracking.uri if not."""
    if not cfg.enabled:
        return
    uri = resolve_tracking_uri(cfg)
    db = sqlite_path(uri)
    if db is None:
        return

    def bad(problem: str) -> ConfigError:
        return ConfigError("tracking.uri", f"cannot use the MLflow store {redact(uri)}: {problem}")

    try:
        _check_sqlite_file(db, bad)
    except OSError as err:
        raise bad(f"{err.strerror or err}") from None


def _check_sqlite_file(db: Path, bad: Callable[[str], ConfigError]) -> None:
    if db.exists():
        if not db.is_file():
            raise bad(f"{db} is not a file")
        with db.open("rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise bad(f"{db} is not a SQLite database")
        if not os.access(db, os.R_OK | os.W_OK):
            raise bad(f"{db} is not writable")
        return
    folder = next(p for p in db.parents if p.exists())
    if not folder.is_dir():
        raise bad(f"{folder} is a file, not a folder")
    try:  # os.access says yes to root even where nothing can be created (/proc)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".trpo-store-check.")
    except OSError as err:
        raise bad(f"cannot create {db}: {err.strerror}") from None
    os.close(fd)
    Path(probe).unlink()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").partition("?")[0]
    return None if path in ("", ":memory:") else Path("/" + path.lstrip("/"))


def redact(uri: str) -> str:
    """The URI without a password, for logs and reference files."""
    return mask(uri)


def ui_command(uri: str, mlflow_bin: str = ".venv/bin/mlflow") -> str:
    """The one command that opens the MLflow UI on this store (on this machine only)."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact(uri)} in a browser"
    return f"{mlflow_bin} ui --backend-store-uri {redact(uri)} --host 127.0.0.1"


def first_line(err: BaseException) -> str:
    """The first line of an error message, masked: what a one-line message may quote."""
    text = str(getattr(err, "message", None) or err).strip()
    return mask(text.splitlines()[0] if text else type(err).__name__)


def is_locked(err: BaseException) -> bool:
    return any(s in str(err) for s in _LOCKED)


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` says the store is unreachable or busy right now (not misconfigured)."""
    if isinstance(err, TrackingUnavailableError | ConnectionError | TimeoutError):
        return True
    try:
        import requests

        if isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    text = str(err)
    return (
        is_locked(err)
        or bool(re.search(r"API request to \S+ failed with (timeout )?exception", text))
        or bool(re.search(r"failed with error code 5\d\d", text))
        # a database server (PostgreSQL backend) that is down
        or bool(re.search(r"(?i)connection refused|could not connect|timeout expired", text))
    )


class TrackingUnavailableError(Exception):
    """The tracking store cannot be reached now; ``str(err)`` is one (masked) line."""


class _RetryingClient:
    """An MlflowClient whose calls are retried, with backoff, while a SQLite store is locked.

    MLflow waits 20 s on a busy SQLite file, but a transaction that must upgrade its read lock
    fails at once when another writer holds the file; parallel jobs then see "database is
    locked" now and then. The failed transaction was rolled back, so retrying is safe.
    """

    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_locked(lambda: attr(*args, **kwargs))

        return call


def retry_locked(call: Callable[[], T], attempts: int = LOCKED_RETRIES) -> T:
    """``call()``, retried with jittered exponential backoff while the store is locked."""
    import random

    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if attempt == attempts - 1 or not is_locked(err):
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0) * (0.5 + random.random()))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def quiet_http() -> Iterator[None]:
    """urllib3 logs a warning per HTTP retry; the one line we print says it all."""
    import logging

    logger = logging.getLogger("urllib3.connectionpool")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@functools.cache
def _client(uri: str) -> MlflowClient:
    """One client per store and process; the first one creates (and migrates) a SQLite store,
    under the store's lock. Calls are retried while SQLite is locked; HTTP gives up in seconds."""
    from mlflow import MlflowClient

    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if redact(uri) != uri:  # never print the password, whatever the user asked for
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        import logging

        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    elif "://" in uri and sqlite_path(uri) is None:  # a database server (PostgreSQL, MySQL)
        import logging

        import mlflow.store.db.utils as db_utils

        # MLflow retries a refused database connection 10 times over 51 s, twice (tracking and
        # registry stores), logging each: 4 quiet tries (about 1 s) say the same.
        db_utils.MAX_RETRY_COUNT = min(db_utils.MAX_RETRY_COUNT, 4)
        logging.getLogger(db_utils.__name__).setLevel(logging.ERROR)
    with _store_lock(uri):
        client = retry_locked(lambda: MlflowClient(tracking_uri=uri))
    return cast("MlflowClient", _RetryingClient(client))


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first use of a SQLite store across processes.

    Parallel jobs (joblib, `dvc queue start -j N`, several trpo-tune workers) would otherwise
    race to create the schema (MLflow's migrations fail half-way: "duplicate column name",
    "table _alembic_tmp_... already exists") and the experiment; after that SQLite's own
    locking (MLflow sets a busy timeout) and :func:`retry_locked` suffice.
    """
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(f"{db}.lock")
    lock.touch()  # FileLock retries a lock file it cannot create (OSError here) for minutes
    with FileLock(str(lock), timeout=300):
        yield


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment ``name``, created on first use (artifacts beside a SQLite file)."""
    from mlflow.exceptions import MlflowException

    with _store_lock(uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        db = sqlite_path(uri)
        location = None
        if db is not None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
            location = str(db.parent / ARTIFACTS_DIR / slug)
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by a process not sharing our lock (a server)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def open_experiment(uri: str, name: str) -> tuple[MlflowClient, str]:
    """(client, experiment id). A store that cannot be used is a ConfigError on tracking.uri;
    one that cannot be reached now is :class:`TrackingUnavailableError`."""

    try:
        with quiet_http():
            client = _client(uri)
            return client, experiment_id(client, uri, name)
    except Exception as err:  # MlflowException, and SQLAlchemy's and the OS's own errors
        if is_outage(err):
            raise TrackingUnavailableError(first_line(err)) from None
        raise ConfigError(
            "tracking.uri", f"cannot use the MLflow store {redact(uri)}: {first_line(err)}"
        ) from None


def warn_unreachable(uri: str, err: BaseException | str, consequence: str) -> None:
    """The one line that says MLflow failed and what happens instead (above a progress bar)."""
    from tqdm import tqdm

    reason = err if isinstance(err, str) else first_line(err)
    if len(reason) > 200:
        reason = reason[:197] + "..."
    tqdm.write(
        f"warning: MLflow at {redact(uri)} failed ({reason}); {consequence}", file=sys.stderr
    )


# --- what: params, tags, metrics ---------------------------------------------------------------


def param_value(value: Any) -> str:
    """How a config value is written as an MLflow param: strings as-is (passwords in URLs
    masked), the rest as JSON."""
    return mask(value if isinstance(value, str) else json.dumps(value))


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config mapping -> {dotted key: param string}."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = param_value(value)
    return out


def flatten_config(cfg: Config) -> dict[str, str]:
    """The whole config as MLflow params: ``{"algo.max_kl": "0.01", ...}``."""
    return flatten(to_dict(cfg))


def result_params(cfg: Config) -> dict[str, str]:
    """The params that can change what a run computes: all but tracking.*, overwrite and
    train.progress."""
    return {
        k: v
        for k, v in flatten_config(cfg).items()
        if not any(k == u or k.startswith(f"{u}.") for u in UNHASHED)
    }


def config_hash(cfg: Config) -> str:
    """SHA-256 (first 16 hex digits) of :func:`result_params`: equal hashes, equal experiments."""
    return hashlib.sha256(json.dumps(result_params(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> tuple[str, str]:
    """(commit, "true"/"false") of the code being run; ("unknown", "unknown") outside git.

    In a DVC experiment the commit is the experiment's baseline ($DVC_EXP_BASELINE_REV);
    dirty means tracked files differ from it, apart from what DVC itself writes (params.yaml,
    whose values are logged in full, dvc.lock and outputs/).
    """
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or _git("rev-parse", "HEAD")
    if not commit:
        return "unknown", "unknown"
    changed = _git("diff", "--name-only", commit, "--")
    if changed is None:
        return commit, "unknown"
    dirty = any(not path.startswith(_NOT_DIRTY) for path in changed.splitlines() if path)
    return commit, "true" if dirty else "false"


def provenance_tags(cfg: Config | None = None) -> dict[str, str]:
    """The tags that let a run be reproduced (and compared) later."""
    import gymnasium
    import torch

    commit, dirty = git_state()
    tags = {
        "git_commit": commit,
        "git_dirty": dirty,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "gymnasium_version": gymnasium.__version__,
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = baseline
    if cfg is not None:
        tags |= {"config_hash": config_hash(cfg), "seed": str(cfg.seed), "env_id": cfg.env.id}
    return tags


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """``train/<column>`` for every numeric column of a learning-curve row (a row from
    :meth:`UpdateRecord.row` or read back from the CSV), plus ``train/surrogate_improvement``.

    Booleans become 0/1; undefined values (nan before the first episode ends) are left out.
    """
    values: dict[str, float] = {}
    for key, value in row.items():
        if key == "env_steps":  # the step, not a metric
            continue
        number = _number(value)
        if number is not None:
            values[f"train/{key}"] = number
    if "train/surrogate_after" in values and "train/surrogate_before" in values:
        values["train/surrogate_improvement"] = (
            values["train/surrogate_after"] - values["train/surrogate_before"]
        )
    return {k: v for k, v in values.items() if math.isfinite(v)}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if value in ("True", "False"):
            return float(value == "True")
        try:
            return float(value)
        except ValueError:
            return None
    return None


def update_metrics(record: UpdateRecord) -> dict[str, float]:
    """The metrics of one training update."""
    return row_metrics(record.row())


def eval_metrics(result: EvalResult) -> dict[str, float]:
    """``eval/mean_return`` and the other summary numbers of an evaluation."""
    return {f"eval/{key}": float(getattr(result, key)) for key in EVAL_METRICS}


# --- one run -----------------------------------------------------------------------------------


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

    @property
    def enabled(self) -> bool:
        """Tracking is on for this run (sent to MLflow, or noted for trpo-sync)."""
        return self.run_id is not None or self.offline

    @property
    def online(self) -> bool:
        return self.run_id is not None and not self.offline

    @property
    def client(self) -> MlflowClient:
        return _client(self.uri)

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
            from trpo_pipeline.sync import Pending

            existing = Pending.load(self.folder)
            if existing is not None and existing.run_id == self.run_id and self.run_id:
                self._marker = existing  # another stage of the same run noted things already
            else:
                self._marker = Pending(folder=self.folder, **self._creation)
            self._marker.run_id = self.run_id
            self._marker.tracking_uri = redact(self.uri)
        return self._marker

    def go_offline(self, err: BaseException) -> None:
        """Stop calling MLflow: warn once, start the marker (with what was not sent)."""
        if self.offline:
            return
        self.offline = True
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
            from trpo_pipeline.train import LEARNING_CURVE

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
            for i in range(0, len(metrics), MAX_BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_BATCH])

        self._call(send, lambda marker: marker.add_metrics(metrics, self._curve))

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

    def set_tag(self, key: str, value: str) -> None:
        self._call(
            lambda: self.client.set_tag(self.run_id, key, mask(value)),
            lambda marker: marker.set_tag(key, mask(value)),
        )

    # lifecycle

    def write_ref(self, path: Path) -> None:
        """Record which run this is, for the next pipeline stage (or a person)."""
        from trpo_pipeline.files import atomic_write

        ref: dict[str, Any] = {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": redact(self.uri) if self.enabled else None,
        }
        if self.offline:
            from trpo_pipeline.sync import PENDING

            ref["pending_sync"] = PENDING
        atomic_write(path, json.dumps(ref, indent=2) + "\n")

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.flush()
            end = int(time.time() * 1000)
            self._call(
                lambda: self.client.set_terminated(self.run_id, status, end_time=end),
                lambda marker: marker.set_status(status, end),
            )


def upload_artifact(
    client: MlflowClient, run_id: str | None, path: Path, artifact_path: str | None
) -> None:
    """Upload one file; a text file that quotes a password (params.yaml, dvc.lock: a tracking
    URI with credentials) is uploaded as a masked copy of the same name."""
    path = Path(path)
    if path.suffix in _TEXT_ARTIFACTS and path.stat().st_size < 50_000_000:
        text = path.read_text(errors="surrogateescape")
        masked = mask(text)
        if masked != text:
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / path.name
                copy.write_text(masked, errors="surrogateescape")
                client.log_artifact(run_id, str(copy), artifact_path)
            return
    client.log_artifact(run_id, str(path), artifact_path)


def log_policy_model(uri: str, run_id: str | None, checkpoint: Path, env_id: str) -> str:
    """Log the checkpoint's policy as the pyfunc model ``policy`` of run ``run_id``."""
    import gymnasium
    import mlflow
    import numpy
    import torch

    import trpo_pipeline

    package = Path(trpo_pipeline.__file__).parent
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(package / "policy_model.py"),  # models from code: no pickle
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(package)],
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"gymnasium=={gymnasium.__version__}",
                f"numpy=={numpy.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
            metadata={"env_id": env_id, "deterministic": True},
        )
    return info.model_uri


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

    all_tags = {k: mask(v) for k, v in (provenance_tags(cfg) | dict(tags or {})).items()}
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
            client = _client(uri)
            run = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
    except Exception as err:
        if not is_outage(err):
            raise
        tracked.go_offline(err)
        return tracked
    tracked.experiment_id = run.info.experiment_id
    return tracked


@contextlib.contextmanager
def recording(run: TrackedRun) -> Iterator[TrackedRun]:
    """Close ``run`` on leaving: FINISHED, FAILED on an error, KILLED on Ctrl-C."""
    try:
        yield run
    except KeyboardInterrupt:
        run.finish("KILLED")
        raise
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED")


# --- what a stage records ----------------------------------------------------------------------


def log_training(
    run: TrackedRun, cfg: Config, run_dir: Path, *, params_file: Path | None = None
) -> None:
    """Artifacts of a finished training run: config, checkpoint, curve, metrics, the model."""
    from trpo_pipeline.train import CHECKPOINT, CONFIG, LEARNING_CURVE, TRAIN_METRICS

    if not run.enabled:
        return
    run.flush()
    if params_file is not None:
        run.log_artifact(Path(params_file).resolve(), "config")
    run.log_artifact(run_dir / CONFIG, "config")
    run.log_artifact(run_dir / CHECKPOINT, "checkpoint")
    run.log_artifact(run_dir / LEARNING_CURVE, "train")
    run.log_artifact(run_dir / TRAIN_METRICS, "train")
    if cfg.tracking.log_model:
        run.log_policy_model(run_dir / CHECKPOINT, cfg)


def log_curve(run: TrackedRun, curve_csv: Path) -> None:
    """Log the metrics of a learning-curve CSV (a run continuing another's training)."""
    if not run.enabled:
        return
    run._curve = Path(curve_csv)
    with Path(curve_csv).open(newline="") as f:
        for row in csv.DictReader(f):
            run.queue_metrics(row_metrics(row), step=int(row["env_steps"]))
    run.flush()


def log_evaluation(run: TrackedRun, result: EvalResult, eval_json: Path) -> None:
    run.log_metrics(eval_metrics(result), step=result.env_steps_trained)
    run.log_artifact(eval_json, "eval")


def is_fresh(data: Any, cfg: Config) -> bool:
    """Whether a training run (its ``RunData``) can take the evaluation of ``cfg``.

    MLflow params are immutable and a run holds one evaluation: a run already evaluated, or
    trained under other params (DVC reused its cached training because only evaluation params
    changed), is not fresh, and this pipeline execution gets a run of its own.
    """
    return "eval/mean_return" not in data.metrics and data.params == flatten_config(cfg)


def run_for_evaluation(
    cfg: Config,
    train_ref: Path,
    train_dir: Path,
    *,
    params_file: Path | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    folder: Path | None = None,
) -> TrackedRun:
    """The run an evaluation of ``train_dir``'s checkpoint is recorded in (left RUNNING).

    The training run recorded in ``train_ref`` when it is fresh; otherwise a new run holding
    this execution's params, the training metrics (from the learning curve) and artifacts,
    tagged ``train_run_id`` with the run that trained the checkpoint.
    """
    from trpo_pipeline.train import LEARNING_CURVE

    uri = resolve_tracking_uri(cfg.tracking)
    if not cfg.tracking.enabled:
        return TrackedRun(uri)
    previous = read_ref(train_ref).get("run_id")
    if previous:
        try:
            with quiet_http():
                data = _client(uri).get_run(previous).data
        except Exception:  # recorded in another store, or unreachable: start afresh
            data = None
        if data is not None and is_fresh(data, cfg):
            return reopen_run(cfg, train_ref, folder=folder)
    extra = dict(tags or {}) | ({"train_run_id": previous} if previous else {})
    run = start_run(cfg, run_name=run_name, tags=extra, folder=folder)
    try:
        log_curve(run, train_dir / LEARNING_CURVE)
        log_training(run, cfg, train_dir, params_file=params_file)
    except BaseException:
        run.finish("FAILED")
        raise
    return run


# --- parent runs (a Hydra multirun, an Optuna study) -------------------------------------------


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
                tags={k: mask(v) for k, v in (provenance_tags() | dict(tags or {})).items()},
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
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    )


def finish_parent_run(tracking: TrackingConfig, run_id: str, *, failed: bool = False) -> None:
    """FAILED if ``failed`` or a child failed, else FINISHED; a parent without children is
    deleted (nothing ran under it). A store gone away meanwhile costs one warning line."""
    uri = resolve_tracking_uri(tracking)
    try:
        with quiet_http():
            children = child_runs(uri, run_id)
            client = _client(uri)
            if not children and not failed:
                client.delete_run(run_id)
                return
            failed = failed or bool({c.info.status for c in children} & {"FAILED", "KILLED"})
            client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
    except Exception as err:
        if not is_outage(err):
            raise
        warn_unreachable(uri, err, f"parent run {run_id} was left open")


# --- reading runs back -------------------------------------------------------------------------


def metric_histories(
    uri: str, run_id: str, keys: Iterable[str]
) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of a run, sorted by step."""
    client = _client(uri)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in keys
    }
