"""Where the MLflow UI shows the runs: its address for a store, and the command that serves it.

MLflow 3's UI opens an experiment on its GenAI overview (traces, token usage) unless the
address asks for the training runs: its view switcher reads ``?workflowType=machine_learning``
from the URL (the experiment tag ``mlflow.experimentKind`` does not change it). Every address
the project prints carries it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from trpo_pipeline.credentials import mask

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
TRAINING_VIEW = "workflowType=machine_learning"


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the server's own (without a password) for http(s), else `mlflow ui`'s."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return LOCAL_UI
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table (the training view, not the GenAI overview)."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}?{TRAINING_VIEW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page: its metric charts (Model metrics) and artifacts, in the training view."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def serve_command(tracking_uri: str, mlflow_bin: str = "mlflow") -> str | None:
    """The command that serves the UI on this store (this machine only); None for a server."""
    if urlsplit(tracking_uri).scheme in ("http", "https"):
        return None
    return f"{mlflow_bin} ui --backend-store-uri {mask(tracking_uri)} --host 127.0.0.1"


def ui_command(
    tracking_uri: str, mlflow_bin: str = ".venv/bin/mlflow", experiment_id: str | None = None
) -> str:
    """How a person opens the UI on the runs: the command (a local store), then the address."""
    address = (
        experiment_url(tracking_uri, experiment_id)
        if experiment_id
        else f"{ui_base(tracking_uri)}/#/?{TRAINING_VIEW}"
    )
    command = serve_command(tracking_uri, mlflow_bin)
    return f"{command}, then open {address}" if command else f"open {address} in a browser"
