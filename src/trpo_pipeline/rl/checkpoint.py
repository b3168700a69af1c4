"""The one checkpoint format: state dicts, normaliser, RNG states, counters and the config.

Saved atomically (temporary file, then rename) and loaded with ``weights_only=True``, so a
checkpoint can carry tensors and plain containers but never code.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trpo_pipeline.rl.config import RunConfig
from trpo_pipeline.rl.errors import CheckpointError, first_line
from trpo_pipeline.rl.files import publish, temporary_path

FORMAT_VERSION = 1
_KEYS = (
    "format_version",
    "actor",
    "critic",
    "critic_optimizer",
    "obs_normalizer",
    "reward_scaler",
    "rng",
    "episodes",
    "global_step",
    "updates",
    "config",
)


@dataclass(frozen=True)
class Checkpoint:
    actor: dict[str, Any]
    critic: dict[str, Any]
    critic_optimizer: dict[str, Any]
    obs_normalizer: dict[str, Any] | None
    rng: dict[str, Any]
    episodes: dict[str, Any]  # count so far and the recent returns/lengths the progress shows
    global_step: int  # environment transitions trained on so far
    updates: int  # TRPO updates done so far
    config: dict[str, Any]  # the run's config (rl.config.engine_dict)
    reward_scaler: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION


def rng_state() -> dict[str, Any]:
    """python, numpy and torch global RNG states, as plain containers and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])


def _to_payload(ckpt: Checkpoint) -> dict[str, Any]:
    # The config goes in as sorted JSON text: pickling it as nested dicts would make the bytes
    # depend on which equal strings happen to be the same Python object (pickle's memo), and
    # equal runs must write equal files.
    payload = {f.name: getattr(ckpt, f.name) for f in fields(ckpt)}
    payload["config"] = json.dumps(ckpt.config, sort_keys=True)
    return payload


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically: readers see the old file or the new one."""
    tmp = temporary_path(path)
    try:
        with tmp.open("wb") as f:
            torch.save(_to_payload(ckpt), f)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)  # the usual file permissions, then an atomic rename
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint without executing code; any problem is one :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = first_line(str(err), "unpickling failed")
        raise CheckpointError(
            f"{path}: refused to load (not a plain-data checkpoint: {first})"
        ) from None
    except Exception as err:  # corrupt bytes also surface as IndexError, KeyError, ...
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {type(err).__name__})"
        ) from None
    if not isinstance(data, dict) or not set(_KEYS) <= set(data):
        raise CheckpointError(f"{path}: not a trpo-pipeline checkpoint (missing keys)")
    if data["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {data['format_version']} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    try:
        config = json.loads(data["config"])
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: the config stored in it is unreadable") from None
    return Checkpoint(**{k: data[k] for k in _KEYS} | {"config": config})


# What a resumed run must share with the run that wrote the checkpoint: the env and the
# networks' shapes (the state dicts would not fit otherwise).
RESUMABLE_KEYS = (
    ("env", "id"),
    ("env", "normalize_obs"),
    ("policy", "hidden_sizes"),
    ("policy", "critic_hidden_sizes"),
    ("policy", "activation"),
)


def check_resumable(ckpt: Checkpoint, cfg: RunConfig, path: Path) -> None:
    """CheckpointError if ``cfg`` cannot continue the run saved in ``ckpt``."""
    for group, key in RESUMABLE_KEYS:
        have = getattr(getattr(cfg, group), key)
        had = ckpt.config.get(group, {}).get(key)
        if (list(have) if isinstance(have, tuple) else have) != had:
            raise CheckpointError(
                f"{path}: trained with {group}.{key}={had!r}, cannot resume with {have!r}"
            )
