"""trpo-reproduce: a recorded run re-runs to exactly the same metrics; a changed param shows."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import BIN, REPO, TINY, command_env, new_store, run
from trpo_pipeline import tracking
from trpo_pipeline.cli.reproduce import compare_metrics, diff_history

REPRODUCE = str(BIN / "trpo-reproduce")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run recorded by trpo-train (outside any git repository, like its re-runs here)."""
    tmp = tmp_path_factory.mktemp("recorded")
    uri = new_store(tmp / "store")
    env = command_env({"MLFLOW_TRACKING_URI": uri})
    out = tmp / "run"
    run(
        [
            str(BIN / "trpo-train"),
            *TINY,
            "tracking.log_model=false",
            f"hydra.run.dir={out}",
        ],
        tmp,
        env,
    )
    run_id = tracking.read_ref(out / tracking.RUN_REF)["run_id"]
    return {"tmp": tmp, "env": env, "run_id": run_id, "uri": uri}


def reproduce(recorded: dict[str, Any], *args: str, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [REPRODUCE, recorded["run_id"], *args],
        cwd=cwd or recorded["tmp"],
        env=recorded["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_recorded_run_reproduces_exactly(recorded: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    tags = MlflowClient(recorded["uri"]).get_run(recorded["run_id"]).data.tags
    assert tags["launcher"] == "hydra"
    proc = reproduce(recorded)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "params: identical" in proc.stdout
    assert "result: exact match" in proc.stdout


@pytest.mark.slow
def test_changed_param_is_reported_with_the_metrics_it_changed(recorded: dict[str, Any]) -> None:
    proc = reproduce(recorded, "algo.max_kl=0.02")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "algo.max_kl: 0.01 -> 0.02" in proc.stdout
    assert "train/kl:" in proc.stdout  # the trust region changed the steps taken
    assert "result: MISMATCH" in proc.stdout


def test_unknown_run_and_other_commit_are_refused(recorded: dict[str, Any]) -> None:
    proc = subprocess.run(
        [REPRODUCE, "0123456789abcdef0123456789abcdef"],
        env=recorded["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no run 0123456789abcdef0123456789abcdef" in proc.stderr
    # Recorded outside git ("unknown"); this repository is at a commit: not the same code.
    other = reproduce(recorded, cwd=REPO)
    assert other.returncode == 2
    assert "--any-commit" in other.stderr


def test_histories_compare_exactly() -> None:
    assert diff_history([(1, 0.5), (2, 0.25)], [(1, 0.5), (2, 0.25)]) is None
    assert diff_history([(1, float("nan"))], [(1, float("nan"))]) is None
    assert diff_history([(1, 0.5), (2, 0.25)], [(1, 0.5), (2, 0.2500001)]) == (
        "1 of 2 values differ; first: 0.25 at step 2 -> 0.2500001 at step 2"
    )
    assert "nothing" in diff_history([(1, 0.5)], [])
    result = compare_metrics(
        {"train/kl": [(1, 0.1)], "train/time_s": [(1, 3.0)]},
        {"train/kl": [(1, 0.1)], "train/time_s": [(1, 4.0)]},
    )
    assert result.exact and result.compared == 1  # wall-clock metrics are not compared
