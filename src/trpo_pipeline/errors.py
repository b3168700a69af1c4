"""One-line error messages: what a person reads when a command stops or a trial fails."""

from __future__ import annotations

from trpo_pipeline.credentials import mask


def first_line(err: BaseException, fallback: str | None = None) -> str:
    """The first line of ``err``'s message with passwords masked (driver errors quote their
    URLs); ``fallback``, or else the error's type name, when the message is empty."""
    text = str(getattr(err, "message", None) or err).strip()
    if not text:
        return type(err).__name__ if fallback is None else fallback
    return mask(text.splitlines()[0])
