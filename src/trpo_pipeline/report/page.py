"""What the report says, section by section, and writing it.

:func:`write_report` loads and groups the runs, draws the figures and writes report.html,
report.md and the PNG figures into one folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from trpo_pipeline.credentials import mask
from trpo_pipeline.report.figures import (
    ACCEPTANCE_WINDOW,
    BAND_NOTE,
    diagnostics_figure,
    learning_curve_figure,
    png_bytes,
    trust_region_figure,
)
from trpo_pipeline.report.groups import ConfigGroup, group_runs, varying_run_specific
from trpo_pipeline.report.links import LOCAL_UI, experiment_url, ui_command
from trpo_pipeline.report.render import Clip, Section, html_page, markdown
from trpo_pipeline.report.runs import ReportError, load_runs
from trpo_pipeline.report.tables import (
    common_params_table,
    diff_table,
    group_table,
    provenance_table,
    run_table,
    shared_tags,
    short_tag,
)
from trpo_pipeline.report.videos import RunVideo, fetch_videos
from trpo_pipeline.rl.files import atomic_write

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
LEARNING_CURVES_PNG = "learning_curves.png"
TRUST_REGION_PNG = "trust_region.png"
DIAGNOSTICS_PNG = "diagnostics.png"
FIGURES = (LEARNING_CURVES_PNG, TRUST_REGION_PNG, DIAGNOSTICS_PNG)


def build_sections(
    groups: Sequence[ConfigGroup],
    tracking_uri: str,
    pngs: Mapping[str, bytes],
    videos: Sequence[RunVideo] = (),
) -> list[Section]:
    """The report's sections: its figures and videos, then its tables."""
    return figure_sections(pngs) + video_sections(videos) + table_sections(groups, tracking_uri)


def video_sections(videos: Sequence[RunVideo]) -> list[Section]:
    if not videos:
        return []
    clips = [
        Clip(
            f"{v.run.run_name or v.run.run_id}: evaluation {v.video.stem.replace('-', ' ')}",
            v.video.as_posix(),
            v.poster.as_posix() if v.poster else None,
        )
        for v in videos
    ]
    return [
        Section(
            "videos",
            "The agent",
            "The first evaluation episodes of each run (evaluate.video_episodes; episode i is "
            "seeded evaluate.seed + i), up to evaluate.video_max_frames frames each.",
            clips=clips,
        )
    ]


def figure_sections(pngs: Mapping[str, bytes]) -> list[Section]:
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
    return sections


def table_sections(groups: Sequence[ConfigGroup], tracking_uri: str) -> list[Section]:
    runs = [r for g in groups for r in g.runs]
    sections = []
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
    tables_of_runs = ", ".join(
        experiment_url(tracking_uri, e) for e in dict.fromkeys(r.experiment_id for r in runs)
    )
    sections.append(
        Section(
            "provenance",
            "Runs and provenance",
            (
                f"Run links point into the local MLflow UI ({LOCAL_UI}; the runs: "
                f"{tables_of_runs}); start it on this store with:"
                if command
                else f"Run links point into the MLflow server at {mask(tracking_uri)} (the "
                f"runs: {tables_of_runs})."
            ),
            tables=[("", provenance_table(groups, tracking_uri))],
            code=command,
            facts={k: short_tag(k, v) for k, v in shared_tags(runs).items()},
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
            pngs[name] = png_bytes(fig)

    envs = ", ".join(dict.fromkeys(g.env_id for g in groups))
    title = f"TRPO report: {envs}"
    meta = [
        f"{len(runs)} run{'s' * (len(runs) != 1)} in {len(groups)} configuration"
        f"{'s' * (len(groups) != 1)} · generated "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"MLflow tracking store: {mask(tracking_uri)}",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = fetch_videos(tracking_uri, runs, out_dir)
    media = {
        path.as_posix(): (out_dir / path).read_bytes()
        for v in videos
        for path in (v.video, v.poster)
        if path is not None
    }
    sections = build_sections(groups, tracking_uri, pngs, videos)
    for name in FIGURES:
        path = out_dir / name
        if name in pngs:
            atomic_write(path, pngs[name])
        elif path.exists():
            path.unlink()  # a figure of an earlier report that this one does not have
    atomic_write(out_dir / REPORT_MD, markdown(title, meta, sections))
    return atomic_write(out_dir / REPORT_HTML, html_page(title, meta, sections, pngs, media))
