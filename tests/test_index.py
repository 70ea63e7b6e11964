"""GalleryIndex: exact search with ties in index order, branch similarities, save / load, keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from diablo.index import GalleryIndex, index_key, ranked_search


def branch_embeddings(n: int, num_branches: int, branch_dim: int, seed: int) -> np.ndarray:
    """Concatenations of unit branch vectors / sqrt(N), as DiabloNet makes them: (n, N * d)."""
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(n, num_branches, branch_dim)).astype(np.float32)
    b /= np.linalg.norm(b, axis=2, keepdims=True)
    return (b / np.sqrt(num_branches)).reshape(n, -1)


def flat(x: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def test_ranked_search_matches_stable_brute_force() -> None:
    rng = np.random.default_rng(0)
    g = rng.integers(-1, 2, size=(120, 4)).astype(np.float32)  # exact products, many ties
    q = rng.integers(-1, 2, size=(30, 4)).astype(np.float32)
    ids, sims = ranked_search(flat(g), q, 25)
    expected = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :25]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(sims, np.take_along_axis(q @ g.T, expected, 1))


def test_ties_beyond_the_fetched_window_keep_index_order() -> None:
    g = np.tile(np.array([[1.0, 0.0]], np.float32), (60, 1))  # 60 identical items
    ids, _ = ranked_search(flat(g), g[:1], 5)
    assert ids.tolist() == [[0, 1, 2, 3, 4]]
    ids, _ = ranked_search(flat(g), g[3:5], 5, exclude=np.array([3, 0]))
    assert ids.tolist() == [[0, 1, 2, 4, 5], [1, 2, 3, 4, 5]]


def test_ranked_search_clamps_k() -> None:
    g = np.eye(3, dtype=np.float32)
    assert ranked_search(flat(g), g, 10)[0].shape == (3, 3)
    assert ranked_search(flat(g), g, 10, exclude=np.arange(3))[0].tolist() == [[1, 2], [0, 2], [0, 1]]
    assert ranked_search(flat(g[:1]), g[:1], 4, exclude=np.zeros(1))[0].shape == (1, 0)


def test_search_and_branch_similarities() -> None:
    num_branches, branch_dim = 4, 8
    g = branch_embeddings(50, num_branches, branch_dim, seed=1)
    q = branch_embeddings(7, num_branches, branch_dim, seed=2)
    index = GalleryIndex.build(g, np.arange(50) % 5, num_branches=num_branches, key="k")
    result = index.search(q, 6)
    assert result.ids.shape == result.similarities.shape == (7, 6)
    assert result.branch_similarities.shape == (7, 6, num_branches)
    np.testing.assert_allclose(result.similarities, np.take_along_axis(q @ g.T, result.ids, 1), atol=1e-6)
    np.testing.assert_allclose(result.branch_similarities.mean(axis=2), result.similarities, atol=1e-6)
    # Branch n is the cosine of the n-th unit branch embeddings.
    qb, gb = q.reshape(7, num_branches, -1), g.reshape(50, num_branches, -1)
    cos = np.einsum(
        "qnd,qknd->qkn",
        qb / np.linalg.norm(qb, axis=2, keepdims=True),
        (gb / np.linalg.norm(gb, axis=2, keepdims=True))[result.ids],
    )
    np.testing.assert_allclose(result.branch_similarities, cos, atol=1e-5)
    assert (np.diff(result.similarities, axis=1) <= 0).all()
    assert index.search(q, 1000).ids.shape == (7, 50)  # clamped


def test_save_load_round_trip(tmp_path: Path) -> None:
    g = branch_embeddings(40, 2, 4, seed=3)
    paths = [f"img/{i}.jpg" for i in range(40)]
    index = GalleryIndex.build(g, np.arange(40) // 4, num_branches=2, key="abc", paths=paths)
    index.save(tmp_path / "cache")
    loaded = GalleryIndex.load(tmp_path / "cache", "abc")
    assert loaded is not None
    assert loaded.paths == paths and loaded.num_branches == 2 and loaded.key == "abc"
    np.testing.assert_array_equal(loaded.labels, index.labels)
    q = branch_embeddings(5, 2, 4, seed=4)
    a, b = index.search(q, 7), loaded.search(q, 7)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.similarities, b.similarities)
    np.testing.assert_array_equal(a.branch_similarities, b.branch_similarities)
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and "gallery.json" in files  # no temporary files left
    assert oct((tmp_path / "cache" / "gallery.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_load_misses_and_corruption(tmp_path: Path) -> None:
    assert GalleryIndex.load(tmp_path / "nothing", "k") is None
    index = GalleryIndex.build(np.eye(4, dtype=np.float32), [0, 0, 1, 1], key="k1")
    index.save(tmp_path)
    assert GalleryIndex.load(tmp_path, "k2") is None  # another key: rebuild
    GalleryIndex.build(np.eye(4, dtype=np.float32)[:3], [0, 0, 1], key="k2").save(tmp_path)
    assert len(list(tmp_path.glob("gallery-*.faiss"))) == 1  # the stale index is removed
    assert len(GalleryIndex.load(tmp_path, "k2")) == 3
    meta = json.loads((tmp_path / "gallery.json").read_text())
    (tmp_path / meta["index_file"]).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="faiss"):
        GalleryIndex.load(tmp_path, "k2")
    (tmp_path / meta["index_file"]).unlink()
    assert GalleryIndex.load(tmp_path, "k2") is None
    (tmp_path / "gallery.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a diablo gallery index"):
        GalleryIndex.load(tmp_path, "k2")


def test_invalid_build_and_search() -> None:
    with pytest.raises(ValueError, match="divide"):
        GalleryIndex.build(np.eye(6, dtype=np.float32), np.arange(6), num_branches=4)
    with pytest.raises(ValueError, match="shape"):
        GalleryIndex.build(np.eye(6, dtype=np.float32), np.arange(5))
    index = GalleryIndex.build(np.eye(6, dtype=np.float32), np.arange(6))
    with pytest.raises(ValueError, match="D="):
        index.search(np.eye(4, dtype=np.float32), 2)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 6), np.nan, np.float32), 2)


def test_index_key(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    key = index_key(a, "cub test 128")
    assert len(key) == 64 and key == index_key(b, "cub test 128")  # content, not path
    assert key != index_key(a, "cub test 224")
    a.write_bytes(b"weights2")
    assert key != index_key(a, "cub test 128")
    with pytest.raises(FileNotFoundError):
        index_key(tmp_path / "missing", "x")
