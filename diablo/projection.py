"""2-D maps of embeddings: PCA (instant) and UMAP (slow the first time), for the whole
embedding or one branch, cached on disk, with a background job so a caller can show PCA first.

Branch n of a DIABLO embedding is its n-th slice of D / N columns (the embedding is the
concatenation of N unit branches divided by sqrt(N), docs/design.md §2); the slice is used as it
is: the common 1 / sqrt(N) factor only scales a PCA and does not change a cosine UMAP.

UMAP (McInnes et al. 2018, umap-learn): n_neighbors = min(15, n - 1), metric "cosine" (the
similarity the model is trained for), random_state = seed (which makes umap single-threaded
and reproducible). umap-learn compiles its numba kernels on the first fit in a process
(30-45 s on two cores); `warm_up_umap` / `start_warm_up` pay that early, in the background.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from diablo.files import atomic_write

METHODS = ("pca", "umap")
_CACHE_VERSION = 1
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _validate(embeddings: Any, method: str, branch: int | None, num_branches: int) -> np.ndarray:
    """Checked (n, D) float array -> the (n, D / N) slice of `branch`, or all of it."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choices: {', '.join(METHODS)}")
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n, D), got shape {x.shape}")
    if x.shape[0] < 3:
        raise ValueError(f"need at least 3 embeddings to project, got {x.shape[0]}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError("embeddings must be finite numbers")
    if not isinstance(num_branches, int) or num_branches < 1:
        raise ValueError(f"num_branches must be a positive int, got {num_branches!r}")
    if branch is None:
        return x.astype(np.float32, copy=False)
    if x.shape[1] % num_branches:
        raise ValueError(f"num_branches ({num_branches}) must divide the embedding length ({x.shape[1]})")
    if not isinstance(branch, (int, np.integer)) or not 0 <= branch < num_branches:
        raise ValueError(f"branch must be in [0, {num_branches}), got {branch!r}")
    size = x.shape[1] // num_branches
    return x[:, branch * size : (branch + 1) * size].astype(np.float32, copy=False)  # (n, D / N)


def _pca(x: np.ndarray, seed: int) -> np.ndarray:
    """(n, d) -> (n, 2): the first two principal components (sklearn, full SVD, sign-fixed)."""
    from sklearn.decomposition import PCA

    if x.shape[1] < 2:  # one column: its centred values and a zero axis
        centred = x[:, :1] - x[:, :1].mean()
        return np.hstack([centred, np.zeros_like(centred)]).astype(np.float32)
    return PCA(n_components=2, svd_solver="full", random_state=seed).fit_transform(x).astype(np.float32)


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    """(n, d) -> (n, 2): UMAP with cosine metric and n_neighbors = min(15, n - 1)."""
    import umap

    n = x.shape[0]
    # Spectral initialisation needs a few more points than components; tiny sets start at random.
    init = "spectral" if n > 10 else "random"
    reducer = umap.UMAP(
        n_components=2, n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, n_jobs=1, init=init
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs / spectral-init / small-graph notices
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def cache_path(
    cache_dir: str | os.PathLike[str], key: str, method: str, branch: int | None, num_branches: int, seed: int
) -> Path:
    """cache_dir / <sha256 of key, method, branch, num_branches, seed>.npy"""
    fields = json.dumps([_CACHE_VERSION, str(key), method, branch, num_branches, seed])
    return Path(cache_dir) / f"{hashlib.sha256(fields.encode()).hexdigest()}.npy"


def _load(path: Path, n: int) -> np.ndarray | None:
    try:
        cached = np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # missing or damaged: recompute
        return None
    return cached if cached.shape == (n, 2) else None


def _save(path: Path, points: np.ndarray) -> None:
    """Atomic (`diablo.files.atomic_write`): a reader never sees a partly written cache file."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.save would append ".npy" to a name
            np.save(handle, points)

    atomic_write(path, write)


def project(
    embeddings: np.ndarray,
    method: str = "pca",
    branch: int | None = None,
    num_branches: int = 1,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    key: str | None = None,
) -> np.ndarray:
    """(n, D) embeddings -> (n, 2) float32 points by PCA or UMAP, of all D columns or of
    branch n's D / N columns.

    With `cache_dir`, results are stored as cache_dir/<sha256>.npy and reused; the hash covers
    `key` (default: a sha256 of the embeddings' bytes), method, branch, num_branches and seed.
    """
    x = _validate(embeddings, method, branch, num_branches)  # (n, d)
    path = None
    if cache_dir is not None:
        if key is None:
            key = hashlib.sha256(np.ascontiguousarray(embeddings).tobytes() + str(x.shape).encode()).hexdigest()
        path = cache_path(cache_dir, key, method, branch, num_branches, seed)
        cached = _load(path, x.shape[0])
        if cached is not None:
            return cached
    points = _pca(x, seed) if method == "pca" else _umap(x, seed)  # (n, 2)
    if path is not None:
        _save(path, points)
    return points


def warm_up_umap() -> float:
    """Fit a tiny UMAP so that numba compiles umap's kernels now; returns the seconds it took."""
    start = time.perf_counter()
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    _umap(x, seed=0)
    return time.perf_counter() - start


def _shared_executor() -> ThreadPoolExecutor:
    """One worker for the whole process: numba compiles once and projections do not fight for cores."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diablo-projection")
        return _executor


def start_warm_up() -> Future[float]:
    """`warm_up_umap` on the background worker; the Future gives the seconds it took."""
    return _shared_executor().submit(warm_up_umap)


class ProjectionJob:
    """`project(...)` running on a background thread: poll `done()`, then take `result()`.

    >>> job = ProjectionJob(embeddings, method="umap", cache_dir="cache", key="cub-test")
    >>> points = project(embeddings, "pca")        # show this meanwhile
    >>> if job.done(): points = job.result()       # (n, 2)

    Arguments are validated at once (a bad branch raises here, not in `result()`); the
    embeddings are copied, so the caller may change its array afterwards.
    """

    def __init__(self, embeddings: np.ndarray, method: str = "umap", **kwargs: Any) -> None:
        _validate(embeddings, method, kwargs.get("branch"), kwargs.get("num_branches", 1))
        self.method = method
        self._future: Future[np.ndarray] = _shared_executor().submit(
            project, np.array(embeddings, copy=True), method, **kwargs
        )

    def done(self) -> bool:
        """True once the projection finished (or failed)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> np.ndarray:
        """The (n, 2) points; waits up to `timeout` seconds (None: forever); re-raises a failure."""
        return self._future.result(timeout=timeout)

    def cancel(self) -> bool:
        """Drop the job if it has not started yet."""
        return self._future.cancel()
