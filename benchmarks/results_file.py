"""The benchmark's results file: written atomically after every run, resumable across sessions.

One ``<stamp>.json`` holds the settings, every run and a list of sessions (one per command
that added runs to it); ``<stamp>.md`` beside it is the report drawn from it. ``--resume``
reopens the JSON, checks that the command would measure the same thing, and runs only what
is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tables import only_session, report_markdown

# What makes two runs comparable: the same numbers here, or a resumed file is refused.
COMPARED_SETTINGS = (
    "env_id",
    "env_kwargs",
    "budget",
    "eval_every",
    "threshold",
    "eval_episodes",
    "eval_seed",
)
# What files written before a setting existed hold in its place.
SETTING_DEFAULTS: dict[str, Any] = {"env_kwargs": {}}


def setting(settings: dict[str, Any], name: str) -> Any:
    """An env's recorded setting ``name``, older files' default where they lack it."""
    return settings.get(name, SETTING_DEFAULTS.get(name))


RunKey = tuple[str, str, int]  # (env key, lib, seed)


class ResumeMismatchError(ValueError):
    """The resumed file was written with other settings than the command's."""


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target, then rename over it: a kill mid-write leaves the old file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def save(results: dict[str, Any], json_path: Path) -> Path:
    """Write the JSON and its Markdown report (same stem, ``.md``); the report's path."""
    md_path = json_path.with_suffix(".md")
    write_atomic(json_path, json.dumps(results, indent=2) + "\n")
    write_atomic(md_path, report_markdown(results) + "\n")
    return md_path


def load_for_resume(
    path: Path, *, budget_scale: float, torch_threads: int, settings: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The results in ``path``, their failed runs dropped (they run again); checked first.

    ``settings`` maps each env the command runs to the settings it would record. An env the
    file already has must agree on every COMPARED_SETTINGS key; its seeds become the union.
    """
    results = json.loads(path.read_text())
    meta = results["meta"]
    if meta["budget_scale"] != budget_scale:
        raise ResumeMismatchError(
            f"--budget-scale {budget_scale:g}, but {path} was run with {meta['budget_scale']:g}"
        )
    if meta["torch_threads"] != torch_threads:
        raise ResumeMismatchError(
            f"{path} was run with {meta['torch_threads']} torch threads, this one uses "
            f"{torch_threads}"
        )
    for env_key, wanted in settings.items():
        env = results["envs"].get(env_key)
        if env is None:
            continue
        have = env["settings"]
        for key in COMPARED_SETTINGS:
            had = setting(have, key)
            if had != wanted[key]:
                raise ResumeMismatchError(
                    f"{env_key} {key} is {had} in {path}, {wanted[key]} in this command"
                )
        have["seeds"] = sorted(set(have["seeds"]) | set(wanted["seeds"]))
        env["runs"] = [r for r in env["runs"] if "error" not in r]
    meta.setdefault("sessions", [only_session(meta)])
    return results


def recorded(results: dict[str, Any]) -> set[RunKey]:
    """The (env, lib, seed) runs the file holds without an error."""
    return {
        (env_key, run["lib"], run["seed"])
        for env_key, env in results["envs"].items()
        for run in env["runs"]
        if "error" not in run
    }
