"""What a person reads: progress lines, and sampled values as they show them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Echo = Callable[[str], None]


def say(line: str) -> None:
    """Progress for the person waiting: a line per event, flushed at once (pipes, logs)."""
    print(line, flush=True)


def format_value(value: Any) -> str:
    """A sampled value as progress lines and reports show it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
