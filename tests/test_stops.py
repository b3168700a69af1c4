"""A scheduler's stop signal stops the job wherever it lands: inside an MLflow call (tracking
would otherwise take it for MLflow failing, go offline and train on) or inside a destructor
(where Python drops it). Real SQLite MLflow store; the signal is sent to this very process
from within the MLflow call, so it lands there every time."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline_support import new_store
from trpo_pipeline import stops
from trpo_pipeline.tracking import TrackedRun
from trpo_pipeline.tracking.pending import PENDING

ArmedRun = tuple[TrackedRun, Callable[[], None]]  # the run, and what makes the signal land


class TimedOutError(RuntimeError):
    """What submitit's USR2 handler raises for a job timed out too often."""


def _stop(signum: int, frame: Any) -> None:
    raise TimedOutError("Job not requeued because: timed-out too many times.")


@pytest.fixture
def stop_handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(stops, "_raised", [])
    previous = signal.signal(signal.SIGUSR2, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.fixture
def run(tmp_path: Any) -> Iterator[ArmedRun]:
    """A real run in a real store, and what arms it: once armed, the next SQL statement MLflow
    sends (inside its store's session, which turns any error into an MlflowException) is where
    the signal lands."""
    import sqlalchemy
    from mlflow import MlflowClient

    uri = new_store(tmp_path / "store")
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("stops")).info.run_id
    armed = []

    def signal_lands(*_: Any) -> None:
        if armed:
            armed.clear()
            os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs before the next bytecode

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", signal_lands)
    tracked = TrackedRun(uri=uri, run_id=run_id, folder=tmp_path / "run")
    try:
        yield tracked, lambda: armed.append(True)
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", signal_lands)


@pytest.mark.usefixtures("stop_handler")
def test_a_stop_landing_in_an_mlflow_call_stops_the_job(
    run: ArmedRun,
) -> None:
    run, arm = run
    stops.remember(signal.SIGUSR2)
    arm()
    with pytest.raises(Exception) as raised:
        run.set_tag("k", "v")
    assert stops.is_stop(raised.value)  # MLflow's MlflowException, raised from the stop
    assert not run.offline  # not taken for an outage: no warning, no pending-sync marker
    assert not (run.folder / PENDING).exists()


@pytest.mark.usefixtures("stop_handler")
def test_without_remembering_the_stop_is_taken_for_an_outage(
    run: ArmedRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the rule prevents: the job's stop becomes a warning, and training would go on."""
    run, arm = run
    arm()
    run.set_tag("k", "v")
    assert run.offline
    assert "training goes on" in capsys.readouterr().err


@pytest.mark.usefixtures("stop_handler")
def test_a_stop_python_drops_in_a_destructor_is_raised_at_the_next_update() -> None:
    stops.remember(signal.SIGUSR2)

    class Resource:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGUSR2)

    stops.raise_again()  # nothing pending: nothing raised
    Resource()  # Python prints "Exception ignored in ... __del__" and goes on
    with pytest.raises(TimedOutError):
        stops.raise_again(object())  # as a train() callback, with the update's record
