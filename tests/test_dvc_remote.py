"""Results shared through a DVC remote and a git remote, between two clones of one repository.

The first clone runs the pipeline at the tiny budget, commits dvc.lock, `dvc push`es its outputs
to a DVC remote (a local folder) and `git push`es to a bare repository; an experiment follows with
`dvc exp push`. A fresh `git clone` of the bare repository then `dvc pull`s the checkpoint,
metrics, learning curve, video and report byte for byte, `dvc repro` trains nothing, and
`dvc exp show` gives the first clone's table, the experiment's row too once `dvc exp pull` has
brought it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline_support import (
    DVC,
    STAGES,
    command_env,
    copy_repository,
    exp_sets,
    git,
    new_store,
    ran_stages,
    repro_tiny,
    run,
)

EXPERIMENT = "seed1"
UP_TO_DATE = "Data and pipelines are up to date."
# What a user expects a pull to bring: the checkpoint, both metrics, the curve, the report.
EXPECTED = {
    "outputs/train/checkpoint.pt",
    "outputs/train/train_metrics.json",
    "outputs/train/learning_curve.csv",
    "outputs/eval/eval_metrics.json",
    "outputs/eval/video/episode-0.mp4",
    "outputs/report/report.html",
    "outputs/report/report.md",
}


def output_files(repo: Path) -> dict[str, str]:
    """Every file under outputs/: its path in the repository and a hash of its bytes."""
    return {
        p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((repo / "outputs").rglob("*"))
        if p.is_file()
    }


def mtimes(repo: Path) -> dict[str, int]:
    return {p.as_posix(): p.stat().st_mtime_ns for p in (repo / "outputs").rglob("*")}


def exp_rows(repo: Path, env: dict[str, str]) -> dict[str, Any]:
    """`dvc exp show --json` by baseline commit, its experiments nested in it. The workspace row
    is left out: after `dvc exp run` the first clone's workspace holds the experiment."""
    shown = json.loads(run([DVC, "exp", "show", "--json"], repo, env).stdout)
    return {row["rev"]: row for row in shown if row["rev"] != "workspace"}


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The clone that trains: results and an experiment pushed to both remotes."""
    tmp = tmp_path_factory.mktemp("dvc-remote")
    origin = tmp / "origin.git"
    git(tmp, "init", "-q", "--bare", "-b", "main", str(origin))
    repo = copy_repository(tmp / "first")
    git(repo, "remote", "add", "origin", str(origin))
    store = new_store(tmp / "first-store")
    env = command_env({"MLFLOW_TRACKING_URI": store})
    run([DVC, "remote", "add", "-d", "storage", str(tmp / "dvc-storage")], repo, env)
    repro_tiny(repo, env)  # commits .dvc/config (the remote) with the tiny params, then dvc.lock
    run([DVC, "push"], repo, env)
    git(repo, "push", "-q", "origin", "main")
    baseline = output_files(repo)
    run([DVC, "exp", "run", "--name", EXPERIMENT, *exp_sets("seed=1")], repo, env)
    run([DVC, "exp", "push", "origin", EXPERIMENT], repo, env)  # its git ref and its cache
    return {
        "tmp": tmp,
        "origin": origin,
        "store": store,
        "baseline": baseline,
        "experiment": output_files(repo),
        "rows": exp_rows(repo, env),
        "head": git(repo, "rev-parse", "HEAD").strip(),
    }


@pytest.fixture(scope="module")
def second(first: dict[str, Any]) -> dict[str, Any]:
    """A fresh clone of the bare repository, on a store of its own that holds no run: any
    stage that ran here would record one."""
    repo = first["tmp"] / "second"
    git(first["tmp"], "clone", "-q", str(first["origin"]), str(repo))
    store = new_store(first["tmp"] / "second-store")
    env = command_env({"MLFLOW_TRACKING_URI": store})
    run([DVC, "pull"], repo, env)
    return {"repo": repo, "env": env, "store": store}


@pytest.mark.slow  # two tiny pipeline executions and a dozen DVC commands: about 40 s
def test_pull_brings_every_result_and_repro_trains_nothing(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    from mlflow import MlflowClient

    repo, env = second["repo"], second["env"]
    pulled = output_files(repo)
    assert set(pulled) >= EXPECTED
    assert pulled == first["baseline"]  # byte for byte, the report included
    # The report names the store its runs live in, the first clone's SQLite file: DVC shares
    # files, not that store. With a team server (an http URI) its run links work in every clone.
    assert first["store"] in (repo / "outputs/report/report.html").read_text()

    before = mtimes(repo)
    again = run([DVC, "repro"], repo, env)
    assert ran_stages(again.stdout) == [] and UP_TO_DATE in again.stdout
    assert UP_TO_DATE in run([DVC, "status", *STAGES], repo, env).stdout
    assert mtimes(repo) == before  # no output was rewritten
    assert MlflowClient(second["store"]).get_experiment_by_name("trpo-pipeline") is None
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.slow  # (shares the fixtures of the test above)
def test_exp_show_and_a_pulled_experiment_match_the_first_clone(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    repo, env = second["repo"], second["env"]
    head = first["head"]
    rows = exp_rows(repo, env)
    assert list(rows) == [head]
    assert rows[head]["data"] == first["rows"][head]["data"]  # the baseline's row
    assert not rows[head]["experiments"]  # experiments travel only when pulled

    run([DVC, "exp", "pull", "origin", EXPERIMENT], repo, env)
    assert exp_rows(repo, env) == first["rows"]  # the baseline and the experiment, as pushed
    run([DVC, "exp", "apply", EXPERIMENT], repo, env)
    assert output_files(repo) == first["experiment"]  # its checkpoint, metrics and report
    assert ran_stages(run([DVC, "repro"], repo, env).stdout) == []
