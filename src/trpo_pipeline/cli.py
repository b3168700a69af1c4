"""Thin entry points: the only module that knows Hydra, the conf/ folder and run folders.

Each command first composes and validates every configuration it is about to run (all jobs of
a multirun included), so bad input ends with one line naming the key, exit status 2, and
nothing written. Only then does Hydra take over. An error Hydra's task still finds (a corrupt
checkpoint) removes every empty folder Hydra created for it. torch is imported only once a
task runs, so that errors are fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from trpo_pipeline.config import (
    Config,
    ConfigError,
    check_runtime,
    describe_override_key,
    load_config,
)
from trpo_pipeline.credentials import mask
from trpo_pipeline.errors import first_line

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
# Folders the coming Hydra run will create (deepest first), found before it starts: what an
# error in the task removes again when they are empty.
_new_folders: list[Path] = []


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
    line = " ".join(mask(message).split("\n"))
    print(f"{prog}: error: {line}", file=sys.stderr)
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
        raise ConfigError("", f"cannot parse override: {first_line(err)}") from None
    except (HydraException, OmegaConfBaseException) as err:
        raise _composition_error(err) from None
    except ValueError as err:  # an integer of thousands of digits
        raise ConfigError("", f"cannot parse override: {first_line(err)}") from None


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
    except (HydraException, ValueError) as err:
        raise ConfigError("", f"cannot parse override: {first_line(err)}") from None
    return jobs


def preflight(argv: Sequence[str], conf_dir: Path) -> list[Config]:
    """Compose and validate every job of this command line; ConfigError on the first bad one."""
    overrides, multirun, wanted = split_argv(argv)
    if not wanted:
        return []
    return [load_config(compose(job, conf_dir)) for job in expand(overrides, multirun)]


def planned_output_dir(argv: Sequence[str], conf_dir: Path) -> Path | None:
    """The folder Hydra will write this command line's outputs to (a multirun's sweep folder),
    worked out before Hydra starts; None when it cannot be told beforehand."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides, multirun, wanted = split_argv(argv)
    if not wanted:
        return None
    job = expand(overrides, multirun)[0]
    try:  # Hydra's own settings too: a bad one is a one-line error here, not Hydra's report
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = hydra_compose(CONFIG_NAME, job + hydra_overrides(argv), return_hydra_config=True)
    except OverrideParseException as err:
        raise ConfigError("", f"cannot parse override: {first_line(err)}") from None
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        text = " ".join(str(err).split("Config search path")[0].split())
        if err.__cause__ is not None and str(err.__cause__).strip():
            text += f" ({first_line(err.__cause__)})"
        raise ConfigError("", text) from None
    try:
        folder = OmegaConf.select(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    except Exception:  # an interpolation only Hydra's run can resolve
        return None
    return (Path.cwd() / str(folder)).resolve() if folder else None


def hydra_overrides(argv: Sequence[str]) -> list[str]:
    """The overrides of Hydra's own config (hydra.run.dir=..., hydra/launcher=joblib)."""
    out: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in _FLAGS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-") and arg.lstrip("+~").startswith(("hydra.", "hydra/")):
            out.append(arg)
    return out


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


def run_hydra_app(
    prog: str,
    task: Callable[[Any], Any],
    check: Callable[[list[Config], Path | None, bool], None] | None = None,
) -> None:
    """Validate the command line (and ``check(configs, output folder, is multirun)`` what else
    can be known before anything runs), then hand it to Hydra with conf/ as the config dir."""
    conf_dir = find_conf_dir()
    folder = None
    try:
        configs = preflight(sys.argv[1:], conf_dir)
        folder = planned_output_dir(sys.argv[1:], conf_dir) if configs else None
        if check is not None and configs:
            check(configs, folder, split_argv(sys.argv[1:])[1])
    except ConfigError as err:
        fail(prog, str(err))
    _new_folders[:] = _folders_to_create(folder)
    import hydra

    hydra.main(config_path=str(conf_dir), config_name=CONFIG_NAME, version_base="1.3")(task)()


def _output_dir() -> Path:
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


def _guarded(prog: str, body: Callable[[Path], Any]) -> Any:
    """Run ``body(run_dir)``; user errors end with one line and exit 2, with every empty folder
    Hydra made for the run removed again."""
    from trpo_pipeline.checkpoint import CheckpointError

    run_dir = _output_dir()
    try:
        return body(run_dir)
    except (ConfigError, CheckpointError) as err:
        remove_empty_folders(run_dir)
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


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a folder we may not read: as good as missing
        return False


def check_training(configs: list[Config], folder: Path | None, multirun: bool) -> None:
    """Before Hydra (and before an MLflow run is opened): the device exists, the MLflow store
    can be used, a checkpoint to resume from loads and fits the config, and a single run's
    folder holds no results yet."""
    from trpo_pipeline.tracking import check_store

    for cfg in configs:
        check_runtime(cfg)
        check_store(cfg.tracking)
        if cfg.resume is not None and not _is_file(Path(cfg.resume)):
            raise ConfigError("resume", f"no checkpoint file at {cfg.resume}")
    from trpo_pipeline.checkpoint import CheckpointError, load_checkpoint
    from trpo_pipeline.train import _check_resumable, check_run_dir

    for cfg in configs:
        if cfg.resume is not None:
            try:
                _check_resumable(load_checkpoint(Path(cfg.resume)), cfg, Path(cfg.resume))
            except CheckpointError as err:
                raise ConfigError("resume", str(err)) from None
    if not multirun and folder is not None:
        check_run_dir(folder, configs[0])
        from trpo_pipeline.sync import PENDING

        if (folder / PENDING).is_file():  # its curve would be rewritten under it
            raise ConfigError(
                "",
                f"{folder} holds a run MLflow has not got yet ({PENDING}): push it with "
                f"trpo-sync {folder} first, or train under another name=",
            )


def train_main() -> None:
    run_hydra_app("trpo-train", _train_task, check_training)


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


def check_evaluation(configs: list[Config], folder: Path | None, multirun: bool) -> None:
    """Before Hydra: the checkpoint to evaluate is there and loads (the run folder's, when it
    is known in advance), and its evaluation would not replace another without overwrite."""
    from trpo_pipeline.checkpoint import CheckpointError, load_checkpoint
    from trpo_pipeline.evaluate import EVAL_METRICS
    from trpo_pipeline.train import CHECKPOINT

    for cfg in configs:
        if cfg.evaluate.checkpoint is not None:
            if not _is_file(Path(cfg.evaluate.checkpoint)):
                raise ConfigError(
                    "evaluate.checkpoint", f"no checkpoint file at {cfg.evaluate.checkpoint}"
                )
        elif multirun and folder is not None and not folder.is_dir():
            raise ConfigError(
                "evaluate.checkpoint",
                f"no trained runs in {folder}: pass hydra.sweep.dir=<a training multirun's "
                "folder>, or evaluate.checkpoint=<file>",
            )
        elif not multirun and folder is not None and not _is_file(folder / CHECKPOINT):
            raise ConfigError(
                "evaluate.checkpoint",
                f"no checkpoint at {folder / CHECKPOINT}: train it first, or pass "
                "evaluate.checkpoint=<file>",
            )
    if not multirun and folder is not None:
        cfg = configs[0]
        checkpoint = Path(cfg.evaluate.checkpoint or folder / CHECKPOINT)
        try:
            load_checkpoint(checkpoint)
        except CheckpointError as err:
            raise ConfigError("evaluate.checkpoint", str(err)) from None
        out = folder / EVAL_METRICS
        if out.exists() and not cfg.overwrite:
            raise ConfigError("", f"{out} already exists; pass overwrite=true to replace it")


def evaluate_main() -> None:
    run_hydra_app("trpo-evaluate", _evaluate_task, check_evaluation)
