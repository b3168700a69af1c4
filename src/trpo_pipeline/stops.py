"""A scheduler's stop signal stops the job, wherever in the code it lands.

Python runs a signal handler between two bytecodes of the main thread, so the exception the
handler raises (submitit's "timed out too many times" error after a USR2, trpo-tune's
WorkerStopped after a SIGTERM) surfaces wherever the job happened to be: inside tracking's
``except Exception`` around an MLflow call, which would take it for MLflow failing and train
on; or inside a garbage-collector callback or a destructor (SQLAlchemy has some), where Python
prints it and drops it. Either way the job would train to the end as if never signalled. So
what a stop handler raises is remembered: tracking lets it through (:func:`is_stop`), and
training raises it again at its next update (:func:`raise_again`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any]

_raised: list[BaseException] = []  # what a stop handler raised in this process, if any


def remember(*signums: signal.Signals) -> None:
    """Wrap the Python handler now installed for each of ``signums`` (none: nothing to wrap) so
    that the exception it raises is remembered."""
    for signum in signums:
        handler = signal.getsignal(signum)
        if callable(handler):
            signal.signal(signum, _remembering(handler))


def _remembering(handler: Handler) -> Handler:
    def remembering(signum: int, frame: FrameType | None) -> None:
        try:
            handler(signum, frame)
        except BaseException as err:
            _raised.append(err)
            raise

    return remembering


def is_stop(err: BaseException) -> bool:
    """``err`` was raised by a stop handler, or raised while handling one (MLflow's store turns
    whatever its session raises into an MlflowException): not an ordinary failure."""
    seen: BaseException | None = err
    while seen is not None:
        if any(seen is stop for stop in _raised):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def raise_again(*_: object) -> None:
    """Raise the stop a handler raised, if any (also a train() callback: it ignores the
    update record)."""
    if _raised:
        raise _raised[0]
