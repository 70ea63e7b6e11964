"""The folder diablo caches derived data in: generated datasets, image-scan results."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

CACHE_ENV = "DIABLO_CACHE"
"""The environment variable that moves the cache folder (default ~/.cache/diablo)."""


def cache_root() -> Path:
    """`$DIABLO_CACHE` when set and not empty, else `~/.cache/diablo` (user folder expanded)."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/diablo").expanduser()
