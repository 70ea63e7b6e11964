"""A faiss gallery index: exact inner-product search over unit embeddings, saved beside a JSON.

DIABLO embeddings are unit L2 norm, so the inner product is the cosine similarity. An
embedding is the concatenation of N unit branch embeddings divided by sqrt(N) (DESIGN.md §2),
so over the n-th slice of D / N dimensions, N * <q_n, g_n> is the cosine of branch n and the
full cosine is the mean of the N branch cosines. `GalleryIndex.search` returns both.

Ranking (`ranked_search`, shared with `diablo.evaluation`): results are ordered by decreasing
similarity and equal similarities keep gallery-index order (lower id first), also across the
top-k boundary. faiss's heap does not promise that order, so the results are re-sorted stably
and rows whose k-th similarity ties with the last fetched one are searched again with more
neighbours until the tie is inside the window (or the whole gallery is).

On disk (`save` / `load`): DIR/gallery.json (key, labels, paths, branch count) and the faiss
index in DIR/gallery-<token>.faiss, the file the JSON names. Each file is written to a temporary
name and moved into place with os.replace, the JSON last, so a reader sees either the old pair or
the new pair, never a mix. `load` returns None when there is nothing usable for the key (no JSON,
another key, the index file gone): the caller rebuilds. Files that exist for the key but are not
a valid index raise ValueError.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from diablo.files import atomic_write_bytes

FORMAT_VERSION = 1
METADATA_NAME = "gallery.json"
_TIE_MARGIN = 8  # extra neighbours fetched so that boundary ties are usually resolved at once
_MAX_RESULTS = 1 << 22  # neighbours (rows x k) fetched per faiss call, bounds the memory


def as_embedding_matrix(x: object, name: str = "embeddings") -> np.ndarray:
    """(n, D) float32 C-contiguous copy or view of x; ValueError if empty, not 2-D or not finite."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    array = np.asarray(x)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, D), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def as_label_vector(x: object, n: int, name: str = "labels") -> np.ndarray:
    """(n,) int64 labels; ValueError if the shape is not (n,) or the values are not integers."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    array = np.asarray(x)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the embeddings, got {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not (np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array))):
            raise ValueError(f"{name} must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _stable_order(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by decreasing similarity, then increasing id. (r, m) -> (r, m)."""
    order = np.lexsort((ids, -sims), axis=-1)
    return np.take_along_axis(sims, order, -1), np.take_along_axis(ids, order, -1)


def ranked_search(
    index: faiss.Index, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query by inner product, ties in gallery-index order.

    queries (q, D) float32; exclude (q,) int: a gallery id left out of row i's results (-1: none),
    e.g. the query itself for leave-one-out. k is clamped to the gallery size (minus one with
    exclude). Returns ids (q, k') int64 and similarities (q, k') float32, k' the clamped k.
    """
    n = int(index.ntotal)
    q = int(queries.shape[0])
    drop = 0 if exclude is None else 1
    k_eff = max(0, min(int(k), n - drop))
    ids_out = np.empty((q, k_eff), dtype=np.int64)
    sims_out = np.empty((q, k_eff), dtype=np.float32)
    if k_eff == 0 or q == 0:
        return ids_out, sims_out
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(q)
    pending = np.arange(q)
    fetch = min(n, k_eff + drop + _TIE_MARGIN)
    while pending.size:
        unresolved = []
        rows_per_call = max(1, _MAX_RESULTS // fetch)
        for start in range(0, pending.size, rows_per_call):
            rows = pending[start : start + rows_per_call]
            sims, ids = index.search(queries[rows], fetch)  # (r, fetch) each
            sims, ids = _stable_order(sims, ids)
            if exclude is not None:  # drop the excluded id by index, or the last column
                drop_mask = ids == exclude[rows, None]
                drop_mask[~drop_mask.any(axis=1), -1] = True
                keep = ~drop_mask
                sims = sims[keep].reshape(len(rows), fetch - 1)
                ids = ids[keep].reshape(len(rows), fetch - 1)
            if fetch < n:  # items tied with the k-th may lie beyond the fetched window
                tied = sims[:, k_eff - 1] == sims[:, -1]
            else:
                tied = np.zeros(len(rows), dtype=bool)
            done = rows[~tied]
            ids_out[done] = ids[~tied, :k_eff]
            sims_out[done] = sims[~tied, :k_eff]
            unresolved.append(rows[tied])
        pending = np.concatenate(unresolved)
        fetch = min(n, 2 * fetch)
    return ids_out, sims_out


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of q queries, best first."""

    ids: np.ndarray  # (q, k) int64 gallery ids
    similarities: np.ndarray  # (q, k) float32 full cosine similarity
    branch_similarities: np.ndarray  # (q, k, N) float32 cosine of each branch; mean over N = full

    @property
    def branch_shares(self) -> np.ndarray:
        """(q, k, N) float32: each branch's part of the full similarity, cosine_n / N; sums over N to it."""
        return self.branch_similarities / np.float32(max(1, self.branch_similarities.shape[-1]))


class GalleryIndex:
    """A gallery's embeddings in a faiss IndexFlatIP, with labels, optional paths and a cache key."""

    def __init__(
        self,
        index: faiss.IndexFlatIP,
        labels: np.ndarray,
        num_branches: int,
        key: str,
        paths: Sequence[str] | None = None,
    ) -> None:
        n, dim = int(index.ntotal), int(index.d)
        if num_branches < 1 or dim % num_branches:
            raise ValueError(f"num_branches={num_branches} must be >= 1 and divide D={dim}")
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} embeddings")
        if paths is not None and len(paths) != n:
            raise ValueError(f"{len(paths)} paths for {n} embeddings")
        self.index = index
        self.labels = np.asarray(labels, dtype=np.int64)  # (n,)
        self.num_branches = int(num_branches)
        self.key = str(key)
        self.paths = None if paths is None else [str(p) for p in paths]
        self.embeddings = np.empty((n, dim), dtype=np.float32)  # (n, D)
        if n:  # an explicit numpy output: faiss.contrib.torch_utils would return a tensor otherwise
            index.reconstruct_n(0, n, self.embeddings)

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        num_branches: int = 1,
        key: str = "",
        paths: Sequence[str] | None = None,
    ) -> GalleryIndex:
        """Index embeddings (n, D) with labels (n,); num_branches N splits D into N slices."""
        embeddings = as_embedding_matrix(embeddings)
        labels = as_label_vector(labels, embeddings.shape[0])
        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(embeddings)
        return cls(index, labels, num_branches, key, paths)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> SearchResult:
        """The k nearest gallery items of each query (q, D), ties in gallery order; k is clamped.

        exclude (q,): a gallery id to leave out of each row (-1 for none), e.g. the query's own.
        """
        queries = as_embedding_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have D={queries.shape[1]}, the gallery has D={self.dim}")
        ids, sims = ranked_search(self.index, queries, k, exclude)  # (q, k) each
        n_br = self.num_branches
        q, kk = ids.shape
        qb = queries.reshape(q, 1, n_br, -1)  # (q, 1, N, D/N)
        gb = self.embeddings[ids].reshape(q, kk, n_br, -1)  # (q, k, N, D/N)
        branch = (qb * gb).sum(axis=-1, dtype=np.float32) * np.float32(n_br)  # (q, k, N)
        return SearchResult(ids=ids, similarities=sims, branch_similarities=branch)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write DIR/gallery-<token>.faiss then DIR/gallery.json atomically; returns the JSON path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        index_name = f"gallery-{uuid.uuid4().hex}.faiss"
        atomic_write_bytes(directory / index_name, faiss.serialize_index(self.index).tobytes())
        meta = {
            "format": "diablo-gallery-index",
            "version": FORMAT_VERSION,
            "key": self.key,
            "index_file": index_name,
            "count": len(self),
            "dim": self.dim,
            "num_branches": self.num_branches,
            "labels": self.labels.tolist(),
            "paths": self.paths,
        }
        meta_path = directory / METADATA_NAME
        atomic_write_bytes(meta_path, json.dumps(meta).encode())
        for stale in directory.glob("gallery-*.faiss"):  # earlier saves, now unreferenced
            if stale.name != index_name:
                stale.unlink(missing_ok=True)
        return meta_path

    @classmethod
    def load(cls, directory: str | os.PathLike[str], key: str) -> GalleryIndex | None:
        """The index saved in DIR for this key; None if none is (a cache miss), ValueError if corrupt."""
        meta_path = Path(directory) / METADATA_NAME
        try:
            text = meta_path.read_text()
        except FileNotFoundError:
            return None
        try:
            meta = json.loads(text)
            if meta.get("format") != "diablo-gallery-index":
                raise ValueError("not a diablo gallery index")
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{meta_path} is not a diablo gallery index: {err}") from err
        if meta.get("key") != key or meta.get("version") != FORMAT_VERSION:
            return None
        index_path = meta_path.parent / str(meta.get("index_file"))
        try:
            raw = np.fromfile(index_path, dtype=np.uint8)
        except FileNotFoundError:
            return None
        try:
            index = faiss.deserialize_index(raw)
        except RuntimeError as err:
            raise ValueError(f"{index_path} is not a readable faiss index: {err}") from err
        if (
            not isinstance(index, faiss.IndexFlatIP)
            or index.ntotal != meta["count"]
            or index.d != meta["dim"]
            or len(meta["labels"]) != meta["count"]
        ):
            raise ValueError(f"{index_path} does not match {meta_path}")
        return cls(index, np.asarray(meta["labels"], np.int64), meta["num_branches"], key, meta["paths"])


def index_key(checkpoint_path: str | os.PathLike[str], gallery_description: str) -> str:
    """sha256 of the checkpoint file's content hash and a description of the gallery.

    The content (not the mtime) is hashed, so a copied or touched checkpoint keeps its key and
    a retrained one gets a new one; reading a ~100 MB checkpoint costs a fraction of a second.
    """
    content = hashlib.sha256()
    with open(checkpoint_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            content.update(block)
    key = hashlib.sha256()
    for part in (f"diablo-gallery-v{FORMAT_VERSION}", content.hexdigest(), gallery_description):
        key.update(part.encode())
        key.update(b"\0")
    return key.hexdigest()
