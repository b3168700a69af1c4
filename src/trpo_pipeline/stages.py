"""The DVC pipeline's stages (dvc.yaml) and the params.yaml they read.

``python -m trpo_pipeline.stages train|evaluate|report`` runs one stage on the committed
params.yaml, never on a Hydra composition, so what DVC tracks is exactly what runs. The three
stages make one MLflow run: train opens it and writes its id to outputs/train/mlflow_run.json,
evaluate continues it (or starts one for this execution when DVC reused a cached training, see
:func:`tracking.run_for_evaluation`) and writes outputs/eval/mlflow_run.json, report adds the
report to that run.

``trpo-params`` writes params.yaml: conf/ composed exactly as ``dvc exp run -S ...`` does with
Hydra composition enabled (.dvc/config), so the two never disagree.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import yaml

from trpo_pipeline import tracking
from trpo_pipeline.config import Config, ConfigError, check_runtime, config_from_dict
from trpo_pipeline.credentials import mask
from trpo_pipeline.files import atomic_output, atomic_write

PARAMS = Path("params.yaml")
DVC_LOCK = Path("dvc.lock")
OUTPUTS = Path("outputs")
TRAIN_DIR = OUTPUTS / "train"
EVAL_DIR = OUTPUTS / "eval"
REPORT_DIR = OUTPUTS / "report"
TRAIN_RUN_REF = TRAIN_DIR / tracking.RUN_REF
EVAL_RUN_REF = EVAL_DIR / tracking.RUN_REF


def read_params(path: Path = PARAMS) -> Config:
    """The validated config in params.yaml."""
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


def _fresh(folder: Path) -> None:
    """A stage replaces its outputs, as DVC does before running it."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _numeric_booleans(curve: Path) -> None:
    """Rewrite True/False cells of the learning curve as 1/0, which DVC's plots can draw."""
    with curve.open(newline="") as f:
        rows = list(csv.reader(f))
    with atomic_output(curve, newline="") as f:
        csv.writer(f).writerows(
            [rows[0], *([{"True": "1", "False": "0"}.get(c, c) for c in row] for row in rows[1:])]
        )


def train_stage(cfg: Config, params: Path) -> None:
    from trpo_pipeline.train import LEARNING_CURVE, train

    if cfg.resume is not None:
        raise ConfigError("resume", "must be null in the DVC pipeline, which trains from scratch")
    check_runtime(cfg)
    tracking.check_store(cfg.tracking)
    _fresh(TRAIN_DIR)
    run = tracking.start_run(cfg, tags={"launcher": "dvc"}, folder=TRAIN_DIR)
    with tracking.recording(run):
        result = train(cfg, TRAIN_DIR, callbacks=[run.log_update])
        _numeric_booleans(TRAIN_DIR / LEARNING_CURVE)
        tracking.log_training(run, cfg, TRAIN_DIR, params_file=params)
        run.write_ref(TRAIN_RUN_REF)
    print(
        f"train: {result.env_steps:,} env steps, {result.updates} updates in "
        f"{result.wall_time_s:.1f} s; training return {result.episode_return:.1f}"
    )


def evaluate_stage(cfg: Config, params: Path) -> None:
    from trpo_pipeline.evaluate import EVAL_METRICS, evaluate, write_eval
    from trpo_pipeline.train import CHECKPOINT

    if cfg.evaluate.checkpoint is not None:
        raise ConfigError(
            "evaluate.checkpoint", f"must be null in the DVC pipeline (it uses {TRAIN_DIR})"
        )
    result = evaluate(TRAIN_DIR / CHECKPOINT, cfg.evaluate)  # a bad checkpoint: nothing lost
    _fresh(EVAL_DIR)
    write_eval(result, EVAL_DIR / EVAL_METRICS)
    run = tracking.run_for_evaluation(
        cfg,
        TRAIN_RUN_REF,
        TRAIN_DIR,
        params_file=params,
        tags={"launcher": "dvc"},
        folder=EVAL_DIR,
    )
    with tracking.recording(run):
        tracking.log_evaluation(run, result, EVAL_DIR / EVAL_METRICS)
        run.log_artifact(DVC_LOCK, "config")
        run.write_ref(EVAL_RUN_REF)
    print(
        f"evaluate: return {result.mean_return:.1f} +- {result.std_return:.1f} over "
        f"{result.episodes} episodes"
    )


def report_stage(cfg: Config, params: Path) -> None:
    from trpo_pipeline.report import ReportError, write_report

    ref = tracking.read_ref(EVAL_RUN_REF)
    run_id = ref.get("run_id")
    if cfg.tracking.enabled and ref.get("pending_sync"):
        raise ConfigError(
            "",
            f"MLflow was unreachable during the pipeline: run trpo-sync {TRAIN_DIR} "
            f"{EVAL_DIR} once it is back, then this stage again",
        )
    if not cfg.tracking.enabled or not run_id:
        raise ConfigError(
            "tracking.enabled", "the report is built from MLflow: it needs tracking.enabled=true"
        )
    shutil.rmtree(REPORT_DIR, ignore_errors=True)
    uri = tracking.resolve_tracking_uri(cfg.tracking)
    try:
        page = write_report(uri, [run_id], REPORT_DIR)
    except ReportError as err:  # the store cannot be read (unreachable, run gone)
        raise ConfigError("", str(err)) from None
    run = tracking.reopen_run(cfg, EVAL_RUN_REF, folder=EVAL_DIR)
    with tracking.recording(run):
        run.log_artifacts(REPORT_DIR, "report")
        run.log_artifact(DVC_LOCK, "config")
    print(f"report: {page}")


STAGES = {"train": train_stage, "evaluate": evaluate_stage, "report": report_stage}


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {mask(message)}", file=sys.stderr)
    raise SystemExit(2)


def summary(cfg: Config) -> str:
    """Where the pipeline's results are: the report and the command that opens MLflow's UI."""
    uri = tracking.resolve_tracking_uri(cfg.tracking)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    if mlflow_bin.is_relative_to(Path.cwd()):
        mlflow_bin = mlflow_bin.relative_to(Path.cwd())
    page = (REPORT_DIR / "report.html").resolve()
    run_id = tracking.read_ref(EVAL_RUN_REF).get("run_id")
    return (
        f"report:    {page}\n"
        + (f"MLflow run {run_id} in {tracking.redact(uri)}\n" if run_id else "")
        + f"MLflow UI: {tracking.ui_command(uri, str(mlflow_bin))}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="trpo-stage", description="Run one stage of the DVC pipeline (dvc.yaml)."
    )
    parser.add_argument("stage", choices=[*STAGES, "summary"])
    parser.add_argument("--params", type=Path, default=PARAMS, help="default: %(default)s")
    args = parser.parse_args(argv)
    prog = f"trpo-stage {args.stage}"
    try:
        cfg = read_params(args.params)
        if args.stage == "summary":
            print(summary(cfg))
        else:
            STAGES[args.stage](cfg, args.params)
    except ConfigError as err:
        fail(prog, str(err))
    except ValueError as err:  # torch only loads once a stage runs
        from trpo_pipeline.checkpoint import CheckpointError

        if not isinstance(err, CheckpointError):
            raise
        fail(prog, str(err))


# --- params.yaml -------------------------------------------------------------------------------


def compose_params(overrides: Sequence[str] = (), conf_dir: Path | None = None) -> str:
    """conf/ composed and resolved, as the YAML text `dvc exp run` writes to params.yaml."""
    from omegaconf import OmegaConf

    from trpo_pipeline.cli import compose

    cfg = compose(overrides, conf_dir)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def params_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="trpo-params",
        description="Write params.yaml: conf/ composed for the default experiment (plus "
        "overrides), which the DVC stages read.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. algo.max_kl=0.02")
    parser.add_argument("--output", type=Path, default=PARAMS, help="default: %(default)s")
    parser.add_argument(
        "--check", action="store_true", help="only check that the file is up to date (exit 1)"
    )
    args = parser.parse_args(argv)
    try:
        text = compose_params(args.overrides)
        config_from_dict(yaml.safe_load(text))  # what the stages will accept
    except ConfigError as err:
        fail("trpo-params", str(err))
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(
                f"trpo-params: {args.output} differs from conf/; run trpo-params to rewrite it",
                file=sys.stderr,
            )
            raise SystemExit(1)
        print(f"{args.output} is up to date with conf/")
        return
    atomic_write(args.output, text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
