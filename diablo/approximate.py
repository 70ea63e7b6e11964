"""Approximate search for large galleries: when exact search stops scaling, and which faiss index.

Below `APPROXIMATE_FROM` gallery vectors a gallery is searched exactly (faiss IndexFlatIP). From
there on it gets an IVF-Flat index (the choice and the threshold were measured, see below):

- nlist = round(4 sqrt(n)) cells, the k-means centres (inner product, `KMEANS_ITERATIONS`
  iterations, seeded) of `TRAIN_PER_LIST` * nlist gallery vectors drawn at random (faiss warns
  below 39 per centre); the centres of a search are found exactly.
- A query scans the nprobe cells whose centres are nearest, exhaustively: the similarities it
  returns are exact, only the candidate set is approximate. nprobe is chosen when the index is
  built (`calibrate_nprobe`): the smallest of 1, 2, 4, ... (then bisected) whose recall@10 against
  exact search reaches `RECALL_TARGET` for `CALIBRATION_QUERIES` gallery items used as queries
  (each one's own entry left out of both lists). These items are kept out of the k-means
  training: on its own training points an IVF index looks better than on new queries.

Measured with `benchmarks/index_scale.py` (2 cores under a load average of 7-9, D = 512, clusters
as spread as the synthetic test classes under the demo baseline; recall@10 against exact search):

- 10^6 vectors: IVF-Flat (nlist 4000, calibrated nprobe 1) answered 1,000 queries 334x faster than
  the exact index at recall 0.980, single queries in 0.2 ms against 115 ms, and opened in 4.3 s;
  its build took 282 s (k-means, adding, calibration) against 9 s.
- 10^5 vectors: HNSW (M 32, efConstruction 40, efSearch 64) took 58 s to build and reached recall
  0.966 at 17x exact's speed; IVF-Flat took 39 s and reached 0.969 at 39x. IVF-PQ was not tried:
  it trades recall for memory, and 10^6 x 512 floats (2 GB) need no saving.
- nlist: in an exploratory run at 10^6 (the same data with clusters in groups of 10), sqrt(n) = 1000 lists plateaued at
  recall 0.958 with nprobe 32 (5x faster than exact), 4 sqrt(n) = 4000 lists reached 0.986 with
  nprobe 2 (106x).
- The threshold: at 2 x 10^5 vectors one exact query takes 48 ms (p50, one thread) and 1,000 take
  9 s; below that exact answers come fast enough that the top-10 neighbours an IVF index loses
  (3-5 %) and its k-means (47 s at 2 x 10^5) buy nothing a user would notice.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

APPROXIMATE_FROM = 200_000
"""Galleries of at least this many vectors get an IVF-Flat index (see the module docstring)."""
RECALL_TARGET = 0.95
CALIBRATION_QUERIES = 500
CALIBRATION_K = 10
TRAIN_PER_LIST = 40
KMEANS_ITERATIONS = 10
KINDS = ("auto", "flat", "ivf-flat")
_ADD_CHUNK = 1 << 16  # vectors added to an index at a time (progress)


def index_kind(n: int, kind: str = "auto", approximate_from: int = APPROXIMATE_FROM) -> str:
    """"flat" or "ivf-flat" for a gallery of n vectors; "auto" picks by size."""
    if kind not in KINDS:
        raise ValueError(f"unknown index type {kind!r}; allowed: {', '.join(KINDS)}")
    if kind == "auto":
        return "ivf-flat" if n >= approximate_from else "flat"
    return kind


def calibration_count(n: int) -> int:
    """How many of n gallery vectors calibrate nprobe: CALIBRATION_QUERIES, at most a tenth of them."""
    return max(1, min(CALIBRATION_QUERIES, n // 10))


def list_count(n: int) -> int:
    """nlist of an IVF index over n vectors: round(4 sqrt(n)), at most a list per TRAIN_PER_LIST
    vectors left for training once the calibration queries are set aside (>= 1)."""
    return max(1, min(round(4 * math.sqrt(n)), (n - calibration_count(n)) // TRAIN_PER_LIST))


def _add(index: faiss.Index, x: np.ndarray, progress: bool) -> None:
    """Add x (n, D) in chunks, with a progress bar."""
    with tqdm(total=len(x), desc="index", unit="vec", disable=not progress, leave=False) as bar:
        for start in range(0, len(x), _ADD_CHUNK):
            index.add(x[start : start + _ADD_CHUNK])
            bar.update(min(_ADD_CHUNK, len(x) - start))


def build_faiss_index(
    x: np.ndarray,
    kind: str = "auto",
    approximate_from: int = APPROXIMATE_FROM,
    recall_target: float = RECALL_TARGET,
    seed: int = 0,
    progress: bool = True,
) -> tuple[faiss.Index, dict[str, Any]]:
    """An inner-product index over x (n, D) float32 and its description for the manifest.

    "flat": exact. "ivf-flat": nlist from n, nprobe calibrated to `recall_target`. The description
    is {"type": ...} plus, for IVF, nlist, nprobe, the training size and the calibration's recall.
    """
    n, dim = x.shape
    chosen = index_kind(n, kind, approximate_from)
    if chosen == "flat":
        index = faiss.IndexFlatIP(dim)
        _add(index, x, progress)
        return index, {"type": "flat"}
    if n < 2:
        raise ValueError(f"an ivf-flat index needs at least 2 vectors, got {n}")
    nlist = list_count(n)
    order = np.random.default_rng(seed).permutation(n)
    held_out = np.sort(order[: calibration_count(n)])  # calibration queries, never trained on
    train_size = min(n - len(held_out), TRAIN_PER_LIST * nlist)
    sample = x[np.sort(order[len(held_out) : len(held_out) + train_size])]  # (train_size, D)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # the lists are sized above; no warning for small tests
    index.train(sample)  # faiss's wrapper keeps `quantizer` alive as long as `index`
    _add(index, x, progress)
    nprobe, recall = calibrate_nprobe(index, x, held_out, recall_target)
    index.nprobe = nprobe
    return index, {
        "type": "ivf-flat",
        "nlist": nlist,
        "nprobe": nprobe,
        "train_size": train_size,
        "kmeans_iterations": KMEANS_ITERATIONS,
        "seed": seed,
        "recall_target": recall_target,
        "calibration": {"queries": len(held_out), "k": min(CALIBRATION_K, n - 1), "recall": recall},
    }


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found ∩ exact| / |exact|: ids (q, k) each (-1 in found: nothing)."""
    if exact.size == 0:
        return 1.0
    hits = [len(np.intersect1d(f[f >= 0], e)) for f, e in zip(found, exact, strict=True)]
    return float(np.sum(hits) / exact.size)


def _without_self(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of each row other than the row's own id: (q, k + 1) -> (q, k)."""
    keep = ids != own[:, None]
    keep[keep.all(axis=1), -1] = False  # own id absent: drop the last column instead
    return ids[keep].reshape(len(ids), -1)[:, :k]


def calibrate_nprobe(
    index: faiss.IndexIVF,
    x: np.ndarray,
    rows: np.ndarray,
    target: float = RECALL_TARGET,
    k: int = CALIBRATION_K,
) -> tuple[int, float]:
    """The smallest nprobe whose recall@k reaches `target`, and that recall.

    Queries: the gallery rows `rows` of x (n, D), best kept out of the k-means training (a centre
    drawn towards its own training points flatters them); each query's own row is left out of the
    exact and the approximate lists. nprobe doubles from 1 until the target is reached (at nprobe
    = nlist the search is exhaustive), then the last interval is bisected.
    """
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return 1, 1.0
    rows = np.asarray(rows, dtype=np.int64)
    q = np.ascontiguousarray(x[rows])  # (m, D)
    _, exact = faiss.knn(q, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)  # (m, k + 1)
    exact = _without_self(exact, rows, k)

    def measure(nprobe: int) -> float:
        index.nprobe = nprobe
        _, found = index.search(q, k + 1)
        return recall(_without_self(found, rows, k), exact)

    nlist = int(index.nlist)
    low, high = 0, 1  # recall(low) < target (0: nothing probed), recall(high) to be measured
    measured: dict[int, float] = {}
    while True:
        measured[high] = measure(high)
        if measured[high] >= target or high >= nlist:
            break
        low, high = high, min(2 * high, nlist)
    while high - low > 1:  # bisect (low, high]
        mid = (low + high) // 2
        measured[mid] = measure(mid)
        if measured[mid] >= target:
            high = mid
        else:
            low = mid
    return high, measured[high]


def search_parameters(index: faiss.Index, params: dict[str, Any]) -> None:
    """Apply the recorded search-time parameters (nprobe) of a manifest to a loaded index."""
    if isinstance(index, faiss.IndexIVF) and "nprobe" in params:
        index.nprobe = int(params["nprobe"])


def describe_kind(index: faiss.Index) -> str:
    """"flat" or "ivf-flat" for the index types a gallery uses; ValueError for another."""
    if isinstance(index, faiss.IndexFlatIP):
        return "flat"
    if isinstance(index, faiss.IndexIVFFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "ivf-flat"
    raise ValueError(f"unsupported faiss index {type(index).__name__}")
