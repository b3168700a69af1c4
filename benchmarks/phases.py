"""Where a training run's time goes: wall-clock seconds per phase of the training loop.

Each variant (a list of trpo-train overrides) runs in a fresh process that wraps the engine's
functions with timers: collecting batches (of which the vector env's steps and the actor's
sampling), the policy step (of which conjugate gradient) and the critic's fit. Variants
alternate within each round, so a slow phase of a shared machine hits them alike; the table
has each phase's median over the rounds.

    .venv/bin/python benchmarks/phases.py --rounds 2 \\
        --variant "2x1024" algo.num_envs=2 algo.fvp_subsample=1.0 \\
        --variant "16x128, Fisher on 1/4" algo.num_envs=16 algo.fvp_subsample=0.25
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from harness import THREAD_ENV

PHASES = ("collect", "env step", "actor sample", "policy step", "conjugate gradient", "critic")
BASE = ["tracking.enabled=false", "train.progress=false", "evaluate.episodes=1",
        "evaluate.video_episodes=0", "train.torch_threads=1", "overwrite=true"]  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="halfcheetah")
    parser.add_argument("--steps", type=int, default=30_720, help="training env steps per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--variant", nargs="+", action="append", required=True, metavar=("NAME", "OVERRIDE"),
        help="a name, then the trpo-train overrides of that variant",
    )  # fmt: skip
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def timed_run(overrides: list[str]) -> dict[str, float]:
    """Train once in this process with the engine's phases timed; seconds per phase."""
    import gymnasium as gym

    from trpo_pipeline.cli import train as cli_train
    from trpo_pipeline.rl import policies, trpo
    from trpo_pipeline.rl import train as engine

    spent: Counter[str] = Counter()

    def wrap(owner: Any, name: str, phase: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[phase] += time.perf_counter() - start

        setattr(owner, name, timed)

    wrap(engine, "collect", "collect")
    wrap(gym.vector.SyncVectorEnv, "step", "env step")
    wrap(policies.GaussianActor, "sample", "actor sample")
    wrap(policies.CategoricalActor, "sample", "actor sample")
    wrap(trpo, "policy_step", "policy step")
    wrap(trpo, "conjugate_gradient", "conjugate gradient")
    wrap(trpo, "fit_critic", "critic")
    start = time.perf_counter()
    sys.argv = ["trpo-train", *overrides]
    try:
        cli_train.main()
    except SystemExit as stop:
        if stop.code:
            raise
    spent["process (after imports)"] = time.perf_counter() - start
    return dict(spent)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(timed_run(args.one)))
        return
    env = os.environ | THREAD_ENV
    results: dict[str, list[dict[str, float]]] = {v[0]: [] for v in args.variant}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k in range(len(args.variant)):
                v = (k + r) % len(args.variant)
                name, *extra = args.variant[v]
                folder = f"hydra.run.dir={tmp}/round{r}-variant{v}"  # names may hold any character
                run = [f"experiment={args.experiment}", f"train.total_steps={args.steps}",
                       *BASE, folder, *extra]  # fmt: skip
                child = [sys.executable, __file__, "--variant", "x", "--one", *run]
                out = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
                results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1} {name}: {results[name][-1]}", file=sys.stderr)
    columns = [*PHASES, "process (after imports)"]
    print(f"| s, median of {args.rounds} rounds | {' | '.join(columns)} |")
    print("|---|" + "---:|" * len(columns))
    for name, runs in results.items():
        cells = [f"{statistics.median(run.get(c, 0.0) for run in runs):.2f}" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{args.experiment}, {args.steps:,} env steps a run, one torch thread; "
          f"1-minute load average {os.getloadavg()[0]:.1f} at the end.")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
