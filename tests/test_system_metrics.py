"""System metrics (tracking/system_metrics.py): a run records the machine's CPU and memory use
while it is open, unless tracking.system_metrics=false."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from pipeline_support import new_store
from trpo_pipeline import tracking


@pytest.mark.parametrize("enabled", [True, False])
def test_a_run_records_cpu_and_memory_while_open(tmp_path, tiny_config, enabled):
    uri = new_store(tmp_path)
    cfg = tiny_config(tracking={"uri": uri, "system_metrics": enabled})
    run = tracking.start_run(cfg)
    with tracking.recording(run):
        time.sleep(2.5)  # a sample a second
    metrics = MlflowClient(uri).get_run(run.run_id).data.metrics
    system = {k for k in metrics if k.startswith("system/")}
    if enabled:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= (
            system
        )
    else:
        assert system == set()
    assert run._monitor is None  # stopped with the run
