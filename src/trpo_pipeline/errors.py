"""One-line error messages: what a person reads when a command stops or a trial fails."""

from __future__ import annotations

import sys
from typing import NoReturn

from trpo_pipeline.credentials import mask
from trpo_pipeline.rl.errors import first_line as engine_first_line

USAGE_ERROR = 2  # exit status of a command stopped by bad input (argparse's and Hydra's too)


def first_line(err: BaseException, fallback: str | None = None) -> str:
    """The first line of ``err``'s message with passwords masked (driver errors quote their
    URLs); ``fallback``, or else the error's type name, when the message is empty."""
    text = str(getattr(err, "message", None) or err)
    return mask(engine_first_line(text, type(err).__name__ if fallback is None else fallback))


def fail(prog: str, message: str, status: int = USAGE_ERROR) -> NoReturn:
    """End a command: ``<prog>: error: <message>`` as one masked line on stderr, then exit."""
    line = " ".join(mask(message).split("\n"))
    print(f"{prog}: error: {line}", file=sys.stderr)
    raise SystemExit(status)
