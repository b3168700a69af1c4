"""checkpoint.py: one format that round-trips, and refuses anything else with a clear error."""

from __future__ import annotations

import os
import random
import stat

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trpo_pipeline.config import Config
from trpo_pipeline.rl.adam import Adam
from trpo_pipeline.rl.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trpo_pipeline.rl.config import PolicyConfig
from trpo_pipeline.rl.normalizers import ObsNormalizer
from trpo_pipeline.rl.policies import Critic, GaussianActor
from trpo_pipeline.rl.schema import to_dict

# Random bytes that happen to start like a pickle make torch warn about the protocol.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


def make_checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    policy = PolicyConfig(hidden_sizes=(8,), critic_hidden_sizes=(8,))
    actor, critic = GaussianActor(3, 1, policy), Critic(3, policy)
    optimizer = Adam(critic.parameters(), lr=1e-3)
    critic(torch.randn(5, 3)).pow(2).mean().backward()
    optimizer.step()  # an optimiser with state to save
    normalizer = ObsNormalizer.create(3, clip=5.0)
    normalizer.update(np.arange(12.0).reshape(4, 3))
    return Checkpoint(
        actor=actor.state_dict(),
        critic=critic.state_dict(),
        critic_optimizer=optimizer.state_dict(),
        obs_normalizer=normalizer.state_dict(),
        rng=rng_state(),
        episodes={"count": 3, "returns": [1.5, -2.0, 7.25], "lengths": [10, 20, 30]},
        global_step=1234,
        updates=5,
        config=to_dict(Config()),
    )


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt = make_checkpoint()
    save_checkpoint(path, ckpt)
    return path, ckpt


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], list) and a[key] and isinstance(a[key][0], torch.Tensor):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True)), key
        else:
            assert a[key] == b[key], key


def test_save_load_roundtrip(saved):
    path, ckpt = saved
    loaded = load_checkpoint(path)

    assert_same_state(loaded.actor, ckpt.actor)
    assert_same_state(loaded.critic, ckpt.critic)
    assert_same_state(loaded.critic_optimizer, ckpt.critic_optimizer)
    assert_same_state(loaded.obs_normalizer, ckpt.obs_normalizer)
    assert loaded.config == ckpt.config
    assert loaded.episodes == ckpt.episodes
    assert (loaded.global_step, loaded.updates) == (1234, 5)
    assert loaded.format_version == FORMAT_VERSION
    assert list(path.parent.iterdir()) == [path]  # the temporary file was renamed into place


def test_checkpoint_gets_the_permissions_of_any_other_output(saved):
    # Colleagues who can read the run folder's CSV and YAML can read its checkpoint too.
    path, _ = saved
    other = path.parent / "learning_curve.csv"
    other.write_text("update\n")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(other.stat().st_mode)


def test_rng_states_restore_every_generator(saved):
    path, ckpt = saved
    set_rng_state(ckpt.rng)
    expected = (random.random(), np.random.random(), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)

    set_rng_state(load_checkpoint(path).rng)

    got = (random.random(), np.random.random(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_a_checkpoint_error_naming_the_file(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data))])

    with pytest.raises(CheckpointError, match="truncated or corrupt") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2000))
@example(data=b"\x80")
@example(data=b"\x80\x02]q\x00(K\x01K\x02e.")  # a valid pickle of a list, not a checkpoint
@example(data=b"PK\x03\x04" + bytes(100))
def test_random_bytes_are_a_checkpoint_error_naming_the_file(tmp_path, data):
    path = tmp_path / "garbage.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    payload = {"format_version": FORMAT_VERSION, "actor": RunsCode(str(marker))}
    torch.save(payload, path)

    with pytest.raises(CheckpointError, match="refused to load") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert not marker.exists()

    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_keys_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": FORMAT_VERSION, "actor": {}}, path)
    with pytest.raises(CheckpointError, match="not a trpo-pipeline checkpoint") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)

    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a trpo-pipeline checkpoint"):
        load_checkpoint(path)


def test_another_format_version_is_refused(saved):
    path, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)

    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"format {FORMAT_VERSION + 1} is not supported (expected {FORMAT_VERSION})" in message
