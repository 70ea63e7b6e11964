"""The on-disk format of a gallery index: one directory, a JSON manifest naming its files.

Version 2 (written by `diablo.index.GalleryIndex.save` and `python -m diablo.index build`):

    DIR/gallery.json             the manifest, written last (below)
    DIR/gallery-<token>.faiss    the faiss index (IndexFlatIP, or IndexIVFFlat over inner product)
    DIR/labels-<token>.npy       (n,) int64 class labels
    DIR/paths-<token>.json       {"root": R or null, "paths": [n paths relative to R], "classes": [names] or null}
    DIR/embeddings-<token>.npy   (n, D) embeddings of an approximate index saved from memory
    DIR/shards/NNNNN.npy         (m, D) embedding shards of a build, float32 or float16, in gallery order
    DIR/shards/plan.json         what the shards belong to (`diablo.gallery_build`), for resuming

Manifest keys: format ("diablo-gallery-index"), version (2), key (a cache key or ""), count,
dim, num_branches, index {file, type ("flat" | "ivf-flat"), params}, labels_file, paths_file
(null: no paths), embeddings (null: the flat index holds them; else {dtype, shards: [{file, start,
count}]}) and, for a build, build {checkpoint {path, digest}, dataset, split, root, image_size,
batch_size, skipped, count, world_size, command, created, ...}.

Every file is written to a temporary name and moved into place (`diablo.files.atomic_write`); the
files of one save share a random token and the manifest is written last, so a reader sees the
old set or the new one, never a mix; files no manifest names any more are then removed.
Version 1 (the lab's cache before builds existed: labels and paths inside gallery.json, a flat
index in `index_file`) is still read.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from diablo.files import atomic_write, atomic_write_bytes

FORMAT = "diablo-gallery-index"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "gallery.json"
SHARDS_DIR = "shards"
TOKEN_FILE = re.compile(
    r"^(gallery-[0-9a-f]{32}\.faiss|(labels|embeddings)-[0-9a-f]{32}\.npy|paths-[0-9a-f]{32}\.json)$"
)
"""The names of the files one save writes (a manifest names them; others are stale)."""


class EmbeddingShards:
    """Gallery embeddings stored as consecutive .npy shards, memory-mapped, read as float32."""

    def __init__(self, files: Sequence[Path], counts: Sequence[int], dim: int) -> None:
        self.files = [Path(f) for f in files]
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # (shards + 1,)
        self.dim = int(dim)
        self._maps: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    def _shards(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.load(f, mmap_mode="r") for f in self.files]
        return self._maps

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Embeddings of gallery ids of any shape: ids.shape + (D,) float32."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        out = np.empty((flat.size, self.dim), dtype=np.float32)
        shard_of = np.searchsorted(self.starts, flat, side="right") - 1  # (m,)
        maps = self._shards()
        for s in np.unique(shard_of):
            where = np.nonzero(shard_of == s)[0]
            out[where] = maps[s][flat[where] - self.starts[s]]
        return out.reshape(*ids.shape, self.dim)

    def array(self) -> np.ndarray:
        """All embeddings (n, D) float32, in gallery order."""
        out = np.empty(self.shape, dtype=np.float32)
        for s, shard in enumerate(self._shards()):
            out[self.starts[s] : self.starts[s + 1]] = shard
        return out


@dataclass(frozen=True)
class GalleryFiles:
    """What a gallery directory holds, read and checked against its manifest."""

    manifest: dict[str, Any]
    index: faiss.Index
    labels: np.ndarray  # (n,) int64
    paths: list[str] | None
    classes: list[str] | None
    embeddings: EmbeddingShards | None  # None: the (flat) index holds them


def save_npy(path: Path, array: np.ndarray) -> Path:
    """Write one .npy file atomically (through a handle: np.save would append .npy to the temporary name)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    return atomic_write(path, write)


def relative_paths(paths: Sequence[str]) -> tuple[str | None, list[str]]:
    """(root, paths relative to it): root is the folder common to every path, None if there is none."""
    paths = [os.fspath(p) for p in paths]
    try:
        root = os.path.commonpath([os.path.dirname(p) or "." for p in paths]) if paths else ""
    except ValueError:  # absolute and relative paths mixed
        return None, paths
    if not root or root == ".":
        return None, paths
    prefix = root.rstrip(os.sep) + os.sep
    return root, [p[len(prefix) :] if p.startswith(prefix) else os.path.relpath(p, root) for p in paths]


def write_gallery(
    directory: str | os.PathLike[str],
    index: faiss.Index,
    labels: np.ndarray,
    *,
    kind: str,
    key: str = "",
    num_branches: int = 1,
    params: dict[str, Any] | None = None,
    paths: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    shards: Sequence[dict[str, Any]] | None = None,
    shard_dtype: str = "float32",
    embeddings: np.ndarray | None = None,
    build: dict[str, Any] | None = None,
) -> Path:
    """Write the files of a gallery index, then its manifest; returns the manifest's path.

    shards: [{file (relative to DIR), start, count}] already written (a build); else `embeddings`
    (n, D) are written for an approximate index (a flat index holds its own).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    index_name, labels_name = f"gallery-{token}.faiss", f"labels-{token}.npy"
    atomic_write(directory / index_name, lambda tmp: faiss.write_index(index, tmp))
    save_npy(directory / labels_name, np.asarray(labels, dtype=np.int64))
    paths_name = None
    if paths is not None or classes is not None:
        root, relative = relative_paths(paths) if paths is not None else (None, None)
        paths_name = f"paths-{token}.json"
        record = {"root": root, "paths": relative, "classes": None if classes is None else [str(c) for c in classes]}
        atomic_write_bytes(directory / paths_name, json.dumps(record).encode())
    stored: dict[str, Any] | None = None
    if shards is not None:
        stored = {"dtype": shard_dtype, "shards": [dict(s) for s in shards]}
    elif kind != "flat":
        if embeddings is None:
            raise ValueError(f"a {kind} index is saved with its embeddings")
        name = f"embeddings-{token}.npy"
        save_npy(directory / name, np.asarray(embeddings, dtype=np.float32))
        stored = {"dtype": "float32", "shards": [{"file": name, "start": 0, "count": int(index.ntotal)}]}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "key": key,
        "count": int(index.ntotal),
        "dim": int(index.d),
        "num_branches": int(num_branches),
        "index": {"file": index_name, "type": kind, "params": dict(params or {"type": kind})},
        "labels_file": labels_name,
        "paths_file": paths_name,
        "embeddings": stored,
    }
    if build is not None:
        manifest["build"] = build
    path = directory / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(manifest, indent=1) + "\n").encode())
    named = {index_name, labels_name, paths_name} | {s["file"] for s in (stored or {}).get("shards", [])}
    for stale in directory.iterdir():  # earlier saves' files, now unreferenced
        if TOKEN_FILE.match(stale.name) and stale.name not in named:
            stale.unlink(missing_ok=True)
    return path


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of DIR: FileNotFoundError if there is none, ValueError if it is not one."""
    path = Path(directory) / MANIFEST_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"{Path(directory)} is not a gallery index (no {MANIFEST_NAME})") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is not a diablo gallery index: a folder") from None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError("not a diablo gallery index")
    except ValueError as err:
        raise ValueError(f"{path} is not a diablo gallery index: {err}") from None
    return manifest


def _file(directory: Path, name: object, what: str) -> Path:
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"{directory / MANIFEST_NAME} names no valid {what} file ({name!r})")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: the {what} file {name} is missing")
    return path


def read_gallery(directory: str | os.PathLike[str], manifest: dict[str, Any] | None = None) -> GalleryFiles:
    """Read and check every file the manifest names (version 1 or 2).

    FileNotFoundError when the manifest or a file it names is missing; ValueError when a file is
    not what the manifest says (version, faiss index, counts, dimensions).
    """
    directory = Path(directory)
    manifest = read_manifest(directory) if manifest is None else manifest
    meta_path = directory / MANIFEST_NAME
    version = manifest.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{meta_path} has format version {version!r}; this diablo reads {READABLE_VERSIONS}")
    try:
        count, dim = int(manifest["count"]), int(manifest["dim"])
        index_name = manifest["index_file"] if version == 1 else manifest["index"]["file"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{meta_path} is not a diablo gallery index: missing {err}") from None
    index_path = _file(directory, index_name, "index")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as err:
        raise ValueError(f"{index_path} is not a readable faiss index: {str(err).splitlines()[0]}") from None
    if version == 1:
        labels = np.asarray(manifest.get("labels", []), dtype=np.int64)
        paths, classes, shards = manifest.get("paths"), None, None
    else:
        labels, paths, classes, shards = _read_v2_parts(directory, manifest, dim)
    if index.ntotal != count or index.d != dim or labels.shape != (count,):
        raise ValueError(f"{index_path} does not match {meta_path}")
    if paths is not None and len(paths) != count:
        raise ValueError(f"{meta_path}: {len(paths)} paths for {count} embeddings")
    if shards is not None and len(shards) != count:
        raise ValueError(f"{meta_path}: the embedding shards hold {len(shards)} rows for {count} embeddings")
    return GalleryFiles(manifest, index, labels, paths, classes, shards)


def _read_v2_parts(
    directory: Path, manifest: dict[str, Any], dim: int
) -> tuple[np.ndarray, list[str] | None, list[str] | None, EmbeddingShards | None]:
    labels_path = _file(directory, manifest.get("labels_file"), "labels")
    try:
        labels = np.load(labels_path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{labels_path} is not a .npy array: {err}") from None
    paths = classes = None
    if manifest.get("paths_file") is not None:
        paths_path = _file(directory, manifest["paths_file"], "paths")
        try:
            record = json.loads(paths_path.read_text())
            root, relative, classes = record["root"], record["paths"], record["classes"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{paths_path} is not a gallery paths file: {err}") from None
        if relative is not None:
            paths = [os.path.join(root, p) for p in relative] if root else list(relative)
    shards = None
    stored = manifest.get("embeddings")
    if stored is not None:
        files, counts = [], []
        for entry in stored.get("shards", []):
            path = _file(directory, entry.get("file"), "embedding shard")
            try:
                header = np.load(path, mmap_mode="r")
            except ValueError as err:
                raise ValueError(f"{path} is not a .npy array: {err}") from None
            if header.shape != (int(entry.get("count", -1)), dim):
                raise ValueError(f"{path} has shape {header.shape}, the manifest says ({entry.get('count')}, {dim})")
            files.append(path)
            counts.append(header.shape[0])
        shards = EmbeddingShards(files, counts, dim)
    return labels.astype(np.int64, copy=False), paths, classes, shards
