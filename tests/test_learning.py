"""The ready-made experiments in conf/experiment/: each composes and runs, and the two that the
suite can afford to train to the end learn their task.

The learning thresholds were measured with margin on seeds 0-9 (see the comments in the
experiment files); a failure here means TRPO stopped learning, not that a seed was unlucky.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trpo_pipeline.config import Config
from trpo_pipeline.launch.compose import compose, load_config
from trpo_pipeline.rl.evaluate import EvalResult, evaluate
from trpo_pipeline.rl.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
QUIET = ["train.progress=false"]


def composed(overrides: list[str]) -> Config:
    return load_config(compose([*overrides, *QUIET], CONF))


def train_and_evaluate(cfg: Config, run_dir: Path) -> EvalResult:
    result = train(cfg, run_dir)
    return evaluate(result.checkpoint, cfg.evaluate)


# --- fast: every experiment composes, validates and runs -------------------------------------


def test_the_ready_made_experiments_are_there():
    expected = {"cartpole", "original_cartpole_v0", "pendulum", "acrobot", "halfcheetah"}
    assert expected <= set(EXPERIMENTS)


def test_experiment_cartpole_is_the_default():
    def resolved(overrides: list[str]) -> object:
        return OmegaConf.to_container(compose(overrides, CONF), resolve=True)

    assert resolved(["experiment=cartpole"]) == resolved([])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_trains_on_a_tiny_budget(experiment, tmp_path):
    cfg = composed([f"experiment={experiment}"])
    # At least two updates (autoreset steps are not transitions, so a batch can hold fewer than
    # steps_per_update): the second acts with the policy and critic the first one changed.
    tiny = composed(
        [
            f"experiment={experiment}",
            f"train.total_steps={2 * cfg.algo.steps_per_update}",
            "evaluate.episodes=2",
        ]
    )
    result = train(tiny, tmp_path)
    assert result.updates >= 2
    assert (tmp_path / "checkpoint.pt").is_file()
    assert evaluate(result.checkpoint, tiny.evaluate).episodes == 2


# --- slow: the default experiment and Pendulum learn --------------------------------------------


@pytest.mark.slow
def test_default_experiment_solves_cartpole(tmp_path):
    cfg = composed([])
    assert cfg.env.id == "CartPole-v1"
    assert cfg.evaluate.episodes == 20 and cfg.evaluate.deterministic
    # CartPole-v1 counts as solved at 475 (episodes are capped at 500).
    result = train_and_evaluate(cfg, tmp_path)
    assert result.mean_return >= 475, result.returns


@pytest.mark.slow
def test_pendulum_experiment_swings_up_and_balances(tmp_path):
    cfg = composed(["experiment=pendulum"])
    assert cfg.env.id == "Pendulum-v1"
    # A random policy scores about -1200, a good one about -150: -250 means it swings up and holds.
    result = train_and_evaluate(cfg, tmp_path)
    assert result.mean_return >= -250, result.returns
