"""What a run records: the config as params, its hash, provenance tags, metrics.

A run gets the whole config as flattened params (``algo.max_kl``), per-update metrics
(``train/<column>``), evaluation metrics (``eval/...``) and provenance tags (git commit and
dirty flag, DVC experiment name, config hash, package versions, seed).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trpo_pipeline.config import Config
from trpo_pipeline.credentials import mask
from trpo_pipeline.rl.schema import to_dict

if TYPE_CHECKING:
    from trpo_pipeline.rl.evaluate import EvalResult
    from trpo_pipeline.rl.train import UpdateRecord

# The tags provenance_tags writes (config_hash, seed and env_id when given a config), in the order
# the report shows them; mlflow.source.git.commit and dvc_exp_baseline_rev are extras for the UI.
PROVENANCE_TAGS = (
    "git_commit",
    "git_dirty",
    "dvc_exp_name",
    "config_hash",
    "python_version",
    "torch_version",
    "gymnasium_version",
    "seed",
    "env_id",
)
# Wall-clock measurements: the only metrics a re-run cannot reproduce exactly.
TIMING_METRICS = frozenset({"train/time_s", "train/steps_per_s"})
EVAL_METRICS = ("mean_return", "std_return", "min_return", "max_return", "mean_length")
# Keys that cannot change what a run computes: left out of the config hash.
UNHASHED = ("tracking", "overwrite", "train.progress")
# Written by DVC during a pipeline run; not counted as uncommitted changes.
_NOT_DIRTY = ("params.yaml", "dvc.lock", "outputs/")


def param_value(value: Any) -> str:
    """How a config value is written as an MLflow param: strings as-is (passwords in URLs
    masked), the rest as JSON."""
    return mask(value if isinstance(value, str) else json.dumps(value))


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


SOURCE_NAME = "mlflow.source.name"  # the UI's Source column


def source_tags(command: str) -> dict[str, str]:
    """Which command or stage made a run (``trpo-train``, ``dvc stage train``, ...)."""
    return {SOURCE_NAME: command, "mlflow.source.type": "LOCAL"}


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

    Booleans count as 0/1; undefined values (nan before the first episode ends) are left out.
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
    """A curve cell as a number: ints (booleans are written 0/1), floats, or their text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def update_metrics(record: UpdateRecord) -> dict[str, float]:
    """The metrics of one training update."""
    return row_metrics(record.row())


def eval_metrics(result: EvalResult) -> dict[str, float]:
    """``eval/mean_return`` and the other summary numbers of an evaluation."""
    return {f"eval/{key}": float(getattr(result, key)) for key in EVAL_METRICS}
