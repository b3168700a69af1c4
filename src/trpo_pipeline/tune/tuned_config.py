"""The best trial as a Hydra experiment: conf/experiment/tuned_<study>.yaml, which
``trpo-train experiment=tuned_<study>`` retrains."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial

from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.rl.files import atomic_write
from trpo_pipeline.rl.schema import to_dict

_MARK = "# Written by trpo-tune from study "
_NOT_PART_OF_AN_EXPERIMENT = ("tune", "tracking", "resume", "overwrite")


def _written_by(path: Path, study_name: str) -> bool:
    head = path.read_text().splitlines()[:3]
    return any(line.startswith(f"{_MARK}{study_name!r}") for line in head)


def check_tuned_config(path: Path, study_name: str, *, overwrite: bool) -> None:
    """Refuse (before any trial runs) to replace a file this study did not write."""
    if path.exists() and not overwrite and not _written_by(path, study_name):
        raise ConfigError(
            "tune.overwrite",
            f"{path} exists and was not written by study {study_name!r}; pass "
            "tune.overwrite=true to replace it, or another tune.study_name",
        )


def _diff(values: Mapping[str, Any], default: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            sub = _diff(value, default.get(key) or {})
            if sub:
                out[key] = sub
        elif default.get(key, object()) != value:
            out[key] = value
    return out


def tuned_config_yaml(base: Config, default: Config, best: FrozenTrial, storage: str) -> str:
    """The experiment of the best trial: the tuned experiment's differences from the default
    config, the best values, and the checkpoint schedule the trials trained with (envs restart
    at checkpoints, so the same schedule retrains the best trial exactly)."""
    base_tree, default_tree = to_dict(base), to_dict(default)
    for key in (*_NOT_PART_OF_AN_EXPERIMENT, "name"):
        base_tree.pop(key, None)
    base_tree["train"].pop("progress", None)
    values: dict[str, Any] = {"name": f"tuned_{base.tune.study_name}"}
    values |= _diff(base_tree, default_tree)
    best_values = dict(best.user_attrs.get("config", {}))
    best_values["train.checkpoint_every"] = base.tune.report_every
    for dotted, value in best_values.items():
        group, key = dotted.split(".")
        values.setdefault(group, {})[key] = value
    header = (
        "# @package _global_\n"
        f"{_MARK}{base.tune.study_name!r} ({storage}): trial {best.number}, "
        f"evaluation return {best.value:.2f}.\n"
        f"# Train it: trpo-train experiment=tuned_{base.tune.study_name}  "
        f"(or dvc exp run -S experiment=tuned_{base.tune.study_name})\n"
    )
    return header + yaml.safe_dump(values, sort_keys=False)


def write_tuned_config(path: Path, text: str, study_name: str, *, overwrite: bool) -> Path:
    check_tuned_config(path, study_name, overwrite=overwrite)
    return atomic_write(path, text)
