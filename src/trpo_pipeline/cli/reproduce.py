"""`trpo-reproduce RUN_ID`: re-run a recorded MLflow run and check that it comes out the same.

The run's logged config (artifact config/config.yaml) is trained again in a temporary folder,
without tracking, on the code checked out now (which should be the run's ``git_commit``), and
evaluated again when the run was. Every recorded metric history is then compared exactly, step
by step, with the new one; wall-clock metrics (``train/time_s``, ``train/steps_per_s``) are
left out. ``KEY=VALUE`` overrides re-run a changed config instead and show what the change did.

Exit status: 0 when every compared number is identical, 1 when something differs, 2 when the
run cannot be reproduced here (unknown run, other commit, bad override).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from trpo_pipeline import tracking
from trpo_pipeline.config import Config, ConfigError, TrackingConfig, config_from_dict
from trpo_pipeline.credentials import mask
from trpo_pipeline.errors import fail

PROG = "trpo-reproduce"
CONFIG_ARTIFACT = "config/config.yaml"

History = list[tuple[int, float]]


@dataclass
class Comparison:
    """What differs between a recorded run and its re-run."""

    params: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # key -> what differs, in words
    compared: int = 0  # metric histories compared
    values: int = 0  # numbers compared

    @property
    def exact(self) -> bool:
        return not self.params and not self.metrics


def diff_params(recorded: Mapping[str, str], new: Mapping[str, str]) -> dict[str, Any]:
    return {
        key: (recorded.get(key), new.get(key))
        for key in sorted(set(recorded) | set(new))
        if recorded.get(key) != new.get(key)
    }


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def diff_history(recorded: History, new: History) -> str | None:
    """None when identical, else one line saying how many values differ and the first one."""
    n = max(len(recorded), len(new))
    differing = [
        i
        for i in range(n)
        if i >= len(recorded)
        or i >= len(new)
        or recorded[i][0] != new[i][0]
        or not _same(recorded[i][1], new[i][1])
    ]
    if not differing:
        return None
    i = differing[0]
    return (
        f"{len(differing)} of {n} values differ; first: {_point(recorded, i)} -> {_point(new, i)}"
    )


def _point(history: History, i: int) -> str:
    return f"{history[i][1]!r} at step {history[i][0]}" if i < len(history) else "nothing"


def compare_metrics(recorded: Mapping[str, History], new: Mapping[str, History]) -> Comparison:
    result = Comparison()
    for key in sorted(set(recorded) | set(new)):
        if key in tracking.TIMING_METRICS:
            continue
        a, b = recorded.get(key, []), new.get(key, [])
        result.compared += 1
        result.values += len(a)
        if (problem := diff_history(a, b)) is not None:
            result.metrics[key] = problem
    return result


def load_recorded_config(uri: str, run_id: str) -> dict[str, Any]:
    """The config a run logged (its config/config.yaml artifact)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=CONFIG_ARTIFACT, dst_path=tmp, tracking_uri=uri
            )
        except (MlflowException, OSError) as err:
            fail(PROG, f"run {run_id} has no {CONFIG_ARTIFACT} artifact to reproduce from ({err})")
        return yaml.safe_load(Path(path).read_text())


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> Config:
    """The recorded config with ``key=value`` overrides (YAML values), validated."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    bad = [o for o in overrides if "=" not in o or o.startswith(("+", "~", "hydra"))]
    if bad:
        raise ConfigError("", f"overrides must look like key=value, got {bad[0]!r}")
    try:
        merged = OmegaConf.merge(OmegaConf.create(values), OmegaConf.from_dotlist(list(overrides)))
        plain = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError("", f"cannot apply overrides: {str(err).splitlines()[0]}") from None
    return config_from_dict(plain)  # type: ignore[arg-type]


def rerun(cfg: Config, run_dir: Path, *, evaluate_too: bool) -> dict[str, History]:
    """Train (and evaluate) ``cfg`` again without tracking; the metric histories it produced."""
    # Deferred: training imports torch, after the run and its config have been found.
    from trpo_pipeline.rl.evaluate import evaluate
    from trpo_pipeline.rl.train import train

    histories: dict[str, History] = {}

    def record(values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            histories.setdefault(key, []).append((step, value))

    quiet = replace(
        cfg,
        tracking=replace(cfg.tracking, enabled=False),
        train=replace(cfg.train, progress=False),
        overwrite=True,
    )
    result = train(
        quiet,
        run_dir,
        callbacks=[lambda r: record(tracking.update_metrics(r), r.env_steps)],
    )
    if evaluate_too:
        evaluation = evaluate(result.checkpoint, quiet.evaluate)
        record(tracking.eval_metrics(evaluation), evaluation.env_steps_trained)
    return histories


def reproduce(
    uri: str, run_id: str, overrides: Sequence[str], *, workdir: Path, any_commit: bool
) -> Comparison:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        fail(PROG, f"no run {run_id} in {mask(uri)} (pass --tracking-uri?)")
    tags = run.data.tags
    commit, dirty = tracking.git_state()
    recorded_commit = tags.get("git_commit", "unknown")
    if recorded_commit != commit and not any_commit:
        fail(
            PROG,
            f"run {run_id} was recorded at commit {recorded_commit}, this checkout is at "
            f"{commit}; check out {recorded_commit} first, or pass --any-commit",
        )
    for who, flag in (("the recorded run", tags.get("git_dirty")), ("this checkout", dirty)):
        if flag == "true":
            print(f"note: {who} had uncommitted changes; an exact match is not guaranteed")

    recorded_values = load_recorded_config(uri, run_id)
    cfg = apply_overrides(recorded_values, overrides)
    if cfg.resume is not None:
        fail(
            PROG,
            f"run {run_id} resumed from {cfg.resume}; only runs trained from scratch reproduce",
        )
    recorded_cfg = config_from_dict(recorded_values)
    print(
        f"reproducing run {run_id} ({run.info.run_name}, commit {commit[:12]}) in {workdir}",
        flush=True,
    )

    metric_keys = [k for k in run.data.metrics if k.startswith(("train/", "eval/"))]
    recorded = tracking.metric_histories(uri, run_id, metric_keys)
    new = rerun(cfg, workdir / "run", evaluate_too=any(k.startswith("eval/") for k in recorded))
    result = compare_metrics(recorded, new)
    result.params = diff_params(tracking.result_params(recorded_cfg), tracking.result_params(cfg))
    return result


def describe(result: Comparison) -> str:
    lines = []
    if result.params:
        lines.append(f"params: {len(result.params)} differ")
        lines += [f"  {k}: {old} -> {new}" for k, (old, new) in result.params.items()]
    else:
        lines.append("params: identical")
    if result.metrics:
        lines.append(f"metrics: {len(result.metrics)} of {result.compared} differ")
        lines += [f"  {k}: {what}" for k, what in result.metrics.items()]
    else:
        lines.append(
            f"metrics: all {result.compared} identical ({result.values} values; "
            f"{', '.join(sorted(tracking.TIMING_METRICS))} are wall-clock and not compared)"
        )
    lines.append("result: exact match" if result.exact else "result: MISMATCH")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Re-run a recorded MLflow run from its logged config and compare its "
        "metrics exactly (exit 0: identical, 1: different, 2: cannot reproduce).",
    )
    parser.add_argument("run_id", help="the MLflow run to reproduce")
    parser.add_argument(
        "overrides", nargs="*", help="key=value changes to the recorded config (what-if)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="the store holding the run (default: $MLFLOW_TRACKING_URI, else the repo's mlflow.db)",
    )
    parser.add_argument("--keep", type=Path, help="keep the re-run's outputs in this folder")
    parser.add_argument(
        "--any-commit", action="store_true", help="reproduce even on another git commit"
    )
    args = parser.parse_intermixed_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = args.tracking_uri or tracking.resolve_tracking_uri(TrackingConfig())
    try:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            result = reproduce(
                uri, args.run_id, args.overrides, workdir=args.keep, any_commit=args.any_commit
            )
        else:
            with tempfile.TemporaryDirectory(prefix="trpo-reproduce-") as tmp:
                result = reproduce(
                    uri, args.run_id, args.overrides, workdir=Path(tmp), any_commit=args.any_commit
                )
    except ConfigError as err:
        fail(PROG, str(err))
    print(describe(result))
    raise SystemExit(0 if result.exact else 1)


if __name__ == "__main__":
    main()
