"""Reports across MLflow runs: curves over seeds, evaluation tables, config diff, provenance.

:func:`select_runs` picks runs (by experiment name, tags or ids) and :func:`write_report` reads
them through ``MlflowClient`` and writes one self-contained ``report.html`` (figures embedded as
base64 PNG, no scripts, nothing fetched) plus ``report.md`` with the same figures as PNG files
beside it.

Runs whose params are identical apart from the seed (and a few settings that do not change what
is learned, :data:`~trpo_pipeline.report.groups.RUN_SPECIFIC_PARAMS`) form one configuration.
Curves of a configuration are drawn as the mean over its seeds with a 95% Student-t confidence
interval of that mean, ``mean +- t(0.975, n-1) * s / sqrt(n)``: with the 3-10 seeds RL
experiments usually have, a bootstrap interval is too narrow and +-1 standard error covers only
about 60-80%.

Submodules, in the order data flows through them:

- ``runs``: selecting runs in MLflow and loading their params, tags and metric histories.
- ``groups``: grouping runs into configurations (the seeds of one config).
- ``stats``: the t-interval over seeds, seed bands along a curve, rolling means.
- ``figures``: the matplotlib figures.
- ``tables``: the tables, as cells of text.
- ``links``: run links into the MLflow UI and the command that serves it.
- ``render``: HTML and Markdown for a list of sections.
- ``page``: the report's sections and :func:`write_report`.
"""

from trpo_pipeline.report.links import run_url, ui_command
from trpo_pipeline.report.page import FIGURES, REPORT_MD, write_report
from trpo_pipeline.report.runs import Curve, ReportError, load_runs, select_runs
from trpo_pipeline.report.stats import mean_ci, seed_band, t_quantile_975

__all__ = [
    "FIGURES",
    "REPORT_MD",
    "Curve",
    "ReportError",
    "load_runs",
    "mean_ci",
    "run_url",
    "seed_band",
    "select_runs",
    "t_quantile_975",
    "ui_command",
    "write_report",
]
