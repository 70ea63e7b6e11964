"""Exact Recall@K and MAP@R at Stanford-Online-Products and In-Shop scale: the blocked
`diablo.evaluation` against the top-K faiss search it replaced (issue 11, item 4).

Data: synthetic unit embeddings with the sizes and class counts of the two test splits.
SOP: 11,316 classes, 60,502 images, class sizes 2..12 (mean 5.35, most classes small), searched
leave-one-out, K = 1, 10, 100, 1000. In-Shop: 3,985 classes, 14,218 queries vs 12,612 gallery
images, K = 1, 10, 20, 30, 40, 50. Each class has a random centre; an image is its centre plus
Gaussian noise of a per-class scale, normalised, so that the metrics are far from 0 and 1; a few
images are exact copies of another one (of the same class or not), so that the ranking has ties.

`reference_retrieve` below is the implementation of `diablo.evaluation` before this change
(faiss IndexFlatIP top-max(K, R) search with `ranked_search`, copied as it was), run on the same
data in the same process. Every query where the two differ, and a random sample, is checked
against `brute_force` (float64, one query at a time, ties by index). The old search can give two
identical vectors different similarities (faiss computes them in database blocks of different
shapes), so with copies (`--copies`, default 0.005) it may break its own tie rule on a few
queries; `--copies 0` removes them. Last check, on a subset without copies: pytorch-metric-
learning's AccuracyCalculator (precision_at_1, mean_average_precision_at_r).

    python benchmarks/evaluation_speed.py --threads 2
    python benchmarks/evaluation_speed.py --threads 2 --copies 0

Printed: sizes, seconds of each implementation (wall and CPU seconds of the process, all threads:
on a busy machine the wall time is not the idle time), the ratio, the largest difference of each
metric, the command line and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

SOP = {"classes": 11_316, "images": 60_502, "min": 2, "max": 12}
IN_SHOP = {"classes": 3_985, "queries": 14_218, "gallery": 12_612}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP / faiss threads")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the SOP and In-Shop sizes")
    parser.add_argument("--block-size", type=int, default=None, help="diablo.evaluation's block size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread", type=float, nargs=2, default=(1.6, 2.6), help="range of the per-class noise scale")
    parser.add_argument("--copies", type=float, default=0.005, help="fraction of images replaced by an exact copy")
    parser.add_argument("--pml-images", type=int, default=8000, help="SOP subset for pytorch-metric-learning")
    parser.add_argument("--sample", type=int, default=300, help="random queries also checked by brute force")
    parser.add_argument("--skip-reference", action="store_true", help="time the new implementation only")
    parser.add_argument("--skip-in-shop", action="store_true")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else parse_args([])
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = str(ARGS.threads)

import faiss  # noqa: E402  (after the thread variables)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from diablo.index import as_embedding_matrix, as_label_vector  # noqa: E402
from diablo.ranking import BLOCK_SIZE, retrieve  # noqa: E402

# ---- the reference: diablo.evaluation._retrieve and diablo.index.ranked_search before the change ----

_ROWS_PER_CHUNK = 4096  # queries searched and scored at a time
_TIE_MARGIN = 8  # extra neighbours fetched so that boundary ties are usually resolved at once
_MAX_RESULTS = 1 << 22  # neighbours (rows x k) fetched per faiss call, bounds the memory


@dataclass(frozen=True)
class ReferenceRetrieval:
    hits: dict[int, np.ndarray]  # k -> (q,) bool
    average_precision: np.ndarray  # (q,) float64, NaN where R = 0


def _stable_order(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by decreasing similarity, then increasing id. (r, m) -> (r, m)."""
    order = np.lexsort((ids, -sims), axis=-1)
    return np.take_along_axis(sims, order, -1), np.take_along_axis(ids, order, -1)


def reference_ranked_search(
    index: faiss.Index, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query by inner product, ties in gallery-index order (ids, sims (q, k'))."""
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


def _reference_average_precision_at_r(rel: np.ndarray, r: np.ndarray) -> np.ndarray:
    ranks = np.arange(1, rel.shape[1] + 1)  # (k,)
    precision = np.cumsum(rel, axis=1) / ranks  # (rows, k)
    in_top_r = ranks[None, :] <= r[:, None]  # (rows, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * rel * in_top_r).sum(axis=1) / r
    return np.where(r > 0, ap, np.nan)


def reference_retrieve(
    emb: object, labels: object, ks: Iterable[int], gallery: object | None, gallery_labels: object | None
) -> ReferenceRetrieval:
    """Search once for max K and max R neighbours and score every query (the old `_retrieve`)."""
    ks = [int(k) for k in ks]
    queries = as_embedding_matrix(emb, "embeddings")  # (q, D)
    q_labels = as_label_vector(labels, queries.shape[0], "labels")  # (q,)
    leave_one_out = gallery is None
    if leave_one_out:
        g_emb, g_labels = queries, q_labels
    else:
        g_emb = as_embedding_matrix(gallery, "gallery")
        g_labels = as_label_vector(gallery_labels, g_emb.shape[0], "gallery_labels")
    classes, g_counts = np.unique(g_labels, return_counts=True)
    pos = np.searchsorted(classes, q_labels).clip(max=len(classes) - 1)
    r = np.where(classes[pos] == q_labels, g_counts[pos], 0) - int(leave_one_out)  # (q,)
    index = faiss.IndexFlatIP(g_emb.shape[1])
    index.add(g_emb)
    k_search = max(max(ks), int(r.max()))
    q = queries.shape[0]
    hits = {k: np.zeros(q, dtype=bool) for k in ks}
    ap = np.full(q, np.nan)
    for start in range(0, q, _ROWS_PER_CHUNK):
        rows = np.arange(start, min(q, start + _ROWS_PER_CHUNK))
        ids, _ = reference_ranked_search(index, queries[rows], k_search, rows if leave_one_out else None)
        rel = g_labels[ids] == q_labels[rows, None]  # (rows, k') bool
        for k in ks:
            hits[k][rows] = rel[:, :k].any(axis=1)
        ap[rows] = _reference_average_precision_at_r(rel, r[rows])
    return ReferenceRetrieval(hits=hits, average_precision=ap)


def brute_force(
    query: np.ndarray,
    q_labels: np.ndarray,
    rows: np.ndarray,
    ks: list[int],
    gallery: np.ndarray | None,
    g_labels: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hits (len(rows), len(ks)) bool and AP@R (len(rows),) of the queries `rows`, one at a time:
    float64 inner products by einsum (equal vectors give equal values), sorted by decreasing
    similarity then gallery index, the query itself dropped by index (leave-one-out)."""
    leave_one_out = gallery is None
    g64 = (query if leave_one_out else gallery).astype(np.float64)  # (m, D)
    labels = q_labels if leave_one_out else g_labels
    ids = np.arange(len(g64))
    hits = np.zeros((len(rows), len(ks)), dtype=bool)
    ap = np.full(len(rows), np.nan)
    for n, q in enumerate(rows.tolist()):
        sims = np.einsum("ij,j->i", g64, query[q].astype(np.float64))  # (m,)
        order = np.lexsort((ids, -sims))
        if leave_one_out:
            order = order[order != q]
        rel = labels[order] == q_labels[q]  # (m',) in rank order
        if rel.any():
            first = int(np.argmax(rel)) + 1
            hits[n] = [first <= k for k in ks]
            r = int(rel.sum())
            top = rel[:r]
            ap[n] = float((np.cumsum(top) / np.arange(1, r + 1) * top).sum() / r)
    return hits, ap


# ---- synthetic data -------------------------------------------------------------------------------


def class_sizes(rng: np.random.Generator, classes: int, images: int, low: int, high: int) -> np.ndarray:
    """(classes,) sizes in [low, high] summing to images, geometric-like: most classes small."""
    values = np.arange(low, high + 1)
    target = images / classes
    lo_rate, hi_rate = -5.0, 5.0  # bisection on the decay rate of p(s) ~ exp(-rate * s) for the mean
    for _ in range(60):
        rate = (lo_rate + hi_rate) / 2
        p = np.exp(-rate * (values - low))
        mean = float((values * p).sum() / p.sum())
        lo_rate, hi_rate = (rate, hi_rate) if mean > target else (lo_rate, rate)
    sizes = rng.choice(values, size=classes, p=p / p.sum())
    while (excess := int(sizes.sum()) - images) != 0:  # nudge random classes to the exact total
        step = -1 if excess > 0 else 1
        movable = np.flatnonzero((sizes + step >= low) & (sizes + step <= high))
        pick = rng.choice(movable, size=min(abs(excess), len(movable)), replace=False)
        sizes[pick] += step
    return sizes


def embeddings(
    rng: np.random.Generator, labels: np.ndarray, num_classes: int, dim: int, duplicates: float
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 unit vectors around one random centre per class; a fraction `duplicates`
    of the images are replaced by an exact copy of another image (half of them of another class).
    Returns the embeddings and (n,) bool: the image is or has a copy."""
    centres = rng.standard_normal((num_classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(*ARGS.spread, size=num_classes).astype(np.float32)  # per-class noise scale
    noise = rng.standard_normal((len(labels), dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    x = centres[labels] + spread[labels, None] * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    copied = np.zeros(len(labels), dtype=bool)
    count = int(duplicates * len(labels))
    targets = rng.choice(len(labels), size=count, replace=False)
    for i, target in enumerate(targets.tolist()):
        if i % 2:  # a copy of another image of the same class
            same = np.flatnonzero(labels == labels[target])
            source = int(rng.choice(same[same != target]))
        else:  # of any image
            source = int(rng.integers(len(labels)))
        x[target] = x[source]
        copied[[target, source]] = True
    return x.astype(np.float32), copied


def sop_like(rng: np.random.Generator, dim: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    classes = max(2, round(SOP["classes"] * scale))
    images = max(2 * classes, round(SOP["images"] * scale))
    sizes = class_sizes(rng, classes, images, SOP["min"], SOP["max"])
    labels = rng.permutation(np.repeat(np.arange(classes), sizes))  # shuffled, as a dataset order
    x, copied = embeddings(rng, labels, classes, dim, duplicates=ARGS.copies)
    return x, labels, copied


def in_shop_like(rng: np.random.Generator, dim: int, scale: float) -> tuple[np.ndarray, ...]:
    classes = max(2, round(IN_SHOP["classes"] * scale))
    queries, gallery = round(IN_SHOP["queries"] * scale), round(IN_SHOP["gallery"] * scale)
    sizes = class_sizes(rng, classes, queries + gallery, 2, 24)
    labels = rng.permutation(np.repeat(np.arange(classes), sizes))
    x, _ = embeddings(rng, labels, classes, dim, duplicates=ARGS.copies)
    # One gallery image per class first (every query has a positive, as in In-Shop), then at random.
    first = np.unique(labels, return_index=True)[1]
    rest = rng.permutation(np.setdiff1d(np.arange(len(labels)), first))
    in_gallery = np.zeros(len(labels), dtype=bool)
    in_gallery[first] = True
    in_gallery[rest[: gallery - len(first)]] = True
    return x[~in_gallery], labels[~in_gallery], x[in_gallery], labels[in_gallery]


# ---- measurement ------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of the process)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def metrics(result: Any, ks: list[int]) -> dict[str, float]:
    out = {f"recall@{k}": float(result.hits[k].mean()) for k in ks}
    ap = result.average_precision
    out["map@r"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
    return out


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def compare(
    name: str,
    ks: list[int],
    query: np.ndarray,
    q_labels: np.ndarray,
    gallery: np.ndarray | None,
    g_labels: np.ndarray | None,
    block_size: int,
) -> list[str]:
    """Time both implementations on one case; return the printed lines."""
    sizes = f"{len(query)} x {len(query) if gallery is None else len(gallery)} x {query.shape[1]}"
    lines = [f"\n## {name}: queries x gallery x D = {sizes}, K = {ks}"]
    load_before = load()
    new, new_wall, new_cpu = timed(lambda: retrieve(query, q_labels, ks, gallery, g_labels, block_size=block_size))
    lines.append(f"load before {load_before}, after the new run {load()}")
    new_metrics = metrics(new, ks)
    table = ["| implementation | wall s | CPU s (all threads) |", "|---|---:|---:|"]
    table.append(f"| new (blocked, block {block_size}) | {new_wall:.1f} | {new_cpu:.1f} |")
    if ARGS.skip_reference:
        lines += table + [f"new metrics: {new_metrics}"]
        return lines
    old, old_wall, old_cpu = timed(lambda: reference_retrieve(query, q_labels, ks, gallery, g_labels))
    lines.append(f"load after the reference run {load()}")
    old_metrics = metrics(old, ks)
    table.append(f"| old (faiss top-{max(ks)}/R search) | {old_wall:.1f} | {old_cpu:.1f} |")
    table.append(f"| ratio old / new | {old_wall / new_wall:.1f}x | {old_cpu / new_cpu:.1f}x |")
    lines += table
    lines += ["", "| metric | old | new | max abs diff |", "|---|---:|---:|---:|"]
    for key in new_metrics:
        diff = abs(old_metrics[key] - new_metrics[key])
        lines.append(f"| {key} | {old_metrics[key]:.6f} | {new_metrics[key]:.6f} | {diff:.2e} |")
    per_query = {k: int((old.hits[k] != new.hits[k]).sum()) for k in ks}
    both = np.isfinite(old.average_precision) & np.isfinite(new.average_precision)
    ap_diff = float(np.abs(old.average_precision[both] - new.average_precision[both]).max(initial=0.0))
    same_nan = bool((np.isnan(old.average_precision) == np.isnan(new.average_precision)).all())
    lines.append(f"queries whose hit differs, per K: {per_query}; max per-query AP@R diff {ap_diff:.2e}")
    lines.append(f"same queries without a positive (NaN AP): {same_nan}")
    lines += verify(ks, query, q_labels, gallery, g_labels, old, new)
    return lines


def verify(
    ks: list[int],
    query: np.ndarray,
    q_labels: np.ndarray,
    gallery: np.ndarray | None,
    g_labels: np.ndarray | None,
    old: Any,
    new: Any,
) -> list[str]:
    """Per-query agreement of both implementations with `brute_force` on every query where they
    differ (at most 2000) and on a random sample."""
    hits_old = np.stack([old.hits[k] for k in ks], axis=1)  # (q, K)
    hits_new = np.stack([new.hits[k] for k in ks], axis=1)
    ap_old, ap_new = np.nan_to_num(old.average_precision, nan=-1.0), np.nan_to_num(new.average_precision, nan=-1.0)
    differ = np.flatnonzero((hits_old != hits_new).any(axis=1) | (np.abs(ap_old - ap_new) > 1e-12))
    rng = np.random.default_rng(ARGS.seed + 1)
    sample = rng.choice(len(q_labels), size=min(ARGS.sample, len(q_labels)), replace=False)
    rows = np.union1d(differ[:2000], sample)
    (hits_bf, ap_bf), wall, _ = timed(lambda: brute_force(query, q_labels, rows, ks, gallery, g_labels))
    ap_bf = np.nan_to_num(ap_bf, nan=-1.0)

    def agree(hits: np.ndarray, ap: np.ndarray) -> np.ndarray:
        return (hits[rows] == hits_bf).all(axis=1) & (np.abs(ap[rows] - ap_bf) <= 1e-12)

    in_differ = np.isin(rows, differ)
    lines = [
        f"float64 brute-force ranking, one query at a time ({wall:.0f} s), on {len(rows)} queries: "
        f"the {len(differ)} where old and new differ{' (first 2000)' if len(differ) > 2000 else ''} "
        f"and {len(sample)} at random"
    ]
    for name, hits, ap in (("new", hits_new, ap_new), ("old", hits_old, ap_old)):
        ok = agree(hits, ap)
        lines.append(
            f"  {name} agrees with it on {int(ok.sum())}/{len(rows)} "
            f"({int(ok[in_differ].sum())}/{int(in_differ.sum())} of the differing queries, "
            f"{int(ok[~in_differ].sum())}/{int((~in_differ).sum())} of the others)"
        )
    return lines


def pml_check(x: np.ndarray, labels: np.ndarray, copied: np.ndarray, images: int, block_size: int) -> list[str]:
    """AccuracyCalculator on whole classes without copied images, leave-one-out."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    clean = np.setdiff1d(np.unique(labels), np.unique(labels[copied]))
    keep_classes = clean[np.cumsum(np.bincount(labels)[clean]) <= images]
    keep = np.isin(labels, keep_classes)
    sub_x, sub_y = x[keep], labels[keep]
    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count", device=torch.device("cpu")
    )
    oracle, pml_wall, _ = timed(lambda: calc.get_accuracy(sub_x, sub_y))
    new, new_wall, _ = timed(lambda: retrieve(sub_x, sub_y, (1,), None, None, block_size=block_size))
    new_metrics = metrics(new, [1])
    p1, mapr = oracle["precision_at_1"], oracle["mean_average_precision_at_r"]
    return [
        f"\n## pytorch-metric-learning AccuracyCalculator, SOP-like subset without copies: {len(sub_y)} images, "
        f"{len(keep_classes)} classes, leave-one-out ({pml_wall:.1f} s; new {new_wall:.1f} s)",
        "| metric | pml | new | abs diff |",
        "|---|---:|---:|---:|",
        f"| precision_at_1 / recall@1 | {p1:.6f} | {new_metrics['recall@1']:.6f} | "
        f"{abs(p1 - new_metrics['recall@1']):.2e} |",
        f"| mean_average_precision_at_r / map@r | {mapr:.6f} | {new_metrics['map@r']:.6f} | "
        f"{abs(mapr - new_metrics['map@r']):.2e} |",
    ]


def main() -> None:
    faiss.omp_set_num_threads(ARGS.threads)
    torch.set_num_threads(ARGS.threads)
    block_size = ARGS.block_size or BLOCK_SIZE
    rng = np.random.default_rng(ARGS.seed)
    print("# evaluation_speed")
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"cores {os.cpu_count()}, threads {ARGS.threads}, load average (1/5/15 min) at start {load()}")
    with threadpool_limits(ARGS.threads):
        x, labels, copied = sop_like(rng, ARGS.dim, ARGS.scale)
        counts = np.bincount(labels)
        print(
            f"SOP-like: {len(labels)} images, {len(counts)} classes, sizes {counts.min()}..{counts.max()} "
            f"(mean {counts.mean():.2f}), {int(copied.sum())} images in exact-copy pairs"
        )
        lines = compare("SOP-like, leave-one-out", [1, 10, 100, 1000], x, labels, None, None, block_size)
        print("\n".join(lines), flush=True)
        if ARGS.pml_images:
            print("\n".join(pml_check(x, labels, copied, ARGS.pml_images, block_size)), flush=True)
        if not ARGS.skip_in_shop:
            q, q_labels, g, g_labels = in_shop_like(rng, ARGS.dim, ARGS.scale)
            print(f"\nIn-Shop-like: {len(q)} queries, {len(g)} gallery images, {len(np.unique(q_labels))} classes")
            lines = compare(
                "In-Shop-like, queries vs gallery", [1, 10, 20, 30, 40, 50], q, q_labels, g, g_labels, block_size
            )
            print("\n".join(lines), flush=True)
    print(f"\nload average at the end {load()}")


if __name__ == "__main__":
    main()
