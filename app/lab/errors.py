"""Errors as the lab shows them: one line each."""

from __future__ import annotations


def describe_error(err: BaseException) -> str:
    """One line: the exception's first message line, or its type when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def with_type(err: BaseException) -> str:
    """`Type: message` on one line."""
    return f"{type(err).__name__}: {describe_error(err)}"
