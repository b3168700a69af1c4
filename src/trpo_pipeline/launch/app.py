"""Running a command as a Hydra app: every job checked first, then Hydra with conf/; a task's
user error ends in one line, with the empty folders Hydra made for it removed again.

torch is imported only once a task runs, so that bad input ends fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.errors import fail
from trpo_pipeline.launch.command_line import CommandLine, planned_output_dir, preflight, read
from trpo_pipeline.launch.compose import CONFIG_NAME, find_conf_dir
from trpo_pipeline.rl.errors import CheckpointError
from trpo_pipeline.shutdown import skip_final_collection

# check(configs of every job, the folder Hydra will write to, the command line): what else can
# be known before anything runs; raises ConfigError.
Check = Callable[[list[Config], Path | None, CommandLine], None]

# Folders the coming Hydra run will create (deepest first), found before it starts: what an
# error in the task removes again when they are empty.
_new_folders: list[Path] = []


def _folders_to_create(folder: Path | None) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    if folder is None:
        return []
    missing = [folder]
    for parent in folder.parents:
        if parent.exists():
            break
        missing.append(parent)
    return [] if folder.exists() else missing


def check_command(argv: list[str], conf_dir: Path, check: Check | None) -> Path | None:
    """Compose and check every job of ``argv`` (and ``check`` the rest); the folder Hydra will
    write to. ConfigError on the first problem."""
    command = read(argv)
    if command is None:
        return None
    configs = preflight(command, conf_dir)
    folder = planned_output_dir(command, conf_dir)
    if check is not None:
        check(configs, folder, command)
    return folder


def run_hydra_app(prog: str, task: Callable[[Any], Any], check: Check | None = None) -> None:
    """Check the command line, then hand it to Hydra with conf/ as the config dir."""
    skip_final_collection()
    conf_dir = find_conf_dir()
    try:
        folder = check_command(sys.argv[1:], conf_dir, check)
    except ConfigError as err:
        fail(prog, str(err))
    _new_folders[:] = _folders_to_create(folder)
    import hydra

    hydra.main(config_path=str(conf_dir), config_name=CONFIG_NAME, version_base="1.3")(task)()


def output_dir() -> Path:
    """Inside a Hydra task: the folder Hydra made for this job."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def remove_empty_folders(run_dir: Path) -> None:
    """Remove ``run_dir`` and the folders Hydra created above it, each if it is empty."""
    run_dir = run_dir.resolve()
    new = list(_new_folders)
    if not new or any(f in run_dir.parents for f in new):  # a multirun job's own folder
        new.insert(0, run_dir)
    for folder in new:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def guarded(prog: str, body: Callable[[Path], Any]) -> Any:
    """Run ``body(run_dir)`` in a Hydra task; a user error ends with one line and exit 2, with
    every empty folder Hydra made for the run removed again."""
    run_dir = output_dir()
    try:
        return body(run_dir)
    except (ConfigError, CheckpointError) as err:
        remove_empty_folders(run_dir)
        fail(prog, str(err))
