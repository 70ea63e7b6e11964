"""The exact ranking behind Recall@K and MAP@R: one blocked pass over the similarity matrix.

No top-K search: Recall@K needs only the rank of each query's first positive, i.e.
how many items rank above its best positive, and MAP@R only each query's top R. Both come from
one pass over the similarity matrix in blocks of at most `block_size` x `block_size` (numpy
matrix products, every block of the same shape so that equal vectors get equal similarities),
keeping per query a count and a top-R list (`_RankedScan`); leave-one-out computes each block
pair once and serves both of its sides (the matrix is symmetric). Items are sorted by class into
blocks that follow class groups, so the positives of a query are found in one block first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from diablo.index import as_embedding_matrix, as_label_vector

BLOCK_SIZE = 2048  # queries and gallery items per block of the similarity matrix (16 MiB float32)
_MAX_LIST_ENTRIES = 1 << 24  # top-R entries (queries x max R) held at once; more: groups of queries
_MERGE_AT = 1 << 16  # candidates buffered before they are merged into the top-R lists (and tau raised)
_PROGRESS_FROM = 1 << 30  # similarities (queries x gallery) from which a progress bar is shown
_CROWDED = 32  # list candidates of a row in one block beyond 4 x (max R + 1) + this: raise tau first


@dataclass(frozen=True)
class Retrieval:
    """Per-query outcomes of one search."""

    hits: dict[int, np.ndarray]  # k -> (q,) bool: a positive within the top k
    average_precision: np.ndarray  # (q,) float64 AP@R; NaN where R = 0


def check_ks(ks: Iterable[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def _class_groups(q_counts: np.ndarray, g_counts: np.ndarray, block_size: int) -> np.ndarray:
    """(G + 1,) class boundaries of G groups of consecutive classes, each holding at most block_size
    queries and block_size gallery items; a class larger than a block on either side is a group of
    its own. q_counts, g_counts (C,): items of each class on each side."""
    bounds = [0]
    in_q = in_g = 0
    for c, (nq, ng) in enumerate(zip(q_counts.tolist(), g_counts.tolist(), strict=True)):
        if c > bounds[-1] and (in_q + nq > block_size or in_g + ng > block_size):
            bounds.append(c)  # the open group is full
            in_q = in_g = 0
        in_q, in_g = in_q + nq, in_g + ng
        if in_q > block_size or in_g > block_size:
            bounds.append(c + 1)  # a class larger than a block: its own group
            in_q = in_g = 0
    if bounds[-1] < len(q_counts):
        bounds.append(len(q_counts))
    return np.asarray(bounds, dtype=np.int64)


@dataclass(frozen=True)
class _Blocks:
    """One side of the search (queries or gallery) sorted by class, then by index, and cut into
    blocks that follow the class groups: positive pairs only meet in blocks of the same group."""

    ids: np.ndarray  # (n,) int64 original index of each sorted position
    labels: np.ndarray  # (n,) int64 label of each sorted position
    starts: np.ndarray  # (B + 1,) first sorted position of each block, then n
    groups: np.ndarray  # (B,) class group of each block
    padded: np.ndarray  # (B * height, D) float32: block b in rows [b * height, b * height + size), zeros after
    height: int  # rows of the largest block: every similarity block has the same shape

    @staticmethod
    def build(x: np.ndarray, labels: np.ndarray, rank: np.ndarray, bounds: np.ndarray, block_size: int) -> _Blocks:
        """x (n, D), labels (n,), rank (n,) each item's class rank, bounds the class groups."""
        order = np.argsort(rank, kind="stable")  # (n,)
        counts = np.bincount(rank, minlength=int(bounds[-1]))  # (C,)
        first = np.concatenate([[0], np.cumsum(counts)])  # (C + 1,) first sorted position of each class
        starts: list[int] = []
        groups: list[int] = []
        for group in range(len(bounds) - 1):
            lo, hi = int(first[bounds[group]]), int(first[bounds[group + 1]])
            for start in range(lo, hi, block_size):
                starts.append(start)
                groups.append(group)
        n = len(order)
        starts_array = np.asarray([*starts, n], dtype=np.int64)
        sizes = np.diff(starts_array)  # (B,)
        height = int(sizes.max())
        padded = np.zeros((len(sizes) * height, x.shape[1]), dtype=np.float32)
        block_of = np.repeat(np.arange(len(sizes)), sizes)  # (n,)
        padded[block_of * height + np.arange(n) - starts_array[block_of]] = x[order]
        return _Blocks(order, labels[order], starts_array, np.asarray(groups, dtype=np.int64), padded, height)

    def __len__(self) -> int:
        return len(self.groups)

    def block(self, b: int) -> np.ndarray:
        """(height, D) embeddings of block b, zero rows after its items."""
        return self.padded[b * self.height : (b + 1) * self.height]

    def span(self, b: int) -> slice:
        """Sorted positions of block b's items."""
        return slice(int(self.starts[b]), int(self.starts[b + 1]))


class _RankedScan:
    """Per-query statistics of an exact ranking of the gallery, accumulated over blocks of the
    similarity matrix in any order.

    Ranking (that of `diablo.index.ranked_search`): decreasing similarity, equal similarities in
    increasing gallery index, the query itself left out by index (leave-one-out). Two passes:
    `positives` sees every block that holds a positive pair and gives each query its best positive
    (s+, lowest index among ties) and its lowest positive; then `scan` sees each block once and
    keeps only the items with a similarity >= theta, theta = min(s+, tau): the items ranked above
    the first positive are counted (Recall@K, counting stops at k_cap: a miss for every K), and
    the items >= tau are merged into each query's running top-R list (MAP@R). tau is a lower bound
    of the R-th similarity of the full ranking: the lowest positive at first (R positives lie at or
    above it), then the R-th entry of the list, so no item of the final top R is ever skipped.
    """

    def __init__(
        self,
        ids: np.ndarray,
        labels: np.ndarray,
        r: np.ndarray,
        k_cap: int,
        width: int,
        leave_one_out: bool,
        num_gallery: int,
    ) -> None:
        n = len(ids)
        self.ids = ids  # (n,) original index of each query (its own gallery index, leave-one-out)
        self.labels = labels  # (n,)
        self.r = r  # (n,) R: positives in the gallery
        self.k_cap = k_cap
        self.width = width  # entries of each top list: max R
        self.leave_one_out = leave_one_out
        self.num_gallery = num_gallery
        self.best = np.full(n, -np.inf, dtype=np.float32)  # (n,) s+: best positive similarity
        self.first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)  # (n,) its gallery index
        self.lowest = np.full(n, np.inf, dtype=np.float32)  # (n,) lowest positive similarity
        self.above = np.zeros(n, dtype=np.int64)  # (n,) items ranked above the first positive
        self.counted = np.full(n, np.inf, dtype=np.float32)  # (n,) s+ while counting, else inf
        self.tau = np.full(n, np.inf, dtype=np.float32)  # (n,) lower bound of the R-th similarity
        self.theta = np.full(n, np.inf, dtype=np.float32)  # (n,) min(counted, tau): candidates from here
        self.top_sim = np.full((n, width), -np.inf, dtype=np.float32)  # (n, width) best first
        self.top_id = np.full((n, width), num_gallery, dtype=np.int64)  # (n, width) num_gallery: empty
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def _entries(
        self, sims: np.ndarray, mask: np.ndarray, rows: slice, col_ids: np.ndarray, transpose: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, similarity, gallery index) of the True entries of mask (a, c) over sims (a, c),
        rows along axis 0 (axis 1 when transpose); entries beyond len(col_ids) columns (padding)
        are dropped, and with leave-one-out a query's own entry. sims and mask may be whole padded
        blocks: padded rows must be False."""
        flat = np.flatnonzero(mask)
        i, j = np.divmod(flat, mask.shape[1])
        values = sims.ravel()[flat] if sims.flags.c_contiguous else sims[i, j]
        if transpose:
            i, j = j, i
        inside = j < len(col_ids)
        g, s, gid = rows.start + i[inside], values[inside], col_ids[j[inside]]
        if self.leave_one_out:
            keep = gid != self.ids[g]
            g, s, gid = g[keep], s[keep], gid[keep]
        return g, s, gid

    def positives(
        self, sims: np.ndarray, rows: slice, col_ids: np.ndarray, col_labels: np.ndarray, transpose: bool = False
    ) -> None:
        """Update s+, its index and the lowest positive of `rows` with the positives of one block.

        sims (a, c): rows x columns (columns x rows when transpose); col_ids, col_labels (c,)."""
        labels = self.labels[rows]
        same = col_labels[:, None] == labels if transpose else labels[:, None] == col_labels
        g, s, gid = self._entries(sims, same, rows, col_ids, transpose)
        if not g.size:
            return
        seen = np.zeros(len(self.r), dtype=bool)
        seen[g] = True
        touched = np.flatnonzero(seen)
        before = self.best[touched]
        np.maximum.at(self.best, g, s)
        self.first[touched[self.best[touched] > before]] = np.iinfo(np.int64).max
        at_best = s == self.best[g]
        np.minimum.at(self.first, g[at_best], gid[at_best])
        np.minimum.at(self.lowest, g, s)

    def ready(self, rows: slice) -> None:
        """All positives of `rows` are in: start counting and listing them."""
        has = self.r[rows] > 0
        self.counted[rows] = np.where(has, self.best[rows], np.inf)
        self.tau[rows] = np.where(has & (self.width > 0), self.lowest[rows], np.inf)
        self.theta[rows] = np.minimum(self.counted[rows], self.tau[rows])

    def active(self, rows: slice) -> bool:
        """Whether a block can still change any statistic of `rows`."""
        return bool((self.theta[rows] < np.inf).any())

    def scan(
        self,
        sims: np.ndarray,
        rows: slice,
        col_ids: np.ndarray,
        transpose: bool = False,
        mask: np.ndarray | None = None,
    ) -> None:
        """Count and list the candidates of `rows` in one block. sims (h_r, h_c): a whole padded
        block, rows first (columns first when transpose); mask: a bool buffer of its shape."""
        height = sims.shape[1] if transpose else sims.shape[0]
        theta = np.full(height, np.inf, dtype=np.float32)  # (h,) padded rows: no candidate
        theta[: rows.stop - rows.start] = self.theta[rows]
        mask = np.empty(sims.shape, dtype=bool) if mask is None else mask
        np.greater_equal(sims, theta if transpose else theta[:, None], out=mask)
        g, s, gid = self._entries(sims, mask, rows, col_ids, transpose)
        if not g.size:
            return
        at = self.counted[g]
        above = (s > at) | ((s == at) & (gid < self.first[g]))
        if above.any():
            counted = g[above]
            np.add.at(self.above, counted, 1)
            full = counted[self.above[counted] >= self.k_cap]  # ranked below k_cap: a miss for every K
            self.counted[full] = np.inf
            self.theta[full] = self.tau[full]
        if self.width:
            listed = s >= self.tau[g]
            g, s, gid = g[listed], s[listed], gid[listed]
            g, s, gid = self._thin(sims, rows, len(col_ids), transpose, g, s, gid)
            if g.size:
                self._pending.append((g, s, gid))
                self._pending_size += g.size
                if self._pending_size >= _MERGE_AT:
                    self.merge()

    def _thin(
        self,
        sims: np.ndarray,
        rows: slice,
        columns: int,
        transpose: bool,
        g: np.ndarray,
        s: np.ndarray,
        gid: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raise tau of rows with many list candidates in this block to the block's (width + 1)-th
        similarity (at most one of those items is the query itself) and drop what falls below."""
        keep_top = self.width + 1
        per_row = np.bincount(g - rows.start, minlength=rows.stop - rows.start)  # (a,)
        crowded = np.flatnonzero(per_row > 4 * keep_top + _CROWDED)
        if not crowded.size or columns <= keep_top:
            return g, s, gid
        values = sims[:columns, crowded].T if transpose else sims[crowded, :columns]  # (crowded, columns)
        kth = np.partition(values, columns - keep_top, axis=1)[:, columns - keep_top]
        crowded += rows.start
        self.tau[crowded] = np.maximum(self.tau[crowded], kth)
        self.theta[crowded] = np.minimum(self.counted[crowded], self.tau[crowded])
        keep = s >= self.tau[g]
        return g[keep], s[keep], gid[keep]

    def merge(self) -> None:
        """Merge the pending candidates into the top lists and raise tau."""
        if not self._pending:
            return
        g, s, gid = (np.concatenate(parts) for parts in zip(*self._pending, strict=True))
        self._pending, self._pending_size = [], 0
        seen = np.zeros(len(self.r), dtype=bool)
        seen[g] = True
        touched = np.flatnonzero(seen)  # (u,) rows with candidates, increasing
        width = self.width
        rows = np.concatenate([np.repeat(touched, width), g])
        sims = np.concatenate([self.top_sim[touched].ravel(), s])
        ids = np.concatenate([self.top_id[touched].ravel(), gid])
        order = np.lexsort((ids, -sims, rows))  # by row, then the ranking
        rows, sims, ids = rows[order], sims[order], ids[order]
        starts = np.searchsorted(rows, touched)  # (u,) every row holds >= width entries
        rank = np.arange(rows.size) - np.repeat(starts, np.diff(np.append(starts, rows.size)))
        keep = rank < width
        self.top_sim[rows[keep], rank[keep]] = sims[keep]
        self.top_id[rows[keep], rank[keep]] = ids[keep]
        kth = self.top_sim[touched, self.r[touched] - 1]  # rows with candidates have R >= 1
        self.tau[touched] = np.maximum(self.tau[touched], kth)
        self.theta[touched] = np.minimum(self.counted[touched], self.tau[touched])

    def results(self, g_labels: np.ndarray, ks: list[int]) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """hits {k: (n,) bool} and AP@R (n,) float64 (NaN where R = 0), in row order."""
        self.merge()
        has = self.r > 0
        hits = {k: has & (self.above < k) for k in ks}  # rank of the first positive = above + 1
        if not self.width:
            return hits, np.full(len(self.r), np.nan)
        valid = self.top_id < self.num_gallery
        rel = valid & (g_labels[np.minimum(self.top_id, self.num_gallery - 1)] == self.labels[:, None])
        return hits, average_precision_at_r(rel, self.r)


def _row_groups(blocks: _Blocks, width: int, symmetric: bool) -> list[tuple[int, int]]:
    """Ranges of query blocks whose top lists fit in _MAX_LIST_ENTRIES (all of them when symmetric)."""
    if symmetric:
        return [(0, len(blocks))]
    groups: list[tuple[int, int]] = []
    first = 0
    for b in range(1, len(blocks) + 1):
        if b == len(blocks) or (blocks.starts[b + 1] - blocks.starts[first]) * max(width, 1) > _MAX_LIST_ENTRIES:
            groups.append((first, b))
            first = b
    return groups


def _scan_rows(
    qb: _Blocks,
    gb: _Blocks,
    first_block: int,
    stop_block: int,
    symmetric: bool,
    r: np.ndarray,
    k_cap: int,
    width: int,
    leave_one_out: bool,
    progress: bool,
) -> _RankedScan:
    """The statistics of the queries of blocks [first_block, stop_block) against the whole gallery.

    Every similarity is one element of a (qb.height, gb.height) product of two padded blocks, so
    all of them come from BLAS calls of one shape (an item's similarities to equal vectors are
    equal). symmetric (leave-one-out, all blocks): only blocks j >= i are computed, block (i, j)
    serves the rows of i and, transposed, the rows of j.
    """
    lo, hi = int(qb.starts[first_block]), int(qb.starts[stop_block])
    scan = _RankedScan(qb.ids[lo:hi], qb.labels[lo:hi], r[lo:hi], k_cap, width, leave_one_out, len(gb.ids))
    out = np.empty((qb.height, gb.height), dtype=np.float32)  # (h_q, h_g)
    mask = np.empty(out.shape, dtype=bool)  # (h_q, h_g)
    scratch = np.empty((gb.height, gb.padded.shape[1]), dtype=np.float32) if leave_one_out else None

    def similarities(i: int, j: int) -> np.ndarray:
        """(h_q, h_g) similarities of query block i and gallery block j, padding included."""
        right = gb.block(j)
        if scratch is not None and i == j:  # another buffer: numpy would call syrk for x @ x.T
            np.copyto(scratch, right)
            right = scratch
        return np.matmul(qb.block(i), right.T, out=out)

    def trim(sims: np.ndarray, i: int, j: int) -> np.ndarray:
        """The (|i|, |j|) part of a block: its items, without padding."""
        span_i, span_j = qb.span(i), gb.span(j)
        return sims[: span_i.stop - span_i.start, : span_j.stop - span_j.start]

    def rows(i: int) -> slice:
        span = qb.span(i)
        return slice(span.start - lo, span.stop - lo)

    def gallery(j: int) -> tuple[np.ndarray, np.ndarray]:
        span = gb.span(j)
        return gb.ids[span], gb.labels[span]

    group_blocks = {int(group): np.flatnonzero(gb.groups == group) for group in np.unique(qb.groups)}
    done: set[tuple[int, int]] = set()
    waiting: list[int] = []
    for i in range(first_block, stop_block):  # pass 1: the blocks that hold positive pairs
        band = group_blocks[int(qb.groups[i])]
        sims = None
        for j in band.tolist():
            if symmetric and j < i:
                continue  # already seen as (j, i)
            sims = similarities(i, j)
            scan.positives(trim(sims, i, j), rows(i), *gallery(j))
            if symmetric and j != i:
                scan.positives(trim(sims, i, j), rows(j), *gallery(i), transpose=True)
        if len(band) == 1 and sims is not None:  # all positives of block i are in this one block
            j = int(band[0])
            scan.ready(rows(i))
            scan.scan(sims, rows(i), gallery(j)[0], mask=mask)
            done.add((i, j))
        else:
            waiting.append(i)
    for i in waiting:
        scan.ready(rows(i))
    scan.merge()  # the lists of pass 1 give every tau its first rise

    pairs = [
        (i, j)
        for i in range(first_block, stop_block)
        for j in (range(i, stop_block) if symmetric else range(len(gb)))
        if (i, j) not in done
    ]
    for i, j in tqdm(pairs, desc="evaluate", unit="block", disable=not progress, leave=False):
        serve_i = scan.active(rows(i))
        serve_j = symmetric and j != i and scan.active(rows(j))
        if not (serve_i or serve_j):
            continue
        sims = similarities(i, j)
        if serve_i:
            scan.scan(sims, rows(i), gallery(j)[0], mask=mask)
        if serve_j:
            scan.scan(sims, rows(j), qb.ids[qb.span(i)], transpose=True, mask=mask)
    scan.merge()
    return scan


def retrieve(
    emb: object,
    labels: object,
    ks: Iterable[int],
    gallery: object | None,
    gallery_labels: object | None,
    with_map: bool = True,
    block_size: int = BLOCK_SIZE,
) -> Retrieval:
    """Score every query against the exact ranking of the gallery, computed block by block.

    Blocks of at most block_size queries x block_size gallery items, cut along class groups; the
    result does not depend on block_size (memory and speed only).
    """
    ks = check_ks(ks)
    if int(block_size) < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    block_size = int(block_size)
    queries = as_embedding_matrix(emb, "embeddings")  # (q, D)
    q_labels = as_label_vector(labels, queries.shape[0], "labels")  # (q,)
    leave_one_out = gallery is None
    if leave_one_out:
        if gallery_labels is not None:
            raise ValueError("gallery_labels given without a gallery")
        g_emb, g_labels = queries, q_labels
    else:
        if gallery_labels is None:
            raise ValueError("a gallery needs gallery_labels")
        g_emb = as_embedding_matrix(gallery, "gallery")
        g_labels = as_label_vector(gallery_labels, g_emb.shape[0], "gallery_labels")
        if g_emb.shape[1] != queries.shape[1]:
            raise ValueError(f"queries have D={queries.shape[1]}, the gallery has D={g_emb.shape[1]}")

    # R: same-class gallery items of each query, itself excluded.
    classes, g_counts = np.unique(g_labels, return_counts=True)
    pos = np.searchsorted(classes, q_labels).clip(max=len(classes) - 1)
    r = np.where(classes[pos] == q_labels, g_counts[pos], 0) - int(leave_one_out)  # (q,)

    all_classes = classes if leave_one_out else np.union1d(classes, q_labels)
    q_rank = np.searchsorted(all_classes, q_labels)  # (q,)
    q_per_class = np.bincount(q_rank, minlength=len(all_classes))  # (C,)
    if leave_one_out:
        g_rank, g_per_class = q_rank, q_per_class
    else:
        g_rank = np.searchsorted(all_classes, g_labels)  # (m,)
        g_per_class = np.bincount(g_rank, minlength=len(all_classes))
    bounds = _class_groups(q_per_class, g_per_class, block_size)
    qb = _Blocks.build(queries, q_labels, q_rank, bounds, block_size)
    gb = qb if leave_one_out else _Blocks.build(g_emb, g_labels, g_rank, bounds, block_size)

    width = int(r.max()) if with_map else 0
    symmetric = leave_one_out and len(r) * max(width, 1) <= _MAX_LIST_ENTRIES
    progress = len(r) * len(g_labels) >= _PROGRESS_FROM
    r_sorted = r[qb.ids]  # (q,) in sorted order
    hits = {k: np.zeros(len(r), dtype=bool) for k in ks}
    ap = np.full(len(r), np.nan)
    for first_block, stop_block in _row_groups(qb, width, symmetric):
        scan = _scan_rows(qb, gb, first_block, stop_block, symmetric, r_sorted, max(ks), width, leave_one_out, progress)
        group_hits, group_ap = scan.results(g_labels, ks)
        ids = scan.ids
        for k in ks:
            hits[k][ids] = group_hits[k]
        ap[ids] = group_ap
    return Retrieval(hits=hits, average_precision=ap)


def average_precision_at_r(rel: np.ndarray, r: np.ndarray) -> np.ndarray:
    """AP@R of each row: rel (rows, k) bool relevance in rank order with k >= R, r (rows,).

    sum_{i <= R} P@i * rel_i / R; NaN where R = 0.
    """
    ranks = np.arange(1, rel.shape[1] + 1)  # (k,)
    precision = np.cumsum(rel, axis=1) / ranks  # (rows, k) P@i
    in_top_r = ranks[None, :] <= r[:, None]  # (rows, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * rel * in_top_r).sum(axis=1) / r
    return np.where(r > 0, ap, np.nan)
