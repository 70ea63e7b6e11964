"""Errors as the lab shows them: one line each, of a readable length."""

from __future__ import annotations

LIMIT = 300  # characters of a message shown at most


def describe_error(err: BaseException, limit: int = LIMIT) -> str:
    """One line: the exception's first message line (cut at `limit` characters), or its type when it has none."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def with_type(err: BaseException) -> str:
    """`Type: message` on one line."""
    return f"{type(err).__name__}: {describe_error(err)}"
