"""One-line error messages never quote a password and never come out empty."""

from __future__ import annotations

from trpo_pipeline.errors import first_line


def test_first_line_is_the_first_line_with_the_password_masked() -> None:
    err = RuntimeError("could not connect to postgresql://trpo:s3cret@db:5432/optuna\ndetails")
    assert first_line(err) == "could not connect to postgresql://trpo:***@db:5432/optuna"


def test_an_empty_message_gives_the_fallback_or_the_error_type() -> None:
    assert first_line(KeyError()) == "KeyError"
    assert first_line(ValueError(""), fallback="unpickling failed") == "unpickling failed"


def test_a_message_attribute_wins_over_str() -> None:
    class StoreError(Exception):
        message = "the store refused the run"

    assert first_line(StoreError("INTERNAL_ERROR: the store refused the run")) == (
        "the store refused the run"
    )
