"""diablo.gallery_files: the version-2 directory, its shards, relative paths, checks and clean-up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from diablo.gallery_files import (
    MANIFEST_NAME,
    EmbeddingShards,
    read_gallery,
    read_manifest,
    relative_paths,
    save_npy,
    write_gallery,
)


def flat(x: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def test_relative_paths() -> None:
    root, rel = relative_paths(["/data/set/a/1.png", "/data/set/b/2.png"])
    assert root == "/data/set" and rel == ["a/1.png", "b/2.png"]
    assert relative_paths(["x.png", "y.png"]) == (None, ["x.png", "y.png"])
    assert relative_paths(["/a/x.png", "b/y.png"]) == (None, ["/a/x.png", "b/y.png"])
    assert relative_paths(["/only/one.png"]) == ("/only", ["one.png"])


def test_embedding_shards_rows_and_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(m, 4)).astype(np.float16) for m in (5, 5, 2)]
    files = [save_npy(tmp_path / f"{i}.npy", p) for i, p in enumerate(parts)]
    shards = EmbeddingShards(files, [5, 5, 2], 4)
    whole = np.concatenate(parts).astype(np.float32)
    assert len(shards) == 12 and shards.shape == (12, 4)
    np.testing.assert_array_equal(shards.array(), whole)
    ids = np.array([[11, 0, 5], [4, 4, 9]])
    np.testing.assert_array_equal(shards.rows(ids), whole[ids])
    assert shards.rows(ids).dtype == np.float32 and not list(tmp_path.glob(".*.tmp"))


def test_write_read_round_trip_and_clean_up(tmp_path: Path) -> None:
    x = np.eye(6, dtype=np.float32)
    paths = [f"/data/c{i % 2}/{i}.png" for i in range(6)]
    write_gallery(tmp_path, flat(x), np.arange(6) % 2, kind="flat", key="k", num_branches=2, paths=paths,
                  classes=["cat", "dog"], build={"dataset": "folder"})
    manifest = read_manifest(tmp_path)
    assert manifest["version"] == 2 and manifest["count"] == 6 and manifest["build"] == {"dataset": "folder"}
    stored = json.loads((tmp_path / manifest["paths_file"]).read_text())
    assert stored["root"] == "/data" and stored["paths"][:2] == ["c0/0.png", "c1/1.png"]
    files = read_gallery(tmp_path)
    assert files.paths == paths and files.classes == ["cat", "dog"] and files.embeddings is None
    np.testing.assert_array_equal(files.labels, np.arange(6) % 2)
    first = set(os.listdir(tmp_path))
    write_gallery(tmp_path, flat(x[:3]), np.zeros(3), kind="flat")  # replaces: earlier files removed
    second = set(os.listdir(tmp_path))
    assert len(second) == 3 and not (first - {MANIFEST_NAME}) & second  # manifest, index, labels; no paths
    assert read_gallery(tmp_path).paths is None


def test_read_checks(tmp_path: Path) -> None:
    x = np.eye(4, dtype=np.float32)
    shard = save_npy(tmp_path / "shards" / "00000.npy", x)
    write_gallery(tmp_path, flat(x), np.zeros(4), kind="flat",
                  shards=[{"file": "shards/00000.npy", "start": 0, "count": 4}])
    np.testing.assert_array_equal(read_gallery(tmp_path).embeddings.array(), x)
    save_npy(shard, x[:3])  # a shard that does not match the manifest
    with pytest.raises(ValueError, match="shape"):
        read_gallery(tmp_path)
    manifest = read_manifest(tmp_path)
    manifest["index"]["file"] = "../elsewhere.faiss"
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no valid index file"):
        read_gallery(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a diablo gallery index"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="no gallery.json"):
        read_manifest(tmp_path / "missing")
    with pytest.raises(ValueError, match="saved with its embeddings"):
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(4), 4, 1, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add(x)
        write_gallery(tmp_path / "ivf", index, np.zeros(4), kind="ivf-flat")
