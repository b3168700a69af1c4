"""trpo-pipeline vs sb3-contrib's TRPO (rl-zoo hyperparameters), side by side in one run.

For each environment and seed the two libraries train one after the other (ours seed 0,
theirs seed 0, ours seed 1, ...), or with ``--jobs 2`` side by side (ours seed s next to
theirs seed s), each in a fresh process with one torch thread, so peak RSS is per run and a
slow phase of the machine hits both. Evaluation runs at fixed env-step intervals on fixed
seeds with the training clock paused. Results go to <out>/<timestamp>.md and .json, rewritten
after every run; ``--resume`` continues such a file. docs/benchmarks.md says what is measured
and how.

    .venv-bench/bin/python benchmarks/bench.py                     # cartpole + pendulum, 3 seeds
    .venv-bench/bin/python benchmarks/bench.py --envs halfcheetah   # 1M steps, 3 seeds (~37 min)
    .venv-bench/bin/python benchmarks/bench.py --envs hopper ant --jobs 2   # MuJoCo, 1M steps
    .venv-bench/bin/python benchmarks/bench.py --envs hopper ant --jobs 2 \\
        --resume benchmarks/results/<timestamp>.json                # continue after a stop
    .venv-bench/bin/python benchmarks/bench.py --seeds 1 --budget-scale 0.05   # smoke
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import ENVS, EVAL_SEED, THREAD_ENV, peak_rss_mib
from results_file import ResumeMismatchError, load_for_resume, recorded, save
from tables import LIBS, ratios, summarise

REPO = Path(__file__).resolve().parents[1]
TORCH_THREADS = 1
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
        default=None,
        help="folder for <timestamp>.md and <timestamp>.json (default: benchmarks/results)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, one core each; 2 runs the libraries' runs of a seed side by side",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="PATH.json",
        help="continue this results file: run only what it lacks, keep writing it",
    )
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.resume is not None and args.out is not None:
        parser.error("--resume writes to the file it continues: give --resume or --out, not both")
    if args.resume is not None and not args.resume.is_file():
        parser.error(f"--resume {args.resume}: no such file")
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


@dataclass(frozen=True)
class RunSpec:
    lib: str
    env_key: str
    seed: int
    budget: int
    eval_every: int


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark dies, even by SIGKILL."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_wave(wave: list[RunSpec], on_done: Callable[[RunSpec, dict[str, Any]], None]) -> None:
    """Start every run of ``wave`` at once (fresh interpreters), hand each record over as it ends.

    A record says how a run failed where it did. Runs still going when this is left (Ctrl-C,
    SIGTERM) are stopped and not recorded.
    """
    running: dict[subprocess.Popen[bytes], tuple[RunSpec, Path]] = {}
    with ExitStack() as stack:
        try:
            for spec in wave:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                cmd = [sys.executable, str(Path(__file__).resolve()), "_run", spec.lib]
                cmd += [spec.env_key, str(spec.seed), str(spec.budget), str(spec.eval_every)]
                # cwd: the scratch folder, where MuJoCo's MUJOCO_LOG.TXT and the like land.
                proc = subprocess.Popen(
                    [*cmd, str(tmp / "run.json")],
                    cwd=tmp,
                    env=os.environ | THREAD_ENV,
                    preexec_fn=_die_with_parent,
                )
                running[proc] = spec, tmp / "run.json"
            while running:
                for proc in [p for p in running if p.poll() is not None]:
                    spec, result = running.pop(proc)
                    run = _read_record(spec, proc.returncode, result)
                    on_done(spec, run | {"ran_at_once": len(wave)})
                time.sleep(0.2)
        finally:
            for proc in running:
                proc.terminate()
            for proc in running:
                proc.wait()


def _read_record(spec: RunSpec, returncode: int, result: Path) -> dict[str, Any]:
    if returncode != 0 or not result.exists():
        return {
            "lib": spec.lib,
            "env": spec.env_key,
            "seed": spec.seed,
            "error": f"exit {returncode}",
        }
    return json.loads(result.read_text())


def waves(specs: list[RunSpec], jobs: int) -> list[list[RunSpec]]:
    """Runs grouped to start together, at most ``jobs`` a group, each waiting for the last.

    One env and seed's runs stay in one group where they fit, so with 2 jobs ours seed s runs
    next to theirs seed s and a busy phase of the machine hits both alike.
    """
    by_seed: list[list[RunSpec]] = []
    for spec in specs:
        if by_seed and (by_seed[-1][0].env_key, by_seed[-1][0].seed) == (spec.env_key, spec.seed):
            by_seed[-1].append(spec)
        else:
            by_seed.append([spec])
    grouped: list[list[RunSpec]] = []
    for same_seed in by_seed:
        for i in range(0, len(same_seed), jobs):
            chunk = same_seed[i : i + jobs]
            if grouped and len(grouped[-1]) + len(chunk) <= jobs:
                grouped[-1] += chunk
            else:
                grouped.append(chunk)
    return grouped


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
        "env_kwargs": env.env_kwargs,
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
    # SIGTERM unwinds like Ctrl-C: the runs in flight are stopped, what was recorded stays.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    settings = {
        key: env_settings(key, list(range(args.seeds or ENVS[key].seeds)), args.budget_scale)
        for key in args.envs
    }
    try:
        results, json_path = open_results(args, argv, settings)
    except ResumeMismatchError as err:
        print(f"bench.py: error: cannot resume: {err}", file=sys.stderr)
        return 2
    done = recorded(results)
    todo = [
        RunSpec(lib, key, seed, env_set["budget"], env_set["eval_every"])
        for key, env_set in settings.items()
        for seed in env_set["seeds"]
        for lib in args.libs
        if (key, lib, seed) not in done
    ]
    if not todo:
        print(f"[bench] nothing to run: {json_path} has every run of this command")
        save(results, json_path)
        return 0
    print(f"[bench] {len(todo)} runs to do, {args.jobs} at a time -> {json_path}", flush=True)
    session = new_session(argv, args.jobs)
    results["meta"]["sessions"].append(session)
    failed = 0

    def record(spec: RunSpec, run: dict[str, Any]) -> None:
        nonlocal failed
        failed += "error" in run
        run["session"] = len(results["meta"]["sessions"]) - 1
        session.update(last_run=_now(), loadavg_last_run=_loadavg())  # for a stopped session
        print(
            f"[bench]   {spec.env_key} seed {spec.seed} {LIBS[spec.lib]}: {describe(run)}",
            flush=True,
        )
        env = results["envs"][spec.env_key]
        env["runs"].append(run)
        env["runs"].sort(key=lambda r: (r["seed"], list(LIBS).index(r["lib"])))
        _summarise_env(env)
        save(results, json_path)  # after every run: a long benchmark keeps what it has

    for wave in waves(todo, args.jobs):
        names = " + ".join(f"{s.env_key} seed {s.seed} {LIBS[s.lib]}" for s in wave)
        print(f"[bench] {names} ...", flush=True)
        run_wave(wave, record)
    session |= {"finished": _now(), "loadavg_end": _loadavg()}
    results["meta"]["finished"] = session["finished"]
    results["meta"]["machine"]["loadavg_end"] = session["loadavg_end"]
    md_path = save(results, json_path)
    print(md_path.read_text())
    print(f"[bench] wrote {md_path} and {json_path}")
    return 1 if failed else 0


def open_results(
    args: argparse.Namespace, argv: list[str], settings: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], Path]:
    """A new results file under --out, or the --resume one, checked; with the command's envs."""
    if args.resume is None:
        out = args.out or REPO / "benchmarks" / "results"
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
        results = new_results(argv, args.budget_scale)
    else:
        json_path = args.resume
        results = load_for_resume(
            json_path,
            budget_scale=args.budget_scale,
            torch_threads=TORCH_THREADS,
            settings=settings,
        )
    for key, env_set in settings.items():
        results["envs"].setdefault(key, {"settings": env_set, "runs": []})
    for env in results["envs"].values():
        _summarise_env(env)  # a resumed file's failed runs were dropped
    return results, json_path


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def new_results(argv: list[str], budget_scale: float) -> dict[str, Any]:
    return {
        "meta": {
            "command": " ".join(["benchmarks/bench.py", *argv]),
            "started": _now(),
            "budget_scale": budget_scale,
            "torch_threads": TORCH_THREADS,
            "thread_env": THREAD_ENV,
            "machine": machine(),
            "versions": versions(),
            "git": git_state(),
            "sessions": [],
        },
        "envs": {},
    }


def new_session(argv: list[str], jobs: int) -> dict[str, Any]:
    """One command's share of a results file: when, how loaded, how many runs at a time."""
    return {
        "command": " ".join(["benchmarks/bench.py", *argv]),
        "started": _now(),
        "finished": None,
        "loadavg_start": _loadavg(),
        "loadavg_end": None,
        "jobs": jobs,
        "git": git_state(),
        "versions": versions(),
    }


def _summarise_env(env: dict[str, Any]) -> None:
    env["summary"] = {}
    for lib in LIBS:
        runs = [r for r in env["runs"] if r["lib"] == lib]
        if runs:
            env["summary"][lib] = summarise(runs)
    env["ratios"] = ratios(env["summary"].get("ours", {}), env["summary"].get("sb3", {}))


if __name__ == "__main__":
    raise SystemExit(main())
