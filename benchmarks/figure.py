"""Learning curves of both libraries from the benchmark's JSON: one subplot per environment.

Each curve is the deterministic evaluation return (the mean over an evaluation's 10 episodes)
against env steps, averaged over seeds, with a 95% confidence band for that mean: Student's t
interval over seeds, mean ± t(0.975, n-1) · s / √n with s the sample standard deviation (no
band for one seed). A seed's value at checkpoint k · eval_every is its first evaluation at or
after that many env steps (the benchmark evaluates at the first chance after each interval);
the last point, at the budget, is the final evaluation the tables report.

    .venv-bench/bin/python benchmarks/figure.py benchmarks/results/<stamp>.json \\
        --out docs/benchmarks-curves.png --small docs/benchmarks-curves-small.png

Several JSON files may be given (e.g. one per part of the suite); an env must have the same
settings in each, and a run (env, library, seed) may appear in only one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import EngFormatter
from results_file import COMPARED_SETTINGS, setting
from scipy import stats
from tables import LIBS

COLOURS = {"ours": "tab:blue", "sb3": "tab:orange"}
CONFIDENCE = 0.95


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="bench.py's <stamp>.json files")
    parser.add_argument("--out", type=Path, required=True, help="the full-size PNG")
    parser.add_argument("--small", type=Path, default=None, help="also a README-size PNG")
    parser.add_argument("--envs", nargs="+", default=None, help="these envs only, in this order")
    return parser.parse_args(argv)


def merge(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """env key -> {"settings", "runs"} over all files; ValueError on a clash."""
    envs: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, str, int], Path] = {}
    for path in paths:
        for key, env in json.loads(path.read_text())["envs"].items():
            merged = envs.setdefault(key, {"settings": env["settings"], "runs": []})
            for name in COMPARED_SETTINGS:
                if setting(merged["settings"], name) != setting(env["settings"], name):
                    raise ValueError(f"{key} {name} differs between the files ({path})")
            for run in env["runs"]:
                if "error" in run:
                    continue
                run_key = (key, run["lib"], run["seed"])
                if run_key in seen:
                    raise ValueError(
                        f"{key} {run['lib']} seed {run['seed']} in {seen[run_key]} and {path}"
                    )
                seen[run_key] = path
                merged["runs"].append(run)
    return envs


def checkpoints(settings: dict[str, Any]) -> np.ndarray:
    """k · eval_every below the budget, then the budget (where the final evaluation goes)."""
    every, budget = settings["eval_every"], settings["budget"]
    return np.array([*range(every, budget, every), budget])


def seed_curve(run: dict[str, Any], at: np.ndarray) -> np.ndarray:
    """One run's return at each checkpoint; the last one is its final evaluation."""
    points = run["evaluations"]
    steps = np.array([p["env_steps"] for p in points])
    returns = np.array([p["mean_return"] for p in points])
    first_after = np.searchsorted(steps, at[:-1], side="left")
    return np.append(returns[np.minimum(first_after, len(points) - 1)], run["final_return"])


def mean_band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean over seeds (rows) and the t interval's half-width (None for one seed)."""
    n = curves.shape[0]
    mean = curves.mean(axis=0)
    if n < 2:
        return mean, None
    t = stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1)
    return mean, t * curves.std(axis=0, ddof=1) / math.sqrt(n)


def draw_env(ax: plt.Axes, env: dict[str, Any], *, small: bool) -> None:
    s = env["settings"]
    at = checkpoints(s)
    seeds = []
    for lib, name in LIBS.items():
        runs = sorted((r for r in env["runs"] if r["lib"] == lib), key=lambda r: r["seed"])
        if not runs:
            continue
        mean, half = mean_band(np.stack([seed_curve(r, at) for r in runs]))
        ax.plot(at, mean, color=COLOURS[lib], label=name, lw=1.2 if small else 1.6)
        if half is not None:
            ax.fill_between(at, mean - half, mean + half, color=COLOURS[lib], alpha=0.2, lw=0)
        seeds.append(len(runs))
    each = (
        f"{seeds[0]} seeds each" if len(set(seeds)) == 1 else "seeds " + " / ".join(map(str, seeds))
    )
    ax.set_title(
        s["env_id"] if small else f"{s['env_id']} ({each})",
        fontsize=8 if small else 11,
    )
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.tick_params(labelsize=6 if small else 9)
    ax.grid(alpha=0.3)


def draw(envs: dict[str, dict[str, Any]], path: Path, *, small: bool, note: str) -> None:
    n = len(envs)
    cols = n if small else min(n, 2 if n == 4 else 3)
    rows = math.ceil(n / cols)
    size = (1.9 * cols, 1.8) if small else (5.0 * cols, 3.6 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
    for ax, env in zip(axes.flat, envs.values(), strict=False):
        draw_env(ax, env, small=small)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    if not small:
        for ax in axes[:, 0]:
            ax.set_ylabel("deterministic eval return")
        for ax in axes[-1, :]:
            ax.set_xlabel("env steps")
        fig.suptitle(f"Mean over seeds, {CONFIDENCE:.0%} t-interval band{note}", fontsize=10)
    elif note:
        fig.suptitle(note.strip(" ()"), fontsize=6)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=2,
        fontsize=7 if small else 10,
        frameon=False,
    )
    fig.savefig(path, dpi=150 if small else 120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        envs = merge(args.results)
    except ValueError as err:
        print(f"figure.py: error: {err}", file=sys.stderr)
        return 2
    if args.envs is not None:
        missing = [key for key in args.envs if key not in envs]
        if missing:
            print(
                f"figure.py: error: not in the files: {', '.join(missing)} "
                f"(they have {', '.join(envs)})",
                file=sys.stderr,
            )
            return 2
        envs = {key: envs[key] for key in args.envs}
    envs = {key: env for key, env in envs.items() if env["runs"]}
    if not envs:
        print("figure.py: error: no successful runs in the files", file=sys.stderr)
        return 2
    scales = {json.loads(p.read_text())["meta"]["budget_scale"] for p in args.results}
    note = "" if scales == {1.0} else " (SMOKE RUN: scaled budgets, not a measurement)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(envs, args.out, small=False, note=note)
    print(f"[figure] wrote {args.out}")
    if args.small is not None:
        draw(envs, args.small, small=True, note=note)
        print(f"[figure] wrote {args.small}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
