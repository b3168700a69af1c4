"""Who talks to a tracking server, and whether they may write: asked before anything runs.

A team's server runs MLflow's basic-auth app (docs/security.md). Before training,
:func:`check_store` opens (or creates) the run's experiment and asks the server's own
permission API what this user may do there. A refusal (401: wrong or missing credentials; 403,
or a permission without write access: not allowed) is a ConfigError on tracking.uri: one line
naming the server (password masked), the user and what was refused, before any folder is
made. A server that cannot be reached passes: the run then goes offline like any outage.
"""

from __future__ import annotations

import functools
import socket
from urllib.parse import urlsplit

from trpo_pipeline.config import ConfigError, TrackingConfig
from trpo_pipeline.credentials import mask
from trpo_pipeline.errors import first_line
from trpo_pipeline.tracking.store import (
    check_sqlite_store,
    experiment_id,
    is_http,
    is_outage,
    mlflow_client,
    quiet_http,
    refusal_status,
    resolve_tracking_uri,
    tracking_user,
)

PERMISSION_ENDPOINT = "/api/3.0/mlflow/users/permissions/get"  # MLflow's basic-auth app
WRITE_PERMISSIONS = ("EDIT", "MANAGE")  # the ones that may create runs in an experiment
CREDENTIALS = "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials"
CONNECT_TIMEOUT_S = 5


def check_store(cfg: TrackingConfig) -> None:
    """Before anything runs: the store can be used by this user. A SQLite file must be a
    database and writable; a tracking server must let this user write to the experiment.
    ConfigError on tracking.uri if not."""
    if not cfg.enabled:
        return
    check_sqlite_store(cfg)
    uri = resolve_tracking_uri(cfg)
    if is_http(uri) and _reachable(uri):
        check_server_access(uri, cfg.experiment)


def _reachable(uri: str) -> bool:
    """A TCP connection opens; one that cannot is an outage, left to the run (offline)."""
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), CONNECT_TIMEOUT_S).close()
    except OSError:
        return False
    return True


@functools.cache  # once per process: every job of a multirun asks the same question
def check_server_access(uri: str, experiment: str) -> None:
    """This user may write to ``experiment`` (created when missing) on the server at ``uri``.
    ConfigError on tracking.uri naming the refusal if not; an outage passes."""
    user = tracking_user(uri)
    try:
        with quiet_http():
            exp_id = experiment_id(mlflow_client(uri), uri, experiment)
            permission = experiment_permission(uri, user, exp_id)
    except Exception as err:  # MlflowException, requests' own errors
        status = refusal_status(err)
        if status == 401:
            raise refused(uri, user, unauthenticated(user)) from None
        if status == 403:
            what = f"permission denied (HTTP 403) to read or create experiment {experiment!r}"
            raise refused(uri, user, what) from None
        if is_outage(err):
            return
        raise ConfigError(
            "tracking.uri", f"cannot use the MLflow server {mask(uri)}: {first_line(err)}"
        ) from None
    if permission is not None and permission not in WRITE_PERMISSIONS:
        raise refused(
            uri,
            user,
            f"may not write to experiment {experiment!r} (id {exp_id}): permission "
            f"{permission}, EDIT needed (its owner or an admin grants it: docs/security.md)",
        )


def experiment_permission(uri: str, user: str | None, exp_id: str) -> str | None:
    """``user``'s effective permission on experiment ``exp_id`` (READ, EDIT, MANAGE, ...), as
    the server's auth app resolves it; None without a user or on a server without auth."""
    if user is None:
        return None
    # Deferred like every MLflow import: bad input is refused before mlflow loads.
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    response = http_request(
        get_default_host_creds(uri),
        PERMISSION_ENDPOINT,
        "GET",
        params={"username": user, "resource_type": "experiment", "resource_id": exp_id},
    )
    if response.status_code == 404:  # a server without the auth app: anyone may write
        return None
    verify_rest_response(response, PERMISSION_ENDPOINT)
    return str(response.json()["permission"])


def unauthenticated(user: str | None) -> str:
    if user:
        return "not authenticated (HTTP 401: wrong password or unknown user)"
    return f"not authenticated (HTTP 401: no credentials; set {CREDENTIALS})"


def refused(uri: str, user: str | None, reason: str) -> ConfigError:
    """The one line for a server that refuses ``user``: where, who, and what."""
    who = f"user {user!r}" if user else "a request without credentials"
    return ConfigError("tracking.uri", f"the MLflow server {mask(uri)} refused {who}: {reason}")
