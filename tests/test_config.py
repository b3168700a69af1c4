"""config.py (+ the CLI's composition): every class of bad config fails fast, naming the key."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from trpo_pipeline.config import Config, ConfigError, SearchParam
from trpo_pipeline.launch.compose import compose, load_config
from trpo_pipeline.rl.config import AlgoConfig, RunConfig, run_config_from_dict
from trpo_pipeline.rl.schema import Bounds, to_dict

CONF = Path(__file__).resolve().parents[1] / "conf"

BAD = [
    # unknown keys: a typo of an existing key, and a new key added with +
    ("algo.max_kll=1", "algo.max_kll", "unknown key"),
    ("+algo.foo=1", "algo.foo", "unknown key"),
    ("+foo=1", "foo", "unknown key"),
    # wrong types
    ("algo.max_kl=abc", "algo.max_kl", "must be a number"),
    ("algo.num_envs=2.5", "algo.num_envs", "must be an integer"),
    ("algo.max_kl=true", "algo.max_kl", "must be a number"),
    ("algo.vf_epochs=true", "algo.vf_epochs", "must be an integer"),
    ("train.progress=1", "train.progress", "true or false"),
    ("policy.hidden_sizes=64", "policy.hidden_sizes", "must be a list"),
    # out of range
    ("algo.max_kl=0", "algo.max_kl", "> 0"),
    ("algo.max_kl=-0.01", "algo.max_kl", "> 0"),
    ("algo.gamma=0", "algo.gamma", "(0.0, 1.0]"),
    ("algo.gamma=1.01", "algo.gamma", "(0.0, 1.0]"),
    ("algo.gae_lambda=-0.1", "algo.gae_lambda", "[0.0, 1.0]"),
    ("algo.gae_lambda=1.5", "algo.gae_lambda", "[0.0, 1.0]"),
    ("algo.steps_per_update=0", "algo.steps_per_update", "in (0, 10000000]"),
    ("algo.num_envs=0", "algo.num_envs", "in (0, 1024]"),
    ("train.total_steps=-5", "train.total_steps", "> 0"),
    ("evaluate.episodes=0", "evaluate.episodes", "in (0, 10000]"),
    ("policy.hidden_sizes=[]", "policy.hidden_sizes", "non-empty"),
    ("policy.hidden_sizes=[64,0]", "policy.hidden_sizes", "sizes > 0"),
    ("policy.critic_hidden_sizes=[-8]", "policy.critic_hidden_sizes", "sizes > 0"),
    ("algo.steps_per_update=1001", "algo.steps_per_update", "multiple of algo.num_envs"),
    # what gymnasium and conf/ do not know
    ("env.id=Nope-v0", "env.id", "unknown gymnasium environment"),
    ("env=nope", "env", "no config 'nope'"),
    ("env.vectorization=envpool", "env.vectorization", "add it with a leading '+'"),
    # env.kwargs: the env's constructor decides, before anything runs
    ("+env.kwargs.bogus=1", "env.kwargs.bogus", "CartPole-v1 takes no such argument"),
    ("+env.kwargs.render_mode=human", "env.kwargs.render_mode", "set by the engine"),
    ("+env.kwargs.sutton_barto_reward={a:1}", "env.kwargs", "values must be numbers"),
    # non-finite numbers
    ("algo.max_kl=inf", "algo.max_kl", "finite"),
    ("algo.max_kl=-inf", "algo.max_kl", "finite"),
    ("algo.gamma=nan", "algo.gamma", "finite"),
]


def load(*overrides: str) -> Config:
    return load_config(compose(list(overrides), CONF))


def test_the_default_experiment_composes_and_validates():
    cfg = load()
    assert cfg.algo.max_kl == OmegaConf.load(CONF / "algo" / "trpo.yaml").max_kl
    assert (
        list(cfg.policy.hidden_sizes) == OmegaConf.load(CONF / "policy" / "mlp.yaml").hidden_sizes
    )


@pytest.mark.parametrize("env", sorted(p.stem for p in (CONF / "env").glob("*.yaml")))
def test_every_env_option_composes_and_validates(env):
    cfg = load(f"env={env}")
    assert cfg.env.id == OmegaConf.load(CONF / "env" / f"{env}.yaml").env.id
    assert to_dict(cfg)["env"]["id"] == cfg.env.id


@pytest.mark.parametrize(("override", "key", "problem"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_fails_with_one_line_naming_the_key(override, key, problem):
    with pytest.raises(ConfigError) as caught:
        load(override)
    message = str(caught.value)
    assert caught.value.key == key
    assert message.startswith(f"{key}: ")
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "override",
    ["+env.kwargs.xml_file=nope.xml", "+env.kwargs.reset_noise_scale=abc"],  # make, reset
)
def test_env_kwargs_the_env_refuses_fail_naming_the_key(override):
    with pytest.raises(ConfigError) as caught:
        load("env=hopper", override)
    assert caught.value.key == "env.kwargs"
    assert str(caught.value).startswith("env.kwargs: gymnasium.make('Hopper-v5', **env.kwargs)")
    assert "\n" not in str(caught.value)


def test_env_kwargs_take_envpool_out():
    with pytest.raises(ConfigError) as caught:
        load("env=hopper", "+env.vectorization=envpool", "+env.kwargs.frame_skip=4")
    assert str(caught.value) == "env.kwargs: env.vectorization=envpool takes none (allowed: sync)"


# --- through the real CLI: exit 2, one line, nothing written ---------------------------------

CLI_BAD = [
    ("algo.max_kll=1", "algo.max_kll"),
    ("+algo.foo=1", "algo.foo"),
    ("algo.gamma=1.5", "algo.gamma"),
]


@pytest.fixture(scope="module")
def cli_failures(tmp_path_factory, run_cli):
    folders = [tmp_path_factory.mktemp("bad") for _ in CLI_BAD]
    results = run_cli(
        *[("trpo-train", [o], cwd) for (o, _), cwd in zip(CLI_BAD, folders, strict=True)]
    )
    return dict(zip([o for o, _ in CLI_BAD], zip(results, folders, strict=True), strict=True))


@pytest.mark.parametrize(("override", "key"), CLI_BAD, ids=[o for o, _ in CLI_BAD])
def test_cli_rejects_bad_config_before_writing_anything(cli_failures, override, key):
    result, cwd = cli_failures[override]
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"trpo-train: error: {key}: ")
    assert result.stdout == ""
    assert not (cwd / "runs").exists()


# --- properties over out-of-range numbers ----------------------------------------------------


@pytest.fixture(scope="module")
def composed():
    return compose([], CONF)


def with_value(base, key: str, value: object) -> Config:
    cfg = base.copy()
    OmegaConf.update(cfg, key, value, merge=False)
    return load_config(cfg)


finite = {"allow_nan": False, "allow_infinity": False}
OUT_OF_RANGE = {
    "algo.max_kl": st.floats(max_value=0.0, **finite),
    "algo.gamma": st.floats(max_value=0.0, **finite)
    | st.floats(min_value=1.0, exclude_min=True, **finite),
    "algo.gae_lambda": st.floats(max_value=0.0, exclude_max=True, **finite)
    | st.floats(min_value=1.0, exclude_min=True, **finite),
    "algo.num_envs": st.integers(max_value=0),
    "train.total_steps": st.integers(max_value=0),
}
IN_RANGE = {
    "algo.max_kl": st.floats(min_value=1e-300, max_value=1e300),
    "algo.gamma": st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
    "algo.gae_lambda": st.floats(min_value=0.0, max_value=1.0),
    "train.total_steps": st.integers(min_value=1, max_value=2**62),
}
QUICK = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("key", sorted(OUT_OF_RANGE))
@QUICK
@given(data=st.data())
def test_out_of_range_numbers_are_rejected_naming_the_key(composed, key, data):
    value = data.draw(OUT_OF_RANGE[key])
    with pytest.raises(ConfigError) as caught:
        with_value(composed, key, value)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: must be")


@pytest.mark.parametrize("key", sorted(IN_RANGE))
@QUICK
@given(data=st.data())
def test_in_range_numbers_are_accepted(composed, key, data):
    value = data.draw(IN_RANGE[key])
    group, name = key.split(".")
    got = getattr(getattr(with_value(composed, key, value), group), name)
    assert got == value and math.isfinite(got)


# --- the schema: each field declared once, with its doc and rule ------------------------------


def config_classes() -> list[type]:
    seen, todo = [], [Config, SearchParam]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo += [t for t in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(t)]
    return seen


def test_every_config_field_has_a_doc_and_its_default_passes_its_rule():
    assert len(config_classes()) == 12  # Config, its 10 groups and SearchParam
    for cls in config_classes():
        for f in dataclasses.fields(cls):
            rule = f.metadata["rule"]
            assert rule.doc.strip(), f"{cls.__name__}.{f.name} has no doc"
            if f.default is not dataclasses.MISSING:
                assert rule.problem(f.default) is None, f"{cls.__name__}.{f.name}"


def test_a_bound_is_declared_once_and_holds_for_every_reader():
    """The bound beside algo.vf_lr is what a command line, params.yaml and a checkpoint's config
    all get: there is no second copy of it."""
    (vf_lr,) = [f for f in dataclasses.fields(AlgoConfig) if f.name == "vf_lr"]
    assert vf_lr.metadata["rule"].bounds == Bounds(gt=0, le=1.0)
    for bad, message in ((0.0, "algo.vf_lr: must be in (0, 1.0], got 0.0"), (2.0, "got 2.0")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            run_config_from_dict({"algo": {"vf_lr": bad}})
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(compose([f"algo.vf_lr={bad}"], CONF))
    engine = run_config_from_dict({"algo": {"vf_lr": 1.0}, "tracking": {"enabled": False}})
    assert type(engine) is RunConfig and engine.algo.vf_lr == 1.0
