"""`make run`'s last lines: where the pipeline's report is and how to open MLflow's UI on it."""

from __future__ import annotations

import sys
from pathlib import Path

from trpo_pipeline import tracking
from trpo_pipeline.config import Config
from trpo_pipeline.credentials import mask
from trpo_pipeline.stages.common import EVAL_RUN_REF, REPORT_DIR, run_stage


def summary(cfg: Config) -> str:
    """Where the pipeline's results are: the report and the command that opens MLflow's UI."""
    uri = tracking.resolve_tracking_uri(cfg.tracking)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    if mlflow_bin.is_relative_to(Path.cwd()):
        mlflow_bin = mlflow_bin.relative_to(Path.cwd())
    page = (REPORT_DIR / "report.html").resolve()
    ref = tracking.read_ref(EVAL_RUN_REF)
    run_id, experiment_id = ref.get("run_id"), ref.get("experiment_id")
    ui = tracking.ui_command(uri, str(mlflow_bin), experiment_id)
    return (
        f"report:    {page}\n"
        + (f"MLflow run {run_id} in {mask(uri)}\n" if run_id else "")
        + f"MLflow UI: {ui}"
        + (f"\n  the run: {tracking.run_url(uri, experiment_id, run_id)}" if run_id else "")
    )


def summary_stage(cfg: Config, params: Path) -> None:
    print(summary(cfg))


if __name__ == "__main__":
    run_stage("summary", summary_stage)
