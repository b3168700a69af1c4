"""The report's matplotlib figures, drawn on an Agg canvas (no display, no pyplot state).

Learning curves, the trust region (KL and line search per update) and update diagnostics; each
configuration is drawn as its seeds, their mean and the 95% t-interval of that mean.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from trpo_pipeline.report.groups import ConfigGroup
from trpo_pipeline.report.runs import ACCEPTED, DIAGNOSTICS, KL, RETURN
from trpo_pipeline.report.stats import rolling_mean, seed_band

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# With 2 seeds the 95% t-interval is mean +- 12.7 s/sqrt(2): it fills any plot and says only that
# 2 seeds are too few, so figures shade from 3 seeds on (tables still give the interval).
MIN_SEEDS_FOR_BAND = 3
ACCEPTANCE_WINDOW = 10  # updates in the rolling line-search acceptance rate


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # Agg: no display, no global pyplot state
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    return buf.getvalue()


def _style_axes(ax: Axes, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)


def _plot_group(ax: Axes, group: ConfigGroup, key: str, *, window: int = 0) -> list[np.ndarray]:
    """Seeds as thin lines, their mean bold, the 95% t-interval shaded; the values drawn."""
    curves = [r.curves[key] for r in group.runs if key in r.curves]
    if window:
        curves = [rolling_mean(c, window) for c in curves]
    if not curves:
        return []
    if len(curves) > 1:
        for c in curves:
            ax.plot(c.steps, c.values, color=group.color, alpha=0.25, linewidth=0.8)
    band = seed_band(curves)
    seeds = f"{len(curves)} seed{'s' * (len(curves) > 1)}"
    ax.plot(band.steps, band.mean, color=group.color, linewidth=2, label=f"{group.label} ({seeds})")
    shade = band.n >= MIN_SEEDS_FOR_BAND
    if shade.any():
        ax.fill_between(
            band.steps, band.low, band.high, where=shade, color=group.color, alpha=0.18,
            linewidth=0,
        )  # fmt: skip
    return [c.values for c in curves]


def _fit_ylim(
    ax: Axes, drawn: Sequence[np.ndarray], *, extra: Sequence[float] = (), log: bool = False
) -> None:
    """Y range of the seeds' own values: a 2-seed interval (t = 12.7) must not flatten them."""
    values = np.concatenate([np.ravel(v) for v in drawn] + [np.asarray(extra, dtype=float)])
    values = values[np.isfinite(values) & ((values > 0) if log else True)]
    if not values.size:
        return
    lo, hi = float(values.min()), float(values.max())
    if log:
        ax.set_yscale("log")
        ax.set_ylim(lo / 1.3, hi * 1.3)
        return
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)


BAND_NOTE = (
    "Bold line: mean over seeds; shaded: 95% Student-t confidence interval of that mean, "
    "mean ± t(0.975, n−1)·s/√n, drawn where at least "
    f"{MIN_SEEDS_FOR_BAND} seeds have a value; thin lines: individual seeds."
)


def learning_curve_figure(groups: Sequence[ConfigGroup]) -> Figure | None:
    envs = list(dict.fromkeys(g.env_id for g in groups))
    panels = [(env, [g for g in groups if g.env_id == env]) for env in envs]
    panels = [
        (env, gs) for env, gs in panels if any(RETURN in r.curves for g in gs for r in g.runs)
    ]
    if not panels:
        return None
    cols = min(len(panels), 2)
    rows = math.ceil(len(panels) / cols)
    fig = _new_figure(12.0, (4.4 if cols > 1 else 5.0) * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (env, gs) in zip(axes, panels, strict=False):
        drawn = [v for g in gs for v in _plot_group(ax, g, RETURN)]
        _fit_ylim(ax, drawn)
        _style_axes(ax, f"{env}: training return", "episode return (mean of last 100 episodes)")
        ax.legend(fontsize=9, frameon=False, loc="best")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def trust_region_figure(groups: Sequence[ConfigGroup]) -> Figure | None:
    if not any(k in r.curves for g in groups for r in g.runs for k in (KL, ACCEPTED)):
        return None
    fig = _new_figure(12.0, 4.8)
    ax_kl, ax_ls = fig.subplots(1, 2)
    deltas: dict[str, list[ConfigGroup]] = {}
    kl_drawn: list[np.ndarray] = []
    for g in groups:
        drawn = _plot_group(ax_kl, g, KL)
        kl_drawn += drawn
        if drawn and "algo.max_kl" in g.params:
            deltas.setdefault(g.params["algo.max_kl"], []).append(g)
        _plot_group(ax_ls, g, ACCEPTED, window=ACCEPTANCE_WINDOW)
    for delta, gs in deltas.items():
        color = gs[0].color if len(deltas) > 1 else "black"
        ax_kl.axhline(
            float(delta), color=color, linestyle="--", linewidth=1.2, label=f"δ = max_kl = {delta}"
        )
    _fit_ylim(ax_kl, kl_drawn, extra=[0.0, *(float(d) for d in deltas)])
    ax_kl.set_ylim(bottom=0)
    _style_axes(ax_kl, "KL(π_old ‖ π_new) per update", "mean KL of the accepted step (nats)")
    _style_axes(
        ax_ls,
        f"Line-search acceptance (rolling mean over {ACCEPTANCE_WINDOW} updates)",
        "fraction of updates accepted",
    )
    ax_ls.set_ylim(-0.03, 1.05)
    handles, labels = ax_kl.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_ls.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4),
               fontsize=9, frameon=False)  # fmt: skip
    return fig


def diagnostics_figure(groups: Sequence[ConfigGroup]) -> Figure | None:
    keys = [k for k in DIAGNOSTICS if any(k in r.curves for g in groups for r in g.runs)]
    if not keys:
        return None
    cols = min(len(keys), 2)
    rows = math.ceil(len(keys) / cols)
    fig = _new_figure(12.0 if cols > 1 else 7.0, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        drawn = [v for g in groups for v in _plot_group(ax, g, key)]
        # a critic loss falls over orders of magnitude
        log = key == "train/value_loss" and all((v[np.isfinite(v)] > 0).all() for v in drawn)
        _fit_ylim(ax, drawn, log=log)
        title, ylabel = DIAGNOSTICS[key]
        _style_axes(ax, title, ylabel)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4),
                   fontsize=8, frameon=False)  # fmt: skip
    return fig
