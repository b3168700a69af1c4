"""Where runs go: the MLflow store, its clients, and what happens when it is busy or away.

The default store is ``sqlite:///<repo root>/mlflow.db``. The repo root is ``$DVC_ROOT`` when
DVC runs a stage (DVC points it at the real repository even from its temporary experiment
copies), else the nearest folder above the working directory holding ``.dvc`` or ``.git``, so
Hydra runs, DVC stages and queued DVC experiments all write to one store.

A store that is briefly locked (SQLite under several writers) is retried with backoff. A
server that cannot be reached costs a few seconds (short HTTP timeouts) and one warning line;
:func:`is_outage` tells such an outage from a store that is misconfigured, and from a server
that refuses the user (:func:`refusal_status`: 401 or 403, never an outage).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from trpo_pipeline.config import ConfigError, TrackingConfig
from trpo_pipeline.credentials import mask
from trpo_pipeline.errors import first_line
from trpo_pipeline.retrying import retry

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # beside the SQLite file: artifacts of its experiments
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


def check_sqlite_store(cfg: TrackingConfig) -> None:
    """Read-only checks, before anything runs, that a SQLite store can be used: its file is a
    SQLite database (or can be created) and is writable. ConfigError on tracking.uri if not.
    (A tracking server is asked by access.check_store.)"""
    if not cfg.enabled:
        return
    uri = resolve_tracking_uri(cfg)
    db = sqlite_path(uri)
    if db is None:
        return

    def bad(problem: str) -> ConfigError:
        return ConfigError("tracking.uri", f"cannot use the MLflow store {mask(uri)}: {problem}")

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


def ui_command(uri: str, mlflow_bin: str = ".venv/bin/mlflow") -> str:
    """The one command that opens the MLflow UI on this store (on this machine only)."""
    if is_http(uri):
        return f"open {mask(uri)} in a browser"
    return f"{mlflow_bin} ui --backend-store-uri {mask(uri)} --host 127.0.0.1"


def is_locked(err: BaseException) -> bool:
    return any(s in str(err) for s in _LOCKED)


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def tracking_user(uri: str) -> str | None:
    """The user a tracking server is told about: MLflow's own credentials (its client sends
    MLFLOW_TRACKING_USERNAME / _PASSWORD, else ~/.mlflow/credentials), else the URL's user;
    None for a store that is not a server, or with no credentials at all."""
    if not is_http(uri):
        return None
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    if creds.username and creds.password:  # what MLflow's client sends as basic auth
        return creds.username
    return urlsplit(uri).username or None


def user_tag(uri: str) -> dict[str, str]:
    """``mlflow.user``, the run's user in MLflow, set to the user a server authenticates (the
    client alone would record the OS user, or "unknown"); nothing for other stores."""
    user = tracking_user(uri)
    return {"mlflow.user": user} if user else {}


# MLflow's error codes for HTTP 401 and 403
_REFUSALS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


def refusal_status(err: BaseException) -> int | None:
    """401 or 403 when ``err`` is a tracking server refusing the user, else None."""
    code = _REFUSALS.get(str(getattr(err, "error_code", "")))
    if code is not None:
        return code
    found = re.search(r"failed with error code (40[13])\b", str(err))
    return int(found[1]) if found else None


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` says the store is unreachable or busy right now (not misconfigured).
    A refusal (401, 403) is never an outage: it would refuse again after any wait."""
    if refusal_status(err) is not None:
        return False
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
    return retry(
        call,
        attempts=attempts,
        transient=is_locked,
        pause=lambda i: min(0.05 * 2**i, 2.0) * (0.5 + random.random()),
    )


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
def mlflow_client(uri: str) -> MlflowClient:
    """One client per store and process; the first one creates (and migrates) a SQLite store,
    under the store's lock. Calls are retried while SQLite is locked; HTTP gives up in seconds."""
    from mlflow import MlflowClient

    if is_http(uri):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if mask(uri) != uri:  # never print the password, whatever the user asked for
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
            client = mlflow_client(uri)
            return client, experiment_id(client, uri, name)
    except Exception as err:  # MlflowException, and SQLAlchemy's and the OS's own errors
        if is_outage(err):
            raise TrackingUnavailableError(first_line(err)) from None
        raise ConfigError(
            "tracking.uri", f"cannot use the MLflow store {mask(uri)}: {first_line(err)}"
        ) from None


def warn_unreachable(uri: str, err: BaseException | str, consequence: str) -> None:
    """The one line that says MLflow failed and what happens instead (above a progress bar)."""
    from tqdm import tqdm

    reason = err if isinstance(err, str) else first_line(err)
    if len(reason) > 200:
        reason = reason[:197] + "..."
    tqdm.write(f"warning: MLflow at {mask(uri)} failed ({reason}); {consequence}", file=sys.stderr)
