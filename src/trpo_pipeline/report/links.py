"""Where a reader finds the runs: the store's address without its password, run pages in the UI."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from trpo_pipeline.credentials import mask

if TYPE_CHECKING:
    from trpo_pipeline.report.runs import RunData

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def run_url(tracking_uri: str, run: RunData) -> str:
    """The run's page in the MLflow UI: the server's own for http(s), else a local `mlflow ui`."""
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    else:
        base = LOCAL_UI
    return f"{base}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the UI the run links point into; None for an http(s) server."""
    if urlsplit(tracking_uri).scheme in ("http", "https"):
        return None
    return f"mlflow ui --backend-store-uri {mask(tracking_uri)} --host 127.0.0.1"
