"""Bad input everywhere: config values and command-line overrides that are out of range, of
the wrong type, unknown keys, unknown env ids, empty, huge or non-finite each end with one
clear line and a non-zero exit, before anything is written.

Most examples run in-process through the checks every command makes before Hydra starts
(launch.app.check_command); a handful of real commands then show, on a working folder with an
existing MLflow store, dvc.lock, params.yaml and results, that nothing at all changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_support import new_store
from trpo_pipeline.cli import tune as tune_cli
from trpo_pipeline.config import Config, ConfigError
from trpo_pipeline.launch import app
from trpo_pipeline.rl.errors import MAX_MESSAGE
from trpo_pipeline.rl.runtime import check_device
from trpo_pipeline.stages.common import read_params

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
BIN = Path(sys.executable).parent
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def leaves(cls: Any = Config, prefix: str = "") -> dict[str, Any]:
    """{dotted key: annotation} of every single-value key of the schema."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out |= leaves(tp, f"{prefix}{f.name}.")
        elif typing.get_origin(tp) is not dict:  # tune.search_space: names are data
            out[f"{prefix}{f.name}"] = tp
    return out


KEYS = leaves()
RUN_KEYS = sorted(k for k in KEYS if not k.startswith("tune."))  # what trpo-train reads
TUNE_KEYS = sorted(k for k in KEYS if k.startswith("tune."))  # checked by trpo-tune


def base(tp: Any) -> Any:
    """The annotation without Optional."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, type(int | None)) else tp


def literal(value: Any) -> str:
    """``value`` as Hydra's override grammar writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else {math.inf: "inf", -math.inf: "-inf"}.get(value, repr(value))
        )
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "[" + ",".join(literal(v) for v in value) + "]"


def checks(argv: list[str], tmp: Path) -> None:
    """What a command checks before Hydra starts: trpo-tune's checks for tune.* keys,
    trpo-train's otherwise (the tracking store in ``tmp``)."""
    store = [f"tracking.uri=sqlite:///{tmp}/mlflow.db"]
    if any(a.lstrip("+~").startswith("tune.") for a in argv):
        tune_cli._check([*store, *argv], CONF)
    else:
        # Every job composed and checked, the device, then Hydra's own settings.
        app.check_command(
            [*store, *argv],
            CONF,
            lambda configs, folder, command: [check_device(c.train.device) for c in configs],
        )


def rejected(argv: list[str], tmp: Path) -> str:
    """The one-line message a bad command line gets (fails the test if it is accepted)."""
    with pytest.raises(ConfigError) as caught:
        checks(argv, tmp)
    message = str(caught.value)
    assert "\n" not in message and 0 < len(message) <= MAX_MESSAGE, message
    return message


def names_key(message: str, key: str) -> bool:
    return message.startswith((f"{key}: ", f"{key}[")) or f"'{key}'" in message


# --- out of range --------------------------------------------------------------------------------

finite = {"allow_nan": False, "allow_infinity": False}


def outside(low: float, high: float | None, *, low_open: bool = True) -> st.SearchStrategy:
    """Finite floats below ``low`` (or equal, when the range is open there) or above high."""
    below = st.floats(max_value=low, exclude_max=not low_open, **finite)
    return below if high is None else below | st.floats(min_value=high, exclude_min=True, **finite)


def ints_outside(low: int, high: int | None = None) -> st.SearchStrategy:
    below = st.integers(max_value=low - 1)
    return below if high is None else below | st.integers(min_value=high + 1, max_value=10**40)


OUT_OF_RANGE: dict[str, st.SearchStrategy] = {
    "algo.max_kl": outside(0.0, None),
    "algo.gamma": outside(0.0, 1.0),
    "algo.gae_lambda": outside(0.0, 1.0, low_open=False),
    "algo.line_search_shrink": outside(0.0, None) | st.floats(min_value=1.0, **finite),
    "algo.fvp_subsample": outside(0.0, 1.0),
    "algo.vf_lr": outside(0.0, 1.0),
    "algo.cg_damping": outside(0.0, 1000.0, low_open=False),
    "algo.entropy_coef": outside(0.0, 1.0, low_open=False),
    "algo.vf_epochs": ints_outside(1, 10_000),
    "algo.cg_iters": ints_outside(1, 10_000),
    "algo.line_search_steps": ints_outside(1, 1000),
    "algo.vf_minibatch": ints_outside(1, 10_000_000),
    "algo.steps_per_update": ints_outside(1, 10_000_000),
    "algo.num_envs": ints_outside(1, 1024),
    "env.clip_obs": outside(0.0, None),
    "env.clip_reward": outside(0.0, None),
    "policy.log_std_init": outside(-20.0, 2.0, low_open=False),
    "policy.hidden_sizes": st.lists(st.integers(-5, 64), max_size=3).filter(
        lambda v: not v or min(v) <= 0
    )
    | st.lists(st.integers(8193, 10**9), min_size=1, max_size=3)
    | st.just([8] * 65),
    "policy.critic_hidden_sizes": st.lists(st.integers(-5, 0), min_size=1, max_size=3),
    "train.total_steps": ints_outside(1),
    "train.checkpoint_every": ints_outside(1),
    "train.torch_threads": ints_outside(1, 1024),
    "evaluate.episodes": ints_outside(1, 10_000),
    "evaluate.seed": ints_outside(0, 2**32 - 1),
    "seed": ints_outside(0, 2**32 - 1),
    "tune.n_trials": ints_outside(1),
    "tune.report_every": ints_outside(1),
    "tune.report_episodes": ints_outside(1, 10_000),
    "tune.pruner.reduction_factor": ints_outside(2),
    "tune.storage.max_retry": ints_outside(0),
    "tune.storage.heartbeat_interval": ints_outside(1),
}


@EXAMPLES
@given(data=st.data())
def test_out_of_range_values_are_one_line_errors_naming_the_key(data, tmp_path) -> None:
    key = data.draw(st.sampled_from(sorted(OUT_OF_RANGE)), label="key")
    value = data.draw(OUT_OF_RANGE[key], label="value")
    assert names_key(rejected([f"{key}={literal(value)}"], tmp_path), key)


# --- wrong types ---------------------------------------------------------------------------------

# Plain text: no quotes, backslashes or ${...} (those are the fuzz test's business).
plain_text = st.text(st.characters(blacklist_characters="$\\'\"", codec="utf-8"), max_size=20)
non_integral = st.floats(**finite).filter(lambda x: x != int(x))
WRONG: dict[Any, st.SearchStrategy] = {
    int: plain_text | non_integral | st.booleans() | st.lists(st.integers(), max_size=2),
    float: plain_text | st.booleans() | st.lists(st.floats(**finite), max_size=2),
    bool: plain_text | st.integers() | non_integral | st.lists(st.booleans(), max_size=2),
    str: st.integers() | st.floats(**finite) | st.booleans() | st.lists(st.integers(), max_size=2),
    tuple[int, ...]: st.integers()
    | plain_text
    | st.lists(plain_text | non_integral | st.booleans(), min_size=1, max_size=3),
}


@EXAMPLES
@given(data=st.data())
def test_values_of_the_wrong_type_are_one_line_errors_naming_the_key(data, tmp_path) -> None:
    key = data.draw(st.sampled_from(sorted(KEYS)), label="key")
    value = data.draw(WRONG[base(KEYS[key])], label="value")
    assert names_key(rejected([f"{key}={literal(value)}"], tmp_path), key)


# --- unknown keys, unknown env ids ---------------------------------------------------------------

GROUPS = sorted({k.split(".")[0] for k in KEYS if "." in k} - {"tune"})
identifier = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)


@EXAMPLES
@given(group=st.sampled_from(["", *GROUPS]), name=identifier, plus=st.booleans())
def test_unknown_keys_are_one_line_errors_naming_them(group, name, plus, tmp_path) -> None:
    key = f"{group}.{name}" if group else name
    if key in KEYS or name in {*GROUPS, "tune", "hydra", "defaults", "experiment"}:
        return
    message = rejected([f"{'+' if plus else ''}{key}=1"], tmp_path)
    assert names_key(message, key) and "unknown key" in message


@EXAMPLES
@given(env_id=plain_text.filter(lambda s: s not in gym.registry))
def test_unknown_env_ids_are_one_line_errors(env_id, tmp_path) -> None:
    message = rejected([f"env.id={literal(env_id)}"], tmp_path)
    assert message.startswith("env.id: unknown gymnasium environment")


# --- empty, huge, non-finite ---------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(KEYS))
def test_empty_values_are_one_line_errors(key, tmp_path) -> None:
    assert names_key(rejected([f"{key}="], tmp_path), key)


# Huge is harmless for these: a long budget, a rare checkpoint, a wide trust region, no clip.
HARMLESS_WHEN_HUGE = {
    "algo.max_kl",
    "train.total_steps",
    "train.checkpoint_every",
    "env.clip_obs",
    "env.clip_reward",
    "tune.n_trials",
    "tune.report_every",
    "tune.sampler.n_startup_trials",
    "tune.pruner.n_startup_trials",
    "tune.pruner.n_warmup_steps",
    "tune.pruner.min_resource",
    "tune.pruner.reduction_factor",
    "tune.storage.heartbeat_interval",
    "tune.storage.grace_period",
    "tune.storage.max_retry",
    "tune.sampler.seed",
}


@EXAMPLES
@given(data=st.data())
def test_huge_values_are_one_line_errors_unless_harmless(data, tmp_path) -> None:
    key = data.draw(st.sampled_from(sorted(KEYS)), label="key")
    tp = base(KEYS[key])
    if tp is int:
        text = "1" + "0" * data.draw(st.integers(12, 5000), label="zeros")  # 10^12 .. 10^5000
    elif tp is float:
        text = literal(data.draw(st.floats(1e30, 1.7e308), label="value"))
    elif tp is str:
        text = literal(data.draw(st.text(min_size=5000, max_size=20000), label="value"))
    elif tp is bool:
        return
    else:
        text = literal([64] * data.draw(st.integers(65, 3000), label="size"))
    argv = [f"{key}={text}"]
    if key in HARMLESS_WHEN_HUGE:
        try:
            checks(argv, tmp_path)
        except ConfigError as err:
            assert "\n" not in str(err) and len(str(err)) <= MAX_MESSAGE
        return
    rejected(argv, tmp_path)


@pytest.mark.parametrize(
    "key", sorted(k for k, tp in KEYS.items() if base(tp) in (int, float, tuple[int, ...]))
)
def test_non_finite_numbers_are_one_line_errors(key, tmp_path) -> None:
    for value in ("nan", "inf", "-inf"):
        text = f"[{value}]" if base(KEYS[key]) is not float and "sizes" in key else value
        message = rejected([f"{key}={text}"], tmp_path)
        assert names_key(message, key)
        if base(KEYS[key]) is float:
            assert "finite" in message


# --- anything at all -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=st.lists(st.text(max_size=60), min_size=1, max_size=3))
def test_any_command_line_is_accepted_or_one_line_error(argv, tmp_path) -> None:
    """Arbitrary text, quotes, ${interpolations}, brackets and all: never a traceback."""
    try:
        checks(argv, tmp_path)
    except ConfigError as err:
        assert "\n" not in str(err) and 0 < len(str(err)) <= MAX_MESSAGE


PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
any_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_params_yaml_is_read_or_one_line_error(data, tmp_path) -> None:
    """The DVC stages' params.yaml: one value replaced by anything, or the text mangled."""
    tree = yaml.safe_load(yaml.safe_dump(PARAMS))
    group = data.draw(st.sampled_from(sorted(tree)), label="group")
    if isinstance(tree[group], dict) and data.draw(st.booleans(), label="inside"):
        key = data.draw(st.sampled_from(sorted(tree[group])) | identifier, label="key")
        tree[group][key] = data.draw(any_value, label="value")
    else:
        tree[group] = data.draw(any_value, label="value")
    text = yaml.safe_dump(tree)
    if data.draw(st.booleans(), label="mangle"):
        cut = data.draw(st.integers(0, len(text)), label="cut")
        text = text[:cut] + data.draw(st.text(max_size=20), label="insert") + text[cut:]
    path = tmp_path / "params.yaml"
    path.write_text(text)
    try:
        read_params(path)
    except ConfigError as err:
        assert "\n" not in str(err) and 0 < len(str(err)) <= MAX_MESSAGE


# --- folders Hydra made for a run that then failed ----------------------------------------------


def test_an_error_in_the_task_removes_every_empty_folder_hydra_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "other").mkdir(parents=True)  # there before: stays
    planned = tmp_path / "runs" / "fresh" / "seed0"
    new = app._folders_to_create(planned)
    assert new == [planned, planned.parent]
    monkeypatch.setattr(app, "_new_folders", new)
    planned.mkdir(parents=True)  # what Hydra does
    app.remove_empty_folders(planned)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other"]

    (tmp_path / "runs" / "other").rmdir()
    monkeypatch.setattr(app, "_new_folders", [])  # nothing planned: the run folder only
    planned.mkdir(parents=True)
    (planned.parent / "keep.txt").write_text("x")
    app.remove_empty_folders(planned)
    assert not planned.exists() and (planned.parent / "keep.txt").exists()


# --- real commands: nothing written, anywhere ----------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``: its name, and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        )
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder as a user has it after some work: conf/, params.yaml, dvc.lock, an
    MLflow store with a run in it, a trained run folder and pipeline outputs."""
    from trpo_pipeline import tracking
    from trpo_pipeline.config import config_from_dict

    work = tmp_path_factory.mktemp("work")
    shutil.copytree(CONF, work / "conf", ignore=shutil.ignore_patterns("tuned_*"))
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    (work / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train:\n    cmd: python -m x\n")
    (work / ".dvc").mkdir()
    uri = new_store(work)
    cfg = config_from_dict({"tracking": {"uri": uri}, "train": {"progress": False}})
    run = tracking.start_run(cfg)
    run.log_metrics({"train/kl": 0.01}, step=1)
    run.finish()
    trained = work / "runs" / "cartpole" / "seed0"
    trained.mkdir(parents=True)
    (trained / "checkpoint.pt").write_bytes(b"not a checkpoint")
    unsynced = work / "runs" / "unsynced" / "seed0"  # trained while MLflow was down
    unsynced.mkdir(parents=True)
    (unsynced / "learning_curve.csv").write_text("update,env_steps\n1,512\n")
    (unsynced / "mlflow_pending.json").write_text('{"run_id": null, "status": "FINISHED"}\n')
    (work / "outputs" / "train").mkdir(parents=True)
    (work / "outputs" / "train" / "train_metrics.json").write_text('{"updates": 3}\n')
    (work / "bad_params.yaml").write_text(
        (REPO / "params.yaml").read_text().replace("max_kl: 0.01", "max_kl: -1")
    )
    (work / "broken_params.yaml").write_text("env: {id: [CartPole\nalgo: ]\n")
    return work


def command(work: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    from pipeline_support import command_env

    return subprocess.run(
        argv,
        cwd=work,
        env=command_env({"MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


BAD_COMMANDS = [
    ("trpo-train", ["algo.max_kl=-1"]),
    ("trpo-train", ["algo.num_envs=abc"]),
    ("trpo-train", ["+algo.max_kll=0.1"]),
    ("trpo-train", ["env.id=CartPole-v9"]),
    ("trpo-train", ["name=fresh", "seed=" + "9" * 5000]),
    ("trpo-train", ["name=fresh", "algo.gamma=nan"]),
    ("trpo-train", ["name=fresh", "policy.hidden_sizes=[100000000]"]),
    ("trpo-train", ["name=fresh", "resume=runs/cartpole/seed0/checkpoint.pt"]),
    ("trpo-train", ["name=fresh", "tracking.uri=sqlite:////proc/nope.db"]),
    # MLflow 3 refuses a folder store once Hydra made runs/fresh/seed0: all three go again
    ("trpo-train", ["name=fresh", "tracking.uri=folder_store", "tracking.log_model=false"]),
    ("trpo-train", ["-m", "name=fresh", "seed=0,1", "algo.vf_lr=0"]),
    ("trpo-train", ["name=fresh", "hydra/launcher=nope"]),
    ("trpo-train", ["name=fresh", "train.device=cuda"]),
    ("trpo-train", []),  # runs/cartpole/seed0 already holds a checkpoint
    ("trpo-train", ["name=unsynced", "overwrite=true"]),  # not in MLflow yet: sync first
    ("trpo-evaluate", ["name=never_trained"]),
    ("trpo-evaluate", []),  # a corrupt checkpoint
    ("trpo-evaluate", ["evaluate.episodes=0"]),
    ("trpo-evaluate", ["-m", "name=never_trained", "seed=0,1"]),
    ("trpo-tune", ["tune.n_trials=0"]),
    ("trpo-tune", ["+tune.search_space.algo.max_kll={type:float,low:0.001,high:0.1}"]),
    ("trpo-tune", ["tune.study_name=", "name=fresh"]),
    ("python", ["-m", "trpo_pipeline.stages.train", "--params", "bad_params.yaml"]),
    ("python", ["-m", "trpo_pipeline.stages.train", "--params", "broken_params.yaml"]),
    ("python", ["-m", "trpo_pipeline.stages.evaluate", "--params", "bad_params.yaml"]),
]


@pytest.mark.slow  # two dozen commands, a few importing torch: 30-60 s
def test_bad_commands_change_nothing_in_the_working_folder(workdir: Path) -> None:
    before = snapshot(workdir)
    assert "mlflow.db" in before and "dvc.lock" in before
    for script, args in BAD_COMMANDS:
        if "train.device=cuda" in args and _cuda():
            continue  # this machine has the device
        argv = [sys.executable, *args] if script == "python" else [str(BIN / script), *args]
        done = command(workdir, argv)
        shown = f"{script} {' '.join(a[:60] for a in args)}"
        assert done.returncode != 0, shown
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and ": error: " in lines[0], (shown, done.stderr[-2000:])
        assert done.stdout == "", (shown, done.stdout[-2000:])
        assert snapshot(workdir) == before, shown
