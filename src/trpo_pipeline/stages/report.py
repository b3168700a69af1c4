"""The report stage: the report on this pipeline execution's MLflow run, added to the run."""

from __future__ import annotations

import shutil
from pathlib import Path

from trpo_pipeline import tracking
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.report.page import write_report
from trpo_pipeline.report.runs import ReportError
from trpo_pipeline.stages.common import (
    DVC_LOCK,
    EVAL_DIR,
    EVAL_RUN_REF,
    REPORT_DIR,
    TRAIN_DIR,
    run_stage,
)


def report_stage(cfg: Config, params: Path) -> None:
    ref = tracking.read_ref(EVAL_RUN_REF)
    run_id = ref.get("run_id")
    if cfg.tracking.enabled and ref.get("pending_sync"):
        raise ConfigError(
            "",
            f"MLflow was unreachable during the pipeline: run trpo-sync {TRAIN_DIR} "
            f"{EVAL_DIR} once it is back, then this stage again",
        )
    if not cfg.tracking.enabled or not run_id:
        raise ConfigError(
            "tracking.enabled", "the report is built from MLflow: it needs tracking.enabled=true"
        )
    shutil.rmtree(REPORT_DIR, ignore_errors=True)
    uri = tracking.resolve_tracking_uri(cfg.tracking)
    try:
        page = write_report(uri, [run_id], REPORT_DIR)
    except ReportError as err:  # the store cannot be read (unreachable, run gone)
        raise ConfigError("", str(err)) from None
    run = tracking.reopen_run(cfg, EVAL_RUN_REF, folder=EVAL_DIR)
    with tracking.recording(run):
        run.log_artifacts(REPORT_DIR, "report")
        run.log_artifact(DVC_LOCK, "config")
    print(f"report: {page}")


if __name__ == "__main__":
    run_stage("report", report_stage)
