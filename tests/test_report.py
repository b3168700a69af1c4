"""The report on real MLflow runs: content, selection, the CLI, and rendering in headless Chromium.

The runs are written into a real SQLite MLflow store with the numbers the tracking contract
names (synthetic values: what is under test is the report, not training).
"""

from __future__ import annotations

import base64
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from browser import browser_page
from pipeline_support import TRAIN_METRICS
from trpo_pipeline import report
from trpo_pipeline.cli.report import main as report_main
from trpo_pipeline.report import (
    Curve,
    ReportError,
    mean_ci,
    seed_band,
    select_runs,
    t_quantile_975,
    write_report,
)
from trpo_pipeline.rl.config import EnvConfig
from trpo_pipeline.rl.video import record_episode

UPDATES = 30
STEPS_PER_UPDATE = 2048
BASE_PARAMS = {
    "env.id": "CartPole-v1",
    "env.normalize_obs": "False",
    "policy.hidden_sizes": "[64, 64]",
    "algo.max_kl": "0.01",
    "algo.gamma": "0.99",
    "algo.gae_lambda": "0.95",
    "algo.steps_per_update": str(STEPS_PER_UPDATE),
    "train.total_steps": str(UPDATES * STEPS_PER_UPDATE),
    "train.progress": "True",
    "evaluate.episodes": "20",
    "name": "cartpole",
    "overwrite": "False",
}


@dataclass(frozen=True)
class Store:
    uri: str
    small_kl: list[str]  # algo.max_kl=0.01, seeds 0, 1, 2
    large_kl: list[str]  # algo.max_kl=0.02, seeds 0, 1: children of a multirun parent
    parent: str
    pendulum: str  # another experiment
    evals: dict[str, tuple[float, float]]  # run id -> (eval mean, eval std)


def _log_training_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    seed: int,
    params: dict[str, str],
    eval_mean: float,
    eval_std: float,
    speed: float,
    extra_tags: dict[str, str] | None = None,
) -> str:
    rng = np.random.default_rng(seed + int(1000 * float(params["algo.max_kl"])))
    env_id = params["env.id"]
    tags = {
        "git_commit": "3f9c2a1b7d4e5f60718293a4b5c6d7e8f9012345",
        "git_dirty": "false",
        "dvc_exp_name": f"exp-kl{params['algo.max_kl']}-s{seed}",
        "config_hash": f"cfg{abs(hash(tuple(sorted(params.items())))) % 10**12:012d}",
        "python_version": "3.11.9",
        "torch_version": "2.13.0",
        "gymnasium_version": "1.4.0",
        "seed": str(seed),
        "env_id": env_id,
        **(extra_tags or {}),
    }
    run = client.create_run(experiment_id, tags=tags, run_name=f"kl{params['algo.max_kl']}-s{seed}")
    rid = run.info.run_id
    metrics = []
    for u in range(1, UPDATES + 1):
        step = u * STEPS_PER_UPDATE
        progress = 1 / (1 + math.exp(-(u - 14 / speed + rng.normal(0, 1.5)) / 3))
        accepted = float(rng.random() > 0.12)
        kl = accepted * float(params["algo.max_kl"]) * rng.uniform(0.55, 0.98)
        row = {
            # no finished episode yet after the first update: the contract's nan
            "episode_return": math.nan if u == 1 else 20 + 460 * progress + rng.normal(0, 12),
            "episode_length": 20 + 460 * progress,
            "episodes": 10.0 * u,
            "kl": kl,
            "surrogate_before": 0.0,
            "surrogate_after": accepted * 0.02,
            "surrogate_improvement": accepted * rng.uniform(0.005, 0.03),
            "line_search_steps": 1.0 if accepted else 10.0,
            "line_search_accepted": accepted,
            "cg_residual": rng.uniform(1e-4, 1e-3),
            "step_size": rng.uniform(0.05, 0.2),
            "grad_norm": rng.uniform(0.1, 1.0),
            "entropy": 0.69 - 0.4 * progress,
            "value_loss": 200 * math.exp(-u / 8) + 1,
            "explained_variance": 0.95 * progress,
            "steps_per_s": 4000.0,
            "time_s": 0.5 * u,
        }
        assert set(row) == set(TRAIN_METRICS)
        metrics += [Metric(f"train/{k}", v, 1_700_000_000_000 + u, step) for k, v in row.items()]
    evals = {
        "eval/mean_return": eval_mean,
        "eval/std_return": eval_std,
        "eval/min_return": eval_mean - 2 * eval_std,
        "eval/max_return": eval_mean + eval_std,
        "eval/mean_length": eval_mean,
    }
    metrics += [Metric(k, v, 1_700_000_001_000, 0) for k, v in evals.items()]
    all_params = [Param(k, v) for k, v in {**params, "seed": str(seed)}.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i : i + 1000], params=all_params if i == 0 else ())
    client.set_terminated(rid)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    artifacts = (root / "artifacts").as_uri()
    cartpole = client.create_experiment("trpo-cartpole", artifact_location=artifacts)
    other = client.create_experiment("trpo-pendulum", artifact_location=artifacts)

    evals = {}
    small = []
    for seed, (mean, std) in enumerate([(487.3, 11.6), (462.8, 25.4), (499.1, 1.9)]):
        params = dict(BASE_PARAMS)
        rid = _log_training_run(
            client, cartpole, seed=seed, params=params, eval_mean=mean, eval_std=std, speed=1.0
        )
        small.append(rid)
        evals[rid] = (mean, std)
    # An evaluation video on the first run: 20 CartPole frames, as the evaluate stage logs it.
    clip = record_episode(
        EnvConfig("CartPole-v1"), 0, [0, 1] * 10, root / "clip", episode=0, max_frames=20
    )
    client.log_artifacts(small[0], str(clip.path.parent), "video")
    parent = client.create_run(cartpole, run_name="multirun", tags={"sweep": "kl"}).info.run_id
    large = []
    for seed, (mean, std) in enumerate([(500.0, 0.0), (471.4, 30.2)]):
        params = dict(BASE_PARAMS, **{"algo.max_kl": "0.02"})
        rid = _log_training_run(
            client,
            cartpole,
            seed=seed,
            params=params,
            eval_mean=mean,
            eval_std=std,
            speed=1.4,
            extra_tags={"mlflow.parentRunId": parent, "sweep": "kl"},
        )
        large.append(rid)
        evals[rid] = (mean, std)
    client.set_terminated(parent)
    pendulum = _log_training_run(
        client,
        other,
        seed=0,
        params=dict(BASE_PARAMS, **{"env.id": "Pendulum-v1"}),
        eval_mean=-180.5,
        eval_std=40.2,
        speed=0.8,
    )
    evals[pendulum] = (-180.5, 40.2)
    return Store(uri, small, large, parent, pendulum, evals)


@pytest.fixture(scope="module")
def written(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    write_report(store.uri, store.small_kl + store.large_kl, out)
    return out


# --- statistics against independent computations ---------------------------------------------


def test_t_quantile_matches_the_printed_table():
    # Two-sided 95% critical values of Student's t, as every statistics table prints them.
    table = {1: 12.706, 2: 4.303, 3: 3.182, 5: 2.571, 10: 2.228, 30: 2.042, 120: 1.980}
    for df, value in table.items():
        assert t_quantile_975(df) == pytest.approx(value, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_seed_band_is_the_t_interval_of_the_mean_at_each_step():
    steps = np.array([10, 20, 30])
    seeds = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 3.0], [4.0, 3.0, 9.0]])
    band = seed_band([Curve(steps, v) for v in seeds])
    half = 4.303 * seeds.std(axis=0, ddof=1) / math.sqrt(3)  # t(0.975, 2) from tables
    np.testing.assert_allclose(band.mean, seeds.mean(axis=0))
    np.testing.assert_allclose(band.high - band.mean, half, rtol=1e-4)
    np.testing.assert_array_equal(band.n, [3, 3, 3])


def test_seed_band_aligns_different_steps_and_skips_nan():
    a = Curve(np.array([0, 10, 20, 30]), np.array([math.nan, 1.0, 2.0, 3.0]))
    b = Curve(np.array([5, 15, 25]), np.array([2.0, 4.0, 6.0]))
    band = seed_band([a, b])
    # common range [5, 25]; a has no value before its first finite one (step 10)
    np.testing.assert_array_equal(band.steps, [5, 10, 15, 20, 25])
    np.testing.assert_array_equal(band.n, [1, 2, 2, 2, 2])
    np.testing.assert_allclose(band.mean, [2.0, (1 + 3) / 2, (1.5 + 4) / 2, (2 + 5) / 2, 4.25])
    assert math.isnan(band.low[0]) and not math.isnan(band.low[1])


def test_mean_ci_of_one_seed_has_no_interval():
    mean, half, n = mean_ci([3.0, math.nan])
    assert (mean, n) == (3.0, 1) and math.isnan(half)


# --- the report's content --------------------------------------------------------------------


def _section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, flags=re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def test_report_files_and_figures(written: Path):
    assert (written / "report.html").is_file() and (written / "report.md").is_file()
    for name in report.FIGURES:
        png = (written / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name
    markdown = (written / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(n for n in linked if not n.startswith("video/")) == sorted(report.FIGURES)
    page = (written / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(report.FIGURES)
    assert {base64.b64decode(e) for e in embedded} == {
        (written / n).read_bytes() for n in report.FIGURES
    }
    # self-contained: no script, nothing loaded from elsewhere (links to MLflow are only links)
    assert "<script" not in page
    assert not re.search(r'src="(?!data:)', page)
    assert re.findall(r"<link [^>]*>", page) == ['<link rel="icon" href="data:,">']


def test_a_run_s_evaluation_video_is_embedded_and_linked(store: Store, written: Path):
    rid = store.small_kl[0]
    video = written / "video" / rid / "episode-0.mp4"
    poster = video.with_suffix(".png")
    assert video.read_bytes()[4:8] == b"ftyp" and poster.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (written / "video").iterdir()) == [rid]  # runs with a video
    section = _section((written / "report.html").read_text(), "videos")
    (tag,) = re.findall(r"<video [^>]*>", section)
    assert "controls" in tag
    assert re.search(r'poster="data:image/png;base64,([^"]+)"', tag).group(1) == (
        base64.b64encode(poster.read_bytes()).decode()
    )
    assert re.search(r'src="data:video/mp4;base64,([^"]+)"', tag).group(1) == (
        base64.b64encode(video.read_bytes()).decode()
    )
    markdown = (written / "report.md").read_text()
    assert f"](video/{rid}/episode-0.png)](video/{rid}/episode-0.mp4)" in markdown


def test_evaluation_table_lists_every_run_and_its_numbers(store: Store, written: Path):
    page = (written / "report.html").read_text()
    markdown = (written / "report.md").read_text()
    evaluation = _section(page, "evaluation")
    for rid in store.small_kl + store.large_kl:
        mean, std = store.evals[rid]
        for text in (evaluation, markdown):
            assert rid in text
            assert f"{mean:,.1f} ± {std:,.1f}" in text
    assert store.pendulum not in page and store.parent not in evaluation  # a parent: no row
    # per configuration: the mean over seeds of the eval mean returns
    small_mean = np.mean([store.evals[r][0] for r in store.small_kl])
    assert f"{small_mean:,.1f}" in evaluation
    assert "algo.max_kl=0.01 (3 seeds)" not in evaluation  # legend text, not table text
    assert "algo.max_kl=0.01" in evaluation and "algo.max_kl=0.02" in evaluation


def test_config_diff_shows_exactly_the_differing_param(written: Path):
    diff = _section((written / "report.html").read_text(), "config-diff")
    rows = re.findall(r'<th scope="row"[^>]*>(?:<span[^>]*></span>)?([^<]+)</th>', diff)
    assert rows == ["algo.max_kl"]
    assert "0.01" in diff and "0.02" in diff
    assert "runs differ only in seed" in diff


def test_provenance_and_run_links(store: Store, written: Path):
    provenance = _section((written / "report.html").read_text(), "provenance")
    for rid in store.small_kl + store.large_kl:
        assert re.search(
            rf'href="http://127\.0\.0\.1:5000/#/experiments/\d+/runs/{rid}'
            rf'\?workflowType=machine_learning"',
            provenance,
        )
    assert f"mlflow ui --backend-store-uri {store.uri}" in provenance
    cartpole = MlflowClient(store.uri).get_experiment_by_name("trpo-cartpole").experiment_id
    assert f"5000/#/experiments/{cartpole}?workflowType=machine_learning" in provenance
    # tags that vary get a column; those every run shares are listed once above the table
    for tag in ("dvc_exp_name", "config_hash", "seed"):
        assert f"<th>{tag}</th>" in provenance
    shared = re.search(r'<p class="facts">Same in every run: (.*?)</p>', provenance).group(1)
    for tag, value in [("git_commit", "3f9c2a1b7d4e"), ("git_dirty", "false"),
                       ("torch_version", "2.13.0"), ("env_id", "CartPole-v1")]:  # fmt: skip
        assert f"<b>{tag}</b> <code>{value}</code>" in shared
        assert f"<th>{tag}</th>" not in provenance
    assert store.parent in provenance  # the children's parent run column


def test_http_store_links_into_its_own_ui(store: Store):
    client = MlflowClient(tracking_uri=store.uri)
    run = report.load_runs(store.uri, store.small_kl[:1])[0]
    url = report.run_url("https://user:secret@mlflow.example.org:8443/", run)
    exp = client.get_run(store.small_kl[0]).info.experiment_id
    assert url == (
        f"https://mlflow.example.org:8443/#/experiments/{exp}/runs/{run.run_id}"
        "?workflowType=machine_learning"
    )
    assert report.ui_command("https://mlflow.example.org") is None


def test_single_run_report_has_no_band_and_says_so(store: Store, tmp_path: Path):
    html = write_report(store.uri, [store.pendulum], tmp_path / "one")
    page = html.read_text()
    assert store.pendulum in page and "Pendulum-v1" in page
    assert "All runs share one configuration" in _section(page, "config-diff")


def test_run_without_metrics_still_reports(store: Store, tmp_path: Path):
    client = MlflowClient(tracking_uri=store.uri)
    exp = client.get_experiment_by_name("trpo-pendulum").experiment_id
    bare = client.create_run(exp, run_name="crashed-early").info.run_id
    client.log_batch(bare, params=[Param("env.id", "Acrobot-v1"), Param("seed", "7")])
    out = tmp_path / "bare"
    page = write_report(store.uri, [bare], out).read_text()
    assert bare in page and "No run has train/ metrics" in page
    assert not list(out.glob("*.png"))
    client.delete_run(bare)


def test_rewriting_a_report_removes_figures_it_no_longer_has(store: Store, tmp_path: Path):
    out = tmp_path / "again"
    write_report(store.uri, store.small_kl, out)
    (out / "stale").write_text("kept: not the report's")
    client = MlflowClient(tracking_uri=store.uri)
    exp = client.get_experiment_by_name("trpo-pendulum").experiment_id
    bare = client.create_run(exp).info.run_id
    write_report(store.uri, [bare], out)
    assert not list(out.glob("*.png")) and (out / "stale").exists()
    client.delete_run(bare)


# --- selecting runs --------------------------------------------------------------------------


def test_select_by_experiment_replaces_the_parent_by_its_children(store: Store):
    chosen = select_runs(store.uri, "trpo-cartpole", None, None)
    assert sorted(chosen) == sorted(store.small_kl + store.large_kl)


def test_select_by_tag_and_by_ids(store: Store):
    assert sorted(select_runs(store.uri, None, {"sweep": "kl"}, None)) == sorted(store.large_kl)
    seed0 = select_runs(store.uri, None, {"seed": "0"}, None)  # across experiments
    assert sorted(seed0) == sorted([store.small_kl[0], store.large_kl[0], store.pendulum])
    ids = [store.pendulum, store.small_kl[1]]
    assert select_runs(store.uri, None, None, ids) == ids
    assert select_runs(store.uri, None, None, [store.parent]) == store.large_kl
    both = select_runs(store.uri, "trpo-cartpole", {"seed": "0"}, None)
    assert sorted(both) == sorted([store.small_kl[0], store.large_kl[0]])


def test_tag_values_with_quotes_are_matched_exactly(store: Store):
    with pytest.raises(ReportError, match="no MLflow runs matched"):
        select_runs(store.uri, None, {"dvc_exp_name": 'it\'s "quoted"'}, None)


@pytest.mark.parametrize(
    ("experiment", "tags", "ids", "message"),
    [
        ("nope", None, None, r"no MLflow experiment named 'nope' .*\(experiments: .*trpo-cartpole"),
        (None, {"sweep": "none"}, None, r"no MLflow runs matched tag sweep=none"),
        (None, None, ["0123456789abcdef0123456789abcdef"], r"run '0123.*' not found"),
        ("trpo-pendulum", None, "small", r"no MLflow runs matched experiment 'trpo-pendulum'"),
        (None, None, None, r"say which runs"),
    ],
)
def test_select_errors_name_the_problem(store: Store, experiment, tags, ids, message):
    ids = store.small_kl if ids == "small" else ids
    with pytest.raises(ReportError, match=message):
        select_runs(store.uri, experiment, tags, ids)


def test_missing_store_is_not_created(tmp_path: Path):
    db = tmp_path / "absent.db"
    with pytest.raises(ReportError, match=f"no MLflow store at {db}"):
        select_runs(f"sqlite:///{db}", "x", None, None)
    assert not db.exists()


def test_relative_sqlite_uri_is_read_from_the_working_directory(
    store: Store, tmp_path: Path, monkeypatch
):
    db = Path(store.uri.removeprefix("sqlite:///"))
    monkeypatch.chdir(db.parent)
    assert select_runs(f"sqlite:///{db.name}", None, None, [store.pendulum]) == [store.pendulum]
    with pytest.raises(ReportError, match=r"no MLflow store at other\.db"):
        select_runs("sqlite:///other.db", None, None, [store.pendulum])


def test_unreachable_server_fails_fast():
    start = time.monotonic()
    with pytest.raises(
        ReportError, match=r"cannot reach the MLflow server at http://127\.0\.0\.1:9"
    ):
        select_runs("http://127.0.0.1:9", "x", None, None)
    assert time.monotonic() - start < 10


# --- the CLI ---------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        report_main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_by_experiment_writes_the_report(store: Store, tmp_path: Path, capsys):
    out = tmp_path / "exp"
    code, stdout, _ = _cli(
        capsys, "--tracking-uri", store.uri, "--experiment", "trpo-cartpole", "--out", str(out)
    )
    assert code == 0
    assert str(out / "report.html") in stdout and "mlflow ui --backend-store-uri" in stdout
    page = (out / "report.html").read_text()
    assert all(rid in page for rid in store.small_kl + store.large_kl)


def test_cli_by_tag_and_run_ids(store: Store, tmp_path: Path, capsys):
    out = tmp_path / "tag"
    code, _, _ = _cli(capsys, "--tracking-uri", store.uri, "--tag", "sweep=kl", "--out", str(out))
    assert code == 0
    page = (out / "report.html").read_text()
    assert all(r in page for r in store.large_kl) and store.small_kl[0] not in page
    out = tmp_path / "ids"
    ids = [a for rid in (store.small_kl[0], store.pendulum) for a in ("--run-id", rid)]
    code, _, _ = _cli(capsys, "--tracking-uri", store.uri, *ids, "--out", str(out))
    page = (out / "report.html").read_text()
    assert code == 0 and store.pendulum in page and store.small_kl[1] not in page


def test_cli_uses_mlflow_tracking_uri(store: Store, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = _cli(capsys, "--run-id", store.pendulum)
    assert code == 0
    (html,) = (tmp_path / "reports").glob("*/report.html")
    assert str(html.relative_to(tmp_path)) in stdout


def test_cli_refuses_to_overwrite(store: Store, tmp_path: Path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ("--tracking-uri", store.uri, "--run-id", store.pendulum, "--out", str(out))
    code, _, err = _cli(capsys, *args)
    assert code == 2
    assert err.strip() == (
        f"trpo-report: error: --out {out} is not empty; "
        "pass --overwrite to write the report into it anyway"
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, _, _ = _cli(capsys, *args, "--overwrite")
    assert code == 0 and (out / "report.html").is_file() and (out / "notes.txt").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--experiment", "trpo-cartpole", "--tag", "sweep=none"), "no MLflow runs matched"),
        (("--run-id", "ffffffffffffffffffffffffffffffff"), "run 'ffff"),
        (("--experiment", "missing"), "no MLflow experiment named 'missing'"),
        ((), "say which runs to compare"),
    ],
)
def test_cli_bad_selection_is_one_line_and_exit_2(
    store: Store, tmp_path: Path, capsys, args, message
):
    out = tmp_path / "never"
    code, stdout, err = _cli(capsys, "--tracking-uri", store.uri, *args, "--out", str(out))
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("trpo-report: error: ") and message in err
    assert not out.exists()


def test_cli_unreachable_store(tmp_path: Path, capsys):
    db = tmp_path / "none.db"
    code, _, err = _cli(capsys, "--tracking-uri", f"sqlite:///{db}", "--experiment", "x")
    assert code == 2
    assert err == f"trpo-report: error: no MLflow store at {db} (nothing tracked there yet)\n"


def test_console_script_is_installed(store: Store, tmp_path: Path):
    script = Path(sys.executable).parent / "trpo-report"
    assert script.exists(), "trpo-report is not installed: pip install -e ."
    result = subprocess.run(
        [str(script), "--tracking-uri", store.uri, "--run-id", store.pendulum, "--out",
         str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r" / "report.html").is_file()


# --- rendering in headless Chromium ----------------------------------------------------------

MEDIA_STATES = """() => ({
  images: [...document.images].map(img => {
    const box = img.getBoundingClientRect();
    return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,
            naturalHeight: img.naturalHeight, shownWidth: box.width, shownHeight: box.height};
  }),
  videos: [...document.querySelectorAll("video")].map(v => ({
    duration: v.duration, readyState: v.readyState, width: v.videoWidth,
    poster: v.poster.slice(0, 22), controls: v.controls})),
})"""


def test_report_renders_in_headless_chromium(written: Path, tmp_path: Path):
    problems: list[str] = []
    fetched: set[str] = set()
    with browser_page() as page:
        page.on("console", lambda m: m.type in ("error", "assert") and problems.append(m.text))
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url[:80]}"))
        page.on("request", lambda r: fetched.add(r.url.split(",")[0].split(";")[0]))
        page_url = (written / "report.html").as_uri()
        page.goto(page_url, wait_until="load")
        # a video's metadata loads after the page's load event
        page.wait_for_function(
            "[...document.querySelectorAll('video')].every(v => v.readyState >= 1)"
        )
        media = page.evaluate(MEDIA_STATES)
        page.screenshot(path=str(tmp_path / "screenshot.png"), full_page=True)

    assert problems == []
    allowed = {page_url, "data:image/png", "data:video/mp4"}
    assert fetched <= allowed, fetched  # nothing from the network
    images = media["images"]
    assert len(images) == len(report.FIGURES)
    for img in images:
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
        assert img["shownWidth"] > 600 and img["shownHeight"] > 200, img  # laid out, not hidden
    (video,) = media["videos"]
    assert video["duration"] > 0 and video["width"] == 600 and video["controls"], video
    assert video["poster"] == "data:image/png;base64,", video
