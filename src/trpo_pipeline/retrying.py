"""The one retry helper: a call that may fail for a moment (a locked SQLite store, workers
racing to create a storage's tables) is tried again after a pause."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry(
    call: Callable[[], T],
    *,
    attempts: int,
    transient: Callable[[Exception], bool],
    pause: Callable[[int], float],
) -> T:
    """``call()``; after a failure that ``transient(err)`` calls passing, sleep ``pause(i)``
    seconds (i = 0, 1, ...) and try again, ``attempts`` times in all. The last error, or one
    that is not transient, propagates."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if attempt == attempts - 1 or not transient(err):
                raise
            time.sleep(pause(attempt))
    raise AssertionError("unreachable: attempts must be >= 1")
