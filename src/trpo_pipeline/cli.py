"""Thin entry points: the only module that knows Hydra, the conf/ folder and run folders.

Each command first composes and validates every configuration it is about to run (all jobs of
a multirun included), so bad input ends with one line naming the key, exit status 2, and
nothing written. Only then does Hydra take over.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from trpo_pipeline.checkpoint import CheckpointError
from trpo_pipeline.config import Config, ConfigError, describe_override_key, load_config
from trpo_pipeline.credentials import mask

CONFIG_NAME = "config"
# Hydra flags that take a value (the value is not an override).
_FLAGS_WITH_VALUE = {
    "-c",
    "--cfg",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "-p",
    "--package",
    "--info",
    "-i",
}
_FLAGS_SKIPPING_CHECKS = {"-h", "--help", "--hydra-help", "--version", "--shell-completion", "-sc"}


def find_conf_dir() -> Path:
    """conf/ of the project being run: $TRPO_CONF_DIR, ./conf, or the one beside the package.

    ./conf comes before the package's own so that DVC's experiment copies of the repository
    (`dvc exp run`) compose their own, modified, conf/.
    """
    if env := os.environ.get("TRPO_CONF_DIR"):
        return Path(env).resolve()
    here = Path.cwd() / "conf"
    if (here / f"{CONFIG_NAME}.yaml").is_file():
        return here.resolve()
    return (Path(__file__).resolve().parents[2] / "conf").resolve()


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {mask(message)}", file=sys.stderr)
    raise SystemExit(2)


def split_argv(argv: Sequence[str]) -> tuple[list[str], bool, bool]:
    """(config overrides, is multirun, checks wanted) from a Hydra command line."""
    overrides: list[str] = []
    multirun = False
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in _FLAGS_SKIPPING_CHECKS:
            return [], False, False
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in _FLAGS_WITH_VALUE:
            skip_next = True
        elif arg.startswith("-"):
            continue
        elif not arg.lstrip("+~").startswith(("hydra.", "hydra/")):
            overrides.append(arg)
    return overrides, multirun, True


def compose(overrides: Sequence[str], conf_dir: Path | None = None) -> Any:
    """Compose conf/ with overrides into a DictConfig (the job config, without hydra's)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = conf_dir or find_conf_dir()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hydra_compose(CONFIG_NAME, overrides=list(overrides))
    except OverrideParseException as err:
        raise ConfigError("", f"cannot parse override: {_first_line(err)}") from None
    except (HydraException, OmegaConfBaseException) as err:
        raise _composition_error(err) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _composition_error(err: BaseException) -> ConfigError:
    import re

    text = str(err)
    if m := re.search(r"Could not override '([^']+)'", text):
        return describe_override_key(m.group(1))
    if m := re.search(r"Could not find '([^']+)/([^']+)'", text):
        group, option = m.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        allowed = f" (available: {', '.join(options)})" if options else ""
        return ConfigError(group, f"no config {option!r} in conf/{group}/{allowed}")
    return ConfigError("", " ".join(text.split()))


def expand(overrides: Sequence[str], multirun: bool) -> list[list[str]]:
    """The override list of every job the command will run (sweeps expanded with -m)."""
    if not multirun:
        return [list(overrides)]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        (jobs,) = BasicSweeper.split_arguments(parsed, None)
    except HydraException as err:
        raise ConfigError("", f"cannot parse override: {_first_line(err)}") from None
    return jobs


def preflight(argv: Sequence[str], conf_dir: Path) -> list[Config]:
    """Compose and validate every job of this command line; ConfigError on the first bad one."""
    overrides, multirun, wanted = split_argv(argv)
    if not wanted:
        return []
    return [load_config(compose(job, conf_dir)) for job in expand(overrides, multirun)]


def run_hydra_app(prog: str, task: Callable[[Any], Any]) -> None:
    """Validate the command line, then hand it to Hydra with conf/ as the config dir."""
    import hydra

    conf_dir = find_conf_dir()
    try:
        preflight(sys.argv[1:], conf_dir)
    except ConfigError as err:
        fail(prog, str(err))
    hydra.main(config_path=str(conf_dir), config_name=CONFIG_NAME, version_base="1.3")(task)()


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _guarded(prog: str, body: Callable[[Path], Any]) -> Any:
    """Run ``body(run_dir)``; user errors end with one line and exit 2, an empty run dir removed."""
    run_dir = _output_dir()
    try:
        return body(run_dir)
    except (ConfigError, CheckpointError) as err:
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        fail(prog, str(err))


# --- trpo-train ----------------------------------------------------------------------------------


def _train_task(dcfg: Any) -> float:
    from trpo_pipeline import tracking
    from trpo_pipeline.multirun import job_run_name, parent_run_id
    from trpo_pipeline.train import check_run_dir, train

    def body(run_dir: Path) -> float:
        cfg = load_config(dcfg)
        check_run_dir(run_dir, cfg)  # before an MLflow run is opened for nothing
        run = tracking.start_run(
            cfg,
            run_name=job_run_name(cfg),
            parent_run_id=parent_run_id(),
            tags={"launcher": "hydra"},
            folder=run_dir,
        )
        with tracking.recording(run):
            result = train(cfg, run_dir, callbacks=[run.log_update])
            tracking.log_training(run, cfg, run_dir)
            run.write_ref(run_dir / tracking.RUN_REF)
        if run.online:
            where = f"\nmlflow run {run.run_id} in {tracking.redact(run.uri)}"
        elif run.offline:
            where = f"\nmlflow: not (fully) recorded; push it with: trpo-sync {run_dir}"
        else:
            where = ""
        print(
            f"trained {result.env_steps:,} env steps in {result.updates} updates, "
            f"{result.wall_time_s:.1f} s ({result.steps_per_s:,.0f} steps/s); "
            f"training return {result.episode_return:.1f}\n"
            f"outputs: {run_dir}" + where
        )
        return result.episode_return

    return _guarded("trpo-train", body)


def train_main() -> None:
    run_hydra_app("trpo-train", _train_task)


# --- trpo-evaluate -------------------------------------------------------------------------------


def _evaluate_task(dcfg: Any) -> float:
    from trpo_pipeline.evaluate import EVAL_METRICS, evaluate, write_eval
    from trpo_pipeline.train import CHECKPOINT

    def body(run_dir: Path) -> float:
        cfg = load_config(dcfg)
        checkpoint = (
            Path(cfg.evaluate.checkpoint) if cfg.evaluate.checkpoint else run_dir / CHECKPOINT
        )
        out = run_dir / EVAL_METRICS
        if out.exists() and not cfg.overwrite:
            raise ConfigError("", f"{out} already exists; pass overwrite=true to replace it")
        result = evaluate(checkpoint, cfg.evaluate)
        write_eval(result, out)
        print(
            f"evaluated {checkpoint} on {result.episodes} episodes: return "
            f"{result.mean_return:.1f} +- {result.std_return:.1f} "
            f"(min {result.min_return:.1f}, max {result.max_return:.1f})\n"
            f"outputs: {out}"
        )
        return result.mean_return

    return _guarded("trpo-evaluate", body)


def evaluate_main() -> None:
    run_hydra_app("trpo-evaluate", _evaluate_task)
