"""trpo-pipeline vs sb3-contrib's TRPO (rl-zoo hyperparameters), side by side in one run.

For each environment and seed the two libraries train one after the other (ours seed 0,
theirs seed 0, ours seed 1, ...), each in a fresh process with one torch thread, so peak RSS
is per run and a slow phase of the machine hits both. Evaluation runs at fixed env-step
intervals on fixed seeds with the training clock paused. Results go to
<out>/<timestamp>.md and .json; docs/benchmarks.md says what is measured and how.

    .venv-bench/bin/python benchmarks/bench.py                     # cartpole + pendulum, 3 seeds
    .venv-bench/bin/python benchmarks/bench.py --envs halfcheetah   # 1M steps, 3 seeds (~37 min)
    .venv-bench/bin/python benchmarks/bench.py --envs hopper ant    # MuJoCo suite: 1M steps each
    .venv-bench/bin/python benchmarks/bench.py --seeds 1 --budget-scale 0.05   # smoke
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ENVS, EVAL_SEED, peak_rss_mib
from tables import LIBS, ratios, report_markdown, summarise

REPO = Path(__file__).resolve().parents[1]
TORCH_THREADS = 1
# Thread pools a child could otherwise size to the machine (torch's intra-op pool reads these).
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
VERSIONED = (
    "trpo-pipeline",
    "torch",
    "gymnasium",
    "mujoco",
    "numpy",
    "stable_baselines3",
    "sb3-contrib",
    "rl_zoo3",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--envs",
        nargs="+",
        choices=sorted(ENVS),
        default=["cartpole", "pendulum"],
        help="environments to run (the MuJoCo ones are 1M-step runs: not in CI)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="number of seeds, 0..N-1 (default: 3)",
    )
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiplies every budget and evaluation interval (smoke runs: 0.05)",
    )
    parser.add_argument(
        "--libs",
        nargs="+",
        choices=list(LIBS),
        default=list(LIBS),
        help="libraries to run (default both; one alone is for debugging)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results",
        help="folder for <timestamp>.md and <timestamp>.json",
    )
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if not args.budget_scale > 0:
        parser.error(f"--budget-scale must be > 0, got {args.budget_scale}")
    return args


# --- one run, in a child process --------------------------------------------------------------


def child_main(argv: list[str]) -> int:
    """`bench.py _run LIB ENV SEED BUDGET EVAL_EVERY RESULT`: train once, write the record."""
    lib, env_key, seed, budget, eval_every, result = argv
    import torch

    torch.set_num_threads(TORCH_THREADS)
    torch.set_num_interop_threads(TORCH_THREADS)
    from runners import RUNNERS

    record = RUNNERS[lib](ENVS[env_key], int(seed), int(budget), int(eval_every))
    record |= {
        "lib": lib,
        "env": env_key,
        "seed": int(seed),
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }
    Path(result).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def run_child(lib: str, env_key: str, seed: int, budget: int, eval_every: int) -> dict[str, Any]:
    """One training run in a fresh interpreter; its record, or one saying how it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "run.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "_run", lib, env_key]
        cmd += [str(seed), str(budget), str(eval_every), str(result)]
        # cwd: the scratch folder, where MuJoCo's MUJOCO_LOG.TXT and the like land.
        proc = subprocess.run(cmd, cwd=tmp, env=os.environ | THREAD_ENV, check=False)
        if proc.returncode != 0 or not result.exists():
            return {"lib": lib, "env": env_key, "seed": seed, "error": f"exit {proc.returncode}"}
        return json.loads(result.read_text())


# --- the whole benchmark ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    memory_kib = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total = next(ln for ln in meminfo.read_text().splitlines() if ln.startswith("MemTotal"))
        memory_kib = int(total.split()[1])
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": memory_kib / 2**20,
        "loadavg_start": _loadavg(),
        "platform": platform.platform(),
    }


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_state() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}{' (uncommitted changes in the work tree)' if dirty else ''}"


def env_settings(env_key: str, seeds: list[int], scale: float) -> dict[str, Any]:
    env = ENVS[env_key]
    budget, eval_every = env.scaled(scale)
    return {
        "env_id": env.env_id,
        "budget": budget,
        "eval_every": eval_every,
        "threshold": env.threshold,
        "eval_episodes": env.eval_episodes,
        "eval_seed": EVAL_SEED,
        "seeds": seeds,
        "note": env.note,
    }


def describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED ({run['error']})"
    t = run["time_to_threshold_s"]
    reached = "not reached" if t is None else f"reached at {t:.1f} s"
    return (
        f"{run['env_steps']:,} steps in {run['train_s']:.1f} s ({run['steps_per_s']:,.0f}/s), "
        f"threshold {reached}, final return {run['final_return']:.1f}, "
        f"peak RSS {run['peak_rss_mib']:.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_run"]:
        return child_main(argv[1:])
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = args.out / f"{stamp}.md", args.out / f"{stamp}.json"
    results: dict[str, Any] = {
        "meta": {
            "command": " ".join(["benchmarks/bench.py", *argv]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "budget_scale": args.budget_scale,
            "torch_threads": TORCH_THREADS,
            "thread_env": THREAD_ENV,
            "machine": machine(),
            "versions": versions(),
            "git": git_state(),
        },
        "envs": {},
    }
    failed = 0
    for env_key in args.envs:
        seeds = list(range(args.seeds or ENVS[env_key].seeds))
        settings = env_settings(env_key, seeds, args.budget_scale)
        env: dict[str, Any] = {"settings": settings, "runs": [], "summary": {}, "ratios": {}}
        results["envs"][env_key] = env
        for seed in seeds:
            for lib in args.libs:  # alternate: ours seed 0, theirs seed 0, ours seed 1, ...
                print(f"[bench] {env_key} seed {seed} {LIBS[lib]} ...", flush=True)
                run = run_child(lib, env_key, seed, settings["budget"], settings["eval_every"])
                failed += "error" in run
                print(f"[bench]   {describe(run)}", flush=True)
                env["runs"].append(run)
                _summarise_env(env, args.libs)
                _write(results, md_path, json_path)  # a long run keeps what it has so far
    results["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["meta"]["machine"]["loadavg_end"] = _loadavg()
    _write(results, md_path, json_path)
    print(md_path.read_text())
    print(f"[bench] wrote {md_path} and {json_path}")
    return 1 if failed else 0


def _summarise_env(env: dict[str, Any], libs: list[str]) -> None:
    for lib in libs:
        runs = [r for r in env["runs"] if r["lib"] == lib]
        if runs:
            env["summary"][lib] = summarise(runs)
    env["ratios"] = ratios(env["summary"].get("ours", {}), env["summary"].get("sb3", {}))


def _write(results: dict[str, Any], md_path: Path, json_path: Path) -> None:
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(report_markdown(results) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
