"""The report's tables as cells of text, with swatches, links and alignment marked.

Evaluation per configuration and per run, the config diff, shared params and provenance;
``render`` turns them into HTML and Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from trpo_pipeline.report.groups import ConfigGroup, differing_params
from trpo_pipeline.report.links import run_url
from trpo_pipeline.report.runs import (
    ACCEPTED,
    EVAL_LENGTH,
    EVAL_MAX,
    EVAL_MEAN,
    EVAL_MIN,
    EVAL_STD,
    PARENT_TAG,
    RETURN,
    RunData,
)
from trpo_pipeline.report.stats import mean_ci
from trpo_pipeline.tracking.records import PROVENANCE_TAGS


def _fmt(x: float, digits: int = 1) -> str:
    return "—" if not math.isfinite(x) else f"{x:,.{digits}f}"


def _metric(run: RunData, key: str) -> float:
    return run.metrics.get(key, math.nan)


def _acceptance(run: RunData) -> float:
    c = run.curves.get(ACCEPTED)
    return float(np.nanmean(c.values)) if c is not None and c.values.size else math.nan


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    colors: list[str] | None = None  # a swatch before the first cell of each row
    links: dict[tuple[int, int], str] = field(default_factory=dict)  # (row, col) -> href
    code: set[int] = field(default_factory=set)  # monospace columns


def group_table(groups: Sequence[ConfigGroup]) -> Table:
    rows = []
    for g in groups:
        evals = [_metric(r, EVAL_MEAN) for r in g.runs]
        mean, half, n = mean_ci(evals)
        final = mean_ci([r.curves[RETURN].last() for r in g.runs if RETURN in r.curves])
        accept = mean_ci([_acceptance(r) for r in g.runs])
        rows.append(
            [
                g.label,
                g.env_id,
                str(len(g.runs)),
                _fmt(mean),
                "—" if not math.isfinite(half) else f"[{_fmt(mean - half)}, {_fmt(mean + half)}]",
                " / ".join(_fmt(v) for v in evals) if n else "—",
                _fmt(final[0]),
                "—" if not math.isfinite(accept[0]) else f"{accept[0]:.0%}",
            ]
        )
    header = [
        "configuration",
        "env",
        "seeds",
        "eval return, mean over seeds",
        "95% CI (t)",
        "per seed",
        "final training return",
        "line search accepted",
    ]
    return Table(header, rows, numeric={2, 3, 4, 6, 7}, colors=[g.color for g in groups])


def run_table(groups: Sequence[ConfigGroup], tracking_uri: str) -> Table:
    rows, colors, links = [], [], {}
    for g in groups:
        for r in g.runs:
            steps = r.curves[RETURN].steps[-1] if RETURN in r.curves else None
            links[(len(rows), 2)] = run_url(tracking_uri, r)
            rows.append(
                [
                    g.label,
                    r.seed or "—",
                    r.run_id,
                    r.status,
                    f"{_fmt(_metric(r, EVAL_MEAN))} ± {_fmt(_metric(r, EVAL_STD))}",
                    f"{_fmt(_metric(r, EVAL_MIN))} / {_fmt(_metric(r, EVAL_MAX))}",
                    _fmt(_metric(r, EVAL_LENGTH)),
                    _fmt(r.curves[RETURN].last()) if RETURN in r.curves else "—",
                    "—" if steps is None else f"{int(steps):,}",
                ]
            )
            colors.append(g.color)
    header = [
        "configuration",
        "seed",
        "MLflow run",
        "status",
        "eval return (mean ± std over episodes)",
        "eval min / max",
        "eval episode length",
        "final training return",
        "env steps trained",
    ]
    return Table(header, rows, {1, 4, 5, 6, 7, 8}, colors, links, code={2})


def diff_table(groups: Sequence[ConfigGroup]) -> Table:
    keys = differing_params([g.params for g in groups])
    rows = [[k, *(g.params.get(k, "(unset)") for g in groups)] for k in keys]
    return Table(["param", *(g.label for g in groups)], rows, code={0})


def shared_tags(runs: Sequence[RunData]) -> dict[str, str]:
    """Provenance tags with one value in every run (a dirty tree in one run is not shared)."""
    shared = {}
    for tag in PROVENANCE_TAGS:
        values = {r.tags.get(tag) for r in runs}
        if len(values) == 1 and None not in values and len(runs) > 1:
            shared[tag] = values.pop()
    return shared


def provenance_table(groups: Sequence[ConfigGroup], tracking_uri: str) -> Table:
    runs = [r for g in groups for r in g.runs]
    shared = shared_tags(runs)
    tags = [t for t in PROVENANCE_TAGS if t not in shared]
    rows, colors, links = [], [], {}
    for g in groups:
        for r in g.runs:
            links[(len(rows), 0)] = run_url(tracking_uri, r)
            started = (
                datetime.fromtimestamp(r.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M")
                if r.start_time
                else "—"
            )
            values = [short_tag(t, r.tags.get(t, "—")) for t in tags]
            rows.append(
                [r.run_id, r.run_name or "—", started, *values, r.tags.get(PARENT_TAG, "—")]
            )
            colors.append(g.color)
    header = ["MLflow run", "name", "started (UTC)", *tags, "parent run"]
    code = {0, len(header) - 1} | {3 + i for i, t in enumerate(tags) if t in CODE_TAGS}
    return Table(header, rows, colors=colors, links=links, code=code)


CODE_TAGS = ("git_commit", "config_hash")


def short_tag(tag: str, value: str) -> str:
    return value[:12] if tag == "git_commit" else value  # a short hash is enough to check out


def common_params_table(groups: Sequence[ConfigGroup]) -> Table:
    diff = set(differing_params([g.params for g in groups]))
    shared = {k: v for k, v in groups[0].params.items() if k not in diff}
    return Table(["param", "value"], [[k, shared[k]] for k in sorted(shared)], code={0, 1})
