"""Per-environment summaries of the runs, and the Markdown that shows them side by side."""

from __future__ import annotations

import math
import statistics
from typing import Any

LIBS = {"ours": "trpo-pipeline", "sb3": "sb3-contrib TRPO"}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One library on one env, over seeds: means, the median time to threshold, peak RSS.

    A seed that never reached the threshold counts as infinitely slow in the median, so the
    median is only finite when more than half of the seeds reached it. Spreads are the
    population standard deviation over seeds (0 for one seed).
    """
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"seeds": 0, "failed": len(runs)}
    times = [r["time_to_threshold_s"] for r in ok]
    median = statistics.median([math.inf if t is None else t for t in times])
    finals = [r["final_return"] for r in ok]
    return {
        "seeds": len(ok),
        "failed": len(runs) - len(ok),
        "env_steps_mean": statistics.fmean(r["env_steps"] for r in ok),
        "steps_per_s_mean": statistics.fmean(r["steps_per_s"] for r in ok),
        "train_s_mean": statistics.fmean(r["train_s"] for r in ok),
        "time_to_threshold_median_s": None if math.isinf(median) else median,
        "reached": sum(t is not None for t in times),
        "final_return_mean": statistics.fmean(finals),
        "final_return_std": statistics.pstdev(finals),
        "peak_rss_mib_max": max(r["peak_rss_mib"] for r in ok),
    }


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """ours / theirs for each summary number (None where either side has none)."""
    keys = (
        "steps_per_s_mean",
        "train_s_mean",
        "time_to_threshold_median_s",
        "final_return_mean",
        "peak_rss_mib_max",
    )

    def ratio(key: str) -> float | None:
        a, b = ours.get(key), theirs.get(key)
        return None if a is None or b is None or b == 0 else a / b

    return {key: ratio(key) for key in keys}


def _num(value: float | None, fmt: str = "{:,.1f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def env_markdown(env: dict[str, Any]) -> str:
    """The side-by-side table, per-seed rows and configurations for one environment."""
    s = env["settings"]
    summary, r = env["summary"], env["ratios"]
    ours, theirs = summary.get("ours", {}), summary.get("sb3", {})
    threshold = f"{s['threshold']:g}"

    def reached(x: dict[str, Any]) -> str:
        if not x.get("seeds"):
            return "n/a"
        t = x["time_to_threshold_median_s"]
        return f"{_num(t)} ({x['reached']}/{x['seeds']} seeds)"

    def final(x: dict[str, Any]) -> str:
        if not x.get("seeds"):
            return "n/a"
        return f"{x['final_return_mean']:.1f} ± {x['final_return_std']:.1f}"

    # Returns can be negative (Pendulum): there the difference reads better than a ratio.
    both = ours.get("final_return_mean"), theirs.get("final_return_mean")
    if None not in both and min(both) < 0:
        final_cmp = f"{both[0] - both[1]:+.1f} (ours − theirs)"
    else:
        final_cmp = _ratio(r["final_return_mean"])

    def row(label: str, key: str, fmt: str) -> str:
        return (
            f"| {label} | {_num(ours.get(key), fmt)} | {_num(theirs.get(key), fmt)} "
            f"| {_ratio(r[key])} |"
        )

    lines = [
        f"### {s['env_id']}",
        "",
        f"Budget {s['budget']:,} env steps, threshold {threshold}, evaluation every "
        f"{s['eval_every']:,} steps on {s['eval_episodes']} deterministic episodes "
        f"(seeds {s['eval_seed']}+i), training seeds {', '.join(map(str, s['seeds']))}.",
        "",
        "| metric | trpo-pipeline | sb3-contrib TRPO | ours/theirs |",
        "|---|---:|---:|---:|",
        row("env-steps/s (training only)", "steps_per_s_mean", "{:,.0f}"),
        row("training wall-clock, s (evaluation excluded)", "train_s_mean", "{:,.1f}"),
        f"| wall-clock to eval return ≥ {threshold}, s (median) | {reached(ours)} "
        f"| {reached(theirs)} | {_ratio(r['time_to_threshold_median_s'])} |",
        f"| final eval return (mean ± std over seeds) | {final(ours)} | {final(theirs)} "
        f"| {final_cmp} |",
        row("peak RSS, MiB (max over seeds)", "peak_rss_mib_max", "{:,.0f}"),
    ]
    lines += ["", *_per_seed(env["runs"], s["threshold"]), "", *_configs(env)]
    return "\n".join(lines)


def _per_seed(runs: list[dict[str, Any]], threshold: float) -> list[str]:
    lines = [
        "| library | seed | env steps | train s | env-steps/s | eval s (excluded) "
        f"| first eval ≥ {threshold:g} (s / steps) | final return (± over episodes) "
        "| peak RSS MiB | ran at once |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        name = LIBS[run["lib"]]
        if "error" in run:
            lines.append(f"| {name} | {run['seed']} | failed: {run['error']} |||||||||")
            continue
        t, n = run["time_to_threshold_s"], run["steps_to_threshold"]
        first = "not reached" if t is None else f"{t:.1f} / {n:,}"
        lines.append(
            f"| {name} | {run['seed']} | {run['env_steps']:,} | {run['train_s']:.1f} "
            f"| {run['steps_per_s']:,.0f} | {run['eval_s']:.1f} | {first} "
            f"| {run['final_return']:.1f} ± {run['final_return_std']:.1f} "
            f"| {run['peak_rss_mib']:.0f} | {run.get('ran_at_once', 1)} |"
        )
    return lines


def _configs(env: dict[str, Any]) -> list[str]:
    """Where each library's hyperparameters came from (the first run of each says)."""
    lines = []
    for lib, name in LIBS.items():
        run = next((r for r in env["runs"] if r["lib"] == lib and "config" in r), None)
        if run is not None:
            lines.append(f"- {name}: {run['config']['source']}")
    if env["settings"].get("note"):
        lines.append(f"- Note: {env['settings']['note']}")
    return lines


def report_markdown(results: dict[str, Any]) -> str:
    """The whole report: what ran where, then one section per environment."""
    m = results["meta"]
    machine = m["machine"]
    lines = ["# trpo-pipeline vs sb3-contrib TRPO", ""]
    if m["budget_scale"] != 1.0:
        lines += [
            f"**Smoke run: budgets and evaluation intervals scaled by {m['budget_scale']:g}. "
            "These numbers show that the benchmark runs end to end; they say nothing about "
            "performance.**",
            "",
        ]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    sessions = m.get("sessions") or [only_session(m)]
    lines += _sessions(sessions)
    lines += [
        f"- Machine: {machine['cpu']}, {machine['cpus_usable']} usable of "
        f"{machine['cpus']} CPUs, {machine['memory_gib']:.1f} GiB memory",
        f"- Versions: {versions}",
        f"- Each run: a fresh process, torch threads {m['torch_threads']}; {_at_a_time(sessions)}",
        "",
    ]
    for env in results["envs"].values():
        lines += [env_markdown(env), ""]
    return "\n".join(lines)


def only_session(meta: dict[str, Any]) -> dict[str, Any]:
    """A report from before sessions were recorded: one session, one run at a time."""
    machine = meta["machine"]
    return {
        "command": meta["command"],
        "started": meta["started"],
        "finished": meta.get("finished"),
        "loadavg_start": machine["loadavg_start"],
        "loadavg_end": machine.get("loadavg_end"),
        "jobs": 1,
        "git": meta["git"],
    }


def _sessions(sessions: list[dict[str, Any]]) -> list[str]:
    """One line per command that added runs: when, the load average, how many at a time."""
    lines = []
    for i, s in enumerate(sessions, 1):
        label = "Run" if len(sessions) == 1 else f"Session {i} of {len(sessions)}"
        if s.get("finished"):
            end = f"finished {s['finished']}; load average {s['loadavg_start']} at start, "
            end += f"{s['loadavg_end']} at end"
        else:
            end = f"stopped (or still running), last run recorded {s.get('last_run', '?')}; load "
            end += f"average {s['loadavg_start']} at start, {s.get('loadavg_last_run', '?')} then"
        lines.append(
            f"- {label}: `{s['command']}`, git {s['git']}; started {s['started']}, {end}; "
            f"{_runs_at_a_time(s['jobs'])}"
        )
    return lines


def _runs_at_a_time(jobs: int) -> str:
    return "1 run at a time" if jobs == 1 else f"{jobs} runs at a time"


def _at_a_time(sessions: list[dict[str, Any]]) -> str:
    jobs = sorted({s["jobs"] for s in sessions})
    if jobs == [1]:
        return "1 run at a time, the libraries alternating seed by seed"
    counts = " or ".join(str(j) for j in jobs)
    return (
        f"{counts} runs at a time (one core each), the two libraries' runs of one env and seed "
        "started together; the per-seed rows say how many ran at once"
    )
