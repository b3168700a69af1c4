"""The engine's user errors: each one's text is the one line to show a person."""

from __future__ import annotations

MAX_MESSAGE = 300  # characters of an error line: a huge value is shown cut short


def first_line(text: str, fallback: str) -> str:
    """The first line of an error's message, or ``fallback`` when it is empty."""
    return text.strip().splitlines()[0] if text.strip() else fallback


class ConfigError(ValueError):
    """A user-caused configuration problem; ``str(err)`` is the one line to show them."""

    def __init__(self, key: str, problem: str) -> None:
        text = " ".join((f"{key}: {problem}" if key else problem).split("\n"))
        if len(text) > MAX_MESSAGE:  # a 100 kB value would otherwise be echoed in full
            text = f"{text[: MAX_MESSAGE - 40]}... ({len(text):,} characters in all)"
        super().__init__(text)
        self.key = key
        self.problem = problem


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""
