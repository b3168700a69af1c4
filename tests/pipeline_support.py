"""Helpers for the pipeline tests (DVC, MLflow, reproduce): tiny budgets, tmp stores, commands.

Every test writes into tmp folders only: MLflow stores are SQLite files under tmp_path, passed
through MLFLOW_TRACKING_URI, and the DVC tests work on a copy of the repository.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Trains in a couple of seconds: 2048 env steps, batches of 512 over 4 envs, 3 eval episodes.
TINY = [
    "train.total_steps=2048",
    "algo.steps_per_update=512",
    "algo.num_envs=4",
    "evaluate.episodes=3",
    "train.progress=false",
]

_template: Path | None = None
# Untracked folders that are not the project (another virtualenv, generated reports).
_NOT_COPIED = (".venv", "reports/")


def new_store(folder: Path) -> str:
    """A SQLite MLflow store in ``folder`` (a copy of one migrated once per test session:
    creating MLflow's schema takes seconds)."""
    global _template
    if _template is None:
        from mlflow import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()
        _template = path
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    shutil.copyfile(_template, db)
    return f"sqlite:///{db}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_env(extra: Mapping[str, str] | None = None, *, drop: Sequence[str] = ()) -> dict:
    """The environment for a pipeline command: this venv first on PATH (DVC stages call
    `python`, DVC's queue calls `dvc`), no DVC/Hydra variables leaking in from outside."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DVC_", "MLFLOW_", "TRPO_")) and k not in drop
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return env | dict(extra or {})


def run(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output when it fails."""
    proc = subprocess.run(
        list(argv), cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(argv)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-6000:]}"
    )
    return proc


def copy_repository(dest: Path) -> Path:
    """The repository's files (tracked, plus new ones git does not ignore) in a fresh git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if name.startswith(_NOT_COPIED):
            continue
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git(dest, "init", "-q", "-b", "main")
    commit_all(dest, "copy of the repository")
    return dest


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
