"""The lab's caching policy, and its one store of gallery passes run in the background.

What is cached where (so that an interaction on cached state stays well under 300 ms):

- Streamlit's caches, each bounded by `max_entries`:
  `st.cache_resource` for loaded models (models.py: by checkpoint path and file stamp, so a
  replaced file is reloaded), gallery datasets (galleries.py) and background UMAP jobs
  (projections.py); `st.cache_data` for checkpoint metadata, the inspection of one image, match
  decompositions, thumbnails (as encoded PNG bytes), decoded uploads, attributions and gallery keys.
- `Store` (this module, one per process, `store()`): the gallery passes, i.e. a gallery's
  embeddings with its Recall@K (passes.py) and its entry statistics. Each is a `Job` run by the
  store's one worker thread, a chunk of images per step, so no page waits for one: pages show
  its progress (and what it has so far) and poll it with `st.fragment(run_every=...)`. One step
  at a time in the process (two passes would only fight over the cores); between steps the
  worker continues the job a page asked for last, so the page being looked at goes first. Results
  are also kept on disk under `settings.cache_dir()/galleries/<key>` (`read_json` / `write_json`
  here, the index by `GalleryIndex.save`), so a restart does not embed again.
- 2-D projections: on disk (diablo.projection), UMAP in its own background job (projections.py).
"""

from __future__ import annotations

import atexit
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

from app.lab.errors import with_type
from app.lab.settings import cache_dir

# A job's work: a generator of (done, total, partial value) steps whose return value is the result.
Steps = Iterator[tuple[int, int, Any]]


class Job:
    """One background pass: its progress, its latest partial value, then its result or its error."""

    def __init__(self, key: Hashable, label: str, make: Callable[[], Steps] | None, result: Any = None) -> None:
        self.key = key
        self.label = label
        self.done = 0
        self.total = 0
        self.partial: Any = None
        self.result: Any = result
        self.error: str | None = None
        self.views: dict[str, Any] = {}  # values derived from it by readers (e.g. a partial index)
        self.asked = time.monotonic()  # the last time a page asked for it
        self.started = time.monotonic()
        self._make = make
        self._steps: Steps | None = None
        self._finished = threading.Event()
        if make is None:
            self._finished.set()

    @property
    def finished(self) -> bool:
        """Done or failed."""
        return self._finished.is_set()

    @property
    def ok(self) -> bool:
        return self.finished and self.error is None

    @property
    def fraction(self) -> float:
        return 1.0 if self.ok else (self.done / self.total if self.total else 0.0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished (tests, scripts); True when it is."""
        return self._finished.wait(timeout)

    def step(self) -> None:
        """Run one step of the work (the worker thread only)."""
        try:
            if self._steps is None:
                self.started = time.monotonic()
                self._steps = self._make()
            self.done, self.total, self.partial = next(self._steps)
        except StopIteration as stop:
            self.result = stop.value if stop.value is not None else self.partial
            self.partial = None
            self._finished.set()
        except Exception as err:  # a failed pass is shown by the page that asked, with a retry
            self.error = with_type(err)
            self._finished.set()


class Store:
    """Process-wide background jobs by key: each computed once, the `size` most recently used kept.

    `job(key, label, make, cached)` returns the job under `key` (marked as asked for now), or
    makes one: finished at once when `cached()` (e.g. a disk cache read) gives a value, else
    queued for the worker thread, which runs `make()`'s steps. A failed job stays failed (the page
    says why) until `forget(key)`.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._jobs: OrderedDict[Hashable, Job] = OrderedDict()
        self._lock = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closing = False

    def job(self, key: Hashable, label: str, make: Callable[[], Steps],
            cached: Callable[[], Any] | None = None) -> Job:
        with self._lock:
            found = self._jobs.get(key)
            if found is not None:
                found.asked = time.monotonic()
                self._jobs.move_to_end(key)
                return found
        value = cached() if cached is not None else None  # outside the lock: it may read files
        with self._lock:
            found = self._jobs.get(key)
            if found is None:
                found = Job(key, label, None if value is not None else make, value)
                self._jobs[key] = found
                self._trim()
                if not found.finished:
                    self._start()
                    self._lock.notify_all()
            return found

    def get(self, key: Hashable) -> Job | None:
        """The job under `key` without asking for it, or None."""
        with self._lock:
            return self._jobs.get(key)

    def forget(self, key: Hashable) -> None:
        """Drop a finished job (e.g. a failed one, to retry it)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.finished:
                del self._jobs[key]

    def pending(self) -> list[Job]:
        with self._lock:
            return [job for job in self._jobs.values() if not job.finished]

    def wait_idle(self, timeout: float = 600.0) -> bool:
        """Block until no job is pending (tests, scripts); True when none is."""
        deadline = time.monotonic() + timeout
        for job in self.pending():
            if not job.wait(max(0.0, deadline - time.monotonic())):
                return False
        return not self.pending() or self.wait_idle(max(0.0, deadline - time.monotonic()))

    def clear(self) -> None:
        """Drop every finished job."""
        with self._lock:
            for key in [k for k, job in self._jobs.items() if job.finished]:
                del self._jobs[key]

    def _trim(self) -> None:
        finished = [k for k, job in self._jobs.items() if job.finished]
        while len(self._jobs) > self.size and finished:
            del self._jobs[finished.pop(0)]

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current step (at exit: torch must not be torn down under it)."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)

    def _start(self) -> None:
        if self._closing:
            return
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="diablo-lab-store", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._closing and not (pending := [j for j in self._jobs.values() if not j.finished]):
                    self._lock.wait()
                if self._closing:
                    return
                job = max(pending, key=lambda j: j.asked)  # the one a page asked for last
            job.step()
            if job.finished:
                with self._lock:
                    self._trim()


_STORE = Store()
atexit.register(_STORE.close)


def store() -> Store:
    """The process's one Store (shared by every session)."""
    return _STORE


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
