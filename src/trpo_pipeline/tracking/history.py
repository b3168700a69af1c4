"""Reading runs back: the metric histories a reproduction compares with its own."""

from __future__ import annotations

from collections.abc import Iterable

from trpo_pipeline.tracking.store import mlflow_client


def metric_histories(
    uri: str, run_id: str, keys: Iterable[str]
) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of a run, sorted by step."""
    client = mlflow_client(uri)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in keys
    }
