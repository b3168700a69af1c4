"""`trpo-tune`: an Optuna study over the composed experiment, as a Hydra app.

    trpo-tune                                   # the default study (conf/tune/default.yaml)
    trpo-tune env=acrobot tune.n_trials=50      # tune another experiment, a bigger budget
    trpo-tune tune.storage.url=postgresql://... # one of several workers sharing a study

The command line is the experiment (any trpo-train override) plus tune.* settings. Everything,
the search space included, is validated before the first trial; bad input ends with one line
and exit status 2. Each trial composes the same command line plus its sampled values. Ctrl-C
marks the running trial failed; the same command continues the study.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trpo_pipeline import tracking
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.errors import fail
from trpo_pipeline.launch.app import guarded, run_hydra_app
from trpo_pipeline.launch.command_line import preflight, read
from trpo_pipeline.launch.compose import CONFIG_NAME, composition_error, find_conf_dir, load_config
from trpo_pipeline.rl.runtime import check_device
from trpo_pipeline.tune.study import run_study
from trpo_pipeline.tune.summary import format_summary
from trpo_pipeline.tune.tuned_config import check_tuned_config
from trpo_pipeline.tune.validation import validate_tune

PROG = "trpo-tune"
STUDY_DIR = "hydra.run.dir=${tune.output_dir}/${tune.study_name}"


def tuned_config_path(conf_dir: Path, study_name: str) -> Path:
    return conf_dir / "experiment" / f"tuned_{study_name}.yaml"


def override(key: str, value: Any) -> str:
    """A Hydra override that sets (or adds) ``key`` to ``value`` exactly."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    elif value is None:
        text = "null"
    else:
        text = "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"++{key}={text}"


def _compose(overrides: Sequence[str]) -> Any:
    """Compose conf/ inside the running Hydra app (its config dir is already set up)."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(CONFIG_NAME, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise composition_error(err) from None


def _check(argv: Sequence[str], conf_dir: Path) -> None:
    """Everything that can be checked before Hydra starts; ConfigError on the first problem."""
    command = read(argv)
    if command is None:
        return
    if command.multirun:
        raise ConfigError(
            "", "trpo-tune runs one study per command (no -m); start more workers instead"
        )
    (cfg,) = preflight(command, conf_dir)
    check_device(cfg.train.device)
    tracking.check_store(cfg.tracking)
    validate_tune(cfg)
    check_tuned_config(
        tuned_config_path(conf_dir, cfg.tune.study_name),
        cfg.tune.study_name,
        overwrite=cfg.tune.overwrite,
    )


def run_study_command(
    cfg: Config,
    compose_trial: Callable[[Mapping[str, Any]], Config],
    study_dir: Path,
    default: Config,
    conf_dir: Path,
) -> float | None:
    try:
        summary = run_study(
            cfg,
            compose_trial=compose_trial,
            study_dir=study_dir,
            default=default,
            tuned_config=tuned_config_path(conf_dir, cfg.tune.study_name),
        )
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; the running trial is marked failed. Run the same "
            f"command again to continue study {cfg.tune.study_name!r}.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    print(format_summary(summary))
    return summary.best_value


def _tune_task(dcfg: Any) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    conf_dir = find_conf_dir()
    base_overrides = list(HydraConfig.get().overrides.task)

    def compose_trial(values: Mapping[str, Any]) -> Config:
        kept = [o for o in base_overrides if o.lstrip("+~").split("=")[0] not in values]
        return load_config(_compose(kept + [override(k, v) for k, v in values.items()]))

    def body(study_dir: Path) -> float | None:
        cfg = load_config(dcfg)
        return run_study_command(cfg, compose_trial, study_dir, load_config(_compose([])), conf_dir)

    return guarded(PROG, body)


def interrupt_on_sigterm() -> None:
    # kill / a batch scheduler's SIGTERM ends the trial like Ctrl-C: marked failed, not stale.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    conf_dir = find_conf_dir()
    argv = sys.argv[1:]
    try:
        _check(argv, conf_dir)
    except ConfigError as err:
        fail(PROG, str(err))
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        sys.argv.append(STUDY_DIR)  # Hydra's folder is the study's: runs/tune/<study>/
    interrupt_on_sigterm()
    run_hydra_app(PROG, _tune_task)


if __name__ == "__main__":
    main()
