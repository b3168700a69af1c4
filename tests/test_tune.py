"""trpo-tune: search-space validation, pruning, divergence, the tuned experiment, resuming."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline_support import copy_conf, tune_budget
from trpo_pipeline import tune
from trpo_pipeline.cli.tune import override
from trpo_pipeline.config import ConfigError
from trpo_pipeline.launch.compose import compose, load_config
from trpo_pipeline.rl.evaluate import evaluate
from trpo_pipeline.rl.train import train

BIN = Path(sys.executable).parent
# The tiny budget: 8 updates of 512 steps, an evaluation (3 episodes) every 2 updates.
TINY = tune_budget()


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A copy of conf/: the tuned experiment is written there, not into the repository."""
    return copy_conf(tmp_path)


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _study(overrides: list[str], conf: Path, **kwargs: object) -> tune.StudySummary:
    """run_study as trpo-tune runs it: each trial composes the command line plus its values."""

    def compose_trial(values: dict[str, object]) -> object:
        return load_config(compose(overrides + [override(k, v) for k, v in values.items()], conf))

    cfg = load_config(compose(overrides, conf))
    return tune.run_study(
        cfg,
        compose_trial=compose_trial,
        default=load_config(compose([], conf)),
        **kwargs,
    )


# --- the search space is data, checked against the schema before any trial -------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+tune.search_space.algo.max_kll={type:float,low:0.01,high:0.1}"],
            "tune.search_space.algo.max_kll: unknown key (allowed under algo: max_kl,",
        ),
        (
            ["tune.search_space.algo.max_kl.low=0"],
            "tune.search_space.algo.max_kl.low: must be > 0 (log: true), got 0.0",
        ),
        (
            ["tune.search_space.algo.gae_lambda.high=2.0"],
            "tune.search_space.algo.gae_lambda.high: gives algo.gae_lambda=-1.0: "
            "algo.gae_lambda: must be in [0.0, 1.0], got -1.0",
        ),
        (
            ["+tune.search_space.policy={activation:{type:categorical,choices:[tanh,sigmoid]}}"],
            "tune.search_space.policy.activation.choices: gives policy.activation='sigmoid': "
            "policy.activation: must be one of",
        ),
        (
            ["+tune.search_space.algo.vf_epochs={type:float,low:1,high:5}"],
            "tune.search_space.algo.vf_epochs.type: algo.vf_epochs is not a float",
        ),
        (
            ["+tune.search_space.tune={n_trials:{type:int,low:1,high:2}}"],
            "tune.search_space.tune: unknown or untunable group (tunable: env, policy, algo,",
        ),
        (["tune.sampler.name=grid"], "tune.sampler.name: must be one of tpe, random,"),
        (["tune.pruner.name=asha"], "tune.pruner.name: must be one of median, hyperband, none"),
        (["tune.n_trials=0"], "tune.n_trials: must be > 0, got 0"),
        (["tune.storage.url=optuna.db"], "tune.storage.url: must be an RDB URL"),
    ],
)
def test_bad_search_space_or_study_settings_fail_with_one_line_naming_the_key(
    overrides: list[str], message: str, conf: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        tune.validate_tune(load_config(compose(overrides, conf)))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_new_search_keys_need_only_yaml(conf: Path) -> None:
    """An int, a categorical and the 1 - x transform, added on the command line."""
    cfg = load_config(
        compose(
            [
                "+tune.search_space.algo.vf_epochs={type:int,low:2,high:8,step:2}",
                "+tune.search_space.policy={activation:{type:categorical,choices:[tanh,relu]}}",
            ],
            conf,
        )
    )
    tune.validate_tune(cfg)
    trial = optuna.trial.FixedTrial(
        {
            "algo.max_kl": 0.02,
            "1-algo.gae_lambda": 0.01,
            "algo.vf_lr": 3e-4,
            "algo.vf_epochs": 6,
            "policy.activation": "relu",
        }
    )
    values = tune.suggest(trial, tune.dimensions(cfg.tune))
    assert values == {
        "algo.max_kl": 0.02,
        "algo.gae_lambda": pytest.approx(0.99),
        "algo.vf_lr": 3e-4,
        "algo.vf_epochs": 6,
        "policy.activation": "relu",
    }
    trial_cfg = tune.with_values(cfg, values)
    assert (trial_cfg.algo.vf_epochs, trial_cfg.policy.activation) == (6, "relu")


def test_trpo_tune_rejects_a_misspelt_key_before_anything_runs(conf: Path, tmp_path: Path) -> None:
    env = os.environ | {
        "TRPO_CONF_DIR": str(conf),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db",
    }
    work = tmp_path / "work"
    work.mkdir()
    commands = [
        ["+tune.search_space.algo.max_kll={type:float,low:0.01,high:0.1}"],
        ["-m", "seed=0,1"],
    ]
    procs = [
        subprocess.Popen(
            [str(BIN / "trpo-tune"), *args, "tune.storage.url=sqlite:///optuna.db"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    (rc1, err1), (rc2, err2) = results
    assert rc1 == 2
    assert err1.strip().splitlines() == [err1.strip()] and err1.startswith(
        "trpo-tune: error: tune.search_space.algo.max_kll: unknown key"
    )
    assert rc2 == 2 and err2.startswith("trpo-tune: error: seed: ")  # -m sweeps seeds of workers
    assert list(work.iterdir()) == []  # no study, no runs folder, no MLflow store


# --- a study: pruning, the best trial as an experiment, MLflow -------------------------------


def test_median_pruner_stops_blind_trials_and_the_best_trial_becomes_an_experiment(
    conf: Path, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 0 sees its observations; trials 1 and 2 clip them to +-1e-6, so their policies
    are blind, always push the same way and drop the pole within about ten steps. With the
    median pruner comparing from the first finished trial on, both must be pruned at their
    first report."""
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    overrides = [
        *TINY,
        "env.normalize_obs=true",  # clip_obs applies to normalised observations
        "+tune.search_space.env={clip_obs:{type:float,low:1e-6,high:10.0,log:true}}",
        f"tune.storage.url={storage}",
        "tune.study_name=blind",
        "tune.n_trials=3",
        "tune.pruner.n_startup_trials=1",
    ]
    seen = {
        "algo.max_kl": 0.02,
        "1-algo.gae_lambda": 0.05,
        "algo.vf_lr": 1e-3,
        "env.clip_obs": 10.0,
    }
    study = optuna.create_study(study_name="blind", storage=storage, direction="maximize")
    for params in (seen, seen | {"env.clip_obs": 1e-6}, seen | {"env.clip_obs": 1e-6}):
        study.enqueue_trial(params)
    lines: list[str] = []
    tuned = conf / "experiment" / "tuned_blind.yaml"

    summary = _study(
        overrides,
        conf,
        study_dir=tmp_path / "runs/tune/blind",
        tuned_config=tuned,
        echo=lines.append,
    )

    trials = optuna.load_study(study_name="blind", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert all(t.intermediate_values[2] < 20 < trials[0].intermediate_values[2] for t in trials[1:])
    assert (summary.n_complete, summary.n_pruned, summary.best_number) == (1, 2, 0)
    # A line per finished trial, then the tuned config and the report.
    assert [ln.split()[2] for ln in lines if ln.startswith("trial")] == [
        "complete",
        "pruned",
        "pruned",
    ]
    assert re.search(
        r"trial +1 pruned +at update 2, return 9\.\d+ \| .*env\.clip_obs=1e-06", "\n".join(lines)
    )
    assert (tmp_path / "runs/tune/blind/trial_2/learning_curve.csv").is_file()
    assert (tmp_path / "runs/tune/blind/report/report.md").is_file()
    assert (tmp_path / "runs/tune/blind/report/optimization_history.png").is_file()

    # The tuned experiment composes and retrains the best trial exactly.
    text = tuned.read_text()
    assert text.startswith("# @package _global_\n# Written by trpo-tune from study 'blind'")
    cfg = load_config(compose(["experiment=tuned_blind", "tracking.enabled=false"], conf))
    assert (cfg.name, cfg.algo.max_kl, cfg.env.clip_obs, cfg.env.normalize_obs) == (
        "tuned_blind",
        0.02,
        10.0,
        True,
    )
    assert (cfg.algo.gae_lambda, cfg.train.total_steps) == (pytest.approx(0.95), 4096)
    result = train(cfg, tmp_path / "retrain")
    assert evaluate(result.checkpoint, cfg.evaluate).mean_return == summary.best_value

    # MLflow: the study is the parent run, each trial a child run with its state and values.
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("trpo-pipeline").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("tune_role") == "study"]
    children = sorted(
        (r for r in runs if r.data.tags.get("tune_role") == "trial"),
        key=lambda r: int(r.data.tags["trial_number"]),
    )
    assert [r.data.tags["mlflow.parentRunId"] for r in children] == [parent.info.run_id] * 3
    assert [r.data.tags["trial_state"] for r in children] == ["complete", "pruned", "pruned"]
    assert children[1].data.params["env.clip_obs"] == "1e-06"
    curve = (tmp_path / "runs/tune/blind/trial_0/learning_curve.csv").read_text().splitlines()
    env_steps = {int(r.split(",")[0]): int(r.split(",")[1]) for r in curve[1:]}
    history = client.get_metric_history(children[0].info.run_id, "tune/intermediate_return")
    assert sorted(m.step for m in history) == [env_steps[u] for u in (2, 4, 6, 8)]
    assert children[0].data.metrics["tune/objective"] == summary.best_value
    assert "tune/objective" not in children[1].data.metrics
    assert parent.info.status == "FINISHED" and parent.data.metrics["tune/trials_pruned"] == 2


@pytest.mark.parametrize("how", ["raises", "nan_stats"])
def test_a_diverging_trial_is_pruned_with_its_reason_and_the_study_goes_on(
    how: str, conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trpo_pipeline.rl import trpo
    from trpo_pipeline.rl.train import UpdateRecord

    def diverging_train(cfg: object, run_dir: Path, *, callbacks: list) -> None:
        if how == "raises":  # what torch says about NaN logits
            raise ValueError(
                "Expected parameter logits (Tensor of shape (4, 2)) of distribution "
                "Categorical(logits: torch.Size([4, 2])) to satisfy the constraint "
                "IndependentConstraint(Real(), 1), but found invalid values:\ntensor([[nan, nan]])"
            )
        nan = float("nan")
        stats = trpo.UpdateStats(
            surrogate_before=0.0,
            surrogate_after=nan,
            kl=nan,
            line_search_steps=1,
            line_search_accepted=True,
            skipped="",
            cg_residual=0.0,
            step_size=0.0,
            grad_norm=nan,
            entropy=0.6,
            value_loss=nan,
            explained_variance=0.0,
        )
        for cb in callbacks:
            cb(UpdateRecord(1, 512, nan, nan, 0, 0.1, 5000.0, stats))

    monkeypatch.setattr("trpo_pipeline.tune.objective.train", diverging_train)
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    overrides = [*TINY, "tracking.enabled=false", f"tune.storage.url={storage}", "tune.n_trials=2"]
    summary = _study(overrides, conf, study_dir=tmp_path / "study", echo=lambda line: None)
    assert (summary.n_pruned, summary.n_complete, summary.best_number) == (2, 0, None)
    for trial in optuna.load_study(study_name="cartpole", storage=storage).trials:
        assert trial.state == TrialState.PRUNED
        assert re.search(r"nan|not finite", trial.user_attrs["diverged"])


def test_report_draws_history_importances_slice_and_contour(tmp_path: Path, conf: Path) -> None:
    cfg = load_config(compose([], conf))
    study = optuna.create_study(direction="maximize")
    dist = {
        "algo.max_kl": optuna.distributions.FloatDistribution(1e-3, 0.1, log=True),
        "algo.vf_lr": optuna.distributions.FloatDistribution(1e-5, 3e-3, log=True),
    }
    for i in range(6):
        params = {"algo.max_kl": 1e-3 * 2**i, "algo.vf_lr": 1e-5 * 3**i}
        pruned = i % 3 == 2
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dist,
                value=None if pruned else 100.0 + 50 * i,
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                intermediate_values={2: 20.0 * i, 4: 30.0 * i},
                user_attrs={"config": params, "env_steps": 2048 if pruned else 4096},
            )
        )
    summary = tune.summarize(study, cfg, 1.0)
    report = tune.write_report(study, summary, tmp_path / "report")
    text = report.read_text()
    for name in ("optimization_history", "param_importances", "slice", "contour"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 1000, name
        assert f"![{name}]({name}.png)" in text
    assert "| 2 | pruned | 60.00 at update 4 |" in text


def test_an_existing_experiment_is_not_replaced_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "tuned_x.yaml"
    path.write_text("# @package _global_\nalgo: {max_kl: 0.5}\n")
    with pytest.raises(ConfigError, match=r"not written by study 'x'; pass tune\.overwrite=true"):
        tune.check_tuned_config(path, "x", overwrite=False)
    tune.check_tuned_config(path, "x", overwrite=True)
    path.write_text("# @package _global_\n# Written by trpo-tune from study 'x' (...): trial 3\n")
    tune.check_tuned_config(path, "x", overwrite=False)  # this study's own: refreshed
    with pytest.raises(ConfigError):
        tune.check_tuned_config(path, "y", overwrite=False)


# --- resuming an interrupted study -----------------------------------------------------------


def test_an_interrupted_trpo_tune_continues_the_same_study(conf: Path, tmp_path: Path) -> None:
    env = os.environ | {
        "TRPO_CONF_DIR": str(conf),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "PYTHONUNBUFFERED": "1",
    }
    storage = f"sqlite:///{tmp_path}/optuna.db"
    # Trials of a few seconds: with TINY's the second trial could end (in well under a second on
    # a quiet machine) before the Ctrl-C lands, and the first run would finish the study.
    argv = [str(BIN / "trpo-tune"), *tune_budget(24576), f"tune.storage.url={storage}"]
    argv += ["tune.n_trials=2", "tune.study_name=resume", "tune.pruner.name=none"]

    first = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C in a terminal reaches the command. A shell starts background jobs with SIGINT
        # ignored (a CI runner may run the suite so), and Python keeps an ignored SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    out = []
    deadline = time.monotonic() + 120
    for line in first.stdout:  # Ctrl-C once the first trial has finished ...
        out.append(line)
        if line.startswith("trial   0 "):
            break
        assert time.monotonic() < deadline, "".join(out)
    # ... and the second one trains (its folder is there): cut mid-trial. Sooner, the signal can
    # land while Optuna creates the trial, outside the objective, and leave it RUNNING until its
    # heartbeat goes stale.
    second_trial = tmp_path / "runs" / "tune" / "resume" / "trial_1"
    while not second_trial.is_dir() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)
    out.append(first.communicate(timeout=60)[0])
    assert first.returncode == 130, "".join(out)
    assert "Run the same command again to continue study 'resume'" in "".join(out)
    before = optuna.load_study(study_name="resume", storage=storage).trials
    assert before[0].state == TrialState.COMPLETE
    assert [t.state for t in before[1:]] in ([], [TrialState.FAIL])  # cut mid-trial: failed

    second = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 of 2 trials finished" in second.stdout
    numbers = [int(m) for m in re.findall(r"^trial +(\d+) ", second.stdout, flags=re.M)]
    assert numbers == [len(before)]  # numbering continues after the first run's trials

    assert len(optuna.get_all_study_summaries(storage)) == 1
    trials = optuna.load_study(study_name="resume", storage=storage).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2  # the cap, across both runs
    assert (conf / "experiment" / "tuned_resume.yaml").is_file()

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("trpo-pipeline").experiment_id])
    assert len([r for r in runs if r.data.tags.get("tune_role") == "study"]) == 1  # reopened


def test_the_dvc_stage_tunes_params_yaml(conf: Path, tmp_path: Path, monkeypatch) -> None:
    """tune/dvc.yaml's command: the study of params.yaml, trials being params.yaml + values."""
    import yaml

    from trpo_pipeline.rl.schema import to_dict
    from trpo_pipeline.stages.tune import main as stage_main

    monkeypatch.setenv("TRPO_CONF_DIR", str(conf))
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, "tracking.enabled=false", "tune.n_trials=2", "tune.study_name=stage"]
    overrides.append(f"tune.storage.url=sqlite:///{tmp_path}/optuna.db")
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(to_dict(load_config(compose(overrides, conf))), sort_keys=False)
    )
    stage_main(["--params", "params.yaml", "--output-dir", "outputs/tune"])
    assert (tmp_path / "outputs/tune/stage/report/report.md").is_file()
    assert sorted(p.name for p in (tmp_path / "outputs/tune/stage").glob("trial_*")) == [
        "trial_0",
        "trial_1",
    ]
    cfg = load_config(compose(["experiment=tuned_stage"], conf))
    assert cfg.train.total_steps == 4096 and cfg.name == "tuned_stage"
