"""Reading runs from MLflow: which runs a report covers, and their params, tags and curves.

Also the names the rest of the report reads runs by: the metric keys and the parent-run tag.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote, urlsplit

import numpy as np

from trpo_pipeline.credentials import mask
from trpo_pipeline.errors import first_line
from trpo_pipeline.tracking.parents import PARENT_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Run

T = TypeVar("T")

RETURN = "train/episode_return"
KL = "train/kl"
ACCEPTED = "train/line_search_accepted"
DIAGNOSTICS = {  # metric -> (panel title, y label)
    "train/explained_variance": ("Critic explained variance", "1 - Var(R - V) / Var(R)"),
    "train/entropy": ("Policy entropy", "mean entropy (nats)"),
    "train/value_loss": ("Critic loss", "value MSE"),
    "train/surrogate_improvement": ("Surrogate improvement", "L(θ_new) - L(θ_old)"),
}
HISTORY_KEYS = (RETURN, KL, ACCEPTED, *DIAGNOSTICS)
EVAL_MEAN, EVAL_STD = "eval/mean_return", "eval/std_return"
EVAL_MIN, EVAL_MAX, EVAL_LENGTH = "eval/min_return", "eval/max_return", "eval/mean_length"


class ReportError(ValueError):
    """A user-caused problem (no such run, no runs matched, store unreachable); one line."""


@dataclass(frozen=True)
class Curve:
    """One metric's history: values by env step, sorted, one value per step."""

    steps: np.ndarray
    values: np.ndarray

    def last(self) -> float:
        finite = self.values[np.isfinite(self.values)]
        return float(finite[-1]) if finite.size else math.nan


@dataclass(frozen=True)
class RunData:
    run_id: str
    run_name: str
    experiment_id: str
    status: str
    start_time: int | None  # ms since the epoch
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # latest value of every metric
    curves: dict[str, Curve]

    @property
    def seed(self) -> str:
        return self.params.get("seed", self.tags.get("seed", ""))

    @property
    def env_id(self) -> str:
        return self.params.get("env.id", self.tags.get("env_id", "unknown env"))


def _client(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    _check_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def _check_store(tracking_uri: str) -> None:
    """Fail fast, in one line, on a store that is not there (MLflow would create or retry)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)[1:]  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
        if path and path != ":memory:" and not Path(path).is_file():
            raise ReportError(f"no MLflow store at {path} (nothing tracked there yet)")
    elif parts.scheme in ("http", "https"):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "localhost", port), timeout=5).close()
        except OSError as err:
            raise ReportError(
                f"cannot reach the MLflow server at {mask(tracking_uri)}: {err}"
            ) from None
    elif parts.scheme in ("", "file"):
        path = unquote(parts.path) if parts.scheme == "file" else tracking_uri
        if not Path(path).is_dir():
            raise ReportError(f"no MLflow store at {path}")


def _mlflow_call(tracking_uri: str, what: str, call: Callable[..., T], *args: object) -> T:
    """``call(*args)``, with MLflow's errors turned into one-line :class:`ReportError`."""
    from mlflow.exceptions import MlflowException

    try:
        return call(*args)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ReportError(f"{what} not found in {mask(tracking_uri)}") from None
        first = first_line(err, fallback="")
        raise ReportError(f"{what}: MLflow error from {mask(tracking_uri)}: {first}") from None


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _tag_filter(tags: Mapping[str, str]) -> str:
    clauses = []
    for key, value in tags.items():
        if "`" in key or ("'" in value and '"' in value):
            continue  # not expressible in MLflow's filter syntax; filtered below in Python
        quote = '"' if "'" in value else "'"
        clauses.append(f"tags.`{key}` = {quote}{value}{quote}")
    return " and ".join(clauses)


def _has_children(client: MlflowClient, run: Run) -> bool:
    children = client.search_runs(
        [run.info.experiment_id],
        f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
        max_results=1,
    )
    return len(children) > 0


def _is_training_run(run: Run) -> bool:
    metrics = run.data.metrics
    return any(key.startswith(("train/", "eval/")) for key in metrics)


def _experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    found = _mlflow_call(tracking_uri, f"experiment {name!r}", client.get_experiment_by_name, name)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise ReportError(
            f"no MLflow experiment named {name!r} in {mask(tracking_uri)} "
            f"(experiments: {', '.join(names) or 'none'})"
        )
    return found.experiment_id


def select_runs(
    tracking_uri: str,
    experiment: str | None,
    tags: dict[str, str] | None,
    run_ids: list[str] | None,
) -> list[str]:
    """Ids of the runs to report on: all criteria given must hold (experiment AND tags AND ids).

    Multirun/study parents are replaced by their children: a parent holds no learning curve.
    Raises :class:`ReportError` when the store is unreachable, a named experiment or run does
    not exist, or nothing matched.
    """
    if not experiment and not tags and not run_ids:
        raise ReportError("say which runs to report on: an experiment name, tags or run ids")
    client = _client(tracking_uri)
    tags = dict(tags or {})
    uri = mask(tracking_uri)

    experiment_ids = [_experiment_id(client, tracking_uri, experiment)] if experiment else None
    if run_ids:
        runs = [_mlflow_call(tracking_uri, f"run {rid!r}", client.get_run, rid) for rid in run_ids]
        if experiment_ids is not None:
            runs = [r for r in runs if r.info.experiment_id in experiment_ids]
    else:
        if experiment_ids is None:
            experiment_ids = [e.experiment_id for e in client.search_experiments()]
        found_runs = _mlflow_call(
            tracking_uri, "run search", _search_all, client, experiment_ids, _tag_filter(tags)
        )
        runs = sorted(found_runs, key=_start_time)
    runs = [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]

    selected: list[str] = []
    for run in runs:
        if not _is_training_run(run) and _has_children(client, run):
            children = _search_all(
                client, [run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run.info.run_id}'"
            )
            selected.extend(c.info.run_id for c in sorted(children, key=_start_time))
        else:
            selected.append(run.info.run_id)
    selected = list(dict.fromkeys(selected))
    if not selected:
        asked = [f"tag {k}={v}" for k, v in tags.items()]
        if experiment:
            asked.insert(0, f"experiment {experiment!r}")
        if run_ids:
            asked.append(f"run ids {', '.join(run_ids)}")
        raise ReportError(f"no MLflow runs matched {' and '.join(asked)} in {uri}")
    return selected


def _start_time(run: Run) -> int:
    return run.info.start_time or 0


def _curve(history: Iterable[Metric]) -> Curve:
    by_step: dict[int, float] = {}
    for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
        by_step[int(m.step)] = float(m.value)  # a resumed run's re-logged step: the last wins
    steps = np.fromiter(by_step.keys(), dtype=np.int64, count=len(by_step))
    values = np.fromiter(by_step.values(), dtype=np.float64, count=len(by_step))
    return Curve(steps, values)


def load_runs(tracking_uri: str, run_ids: Sequence[str]) -> list[RunData]:
    """Params, tags, latest metrics and the histories the report plots, for each run."""
    client = _client(tracking_uri)
    runs = []
    for rid in run_ids:
        run = _mlflow_call(tracking_uri, f"run {rid!r}", client.get_run, rid)
        curves = {
            key: _curve(client.get_metric_history(rid, key))
            for key in HISTORY_KEYS
            if key in run.data.metrics
        }
        runs.append(
            RunData(
                run_id=run.info.run_id,
                run_name=run.info.run_name or "",
                experiment_id=run.info.experiment_id,
                status=run.info.status,
                start_time=run.info.start_time,
                params=dict(run.data.params),
                tags=dict(run.data.tags),
                metrics=dict(run.data.metrics),
                curves=curves,
            )
        )
    return runs
