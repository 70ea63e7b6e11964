"""A faiss gallery index: inner-product search over unit embeddings, saved as a directory.

DIABLO embeddings are unit L2 norm, so the inner product is the cosine similarity. An
embedding is the concatenation of N unit branch embeddings divided by sqrt(N) (docs/design.md
§2), so over the n-th slice of D / N dimensions, N * <q_n, g_n> is the cosine of branch n and the
full cosine is the mean of the N branch cosines. `GalleryIndex.search` returns both.

Search is exact (faiss IndexFlatIP) below `diablo.approximate.APPROXIMATE_FROM` vectors and
IVF-Flat above (`diablo.approximate`: the similarities returned are exact, the candidate set is
approximate, nprobe calibrated to recall@10 >= 0.95 when the index is built).

Ranking (`ranked_search`, shared with `diablo.evaluation`): results are ordered by decreasing
similarity and equal similarities keep gallery-index order (lower id first), also across the
top-k boundary. faiss's heap does not promise that order, so the results are re-sorted stably
and rows whose k-th similarity ties with the last fetched one are searched again with more
neighbours until the tie is inside the window (or the whole gallery is). An approximate index
that finds fewer than k candidates pads the row with id -1 (similarity -inf, branch similarities
NaN).

On disk: `diablo.gallery_files` (format version 2; version 1 is still read). `save` / `load` are
the lab's cache (keyed by `index_key`); `open_index` opens any gallery directory, e.g. one that
`python -m diablo.index build` wrote (`diablo.gallery_build`).

Command line (`diablo.gallery_commands`):

    python -m diablo.index build --checkpoint C --dataset D [--root R] [--split S] --out DIR
    python -m diablo.index search DIR --image x.jpg [-k 10] [--json]
    python -m diablo.index info DIR [--json]
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from diablo.approximate import describe_kind, search_parameters
from diablo.gallery_files import FORMAT_VERSION, EmbeddingShards, GalleryFiles, read_gallery, read_manifest

__all__ = [
    "FORMAT_VERSION",
    "BuiltIndex",
    "GalleryIndex",
    "SearchResult",
    "as_embedding_matrix",
    "as_label_vector",
    "index_key",
    "open_index",
    "ranked_search",
]

_KEY_VERSION = 1  # index_key's salt: the embeddings a key names have not changed since version 1
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
    """Top-k of each query by inner product, ties in gallery-index order.

    queries (q, D) float32; exclude (q,) int: a gallery id left out of row i's results (-1: none),
    e.g. the query itself for leave-one-out. k is clamped to the gallery size (minus one with
    exclude). Returns ids (q, k') int64 and similarities (q, k') float32, k' the clamped k.
    Exact for a flat index; an IVF index pads rows it finds too few candidates for with id -1.
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
            missing = ids < 0  # an approximate index found fewer than `fetch`: sorted last
            if missing.any():
                sims[missing], ids[missing] = -np.inf, n
            sims, ids = _stable_order(sims, ids)
            if missing.any():
                ids[ids == n] = -1
            if exclude is not None:  # drop the excluded id by index, or the last column
                drop_mask = (ids == exclude[rows, None]) & (ids >= 0)
                drop_mask[~drop_mask.any(axis=1), -1] = True
                keep = ~drop_mask
                sims = sims[keep].reshape(len(rows), fetch - 1)
                ids = ids[keep].reshape(len(rows), fetch - 1)
            if fetch < n:  # items tied with the k-th may lie beyond the fetched window
                tied = (sims[:, k_eff - 1] == sims[:, -1]) & (ids[:, -1] >= 0)
            else:
                tied = np.zeros(len(rows), dtype=bool)
            done = rows[~tied]
            ids_out[done] = ids[~tied, :k_eff]
            sims_out[done] = sims[~tied, :k_eff]
            unresolved.append(rows[tied])
        pending = np.concatenate(unresolved)
        fetch = min(n, 2 * fetch)
    return ids_out, sims_out


class _FlatMemory:
    """The vectors of a flat faiss index as an array interface that holds the index: arrays made
    from it keep the index, hence the memory, alive."""

    def __init__(self, index: faiss.IndexFlat) -> None:
        self.index = index
        self.__array_interface__ = {"shape": (int(index.ntotal), int(index.d)), "typestr": "<f4",
                                    "data": (int(index.get_xb()), True), "version": 3}  # read-only


def _flat_view(index: faiss.IndexFlat) -> np.ndarray:
    """A read-only (n, D) float32 view of a flat index's vectors, without a copy. The view keeps the
    index alive (through its base); the index must get no more vectors (GalleryIndex never adds)."""
    if index.ntotal == 0:
        return np.empty((0, int(index.d)), dtype=np.float32)
    return np.asarray(_FlatMemory(index))  # (n, D)


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of q queries, best first."""

    ids: np.ndarray  # (q, k) int64 gallery ids (-1: no candidate, approximate index only)
    similarities: np.ndarray  # (q, k) float32 full cosine similarity
    branch_similarities: np.ndarray  # (q, k, N) float32 cosine of each branch; mean over N = full

    @property
    def branch_shares(self) -> np.ndarray:
        """(q, k, N) float32: each branch's part of the full similarity, cosine_n / N; sums over N to it."""
        return self.branch_similarities / np.float32(max(1, self.branch_similarities.shape[-1]))


class GalleryIndex:
    """A gallery's embeddings in a faiss index (flat or IVF-Flat), with labels, optional paths and a key.

    embeddings: (n, D) float32 array or `EmbeddingShards`; None for a flat index, which holds them.
    params: the index's description ({"type": "flat"} or the IVF parameters, `diablo.approximate`).
    """

    def __init__(
        self,
        index: faiss.Index,
        labels: np.ndarray,
        num_branches: int,
        key: str,
        paths: Sequence[str] | None = None,
        embeddings: np.ndarray | EmbeddingShards | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        n, dim = int(index.ntotal), int(index.d)
        self.kind = describe_kind(index)
        if num_branches < 1 or dim % num_branches:
            raise ValueError(f"num_branches={num_branches} must be >= 1 and divide D={dim}")
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} embeddings")
        if paths is not None and len(paths) != n:
            raise ValueError(f"{len(paths)} paths for {n} embeddings")
        if embeddings is None and self.kind != "flat":
            raise ValueError(f"a {self.kind} index does not hold its embeddings: pass them")
        if embeddings is not None and tuple(embeddings.shape) != (n, dim):
            raise ValueError(f"embeddings of shape {tuple(embeddings.shape)} for an index of ({n}, {dim})")
        self.index = index
        self.labels = np.asarray(labels, dtype=np.int64)  # (n,)
        self.num_branches = int(num_branches)
        self.key = str(key)
        self.paths = None if paths is None else [str(p) for p in paths]
        self.params = dict(params or {"type": self.kind})
        search_parameters(index, self.params)
        self._stored = embeddings  # None: the flat index holds them

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        num_branches: int = 1,
        key: str = "",
        paths: Sequence[str] | None = None,
        kind: str = "flat",
        approximate_from: int | None = None,
        progress: bool = False,
    ) -> GalleryIndex:
        """Index embeddings (n, D) with labels (n,); num_branches N splits D into N slices.

        kind: "flat" (exact), "ivf-flat", or "auto" (IVF-Flat from `approximate_from` vectors,
        default `diablo.approximate.APPROXIMATE_FROM`).
        """
        from diablo.approximate import APPROXIMATE_FROM, build_faiss_index

        embeddings = as_embedding_matrix(embeddings)
        labels = as_label_vector(labels, embeddings.shape[0])
        threshold = APPROXIMATE_FROM if approximate_from is None else approximate_from
        index, params = build_faiss_index(embeddings, kind, threshold, progress=progress)
        stored = None if params["type"] == "flat" else embeddings
        return cls(index, labels, num_branches, key, paths, stored, params)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def exact(self) -> bool:
        """Whether search is exact (a flat index)."""
        return self.kind == "flat"

    @property
    def embeddings(self) -> np.ndarray:
        """(n, D) float32, in gallery order: copied from the flat index or read from the shards on first use."""
        if self._stored is None:
            self._stored = np.array(_flat_view(self.index))
        elif isinstance(self._stored, EmbeddingShards):
            self._stored = self._stored.array()
        return self._stored

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Embeddings of gallery ids of any shape: ids.shape + (D,) float32, without reading the rest."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._stored is None:
            return _flat_view(self.index)[ids]
        if isinstance(self._stored, EmbeddingShards):
            return self._stored.rows(ids)
        return self._stored[ids]

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
        found = ids >= 0  # (q, k)
        qb = queries.reshape(q, 1, n_br, -1)  # (q, 1, N, D/N)
        gb = self.rows(np.where(found, ids, 0)).reshape(q, kk, n_br, -1)  # (q, k, N, D/N)
        branch = (qb * gb).sum(axis=-1, dtype=np.float32) * np.float32(n_br)  # (q, k, N)
        branch[~found] = np.nan
        return SearchResult(ids=ids, similarities=sims, branch_similarities=branch)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index's files, then DIR/gallery.json, atomically (`diablo.gallery_files`); returns
        the JSON's path."""
        from diablo.gallery_files import write_gallery

        embeddings = None if self.exact else self.embeddings
        return write_gallery(directory, self.index, self.labels, kind=self.kind, key=self.key,
                             num_branches=self.num_branches, params=self.params, paths=self.paths,
                             embeddings=embeddings)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], key: str) -> BuiltIndex | None:
        """The index saved in DIR for this key; None if none is (a cache miss: no manifest, another
        key, an unknown version, a file gone), ValueError if its files are corrupt."""
        try:
            manifest = read_manifest(directory)
        except FileNotFoundError:
            return None
        if manifest.get("key") != key or manifest.get("version") not in (1, FORMAT_VERSION):
            return None
        try:
            files = read_gallery(directory, manifest)
        except FileNotFoundError:
            return None
        return BuiltIndex.from_files(Path(directory), files)


class BuiltIndex(GalleryIndex):
    """A gallery index opened from its directory, with the manifest that describes it."""

    def __init__(self, directory: Path, files: GalleryFiles, params: dict[str, Any]) -> None:
        manifest = files.manifest
        super().__init__(files.index, files.labels, int(manifest.get("num_branches", 1)),
                         str(manifest.get("key", "")), files.paths, files.embeddings, params)
        self.directory = directory
        self.manifest = manifest
        self.classes = files.classes

    @classmethod
    def from_files(cls, directory: Path, files: GalleryFiles) -> BuiltIndex:
        entry = files.manifest.get("index")
        params = entry.get("params") if isinstance(entry, dict) else None
        try:
            return cls(directory, files, params if isinstance(params, dict) else None)
        except ValueError as err:
            raise ValueError(f"{directory}: {err}") from None

    @property
    def build(self) -> dict[str, Any]:
        """The build record (checkpoint, dataset, split, image size, skipped files, command); {} if none."""
        build = self.manifest.get("build")
        return build if isinstance(build, dict) else {}

    def check_checkpoint(self, digest: str) -> None:
        """ValueError (one line) unless `digest` (diablo.checkpoint.checkpoint_digest) is the model
        the gallery was embedded with."""
        recorded = (self.build.get("checkpoint") or {}).get("digest")
        if recorded is None:
            raise ValueError(f"{self.directory} records no checkpoint digest to check against")
        if digest != recorded:
            raise ValueError(f"the checkpoint holds another model than the one {self.directory} was built with "
                             f"(digest {digest[:12]}, the index records {recorded[:12]})")

    def class_name(self, i: int) -> str:
        """The class name of gallery item i, or its label as text."""
        label = int(self.labels[i])
        return self.classes[label] if self.classes and 0 <= label < len(self.classes) else str(label)


def open_index(directory: str | os.PathLike[str]) -> BuiltIndex:
    """The gallery index in DIR (any key, format version 1 or 2).

    FileNotFoundError if DIR holds no index or a file it names is missing; ValueError if corrupt.
    """
    directory = Path(directory)
    return BuiltIndex.from_files(directory, read_gallery(directory))


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
    for part in (f"diablo-gallery-v{_KEY_VERSION}", content.hexdigest(), gallery_description):
        key.update(part.encode())
        key.update(b"\0")
    return key.hexdigest()


if __name__ == "__main__":  # python -m diablo.index: the command lines live in diablo.gallery_commands
    from diablo.gallery_commands import main

    sys.exit(main())
