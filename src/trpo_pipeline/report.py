"""Reports across MLflow runs: curves over seeds, evaluation tables, config diff, provenance.

:func:`select_runs` picks runs (by experiment name, tags or ids) and :func:`write_report` reads
them through ``MlflowClient`` and writes one self-contained ``report.html`` (figures embedded as
base64 PNG, no scripts, nothing fetched) plus ``report.md`` with the same figures as PNG files
beside it.

Runs whose params are identical apart from the seed (and a few settings that do not change what
is learned, :data:`RUN_SPECIFIC_PARAMS`) form one configuration. Curves of a configuration are
drawn as the mean over its seeds with a 95% Student-t confidence interval of that mean,
``mean +- t(0.975, n-1) * s / sqrt(n)``: with the 3-10 seeds RL experiments usually have, a
bootstrap interval is too narrow and +-1 standard error covers only about 60-80%.
"""

from __future__ import annotations

import base64
import html
import io
import math
import socket
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from trpo_pipeline.credentials import mask
from trpo_pipeline.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Run

T = TypeVar("T")

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
LEARNING_CURVES_PNG = "learning_curves.png"
TRUST_REGION_PNG = "trust_region.png"
DIAGNOSTICS_PNG = "diagnostics.png"
FIGURES = (LEARNING_CURVES_PNG, TRUST_REGION_PNG, DIAGNOSTICS_PNG)

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
PARENT_TAG = "mlflow.parentRunId"
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
# With 2 seeds the 95% t-interval is mean +- 12.7 s/sqrt(2): it fills any plot and says only that
# 2 seeds are too few, so figures shade from 3 seeds on (tables still give the interval).
MIN_SEEDS_FOR_BAND = 3
ACCEPTANCE_WINDOW = 10  # updates in the rolling line-search acceptance rate
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
# t(0.975, df) for df = 1..30; larger df use a Cornish-Fisher expansion around the normal.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


class ReportError(ValueError):
    """A user-caused problem (no such run, no runs matched, store unreachable); one line."""


# --- reading runs from MLflow ----------------------------------------------------------------


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
                f"cannot reach the MLflow server at {redact(tracking_uri)}: {err}"
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
            raise ReportError(f"{what} not found in {redact(tracking_uri)}") from None
        first = str(err.message).strip().splitlines()[0] if str(err.message).strip() else ""
        raise ReportError(f"{what}: MLflow error from {redact(tracking_uri)}: {first}") from None


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
    uri = redact(tracking_uri)

    experiment_ids: list[str] | None = None
    if experiment:
        found = _mlflow_call(
            tracking_uri, f"experiment {experiment!r}", client.get_experiment_by_name, experiment
        )
        if found is None:
            names = [e.name for e in client.search_experiments()]
            raise ReportError(
                f"no MLflow experiment named {experiment!r} in {uri} "
                f"(experiments: {', '.join(names) or 'none'})"
            )
        experiment_ids = [found.experiment_id]

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


# --- grouping and statistics -----------------------------------------------------------------


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


def _seed_order(run: RunData) -> tuple[float, str, int]:
    value, text = _sort_value(run.seed or None)
    return value, text, run.start_time or 0


def _color(rank: int) -> str:
    if rank < len(PALETTE):
        return PALETTE[rank]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["tab20"](rank % 20))


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, 95% t-interval half-width, n) of the finite values; half-width nan when n < 2."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    return float(x.mean()), t_quantile_975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n), n


@dataclass(frozen=True)
class SeedBand:
    """Mean over seeds and its 95% t-interval on a common grid of env steps."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray  # nan where fewer than two seeds have a value
    high: np.ndarray
    n: np.ndarray  # seeds with a value at each step


def seed_band(curves: Sequence[Curve]) -> SeedBand:
    """Align the seeds' curves on the steps they share and summarise them at each step.

    The grid is every logged step inside the range all seeds cover; a seed without a value at a
    grid step is linearly interpolated between its neighbours (never extrapolated), and its nan
    values (a return before the first finished episode) count as missing.
    """
    curves = [c for c in curves if c.steps.size]
    if not curves:
        empty = np.empty(0)
        return SeedBand(empty, empty, empty, empty, np.empty(0, dtype=np.int64))
    lo = max(int(c.steps[0]) for c in curves)
    hi = min(int(c.steps[-1]) for c in curves)
    grid = np.unique(np.concatenate([c.steps[(c.steps >= lo) & (c.steps <= hi)] for c in curves]))
    table = np.full((len(curves), grid.size), np.nan)
    for i, c in enumerate(curves):
        ok = np.isfinite(c.values)
        if not ok.any():
            continue
        s, v = c.steps[ok], c.values[ok]
        inside = (grid >= s[0]) & (grid <= s[-1])
        table[i, inside] = np.interp(grid[inside], s, v)
    n = np.isfinite(table).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(table, axis=0) / np.maximum(n, 1), np.nan)
        dev = np.where(np.isfinite(table), table - mean, 0.0)
        sd = np.sqrt((dev**2).sum(axis=0) / np.maximum(n - 1, 1))
    t = np.array([t_quantile_975(k - 1) if k >= 2 else math.nan for k in n])
    half = t * sd / np.sqrt(np.maximum(n, 1))
    return SeedBand(grid, mean, mean - half, mean + half, n)


def rolling_mean(curve: Curve, window: int) -> Curve:
    """Trailing mean over the last ``window`` logged values (fewer at the start)."""
    v = np.nan_to_num(curve.values, nan=0.0)
    csum = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, v.size + 1)
    start = np.maximum(idx - window, 0)
    return Curve(curve.steps, (csum[idx] - csum[start]) / (idx - start))


# --- figures ---------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # Agg: no display, no global pyplot state
    return fig


def _png(fig: Figure) -> bytes:
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


# --- tables ----------------------------------------------------------------------------------


def redact(uri: str) -> str:
    """``uri`` without a password: reports are shared and logged as artifacts."""
    return mask(uri)


def run_url(tracking_uri: str, run: RunData) -> str:
    """The run's page in the MLflow UI: the server's own for http(s), else a local `mlflow ui`."""
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    else:
        base = LOCAL_UI
    return f"{base}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the UI the run links point into; None for an http(s) server."""
    if urlsplit(tracking_uri).scheme in ("http", "https"):
        return None
    return f"mlflow ui --backend-store-uri {redact(tracking_uri)} --host 127.0.0.1"


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


def varying_run_specific(runs: Sequence[RunData]) -> list[str]:
    keys = differing_params([r.params for r in runs])
    return [k for k in keys if is_run_specific(k)]


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
            values = [_short_tag(t, r.tags.get(t, "—")) for t in tags]
            rows.append(
                [r.run_id, r.run_name or "—", started, *values, r.tags.get(PARENT_TAG, "—")]
            )
            colors.append(g.color)
    header = ["MLflow run", "name", "started (UTC)", *tags, "parent run"]
    code = {0, len(header) - 1} | {3 + i for i, t in enumerate(tags) if t in CODE_TAGS}
    return Table(header, rows, colors=colors, links=links, code=code)


CODE_TAGS = ("git_commit", "config_hash")


def _short_tag(tag: str, value: str) -> str:
    return value[:12] if tag == "git_commit" else value  # a short hash is enough to check out


def common_params_table(groups: Sequence[ConfigGroup]) -> Table:
    diff = set(differing_params([g.params for g in groups]))
    shared = {k: v for k, v in groups[0].params.items() if k not in diff}
    return Table(["param", "value"], [[k, shared[k]] for k in sorted(shared)], code={0, 1})


# --- HTML and Markdown -----------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1d2330;max-width:1280px;margin:0 auto;padding:24px 32px 64px;line-height:1.45}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:36px 0 8px;
 border-bottom:1px solid #d8dce3;padding-bottom:4px}
.meta{color:#5b6475;font-size:13px} .note{color:#5b6475;font-size:13px;margin:4px 0 10px}
figure{margin:8px 0 20px} figure img{width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{color:#5b6475;font-size:13px;margin-top:4px}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:13px;margin:6px 0 14px}
th,td{padding:5px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top;
 white-space:nowrap} thead th{background:#f3f5f8;font-weight:600;white-space:normal;
 vertical-align:bottom} tbody th{font-weight:600}
nav{font-size:13px;margin:10px 0 0} .facts{font-size:13px} .facts span{margin-right:14px;
 white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc} td.num{text-align:right;
 font-variant-numeric:tabular-nums} code,td.code{font-family:ui-monospace,SFMono-Regular,
 Menlo,Consolas,monospace;font-size:12px} .sw{display:inline-block;width:10px;height:10px;
 border-radius:2px;margin-right:6px} a{color:#0b5cad} details summary{cursor:pointer}
"""


def _html_table(table: Table, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, text in enumerate(row):
            content = html.escape(text)
            if (i, j) in table.links:
                content = f'<a href="{html.escape(table.links[(i, j)])}">{content}</a>'
            if j == 0 and table.colors:
                content = f'<span class="sw" style="background:{table.colors[i]}"></span>{content}'
            cls = " ".join(
                [c for c, cols in (("num", table.numeric), ("code", table.code)) if j in cols]
            )
            tag = "th" if j == 0 else "td"
            attrs = (' scope="row"' if j == 0 else "") + (f' class="{cls}"' if cls else "")
            cells.append(f"<{tag}{attrs}>{content}</{tag}>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in table.header) + " |",
        "|" + "|".join("---:" if j in table.numeric else "---" for j in range(len(table.header)))
        + "|",
    ]  # fmt: skip
    for i, row in enumerate(table.rows):
        cells = []
        for j, text in enumerate(row):
            cell = f"`{_md_cell(text)}`" if j in table.code and text != "—" else _md_cell(text)
            if (i, j) in table.links:
                cell = f"[{cell}]({table.links[(i, j)]})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    intro: str = ""  # plain text
    figure: str | None = None  # a PNG file name
    caption: str = ""
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (sub-heading, table)
    code: str | None = None  # a command to show
    collapsed: bool = False
    facts: dict[str, str] = field(default_factory=dict)  # "name: value" pairs shown on one line
    facts_title: str = ""


def _html_page(title: str, meta: list[str], sections: list[Section], pngs: dict[str, bytes]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page fetches nothing
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f'<div class="meta">{html.escape(m)}</div>' for m in meta),
        "<nav>"
        + " · ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
        + "</nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>')
        if s.facts:
            items = "".join(
                f"<span><b>{html.escape(k)}</b> <code>{html.escape(v)}</code></span>"
                for k, v in s.facts.items()
            )
            parts.append(f'<p class="facts">{html.escape(s.facts_title)}: {items}</p>')
        if s.intro:
            parts.append(f'<p class="note">{html.escape(s.intro)}</p>')
        if s.code:
            parts.append(f"<p><code>{html.escape(s.code)}</code></p>")
        if s.figure:
            data = base64.b64encode(pngs[s.figure]).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(s.title)}">'
                f"<figcaption>{html.escape(s.caption)}</figcaption></figure>"
            )
        for sub, table in s.tables:
            body = _html_table(table, f"{s.anchor}-{len(parts)}")
            if s.collapsed:
                parts.append(f"<details><summary>{html.escape(sub)}</summary>{body}</details>")
            else:
                parts.append((f"<h3>{html.escape(sub)}</h3>" if sub else "") + body)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown(title: str, meta: list[str], sections: list[Section]) -> str:
    out = [f"# {title}", "", *(f"{m}  " for m in meta), ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.facts:
            out += [f"{s.facts_title}: " + ", ".join(f"{k} `{v}`" for k, v in s.facts.items()), ""]
        if s.intro:
            out += [s.intro, ""]
        if s.code:
            out += [f"`{s.code}`", ""]
        if s.figure:
            out += [f"![{s.title}]({s.figure})", "", f"*{s.caption}*", ""]
        for sub, table in s.tables:
            if sub:
                out += [f"**{sub}**", ""]
            out += [_md_table(table), ""]
    return "\n".join(out)


def build_sections(
    groups: Sequence[ConfigGroup], tracking_uri: str, pngs: Mapping[str, bytes]
) -> list[Section]:
    runs = [r for g in groups for r in g.runs]
    sections = []
    if LEARNING_CURVES_PNG in pngs:
        sections.append(
            Section(
                "learning-curves",
                "Learning curves",
                figure=LEARNING_CURVES_PNG,
                caption="Training return (train/episode_return) against environment steps, one "
                "panel per environment. " + BAND_NOTE,
            )
        )
    else:
        sections.append(
            Section("learning-curves", "Learning curves", "No run has train/ metrics to plot.")
        )
    if TRUST_REGION_PNG in pngs:
        sections.append(
            Section(
                "trust-region",
                "Trust region: KL and line search per update",
                figure=TRUST_REGION_PNG,
                caption="Left: mean KL between the policies before and after each update, against "
                "the trust-region radius δ (dashed). Right: fraction of updates whose line "
                f"search accepted a step, averaged over the last {ACCEPTANCE_WINDOW} updates. "
                + BAND_NOTE,
            )
        )
    if DIAGNOSTICS_PNG in pngs:
        sections.append(
            Section(
                "diagnostics",
                "Update diagnostics",
                figure=DIAGNOSTICS_PNG,
                caption="Critic fit, policy entropy and surrogate improvement per update. "
                + BAND_NOTE,
            )
        )
    sections.append(
        Section(
            "evaluation",
            "Final evaluation",
            "Deterministic evaluation of each run's final policy (eval/*). Per configuration: "
            "mean over seeds of the runs' mean evaluation return, with a 95% Student-t "
            "confidence interval over seeds.",
            tables=[
                ("Per configuration", group_table(groups)),
                ("Per run", run_table(groups, tracking_uri)),
            ],
        )
    )
    varying = varying_run_specific(runs)
    diff = diff_table(groups)
    intro = (
        "Params that differ between configurations"
        if diff.rows
        else "All runs share one configuration"
    )
    intro += (
        f"; within a configuration, runs differ only in {', '.join(varying)}." if varying else "."
    )
    sections.append(
        Section("config-diff", "Config diff", intro, tables=[("", diff)] if diff.rows else [])
    )
    sections.append(
        Section(
            "common-config",
            "Shared config",
            tables=[("Params all configurations share", common_params_table(groups))],
            collapsed=True,
        )
    )
    command = ui_command(tracking_uri)
    sections.append(
        Section(
            "provenance",
            "Runs and provenance",
            (
                f"Run links point into the local MLflow UI ({LOCAL_UI}); start it on this "
                "store with:"
                if command
                else f"Run links point into the MLflow server at {redact(tracking_uri)}."
            ),
            tables=[("", provenance_table(groups, tracking_uri))],
            code=command,
            facts={k: _short_tag(k, v) for k, v in shared_tags(runs).items()},
            facts_title="Same in every run",
        )
    )
    return sections


def write_report(tracking_uri: str, run_ids: list[str], out_dir: Path) -> Path:
    """Write report.html (self-contained), report.md and its PNG figures into ``out_dir``.

    Returns the path of report.html. Raises :class:`ReportError` on an unknown run id, an
    empty selection or an unreachable store.
    """
    if not run_ids:
        raise ReportError("no MLflow runs to report on")
    runs = load_runs(tracking_uri, list(dict.fromkeys(run_ids)))
    groups = group_runs(runs)

    pngs: dict[str, bytes] = {}
    for name, make in (
        (LEARNING_CURVES_PNG, learning_curve_figure),
        (TRUST_REGION_PNG, trust_region_figure),
        (DIAGNOSTICS_PNG, diagnostics_figure),
    ):
        fig = make(groups)
        if fig is not None:
            pngs[name] = _png(fig)

    envs = ", ".join(dict.fromkeys(g.env_id for g in groups))
    title = f"TRPO report: {envs}"
    meta = [
        f"{len(runs)} run{'s' * (len(runs) != 1)} in {len(groups)} configuration"
        f"{'s' * (len(groups) != 1)} · generated "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"MLflow tracking store: {redact(tracking_uri)}",
    ]
    sections = build_sections(groups, tracking_uri, pngs)

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        path = out_dir / name
        if name in pngs:
            atomic_write(path, pngs[name])
        elif path.exists():
            path.unlink()  # a figure of an earlier report that this one does not have
    atomic_write(out_dir / REPORT_MD, _markdown(title, meta, sections))
    return atomic_write(out_dir / REPORT_HTML, _html_page(title, meta, sections, pngs))
