"""What the pipeline costs beyond training: two commits side by side, in one run (issue 13).

    .venv/bin/python benchmarks/pipeline_speed.py --revs c98e26b HEAD --rounds 3

Each commit gets its own clone (PYTHONPATH=src: every command runs that clone's code, with this
venv's packages) and one warm-up `dvc repro` on the default experiment. Then, round after round
and alternating between the commits (so load drifts hit both alike), it times the wall-clock of
`dvc exp run -S seed=N`, of each DVC stage run alone, and of `trpo-train` with and without
tracking. Medians go to stdout as Markdown (what docs/benchmarks.md quotes) and, with every
sample, to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("train", "evaluate", "report")
TRAIN = ["train.progress=false"]  # the default experiment, as `make run` trains it


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", nargs="+", default=["c98e26b", "HEAD"], help="commits")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per commit")
    parser.add_argument("--json", type=Path, default=None, help="write every sample here")
    return parser.parse_args(argv)


def environment() -> dict[str, str]:
    """This venv first on PATH: the stages' `python` and `dvc` are the project's."""
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": "src"}


def sh(cmd: list[str], cwd: Path) -> float:
    """Run ``cmd`` in ``cwd``; its wall-clock in seconds (a failure stops the benchmark)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=environment(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed in {cwd}:\n{done.stdout}{done.stderr}")
    return elapsed


def train_command(clone: Path) -> list[str]:
    """`trpo-train` of that commit: its console script's module and function (they moved)."""
    scripts = tomllib.loads((clone / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["trpo-train"].split(":")
    return [sys.executable, "-c", f"from {module} import {function} as f; f()"]


def stage_commands(clone: Path) -> dict[str, list[str]]:
    stages = yaml.safe_load((clone / "dvc.yaml").read_text())["stages"]
    return {name: ["bash", "-c", stages[name]["cmd"]] for name in STAGES}


def prepare(rev: str, root: Path) -> Path:
    """A clone at ``rev`` whose pipeline ran once (committed: `dvc exp run` needs a baseline)."""
    clone = root / rev.replace("/", "_")
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
    sh(["dvc", "repro", "-q"], clone)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "pipeline ran"]):
        subprocess.run(cmd, cwd=clone, check=True, capture_output=True)
    return clone


def one_round(clone: Path, n: int) -> dict[str, float]:
    """One sample of every timing in ``clone`` (round ``n`` picks seeds and folders)."""
    sample = {"dvc exp run -S seed=N": sh(["dvc", "exp", "run", "-S", f"seed={n}"], clone)}
    for name, cmd in stage_commands(clone).items():
        sample[f"stage {name}"] = sh(cmd, clone)
    train = train_command(clone)
    off = sh([*train, *TRAIN, "tracking.enabled=false", f"hydra.run.dir=runs/bench/off{n}"], clone)
    on = sh([*train, *TRAIN, f"hydra.run.dir=runs/bench/on{n}"], clone)
    sample |= {"trpo-train, tracking off": off, "trpo-train, tracking on": on}
    sample["tracking's cost (on - off)"] = on - off
    return sample


def markdown(revs: list[str], samples: dict[str, list[dict[str, float]]]) -> str:
    keys = list(samples[revs[0]][0])
    head = "| wall-clock, median (s) | " + " | ".join(revs) + " |"
    if len(revs) == 2:
        head += f" {revs[1]} / {revs[0]} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key in keys:
        medians = [statistics.median(s[key] for s in samples[rev]) for rev in revs]
        cells = [f"{m:.1f}" for m in medians]
        if len(revs) == 2:
            cells.append(f"{medians[1] / medians[0]:.2f}x" if medians[0] > 0 else "")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pipeline-speed-") as tmp:
        clones = {rev: prepare(rev, Path(tmp)) for rev in args.revs}
        samples: dict[str, list[dict[str, float]]] = {rev: [] for rev in args.revs}
        for n in range(1, args.rounds + 1):
            for rev, clone in clones.items():
                samples[rev].append(one_round(clone, n))
                print(f"round {n} {rev}: {json.dumps(samples[rev][-1])}", file=sys.stderr)
    load = " / ".join(f"{a:.2f}-{b:.2f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(markdown(args.revs, samples))
    print(f"\n{args.rounds} rounds, commits alternating; load average (1/5/15 min) {load}")
    if args.json is not None:
        args.json.write_text(json.dumps({"load": load, "samples": samples}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
