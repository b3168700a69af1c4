"""What every stage shares: the files of the pipeline, reading params.yaml, running a stage."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from trpo_pipeline.config import Config, ConfigError, config_from_dict
from trpo_pipeline.errors import fail
from trpo_pipeline.rl.errors import CheckpointError
from trpo_pipeline.rl.run_files import VIDEO_DIR
from trpo_pipeline.shutdown import skip_final_collection
from trpo_pipeline.tracking.run import RUN_REF

PARAMS = Path("params.yaml")
DVC_LOCK = Path("dvc.lock")
OUTPUTS = Path("outputs")
TRAIN_DIR = OUTPUTS / "train"
EVAL_DIR = OUTPUTS / "eval"
EVAL_VIDEO_DIR = EVAL_DIR / VIDEO_DIR
REPORT_DIR = OUTPUTS / "report"
TRAIN_RUN_REF = TRAIN_DIR / RUN_REF
EVAL_RUN_REF = EVAL_DIR / RUN_REF

Stage = Callable[[Config, Path], None]


def read_params(path: Path = PARAMS) -> Config:
    """The checked config in params.yaml."""
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError("", f"cannot read {path}: {err.strerror} (run trpo-params)") from None
    except (yaml.YAMLError, ValueError) as err:  # ValueError: an integer of 5000 digits
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError("", f"{path} is not valid YAML{at}: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError("", f"{path} must hold a mapping of config groups")
    return config_from_dict(values)


def fresh(folder: Path) -> None:
    """A stage replaces its outputs, as DVC does before running it."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def run_stage(name: str, stage: Stage, argv: Sequence[str] | None = None) -> None:
    """``python -m trpo_pipeline.stages.<name> [--params FILE]``: a user error (a bad
    params.yaml, an unusable checkpoint) ends with one line and exit status 2."""
    skip_final_collection()
    parser = argparse.ArgumentParser(
        prog=f"trpo-stage {name}", description=f"The {name} stage of the DVC pipeline."
    )
    parser.add_argument("--params", type=Path, default=PARAMS, help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        stage(read_params(args.params), args.params)
    except (ConfigError, CheckpointError) as err:
        fail(parser.prog, str(err))
