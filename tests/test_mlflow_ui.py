"""The MLflow UI on the pipeline's runs, in a real browser against a real `mlflow server`.

The train and evaluate stages write one run through the server (its training curve, its
evaluation, the video, the registered policy); headless Chromium (Playwright) opens the address
the project prints, finds the run with its eval/mean_return, opens it, and finds the training
chart and the video.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from browser import browser_page
from pipeline_support import BIN, REPO, TINY, command_env, mlflow_server, new_store, run
from trpo_pipeline import tracking

pytestmark = pytest.mark.slow
UI_TIMEOUT_MS = 60_000  # the UI's first load fetches a large bundle on a loaded machine


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server, and the stages' run recorded through it (run in a tmp folder on TINY params)."""
    tmp = tmp_path_factory.mktemp("ui")
    with mlflow_server(new_store(tmp / "store"), tmp) as base:
        env = command_env({"MLFLOW_TRACKING_URI": base, "PYTHONPATH": str(REPO / "src")})
        run([str(BIN / "trpo-params"), *TINY, "--output", str(tmp / "params.yaml")], REPO, env)
        stdout = ""
        for stage in ("train", "evaluate"):
            proc = run([str(BIN / "python"), "-m", f"trpo_pipeline.stages.{stage}"], tmp, env)
            stdout += proc.stdout
        ref = tracking.read_ref(tmp / "outputs" / "eval" / tracking.RUN_REF)
        yield {"base": base, "run_id": ref["run_id"], "experiment_id": ref["experiment_id"],
               "stdout": stdout}  # fmt: skip


def test_the_run_records_its_source_and_its_registered_policy(pipeline_run):
    client = MlflowClient(pipeline_run["base"])
    got = client.get_run(pipeline_run["run_id"])
    assert got.data.tags["mlflow.source.name"] == "dvc stage train"
    champion = client.get_model_version_by_alias("trpo-CartPole-v1", "champion")
    assert champion.run_id == pipeline_run["run_id"]  # registered through the server
    assert "registry: trpo-CartPole-v1 version 1" in pipeline_run["stdout"]


def test_the_ui_shows_the_runs_their_charts_and_the_video(pipeline_run, tmp_path: Path):
    base, run_id = pipeline_run["base"], pipeline_run["run_id"]
    url = tracking.experiment_url(base, pipeline_run["experiment_id"])
    assert url.endswith("?workflowType=machine_learning")
    mean = MlflowClient(base).get_run(run_id).data.metrics["eval/mean_return"]
    with browser_page(1600, 1000) as page:
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(url)
        # the training runs, not the GenAI overview: the run is listed, with its source
        link = page.locator(f'a[href*="/runs/{run_id}"]').first
        link.wait_for()
        assert page.get_by_role("gridcell", name="dvc stage train").count() == 1
        # eval/mean_return is one of the runs table's columns (chosen under Columns)
        page.get_by_role("button", name="Columns").click()
        page.get_by_text("eval/mean_return", exact=True).first.click()
        page.keyboard.press("Escape")
        header = page.get_by_role("columnheader", name="eval/mean_return").first
        header.wait_for()
        page.get_by_role("gridcell", name=repr(mean), exact=True).wait_for()  # its value

        link.click()
        page.wait_for_url(re.compile(f"/runs/{run_id}"))
        page.get_by_role("tab", name="Model metrics").click()
        page.get_by_placeholder("Search metric charts").fill("train/episode_return")
        page.get_by_text("(train/episode_return)").first.wait_for()  # the chart's legend

        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("video", exact=True).first.click()
        page.get_by_text("episode-0.mp4", exact=True).first.click()
        page.wait_for_function(
            "[...document.querySelectorAll('video')].some(v => v.readyState >= 1)"
        )
        videos = page.evaluate(
            "[...document.querySelectorAll('video')].map(v => [v.duration, v.controls])"
        )
        page.screenshot(path=str(tmp_path / "artifact.png"))
    assert len(videos) == 1 and videos[0][0] > 0 and videos[0][1], videos
