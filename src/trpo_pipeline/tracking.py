"""MLflow: where runs are recorded, and what each run records.

A run gets the whole config as flattened params (``algo.max_kl``), per-update metrics
(``train/<column>`` at step = env steps, sent in batches), evaluation metrics (``eval/...``),
provenance tags (git commit and dirty flag, DVC experiment name, config hash, package
versions, seed) and artifacts (config, checkpoint, learning curve, the policy as a pyfunc
model). Training reaches this module only through ``train(..., callbacks=[run.log_update])``.

The default store is ``sqlite:///<repo root>/mlflow.db``. The repo root is ``$DVC_ROOT`` when
DVC runs a stage (DVC points it at the real repository even from its temporary experiment
copies), else the nearest folder above the working directory holding ``.dvc`` or ``.git``, so
Hydra runs, DVC stages and queued DVC experiments all write to one store.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trpo_pipeline.config import Config, ConfigError, TrackingConfig, to_dict

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from trpo_pipeline.evaluate import EvalResult
    from trpo_pipeline.train import UpdateRecord

RUN_REF = "mlflow_run.json"  # {"run_id": ..., ...}: how a later stage finds its run
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # beside the SQLite file: artifacts of its experiments
FLUSH_EVERY = 10  # updates per log_batch call (about 20 metrics each)
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch
PARAMS_PER_BATCH = 100  # MLflow's limit of params per log_batch
MODEL_NAME = "policy"
PARENT_TAG = "mlflow.parentRunId"
# Wall-clock measurements: the only metrics a re-run cannot reproduce exactly.
TIMING_METRICS = frozenset({"train/time_s", "train/steps_per_s"})
EVAL_METRICS = ("mean_return", "std_return", "min_return", "max_return", "mean_length")
# Keys that cannot change what a run computes: left out of the config hash.
UNHASHED = ("tracking", "overwrite", "train.progress")
# Written by DVC during a pipeline run; not counted as uncommitted changes.
_NOT_DIRTY = ("params.yaml", "dvc.lock", "outputs/")


# --- where -------------------------------------------------------------------------------------


def project_root() -> Path:
    """The repository a run belongs to: $DVC_ROOT, else the nearest .dvc/.git folder above cwd."""
    if env := os.environ.get("DVC_ROOT"):
        return Path(env).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / ".dvc").is_dir() or (folder / ".git").exists():
            return folder
    return cwd


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else the SQLite file at the repo root.

    Relative SQLite paths and plain folders are made absolute against the repo root, so the
    answer does not depend on the working directory of the process asking.
    """
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{project_root() / DB_NAME}"
    if uri.startswith("sqlite:///"):
        path, sep, query = uri.removeprefix("sqlite:///").partition("?")
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{project_root() / path}{sep}{query}"
        return uri
    if "://" not in uri:  # a local folder (MLflow's file store)
        path = Path(uri)
        return str(path if path.is_absolute() else project_root() / path)
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").partition("?")[0]
    return None if path in ("", ":memory:") else Path("/" + path.lstrip("/"))


def redact(uri: str) -> str:
    """The URI without a password, for logs and reference files."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri)


def ui_command(uri: str, mlflow_bin: str = ".venv/bin/mlflow") -> str:
    """The one command that opens the MLflow UI on this store."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact(uri)} in a browser"
    return f"{mlflow_bin} ui --backend-store-uri {uri} --host 127.0.0.1"


@functools.cache
def _client(uri: str) -> MlflowClient:
    """One client per store and process; the first one creates (and migrates) a SQLite store,
    under the store's lock."""
    from mlflow import MlflowClient

    with _store_lock(uri):
        return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first use of a SQLite store across processes.

    Parallel jobs (joblib, `dvc queue start -j N`) would otherwise race to create the schema
    and the experiment; after that SQLite's own locking (MLflow sets a busy timeout) suffices.
    """
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=300):
        yield


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment ``name``, created on first use (artifacts beside a SQLite file)."""
    from mlflow.exceptions import MlflowException

    with _store_lock(uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        db = sqlite_path(uri)
        location = None
        if db is not None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
            location = str(db.parent / ARTIFACTS_DIR / slug)
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by a process not sharing our lock (a server)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def open_experiment(uri: str, name: str) -> tuple[MlflowClient, str]:
    """(client, experiment id); a store that cannot be used is a ConfigError on tracking.uri."""
    from mlflow.exceptions import MlflowException

    try:
        client = _client(uri)
        return client, experiment_id(client, uri, name)
    except MlflowException as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            "tracking.uri", f"cannot use the MLflow store {redact(uri)}: {first}"
        ) from None


# --- what: params, tags, metrics ---------------------------------------------------------------


def param_value(value: Any) -> str:
    """How a config value is written as an MLflow param: strings as-is, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config mapping -> {dotted key: param string}."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = param_value(value)
    return out


def flatten_config(cfg: Config) -> dict[str, str]:
    """The whole config as MLflow params: ``{"algo.max_kl": "0.01", ...}``."""
    return flatten(to_dict(cfg))


def result_params(cfg: Config) -> dict[str, str]:
    """The params that can change what a run computes: all but tracking.*, overwrite and
    train.progress."""
    return {
        k: v
        for k, v in flatten_config(cfg).items()
        if not any(k == u or k.startswith(f"{u}.") for u in UNHASHED)
    }


def config_hash(cfg: Config) -> str:
    """SHA-256 (first 16 hex digits) of :func:`result_params`: equal hashes, equal experiments."""
    return hashlib.sha256(json.dumps(result_params(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> tuple[str, str]:
    """(commit, "true"/"false") of the code being run; ("unknown", "unknown") outside git.

    In a DVC experiment the commit is the experiment's baseline ($DVC_EXP_BASELINE_REV);
    dirty means tracked files differ from it, apart from what DVC itself writes (params.yaml,
    whose values are logged in full, dvc.lock and outputs/).
    """
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or _git("rev-parse", "HEAD")
    if not commit:
        return "unknown", "unknown"
    changed = _git("diff", "--name-only", commit, "--")
    if changed is None:
        return commit, "unknown"
    dirty = any(not path.startswith(_NOT_DIRTY) for path in changed.splitlines() if path)
    return commit, "true" if dirty else "false"


def provenance_tags(cfg: Config | None = None) -> dict[str, str]:
    """The tags that let a run be reproduced (and compared) later."""
    import gymnasium
    import torch

    commit, dirty = git_state()
    tags = {
        "git_commit": commit,
        "git_dirty": dirty,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "gymnasium_version": gymnasium.__version__,
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = baseline
    if cfg is not None:
        tags |= {"config_hash": config_hash(cfg), "seed": str(cfg.seed), "env_id": cfg.env.id}
    return tags


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """``train/<column>`` for every numeric column of a learning-curve row (a row from
    :meth:`UpdateRecord.row` or read back from the CSV), plus ``train/surrogate_improvement``.

    Booleans become 0/1; undefined values (nan before the first episode ends) are left out.
    """
    values: dict[str, float] = {}
    for key, value in row.items():
        if key == "env_steps":  # the step, not a metric
            continue
        number = _number(value)
        if number is not None:
            values[f"train/{key}"] = number
    if "train/surrogate_after" in values and "train/surrogate_before" in values:
        values["train/surrogate_improvement"] = (
            values["train/surrogate_after"] - values["train/surrogate_before"]
        )
    return {k: v for k, v in values.items() if math.isfinite(v)}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if value in ("True", "False"):
            return float(value == "True")
        try:
            return float(value)
        except ValueError:
            return None
    return None


def update_metrics(record: UpdateRecord) -> dict[str, float]:
    """The metrics of one training update."""
    return row_metrics(record.row())


def eval_metrics(result: EvalResult) -> dict[str, float]:
    """``eval/mean_return`` and the other summary numbers of an evaluation."""
    return {f"eval/{key}": float(getattr(result, key)) for key in EVAL_METRICS}


# --- one run -----------------------------------------------------------------------------------


@dataclass
class TrackedRun:
    """An MLflow run being written to; with tracking disabled every method does nothing."""

    uri: str
    run_id: str | None = None
    experiment_id: str | None = None
    _pending: list[Metric] = field(default_factory=list, repr=False)

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @property
    def client(self) -> MlflowClient:
        return _client(self.uri)

    # metrics

    def log_update(self, record: UpdateRecord) -> None:
        """train() callback: buffer the update's metrics, send every FLUSH_EVERY updates."""
        if not self.enabled:
            return
        self.queue_metrics(update_metrics(record), step=record.env_steps)
        if record.update % FLUSH_EVERY == 0:
            self.flush()

    def queue_metrics(
        self, values: Mapping[str, float], step: int, timestamp_ms: int | None = None
    ) -> None:
        from mlflow.entities import Metric

        if not self.enabled:
            return
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self._pending.extend(Metric(k, float(v), ts, int(step)) for k, v in values.items())

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        self.queue_metrics(values, step)
        self.flush()

    def flush(self) -> None:
        """Send the buffered metrics, up to MAX_BATCH per call."""
        if not self.enabled:
            return
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    # artifacts

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled and Path(path).is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        if self.enabled and Path(folder).is_dir():
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_policy_model(self, checkpoint: Path, cfg: Config) -> str | None:
        """Log the checkpoint's policy as a pyfunc model; returns its model URI.

        ``mlflow.pyfunc.load_model(uri).predict(observations)`` gives deterministic actions,
        with the saved observation normaliser applied (see policy_model.py).
        """
        if not self.enabled:
            return None
        import gymnasium
        import mlflow
        import numpy
        import torch

        import trpo_pipeline

        package = Path(trpo_pipeline.__file__).parent
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(package / "policy_model.py"),  # models from code: no pickle
                artifacts={"checkpoint": str(checkpoint)},
                code_paths=[str(package)],
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"gymnasium=={gymnasium.__version__}",
                    f"numpy=={numpy.__version__}",
                    f"mlflow=={mlflow.__version__}",
                ],
                metadata={"env_id": cfg.env.id, "deterministic": True},
            )
        return info.model_uri

    # lifecycle

    def write_ref(self, path: Path) -> None:
        """Record which run this is, for the next pipeline stage (or a person)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        ref = {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": redact(self.uri) if self.enabled else None,
        }
        path.write_text(json.dumps(ref, indent=2) + "\n")

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.flush()
            self.client.set_terminated(self.run_id, status)


def start_run(
    cfg: Config,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrackedRun:
    """Open a run for ``cfg`` with its params and provenance tags (a no-op one if disabled)."""
    uri = resolve_tracking_uri(cfg.tracking)
    if not cfg.tracking.enabled:
        return TrackedRun(uri)
    from mlflow.entities import Param

    client, exp_id = open_experiment(uri, cfg.tracking.experiment)
    all_tags = provenance_tags(cfg) | dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(exp_id, tags=all_tags, run_name=run_name or default_run_name(cfg))
    params = [Param(k, v) for k, v in flatten_config(cfg).items()]
    for i in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=params[i : i + PARAMS_PER_BATCH])
    return TrackedRun(uri, run.info.run_id, exp_id)


def default_run_name(cfg: Config) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{cfg.name}-seed{cfg.seed}" + (f"-{exp}" if exp else "")


def read_ref(path: Path) -> dict[str, Any]:
    """The reference a previous stage wrote ({} when there is none)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def reopen_run(cfg: Config, ref: Path) -> TrackedRun:
    """Continue the run recorded in ``ref`` (a no-op run if tracking is off or none recorded)."""
    uri = resolve_tracking_uri(cfg.tracking)
    run_id = read_ref(ref).get("run_id")
    if not cfg.tracking.enabled or not run_id:
        return TrackedRun(uri)
    client = _client(uri)
    run = client.get_run(run_id)
    client.update_run(run_id, status="RUNNING")
    return TrackedRun(uri, run_id, run.info.experiment_id)


@contextlib.contextmanager
def recording(run: TrackedRun) -> Iterator[TrackedRun]:
    """Close ``run`` on leaving: FINISHED, FAILED on an error, KILLED on Ctrl-C."""
    try:
        yield run
    except KeyboardInterrupt:
        run.finish("KILLED")
        raise
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED")


# --- what a stage records ----------------------------------------------------------------------


def log_training(
    run: TrackedRun, cfg: Config, run_dir: Path, *, params_file: Path | None = None
) -> None:
    """Artifacts of a finished training run: config, checkpoint, curve, metrics, the model."""
    from trpo_pipeline.train import CHECKPOINT, CONFIG, LEARNING_CURVE, TRAIN_METRICS

    if not run.enabled:
        return
    run.flush()
    if params_file is not None:
        run.log_artifact(params_file, "config")
    run.log_artifact(run_dir / CONFIG, "config")
    run.log_artifact(run_dir / CHECKPOINT, "checkpoint")
    run.log_artifact(run_dir / LEARNING_CURVE, "train")
    run.log_artifact(run_dir / TRAIN_METRICS, "train")
    if cfg.tracking.log_model:
        run.log_policy_model(run_dir / CHECKPOINT, cfg)


def log_curve(run: TrackedRun, curve_csv: Path) -> None:
    """Log the metrics of a learning-curve CSV (a run continuing another's training)."""
    if not run.enabled:
        return
    with Path(curve_csv).open(newline="") as f:
        for row in csv.DictReader(f):
            run.queue_metrics(row_metrics(row), step=int(row["env_steps"]))
    run.flush()


def log_evaluation(run: TrackedRun, result: EvalResult, eval_json: Path) -> None:
    run.log_metrics(eval_metrics(result), step=result.env_steps_trained)
    run.log_artifact(eval_json, "eval")


def is_fresh(data: Any, cfg: Config) -> bool:
    """Whether a training run (its ``RunData``) can take the evaluation of ``cfg``.

    MLflow params are immutable and a run holds one evaluation: a run already evaluated, or
    trained under other params (DVC reused its cached training because only evaluation params
    changed), is not fresh, and this pipeline execution gets a run of its own.
    """
    return "eval/mean_return" not in data.metrics and data.params == flatten_config(cfg)


def run_for_evaluation(
    cfg: Config,
    train_ref: Path,
    train_dir: Path,
    *,
    params_file: Path | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrackedRun:
    """The run an evaluation of ``train_dir``'s checkpoint is recorded in (left RUNNING).

    The training run recorded in ``train_ref`` when it is fresh; otherwise a new run holding
    this execution's params, the training metrics (from the learning curve) and artifacts,
    tagged ``train_run_id`` with the run that trained the checkpoint.
    """
    from mlflow.exceptions import MlflowException

    from trpo_pipeline.train import LEARNING_CURVE

    uri = resolve_tracking_uri(cfg.tracking)
    if not cfg.tracking.enabled:
        return TrackedRun(uri)
    previous = read_ref(train_ref).get("run_id")
    if previous:
        try:
            data = _client(uri).get_run(previous).data
        except MlflowException:  # recorded in another store: start afresh
            data = None
        if data is not None and is_fresh(data, cfg):
            return reopen_run(cfg, train_ref)
    extra = dict(tags or {}) | ({"train_run_id": previous} if previous else {})
    run = start_run(cfg, run_name=run_name, tags=extra)
    try:
        log_curve(run, train_dir / LEARNING_CURVE)
        log_training(run, cfg, train_dir, params_file=params_file)
    except BaseException:
        run.finish("FAILED")
        raise
    return run


# --- parent runs (a Hydra multirun, an Optuna study) -------------------------------------------


def start_parent_run(
    tracking: TrackingConfig, run_name: str, tags: Mapping[str, str] | None = None
) -> str | None:
    """Open a parent run; children pass its id as ``parent_run_id``. None if tracking is off."""
    if not tracking.enabled:
        return None
    uri = resolve_tracking_uri(tracking)
    client, exp_id = open_experiment(uri, tracking.experiment)
    run = client.create_run(exp_id, tags=provenance_tags() | dict(tags or {}), run_name=run_name)
    return run.info.run_id


def child_runs(uri: str, parent_run_id: str) -> list[Any]:
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    )


def finish_parent_run(tracking: TrackingConfig, run_id: str, *, failed: bool = False) -> None:
    """FAILED if ``failed`` or a child failed, else FINISHED; a parent without children is
    deleted (nothing ran under it)."""
    uri = resolve_tracking_uri(tracking)
    children = child_runs(uri, run_id)
    client = _client(uri)
    if not children and not failed:
        client.delete_run(run_id)
        return
    failed = failed or bool({c.info.status for c in children} & {"FAILED", "KILLED"})
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


# --- reading runs back -------------------------------------------------------------------------


def metric_histories(
    uri: str, run_id: str, keys: Iterable[str]
) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of a run, sorted by step."""
    client = _client(uri)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in keys
    }
