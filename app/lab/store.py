"""The lab's caching policy, and its one store of gallery passes.

What is cached where (so that an interaction on cached state stays well under 300 ms):

- Streamlit's caches, each bounded by `max_entries`:
  `st.cache_resource` for loaded models (models.py: by checkpoint path and file stamp, so a
  replaced file is reloaded), gallery datasets (galleries.py) and background UMAP jobs
  (projections.py); `st.cache_data` for checkpoint metadata, the inspection of one image,
  thumbnails, decoded uploads, attributions, gallery keys and gallery metrics.
- `Store` (this module, one per process): the results of gallery passes, i.e. a gallery's
  embeddings (a `diablo.index.GalleryIndex`) and its entry statistics. These are computed
  with a progress bar in the page of the session that asked first, which Streamlit's caches
  would replay as stale elements on every hit, and one pass at a time (two would only fight
  over the cores). They are also kept on disk under `settings.cache_dir()/galleries/<key>`
  (`read_json` / `write_json` here, the index by `GalleryIndex.save`), so a restart does not
  embed again.
- 2-D projections: on disk (diablo.projection).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import streamlit as st

from app.lab.settings import cache_dir


class Store:
    """Process-wide values by key, the `size` most recently used kept, each computed once.

    `memo(key, compute)` returns the stored value or runs `compute()` under the pass lock (one
    computation at a time in the process; a second session asking for the same key waits for
    the first one's result instead of computing it again). Reads and writes of the table take a
    separate short lock, so a stored value is read without waiting for another key's computation.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._table = threading.Lock()  # held for dictionary operations only
        self._passes = threading.RLock()  # held while computing

    def get(self, key: Hashable) -> Any:
        """The value under `key` (marked as recently used), or None."""
        with self._table:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._table:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value stored under `key`, else `compute()` run once (under the pass lock) and stored."""
        value = self.get(key)
        if value is not None:
            return value
        with self._passes:
            value = self.get(key)
            if value is None:
                value = compute()
                self.put(key, value)
        return value

    def clear(self) -> None:
        with self._table:
            self._items.clear()


@st.cache_resource(show_spinner=False)
def store() -> Store:
    """The process's one Store."""
    return Store()


def gallery_folder(key: str) -> Path:
    """The disk cache folder of one (checkpoint, gallery) pair."""
    return cache_dir() / "galleries" / key[:32]


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Write `data` atomically; a read-only cache is not an error."""
    from diablo.files import atomic_write_bytes

    try:
        atomic_write_bytes(path, json.dumps(data).encode())
    except OSError:
        pass


def progress(text: str) -> tuple[Any, Callable[[int, int], None]]:
    """A progress bar and a `(done, total)` callback that moves it."""
    bar = st.progress(0.0, text=text)

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=f"{text} {done} / {total}")

    return bar, update
