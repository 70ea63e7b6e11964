"""Tests for diablo.projection: PCA / UMAP maps, branch slices, the disk cache, background jobs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from diablo import projection


def clustered(n: int = 60, dim: int = 32, clusters: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit rows around `clusters` random directions, and their labels (n,)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = np.arange(n) % clusters
    x = centres[labels] + 0.15 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_pca_shape_and_determinism() -> None:
    x, _ = clustered()
    points = projection.project(x, "pca")
    assert points.shape == (60, 2) and points.dtype == np.float32
    assert np.array_equal(points, projection.project(x.copy(), "pca"))
    # The first two principal components, up to each axis' sign.
    centred = x.astype(np.float64) - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    for k in range(2):
        assert np.allclose(np.abs(points[:, k]), np.abs(expected[:, k]), atol=1e-4)


def test_branch_slicing() -> None:
    x, _ = clustered(dim=32)  # 4 branches of 8 columns
    second = projection.project(x, "pca", branch=1, num_branches=4)
    assert second.shape == (60, 2)
    assert np.allclose(second, projection.project(x[:, 8:16], "pca"), atol=1e-6)
    assert not np.allclose(second, projection.project(x[:, 0:8], "pca"), atol=1e-3)
    assert np.allclose(projection.project(x, "pca", branch=3, num_branches=4), projection.project(x[:, 24:], "pca"))
    assert np.allclose(projection.project(x, "pca", branch=0, num_branches=1), projection.project(x, "pca"))


def test_invalid_arguments() -> None:
    x, _ = clustered()
    with pytest.raises(ValueError, match="at least 3"):
        projection.project(x[:2], "pca")
    with pytest.raises(ValueError, match="branch"):
        projection.project(x, "pca", branch=4, num_branches=4)
    with pytest.raises(ValueError, match="branch"):
        projection.project(x, "pca", branch=-1, num_branches=4)
    with pytest.raises(ValueError, match="divide"):
        projection.project(x, "pca", branch=0, num_branches=5)
    with pytest.raises(ValueError, match="umap"):
        projection.project(x, "tsne")
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        projection.project(x[0], "pca")
    bad = x.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        projection.project(bad, "pca")
    with pytest.raises(ValueError, match="branch"):
        projection.ProjectionJob(x, "pca", branch=9, num_branches=4)


def test_cache_hit_skips_computation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = clustered()
    calls: list[tuple[int, int]] = []
    real_pca = projection._pca

    def counting_pca(data: np.ndarray, seed: int) -> np.ndarray:
        calls.append(data.shape)
        return real_pca(data, seed)

    monkeypatch.setattr(projection, "_pca", counting_pca)
    first = projection.project(x, "pca", cache_dir=tmp_path, key="cub-test")
    assert len(calls) == 1
    files = list(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".npy"] and len(files[0].stem) == 64  # one file, a sha256 name, no temp
    assert files[0] == projection.cache_path(tmp_path, "cub-test", "pca", None, 1, 0)
    again = projection.project(x, "pca", cache_dir=tmp_path, key="cub-test")
    assert len(calls) == 1 and np.array_equal(again, first)
    # Another branch, seed or key is another entry.
    projection.project(x, "pca", branch=1, num_branches=4, cache_dir=tmp_path, key="cub-test")
    projection.project(x, "pca", seed=1, cache_dir=tmp_path, key="cub-test")
    projection.project(x, "pca", cache_dir=tmp_path, key="cars-test")
    assert len(calls) == 4 and len(list(tmp_path.iterdir())) == 4
    # Without a key the data's hash is the key: same data hits, other data misses.
    projection.project(x, "pca", cache_dir=tmp_path)
    projection.project(x.copy(), "pca", cache_dir=tmp_path)
    assert len(calls) == 5
    projection.project(x[::-1].copy(), "pca", cache_dir=tmp_path)
    assert len(calls) == 6


def test_damaged_cache_is_recomputed(tmp_path: Path) -> None:
    x, _ = clustered()
    first = projection.project(x, "pca", cache_dir=tmp_path, key="k")
    path = projection.cache_path(tmp_path, "k", "pca", None, 1, 0)
    path.write_bytes(b"not a numpy file")
    assert np.array_equal(projection.project(x, "pca", cache_dir=tmp_path, key="k"), first)
    assert np.array_equal(np.load(path), first)
    np.save(path, np.zeros((5, 2), np.float32))  # a stale entry of another size
    assert np.array_equal(projection.project(x, "pca", cache_dir=tmp_path, key="k"), first)


def test_projection_job_pca() -> None:
    x, _ = clustered()
    job = projection.ProjectionJob(x, "pca", branch=2, num_branches=4)
    x[:] = 0  # the job holds its own copy
    points = job.result(timeout=60)
    assert job.done()
    assert np.array_equal(points, projection.project(clustered()[0], "pca", branch=2, num_branches=4))


def test_umap_job_warm_up_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one UMAP test (numba compiles on the first fit: 30-45 s)."""
    warm = projection.start_warm_up()
    x, labels = clustered(n=60)
    job = projection.ProjectionJob(x, "umap", seed=0, cache_dir=tmp_path, key="clusters")
    deadline = time.monotonic() + 300
    while not job.done() and time.monotonic() < deadline:  # how an app polls
        time.sleep(0.2)
    assert warm.done() and warm.result() > 0
    points = job.result(timeout=1)
    assert points.shape == (60, 2) and points.dtype == np.float32 and np.isfinite(points).all()
    # The clusters stay apart: each point's nearest 2-D neighbour has its label.
    d = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(60) * 1e9
    assert (labels[d.argmin(1)] == labels).mean() > 0.95
    # Same seed, same map; and the cache answers without fitting.
    assert np.allclose(projection.project(x, "umap", seed=0), points, atol=1e-4)
    monkeypatch.setattr(projection, "_umap", lambda *args: pytest.fail("cache miss"))
    cached = projection.project(x, "umap", seed=0, cache_dir=tmp_path, key="clusters")
    assert np.array_equal(cached, points)
