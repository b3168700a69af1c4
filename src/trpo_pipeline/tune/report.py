"""The study report: report.md with the summary, a trial table and Optuna's figures."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from trpo_pipeline.errors import first_line
from trpo_pipeline.rl.files import atomic_write
from trpo_pipeline.tune.summary import StudySummary, format_summary
from trpo_pipeline.tune.text import format_value


def write_report(study: optuna.Study, summary: StudySummary, out_dir: Path) -> Path:
    """report.md with the summary, a trial table and matplotlib figures: optimisation history,
    intermediate values, parameter importances, slice and contour plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    out_dir.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "too few trials for ..." is expected
    params = sorted({k for t in study.trials for k in t.params})
    figures = {
        "optimization_history": lambda: vis.plot_optimization_history(study),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
        "param_importances": lambda: vis.plot_param_importances(study),
        "slice": lambda: vis.plot_slice(study),
        "contour": lambda: vis.plot_contour(study, params=params[:2]),
    }
    lines = [f"# Study `{summary.study_name}`", "", "```", format_summary(summary), "```", ""]
    for name, plot in figures.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot()
                first = ax.flat[0] if isinstance(ax, np.ndarray) else ax
                if first.get_legend() is not None and len(study.trials) > 10:
                    first.get_legend().remove()  # a line per trial: the legend would dwarf it
                fig = first.get_figure()
                png = io.BytesIO()
                fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
                plt.close(fig)
                atomic_write(out_dir / f"{name}.png", png.getvalue())
            lines += [f"## {name.replace('_', ' ')}", "", f"![{name}]({name}.png)", ""]
        except Exception as err:  # too few trials for this figure
            lines += [f"## {name.replace('_', ' ')}", "", f"(not drawn: {first_line(err)})", ""]
    lines += ["## Trials", "", "| trial | state | value | " + " | ".join(params) + " | s |"]
    lines.append("|---" * (len(params) + 4) + "|")
    for t in study.trials:
        value = f"{t.value:.2f}" if t.state == TrialState.COMPLETE else ""
        if t.state == TrialState.PRUNED:
            value = (
                t.user_attrs.get("diverged")
                or t.user_attrs.get("invalid")
                or (
                    f"{t.intermediate_values[t.last_step]:.2f} at update {t.last_step}"
                    if t.last_step is not None
                    else ""
                )
            )
        cells = [format_value(t.params[p]) if p in t.params else "" for p in params]
        seconds = f"{t.duration.total_seconds():.0f}" if t.duration else ""
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | {value} | {' | '.join(cells)} | {seconds} |"
        )
    optuna.logging.set_verbosity(verbosity)
    return atomic_write(out_dir / "report.md", "\n".join(lines) + "\n")
