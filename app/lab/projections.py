"""2-D maps of a gallery's embeddings: PCA at once, UMAP in a background job (diablo.projection)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from app.lab.settings import cache_dir

SAMPLE_LIMIT = 20_000  # a larger gallery is mapped by a random sample of this many images (Embeddings page)
SAMPLE_SEED = 0


@dataclass(frozen=True, eq=False)
class Background:
    """A diablo.projection.ProjectionJob and when it started (time.monotonic())."""

    job: Any
    started: float

    def done(self) -> bool:
        return self.job.done()

    def result(self) -> np.ndarray:
        return self.job.result()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@st.cache_resource(show_spinner=False, max_entries=32)
def _projection_job(key: str, branch: int | None, num_branches: int, _embeddings: np.ndarray) -> Background:
    from diablo.projection import ProjectionJob

    job = ProjectionJob(_embeddings, "umap", branch=branch, num_branches=num_branches,
                        cache_dir=cache_dir() / "projections", key=key)
    return Background(job, time.monotonic())


def projection(index: Any, method: str, branch: int | None) -> np.ndarray | None:
    """(n, 2) points of the gallery embeddings (or one branch) by "pca" or "umap", cached on disk.

    PCA is computed at once. UMAP comes from the disk cache if there, else from a background
    diablo.projection.ProjectionJob: None while it runs (see `projection_job`), its failure raised.
    """
    from diablo.projection import cache_path, project

    folder = cache_dir() / "projections"
    if method == "pca" or cache_path(folder, index.key, method, branch, index.num_branches, 0).is_file():
        return project(index.embeddings, method, branch, index.num_branches, cache_dir=folder, key=index.key)
    job = projection_job(index, branch)
    return job.result() if job.done() else None


def projection_job(index: Any, branch: int | None) -> Background:
    """The (cached, process-wide) background UMAP job of the gallery embeddings or one branch."""
    return _projection_job(index.key, branch, index.num_branches, index.embeddings)


def forget_projection_jobs() -> None:
    """Drop every background UMAP job (e.g. to retry one that failed)."""
    _projection_job.clear()


def sample_ids(n: int, size: int, seed: int) -> np.ndarray:
    """`size` of range(n) drawn at random (seeded), in gallery order."""
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


@st.cache_resource(show_spinner="Sampling the gallery…", max_entries=8)
def _sample_index(key: str, size: int, seed: int, _index: Any, _ids: np.ndarray) -> Any:
    from diablo.index import GalleryIndex

    return GalleryIndex.build(_index.rows(_ids), _index.labels[_ids], _index.num_branches,
                              f"{key}|sample={size}|seed={seed}")


def sample_index(index: Any, ids: np.ndarray, seed: int) -> Any:
    """A flat index of the gallery rows `ids` (the map of a sample), keyed apart from the whole gallery's."""
    return _sample_index(index.key, len(ids), seed, index, ids)
