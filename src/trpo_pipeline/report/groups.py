"""Runs grouped into configurations: the seeds of one configuration.

Runs share a configuration when every param that changes what is learned is the same; a group is
labelled by the params that differ between groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trpo_pipeline.report.runs import RunData

# Params that differ between runs of one experiment without changing what is learned.
RUN_SPECIFIC_PARAMS = frozenset(
    {
        "seed",
        "resume",
        "overwrite",
        "train.progress",
        "train.device",
        "train.torch_threads",
        "train.checkpoint_every",
        "evaluate.checkpoint",
    }
)
RUN_SPECIFIC_PREFIXES = ("tracking.", "hydra.")
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


@dataclass(frozen=True)
class ConfigGroup:
    """Runs sharing every param except the run-specific ones: the seeds of one configuration."""

    label: str
    color: str
    params: dict[str, str]  # the shared, learning-relevant params
    runs: list[RunData] = field(default_factory=list)

    @property
    def env_id(self) -> str:
        return self.runs[0].env_id


def is_run_specific(key: str) -> bool:
    return key in RUN_SPECIFIC_PARAMS or key.startswith(RUN_SPECIFIC_PREFIXES)


def differing_params(param_sets: Sequence[Mapping[str, str]]) -> list[str]:
    """Keys whose value (or presence) is not the same in every one of ``param_sets``."""
    keys = sorted(set().union(*param_sets)) if param_sets else []
    return [k for k in keys if len({p.get(k) for p in param_sets}) > 1]


def _sort_value(value: str | None) -> tuple[float, str]:
    try:
        return (float(value), "") if value is not None else (math.inf, "")
    except ValueError:
        return (math.inf, value)


def group_runs(runs: Sequence[RunData]) -> list[ConfigGroup]:
    """Runs grouped by their learning-relevant params, labelled by what differs between groups."""
    shared: dict[tuple[tuple[str, str], ...], list[RunData]] = {}
    for run in runs:
        key = tuple(sorted((k, v) for k, v in run.params.items() if not is_run_specific(k)))
        shared.setdefault(key, []).append(run)
    param_sets = [dict(key) for key in shared]
    diff = differing_params(param_sets)
    order = sorted(
        range(len(param_sets)),
        key=lambda i: [_sort_value(param_sets[i].get(k)) for k in diff],
    )
    groups = []
    for rank, i in enumerate(order):
        params = param_sets[i]
        label = ", ".join(f"{k}={params.get(k, '(unset)')}" for k in diff)
        if not label:
            label = params.get("name") or params.get("env.id") or "all runs"
        elif len(label) > 48:
            label = f"config {rank + 1}"
        members = sorted(shared[tuple(sorted(params.items()))], key=_seed_order)
        groups.append(ConfigGroup(label, _color(rank), params, members))
    return groups


def varying_run_specific(runs: Sequence[RunData]) -> list[str]:
    keys = differing_params([r.params for r in runs])
    return [k for k in keys if is_run_specific(k)]


def _seed_order(run: RunData) -> tuple[float, str, int]:
    value, text = _sort_value(run.seed or None)
    return value, text, run.start_time or 0


def _color(rank: int) -> str:
    if rank < len(PALETTE):
        return PALETTE[rank]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["tab20"](rank % 20))
