"""Where a reader finds the runs: run pages in the MLflow UI and the command that serves it
(tracking/ui.py holds the addresses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trpo_pipeline.tracking.ui import LOCAL_UI, experiment_url, serve_command
from trpo_pipeline.tracking.ui import run_url as ui_run_url

if TYPE_CHECKING:
    from trpo_pipeline.report.runs import RunData

__all__ = ["LOCAL_UI", "experiment_url", "run_url", "ui_command"]


def run_url(tracking_uri: str, run: RunData) -> str:
    """The run's page in the MLflow UI: the server's own for http(s), else a local `mlflow ui`."""
    return ui_run_url(tracking_uri, run.experiment_id, run.run_id)


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the UI the run links point into; None for an http(s) server."""
    return serve_command(tracking_uri)
