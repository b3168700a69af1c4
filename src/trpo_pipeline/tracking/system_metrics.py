"""CPU, memory, disk and network use of a run, sampled by MLflow's own monitor (psutil).

MLflow samples in a thread and logs ``system/*`` metrics (the run page's System metrics tab).
Its default of a sample every 10 s logs nothing for a run that ends sooner (a sample is
dropped when the run ends before it is logged), and a CartPole run trains in seconds: here a
sample a second, unless ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` says otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

SAMPLING_INTERVAL_S = 1.0


def start_monitor(uri: str, run_id: str, *, resume: bool) -> Any:
    """A started monitor of run ``run_id`` (``finish()`` it); ``resume`` continues the steps of
    a run that already has system metrics (a later stage)."""
    # Deferred like every MLflow import: a bad command line ends before it.
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # Its INFO lines (started, stopped, no GPU) and its warnings when the store goes away are
    # noise: the run's own warning line says that.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SAMPLING_INTERVAL_S, resume_logging=resume, tracking_uri=uri
    )
    monitor.start()
    return monitor
