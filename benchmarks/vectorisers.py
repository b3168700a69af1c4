"""Training speed with each vectoriser: env steps per second of the whole training loop.

gymnasium's sync vector env against EnvPool at 1 and 2 worker threads, on the settings of
conf/experiment/halfcheetah.yaml (any task: its env.id replaced), for each batch shape asked
for. Each run is a fresh process (one torch thread) timing ``rl.train.train`` from its first
update to its last: collection, the TRPO step, the critic, checkpoints and the env restarts at
checkpoint boundaries. Variants alternate within each round (their order rotating), so a slow
phase of a shared machine hits them alike; the tables have each variant's median over the
rounds and its ratio to sync's median: env steps per wall-clock second, and per CPU second of
the process (all its threads), which other load on the machine disturbs less and which bounds
what more cores can give.

    .venv/bin/python benchmarks/vectorisers.py                        # the docs' table
    .venv/bin/python benchmarks/vectorisers.py --tasks HalfCheetah-v5 --rounds 1 --steps 8192
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import THREAD_ENV

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (env.vectorization, env.envpool_threads)
    "sync": ("sync", 0),
    "envpool 1 thread": ("envpool", 1),
    "envpool 2 threads": ("envpool", 2),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["HalfCheetah-v5", "Humanoid-v5"])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["2x1024", "16x128"],
        help="batch shapes, ENVSxSTEPS_PER_ENV (2x1024 is the halfcheetah experiment's)",
    )
    parser.add_argument("--steps", type=int, default=30_720, help="training env steps per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--one", nargs=3, metavar=("TASK", "SHAPE", "VARIANT"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def overrides(task: str, shape: str, variant: str, steps: int) -> list[str]:
    envs, per_env = (int(n) for n in shape.split("x"))
    vectorization, threads = VARIANTS[variant]
    return [
        "experiment=halfcheetah",
        f"env.id={task}",
        f"++env.vectorization={vectorization}",
        f"++env.envpool_threads={threads}",
        f"algo.num_envs={envs}",
        f"algo.steps_per_update={envs * per_env}",
        f"train.total_steps={steps}",
        "train.torch_threads=1",
        "train.progress=false",
        "tracking.enabled=false",
    ]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def run_one(task: str, shape: str, variant: str, steps: int) -> dict[str, float]:
    """One training run in this process: env steps per wall-clock and per CPU second."""
    from trpo_pipeline.launch.compose import compose_config
    from trpo_pipeline.rl.train import train

    cfg = compose_config(overrides(task, shape, variant, steps), REPO / "conf")
    with tempfile.TemporaryDirectory() as tmp:
        cpu = cpu_seconds()
        result = train(cfg, Path(tmp) / "run")
        cpu = cpu_seconds() - cpu
    return {"wall": result.steps_per_s, "cpu": result.env_steps / cpu}


def measure(task: str, shape: str, variant: str, steps: int) -> dict[str, float]:
    """Env steps per wall-clock and per CPU second of one run in a fresh process."""
    command = [sys.executable, __file__, "--steps", str(steps), "--one", task, shape, variant]
    out = subprocess.run(
        command, env=os.environ | THREAD_ENV, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one, args.steps)))
        return
    cases = [(task, shape) for task in args.tasks for shape in args.shapes]
    speeds: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    loads = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for task, shape in cases:
            shift = r % len(args.variants)
            for variant in args.variants[shift:] + args.variants[:shift]:
                speed = measure(task, shape, variant, args.steps)
                speeds.setdefault((task, shape, variant), []).append(speed)
                print(
                    f"round {r + 1} {task} {shape} {variant}: {speed['wall']:,.0f} steps/s, "
                    f"{speed['cpu']:,.0f} steps/CPU-s",
                    file=sys.stderr,
                )
            loads.append(os.getloadavg()[0])
    for unit in ("wall", "cpu"):
        print(table(cases, args.variants, speeds, unit), end="\n\n")
    print(
        f"Median of {args.rounds} rounds, {args.steps:,} training env steps per run; 1-minute "
        f"load average {min(loads):.1f} to {max(loads):.1f} (before, and after each task and "
        f"shape) on {os.cpu_count()} cores."
    )


UNITS = {"wall": "env steps per second", "cpu": "env steps per CPU second"}


def table(
    cases: list[tuple[str, str]],
    variants: list[str],
    speeds: dict[tuple[str, str, str], list[dict[str, float]]],
    unit: str,
) -> str:
    """Markdown: per task and batch shape, each variant's median and its ratio to sync's."""
    lines = [
        f"| {UNITS[unit]} | envs x steps | " + " | ".join(variants) + " |",
        "|---|---|" + "---:|" * len(variants),
    ]
    for task, shape in cases:
        medians = {v: statistics.median(s[unit] for s in speeds[task, shape, v]) for v in variants}
        base = medians.get("sync")
        cells = [
            f"{m:,.0f}" + (f" ({m / base:.2f}x)" if base and v != "sync" else "")
            for v, m in medians.items()
        ]
        lines.append(f"| {task} | {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
