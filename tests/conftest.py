"""Shared fixtures: a tiny-budget config factory and a runner for the installed console scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from trpo_pipeline.config import Config, config_from_dict

# Small MLPs: one thread is fastest, and the suite runs beside other work.
torch.set_num_threads(1)

BIN = Path(sys.executable).parent


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and key in out else value
    return out


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    """``tiny_config(env_id, **groups)``: a validated Config that trains in well under a second."""

    def make(env_id: str = "CartPole-v1", **groups: Any) -> Config:
        base = {
            "env": {"id": env_id, "normalize_obs": env_id != "CartPole-v1"},
            "policy": {"hidden_sizes": [16], "critic_hidden_sizes": [16]},
            "algo": {"steps_per_update": 256, "num_envs": 4, "vf_epochs": 2},
            "train": {"total_steps": 512, "progress": False},
            "evaluate": {"episodes": 3},
        }
        return config_from_dict(_merge(base, groups))

    return make


def _cli_env() -> dict[str, str]:
    # The repository's conf/ (found beside the package), whatever the caller's shell points at.
    return {k: v for k, v in os.environ.items() if k != "TRPO_CONF_DIR"}


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., list[subprocess.CompletedProcess[str]]]:
    """``run_cli((script, args, cwd), ...)``: run console scripts of this venv side by side.

    Each start pays for importing torch; running independent commands together keeps the
    suite fast on a couple of cores.
    """

    def run(*commands: tuple[str, list[str], Path]) -> list[subprocess.CompletedProcess[str]]:
        procs = [
            (
                [str(BIN / script), *args],
                subprocess.Popen(
                    [str(BIN / script), *args],
                    cwd=cwd,
                    env=_cli_env(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
            for script, args, cwd in commands
        ]
        done = []
        for argv, proc in procs:
            out, err = proc.communicate(timeout=180)
            done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
        return done

    return run
