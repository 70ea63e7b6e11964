"""Run directories that may still be training: their manifest, DIR/run.json (diablo.run_directory),
re-read whenever training replaces it (it is replaced atomically at every epoch's end)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from app.lab.errors import describe_error


@dataclass(frozen=True)
class RunState:
    """What run.json said when last read."""

    path: str
    epoch: int
    step: int
    best_epoch: int | None
    history: list[dict[str, Any]]
    written: float  # run.json's mtime (seconds since the epoch)

    @property
    def name(self) -> str:
        return Path(self.path).name or self.path

    def age(self) -> float:
        """Seconds since training last committed an epoch."""
        return max(0.0, time.time() - self.written)


@st.cache_data(show_spinner=False, max_entries=32)
def _read(path: str, stamp: tuple[int, int]) -> RunState:
    from diablo.run_directory import RunDirectory

    manifest = RunDirectory(path).manifest()
    rows = [row for row in manifest.history if isinstance(row, dict)]
    return RunState(path, int(manifest.epoch), int(manifest.step), manifest.best_epoch, rows, stamp[0] / 1e9)


def read_run(path: str | os.PathLike[str]) -> tuple[RunState | None, str | None]:
    """(the run's state, None), or (None, why not): no such folder, no run.json yet, a damaged one.

    Cached by run.json's mtime and size, so polling it costs one stat() until the next epoch ends.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None, f"{folder} is not a folder"
    manifest = folder / "run.json"
    try:
        stat = manifest.stat()
    except OSError:
        return None, f"{folder} holds no run.json yet: training commits it at the end of each epoch (epoch 0 first)"
    try:
        return _read(str(folder.resolve()), (stat.st_mtime_ns, stat.st_size)), None
    except Exception as err:  # a damaged manifest: said, not raised
        return None, describe_error(err)
