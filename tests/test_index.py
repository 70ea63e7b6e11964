"""GalleryIndex: exact and IVF search with ties in index order, branch similarities, save / load
(format version 2, version 1 still read), open_index, keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from diablo.gallery_files import MANIFEST_NAME
from diablo.index import BuiltIndex, GalleryIndex, index_key, open_index, ranked_search


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
    meta = json.loads((tmp_path / "cache" / "gallery.json").read_text())
    named = {"gallery.json", meta["index"]["file"], meta["labels_file"], meta["paths_file"]}
    assert {p.name for p in (tmp_path / "cache").iterdir()} == named  # no temporary files left
    assert meta["version"] == 2 and meta["embeddings"] is None  # the flat index holds them
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
    (tmp_path / meta["index"]["file"]).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="faiss"):
        GalleryIndex.load(tmp_path, "k2")
    (tmp_path / meta["index"]["file"]).unlink()
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


def write_version_1(directory: Path, g: np.ndarray, labels: list[int], paths: list[str] | None, key: str) -> None:
    """A directory as the lab's cache wrote it before version 2: labels and paths inside gallery.json."""
    directory.mkdir(parents=True)
    (directory / "gallery-0123.faiss").write_bytes(faiss.serialize_index(flat(g)).tobytes())
    meta = {"format": "diablo-gallery-index", "version": 1, "key": key, "index_file": "gallery-0123.faiss",
            "count": len(g), "dim": g.shape[1], "num_branches": 2, "labels": labels, "paths": paths}
    (directory / MANIFEST_NAME).write_text(json.dumps(meta))


def test_version_1_directories_are_still_read(tmp_path: Path) -> None:
    g = branch_embeddings(12, 2, 4, seed=5).astype(np.float32)
    write_version_1(tmp_path / "old", g, [i // 3 for i in range(12)], [f"{i}.png" for i in range(12)], "old-key")
    loaded = GalleryIndex.load(tmp_path / "old", "old-key")
    assert loaded is not None and loaded.paths == [f"{i}.png" for i in range(12)] and loaded.num_branches == 2
    np.testing.assert_array_equal(loaded.embeddings, g)
    np.testing.assert_array_equal(loaded.labels, np.arange(12) // 3)
    assert GalleryIndex.load(tmp_path / "old", "another") is None
    opened = open_index(tmp_path / "old")
    assert isinstance(opened, BuiltIndex) and opened.build == {} and opened.exact
    ids = opened.search(g[:2], 3).ids
    np.testing.assert_array_equal(ids, np.argsort(-(g[:2] @ g.T), axis=1, kind="stable")[:, :3])
    loaded.save(tmp_path / "old")  # rewritten as version 2, the version-1 index file is left alone
    assert json.loads((tmp_path / "old" / MANIFEST_NAME).read_text())["version"] == 2
    assert len(GalleryIndex.load(tmp_path / "old", "old-key")) == 12


def test_open_index_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a gallery index"):
        open_index(tmp_path)
    GalleryIndex.build(np.eye(4, dtype=np.float32), [0, 0, 1, 1], key="k").save(tmp_path)
    meta = json.loads((tmp_path / MANIFEST_NAME).read_text())
    (tmp_path / meta["labels_file"]).unlink()
    with pytest.raises(FileNotFoundError, match="labels file"):
        open_index(tmp_path)
    assert GalleryIndex.load(tmp_path, "k") is None  # a file gone: the lab rebuilds
    meta["version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="version 99"):
        open_index(tmp_path)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` random unit centres, cosine to the centre about 0.65."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    noise = rng.normal(size=(n, dim))
    x = centres[np.arange(n) % clusters] / np.linalg.norm(centres[np.arange(n) % clusters], axis=1, keepdims=True)
    x = x + 1.2 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def numpy_top_k(q: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q.astype(np.float64) @ g.astype(np.float64).T), axis=1, kind="stable")[:, :k]


def test_approximate_search_recall_and_exact_similarities(tmp_path: Path) -> None:
    both = clustered(3200, 32, 60, seed=6)
    g, q = both[:3000], both[3000:]  # queries: new points of the gallery's clusters
    labels = np.arange(3000) % 60
    small = GalleryIndex.build(g[:400], labels[:400], num_branches=2, kind="auto", approximate_from=500)
    assert small.exact and small.kind == "flat"
    index = GalleryIndex.build(g, labels, num_branches=2, kind="auto", approximate_from=500)
    assert not index.exact and index.kind == "ivf-flat" and isinstance(index.index, faiss.IndexIVFFlat)
    assert index.params["nlist"] == min(round(4 * np.sqrt(3000)), (3000 - 300) // 40)
    assert index.index.nprobe == index.params["nprobe"]
    result = index.search(q, 10)
    expected = numpy_top_k(q, g, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(result.ids, expected, strict=True)])
    assert recall >= 0.93, recall  # calibrated to 0.95 on 300 held-out gallery items
    assert index.params["calibration"]["recall"] >= 0.95
    np.testing.assert_allclose(result.similarities, np.take_along_axis(q @ g.T, result.ids, 1), atol=1e-5)
    np.testing.assert_allclose(result.branch_similarities.mean(axis=2), result.similarities, atol=1e-5)
    np.testing.assert_array_equal(index.embeddings, g)
    # Saved and loaded: the same answers, the nprobe and the embeddings kept.
    index.save(tmp_path / "ivf")
    loaded = open_index(tmp_path / "ivf")
    assert loaded.kind == "ivf-flat" and loaded.index.nprobe == index.params["nprobe"]
    again = loaded.search(q, 10)
    np.testing.assert_array_equal(again.ids, result.ids)
    np.testing.assert_array_equal(again.branch_similarities, result.branch_similarities)
    np.testing.assert_array_equal(loaded.embeddings, g)


def test_ivf_rows_with_too_few_candidates_are_padded() -> None:
    g = clustered(400, 8, 4, seed=8)
    index = GalleryIndex.build(g, np.zeros(400, int), kind="ivf-flat")
    index.index.nprobe = 1  # one list holds fewer than 300 items
    result = index.search(g[:3], 300)
    assert result.ids.shape == (3, 300) and (result.ids == -1).any()
    missing = result.ids == -1
    assert np.all(missing[:, 1:] >= missing[:, :-1])  # padding only at the end of a row
    assert np.isneginf(result.similarities[missing]).all() and np.isnan(result.branch_similarities[missing]).all()
    found = ~missing
    np.testing.assert_allclose(result.similarities[found],
                               np.take_along_axis(g[:3] @ g.T, np.where(found, result.ids, 0), 1)[found], atol=1e-5)
    assert (np.diff(result.similarities[found].reshape(-1)[:10]) <= 0).all()
    with pytest.raises(ValueError, match="does not hold its embeddings"):
        GalleryIndex(index.index, index.labels, 1, "k")


def test_flat_embeddings_are_copied_on_first_use() -> None:
    g = branch_embeddings(30, 2, 4, seed=9).astype(np.float32)
    index = GalleryIndex.build(g, np.zeros(30, int), num_branches=2)
    ids = np.array([[3, 0], [29, 3]])
    np.testing.assert_array_equal(index.rows(ids), g[ids])  # read from the index itself
    embeddings = index.embeddings
    np.testing.assert_array_equal(embeddings, g)
    embeddings[0] = 0.0  # a writable copy: the index keeps its vectors
    result = index.search(g[:1], 1)
    assert result.ids.tolist() == [[0]] and result.similarities[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_a_view_of_a_flat_index_keeps_the_index_alive() -> None:
    import gc

    from diablo.index import _flat_view

    g = branch_embeddings(30, 2, 4, seed=9).astype(np.float32)
    view = _flat_view(flat(g))  # the only reference to the index is the view's
    gc.collect()
    _ = [np.ones((30, 8), np.float32) for _ in range(100)]  # would reuse the index's memory if it were freed
    np.testing.assert_array_equal(view, g)
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = 2.0
