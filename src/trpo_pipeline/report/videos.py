"""The runs' evaluation videos, fetched from MLflow into the report's folder.

A run's ``video/`` artifacts (rl/video.py: ``episode-<i>.mp4`` and its poster
``episode-<i>.png``) land in ``<report>/video/<run id>/``: report.md links them, report.html
embeds them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trpo_pipeline.report.runs import RunData
from trpo_pipeline.rl.run_files import VIDEO_DIR
from trpo_pipeline.tracking.artifacts import VIDEO_ARTIFACTS
from trpo_pipeline.tracking.store import quiet_mlflow


@dataclass(frozen=True)
class RunVideo:
    run: RunData
    video: Path  # relative to the report's folder
    poster: Path | None  # relative to the report's folder; None when the run has no PNG


def fetch_videos(tracking_uri: str, runs: Sequence[RunData], out_dir: Path) -> list[RunVideo]:
    """Download every run's MP4s (and posters) into ``out_dir/video/<run id>/``."""
    from mlflow import MlflowClient  # deferred like every MLflow import of the report

    quiet_mlflow()  # no progress bar per download
    client = MlflowClient(tracking_uri=tracking_uri)
    shutil.rmtree(out_dir / VIDEO_DIR, ignore_errors=True)  # an earlier report's
    found = []
    for run in runs:
        names = sorted(
            Path(a.path).name
            for a in client.list_artifacts(run.run_id, VIDEO_ARTIFACTS)
            if a.path.endswith((".mp4", ".png"))
        )
        if not any(n.endswith(".mp4") for n in names):
            continue
        folder = Path(VIDEO_DIR) / run.run_id
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                got = client.download_artifacts(run.run_id, f"{VIDEO_ARTIFACTS}/{name}", tmp)
                shutil.move(got, out_dir / folder / name)
        for name in names:
            if name.endswith(".mp4"):
                poster = folder / name.replace(".mp4", ".png")
                has_poster = poster.name in names
                found.append(RunVideo(run, folder / name, poster if has_poster else None))
    return found
