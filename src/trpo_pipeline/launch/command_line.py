"""A Hydra command line read before Hydra runs it: its overrides, each job of a multirun, and
the folder Hydra will write to, so that every job can be checked before anything is written."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.errors import first_line
from trpo_pipeline.launch.compose import CONFIG_NAME, compose_config


@dataclass(frozen=True)
class CommandLine:
    """What Hydra will do with a command line that runs jobs."""

    overrides: list[str]  # of the job config (seed=0,1 algo.max_kl=0.01)
    hydra_overrides: list[str]  # of Hydra's own (hydra.run.dir=..., hydra/launcher=joblib)
    multirun: bool


class _NoJobError(Exception):
    """Hydra would print something (help, its version, a config) or an error, not run a job."""


def _hydra_parser() -> argparse.ArgumentParser:
    # The one private Hydra call: hydra.main reads sys.argv with this parser, and Hydra has no
    # public way to ask it how a command line is read (tests/test_command_line.py runs it on
    # the README's command lines).
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def no_job(*args: Any, **kwargs: Any) -> None:
        raise _NoJobError

    parser.exit = no_job  # type: ignore[method-assign]  # --version, and argparse errors
    parser.error = no_job  # type: ignore[method-assign]
    return parser


def read(argv: Sequence[str]) -> CommandLine | None:
    """How Hydra reads ``argv``; None when it would run no job (help, --version, --cfg, --info,
    shell completion) or cannot parse it (Hydra then reports that itself)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = _hydra_parser().parse_args(list(argv))
    except _NoJobError:
        return None
    if args.help or args.hydra_help or args.shell_completion or args.cfg or args.info:
        return None
    is_hydra = [o.lstrip("+~").startswith(("hydra.", "hydra/")) for o in args.overrides]
    return CommandLine(
        overrides=[o for o, h in zip(args.overrides, is_hydra, strict=True) if not h],
        hydra_overrides=[o for o, h in zip(args.overrides, is_hydra, strict=True) if h],
        multirun=bool(args.multirun),
    )


def expand(overrides: Sequence[str], multirun: bool) -> list[list[str]]:
    """The override list of every job the command will run: with -m, the product of every
    sweep's values, in the order Hydra's basic sweeper runs them."""
    if not multirun:
        return [list(overrides)]
    from hydra.errors import HydraException

    choices: dict[str, list[str]] = {}  # a key given twice: the last one counts, as in Hydra
    try:
        for o in _parse(overrides):
            key = o.get_key_element()
            if o.is_sweep_override():
                if not o.is_discrete_sweep():
                    raise ConfigError(key, "only lists and ranges can be swept (-m)")
                choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            else:
                choices[key] = [f"{key}={o.get_value_element_as_str()}"]
    except (HydraException, ValueError) as err:
        raise ConfigError("", f"cannot parse override: {first_line(err)}") from None
    return [list(job) for job in itertools.product(*choices.values())]


def swept_keys(overrides: Sequence[str]) -> list[str]:
    """The keys a multirun sweeps (given more than one value), in command-line order."""
    return [o.get_key_element() for o in _parse(overrides) if o.is_sweep_override()]


def _parse(overrides: Sequence[str]) -> list[Any]:
    """Hydra's reading of ``overrides``; ConfigError if one does not parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except (HydraException, ValueError) as err:
        raise ConfigError("", f"cannot parse override: {first_line(err)}") from None


def preflight(command: CommandLine, conf_dir: Path) -> list[Config]:
    """Compose and check every job of the command; ConfigError on the first bad one."""
    return [compose_config(job, conf_dir) for job in expand(command.overrides, command.multirun)]


def planned_output_dir(command: CommandLine, conf_dir: Path) -> Path | None:
    """The folder Hydra will write the command's outputs to (a multirun's sweep folder), worked
    out before Hydra starts; None when it cannot be told beforehand."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    job = expand(command.overrides, command.multirun)[0] + command.hydra_overrides
    try:  # Hydra's own settings too: a bad one is a one-line error here, not Hydra's report
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = hydra_compose(CONFIG_NAME, job, return_hydra_config=True)
    except OverrideParseException as err:
        raise ConfigError("", f"cannot parse override: {first_line(err)}") from None
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        text = " ".join(str(err).split("Config search path")[0].split())
        if err.__cause__ is not None and str(err.__cause__).strip():
            text += f" ({first_line(err.__cause__)})"
        raise ConfigError("", text) from None
    try:
        folder = OmegaConf.select(cfg, "hydra.sweep.dir" if command.multirun else "hydra.run.dir")
    except Exception:  # an interpolation only Hydra's run can resolve
        return None
    return (Path.cwd() / str(folder)).resolve() if folder else None
