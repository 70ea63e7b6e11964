"""Exact against approximate gallery search from 10^4 to 10^6 vectors: build time, memory, latency,
recall@10 and load time, in one run (the machine is shared: compare the ratios, not the seconds).

    .venv/bin/python benchmarks/index_scale.py                          # sizes 10^4, 10^5, 10^6
    .venv/bin/python benchmarks/index_scale.py --sizes 10000 100000 --json runs/index_scale.json
    .venv/bin/python benchmarks/index_scale.py --measure-spread         # also embed the synthetic test set (~3 min)

Data: unit vectors of dimension 512 drawn as clusters of 40 (the synthetic test set's 40 images per
class), the clusters in groups of 6 (its classes come in groups of 6 variants of a prototype):
group centres uniform on the sphere, cluster centres normalize(group + 0.3 u), vectors
normalize(centre + 1.2 u), u a uniform unit vector. The 1.2 makes a vector's cosine to its
cluster's mean direction 0.65, as spread as the classes of the synthetic test set under
checkpoints/demo-baseline.safetensors (0.651, measured by --measure-spread; not tighter). Queries are
1,000 new vectors of the same clusters, so each has 39 same-cluster and 239 same-group gallery
neighbours (at least 10 true neighbours). Recall@10 is measured against the exact index's top 10,
not the planted clusters.

Per size: the exact index (faiss IndexFlatIP) and the approximate one that
`diablo.approximate.build_faiss_index` builds (IVF-Flat, nlist = 4 sqrt(n), nprobe calibrated on
held-out gallery items to recall@10 >= 0.95): build seconds (IVF: k-means, adding, calibration),
the index's size (its faiss file; in memory it takes the same), the process's peak resident memory
so far, queries per second for a batch of 1,000 (every core) and the p50 / p99 latency of single
queries (one thread), recall@10, and the seconds `diablo.index.open_index` takes to open the
saved directory and answer one query. One run's figures, and the choices they support, are in
the docstring of diablo/approximate.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diablo.approximate import build_faiss_index  # noqa: E402
from diablo.index import GalleryIndex, open_index  # noqa: E402

DIM = 512
CLUSTER = 40
GROUP = 6
POINT_SPREAD = 1.2
CENTRE_SPREAD = 0.3
# The synthetic test set (30 classes x 40 images) under demo-baseline, measured with --measure-spread.
DEMO_SPREAD = {"cos_to_class_mean": 0.651, "same_class_pair_cos": 0.409, "other_class_pair_cos": 0.333,
               "top10_same_class": 0.186}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, queries: int, seed: int = 0, dim: int = DIM) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery (n, D) float32, its cluster ids (n,), and queries (q, D) from the same clusters."""
    rng = np.random.default_rng(seed)
    clusters = -(-n // CLUSTER)
    groups = unit(rng.standard_normal((-(-clusters // GROUP), dim), dtype=np.float32))
    centres = unit(groups[np.arange(clusters) // GROUP]
                   + CENTRE_SPREAD * unit(rng.standard_normal((clusters, dim), dtype=np.float32)))
    cluster_of = np.arange(n) // CLUSTER  # (n,)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 1 << 16):
        rows = cluster_of[start : start + (1 << 16)]
        x[start : start + len(rows)] = unit(centres[rows] + POINT_SPREAD * unit(
            rng.standard_normal((len(rows), dim), dtype=np.float32)))
    q_clusters = rng.integers(0, clusters, queries)
    q = unit(centres[q_clusters] + POINT_SPREAD * unit(rng.standard_normal((queries, dim), dtype=np.float32)))
    return x, cluster_of, q.astype(np.float32)


def spread(x: np.ndarray, labels: np.ndarray, classes: int = 30) -> dict[str, float]:
    """The statistics of DEMO_SPREAD over the first `classes` classes of (x, labels)."""
    keep = labels < classes
    e, y = x[keep].astype(np.float64), labels[keep]
    sims = e @ e.T
    same = y[:, None] == y[None, :]
    np.fill_diagonal(same, False)
    other = y[:, None] != y[None, :]
    means = unit(np.stack([e[y == c].mean(axis=0) for c in range(classes)]))
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :10]
    np.fill_diagonal(sims, 1.0)
    return {"cos_to_class_mean": float((e * means[y]).sum(axis=1).mean()),
            "same_class_pair_cos": float(sims[same].mean()), "other_class_pair_cos": float(sims[other].mean()),
            "top10_same_class": float((y[top] == y[:, None]).mean())}


def measure_demo_spread() -> dict[str, float]:
    """DEMO_SPREAD, measured: demo-baseline's embeddings of the synthetic test split."""
    import torch

    import diablo
    from diablo.evaluation import embed

    torch.set_num_threads(os.cpu_count() or 1)
    model, _, _ = diablo.load_checkpoint(ROOT / "checkpoints" / "demo-baseline.safetensors", device="cpu")
    emb, labels = embed(model, diablo.load_dataset("synthetic", split="test"), batch_size=64)
    return spread(emb, labels - labels.min(), classes=len(np.unique(labels)))


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def latencies(index: faiss.Index, q: np.ndarray, count: int) -> tuple[float, float]:
    """p50 and p99 seconds of `count` single-query searches (k = 10), on one thread: on a loaded
    2-core machine the OpenMP hand-offs of a parallel single query cost more than the search."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    try:
        for row in q[:count]:
            start = time.perf_counter()
            index.search(row[None], 10)
            times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def batch_qps(index: faiss.Index, q: np.ndarray) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    _, ids = index.search(q, 10)
    return len(q) / (time.perf_counter() - start), ids


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, e)) / 10 for f, e in zip(found, exact, strict=True)]))


def load_seconds(index: faiss.Index, x: np.ndarray, params: dict[str, Any], q: np.ndarray, folder: Path) -> float:
    """Save through GalleryIndex, then time open_index and one query."""
    stored = None if params["type"] == "flat" else x
    GalleryIndex(index, np.zeros(len(x), dtype=np.int64), 1, "bench", None, stored, params).save(folder)
    start = time.perf_counter()
    opened = open_index(folder)
    opened.search(q[:1], 10)
    return time.perf_counter() - start


def hnsw_row(x: np.ndarray, q: np.ndarray, exact_ids: np.ndarray, exact_qps: float) -> dict[str, Any]:
    """HNSW (M = 32, efConstruction 40), the alternative to IVF-Flat: build seconds, and the smallest
    efSearch of 16, 32, ..., 512 whose recall@10 on the benchmark's own queries reaches 0.95 (a choice
    that favours HNSW: IVF-Flat is calibrated on gallery items, not on the queries it is scored on)."""
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    index.add(x)
    built = time.perf_counter() - start
    for ef in (16, 32, 64, 128, 256, 512):
        index.hnsw.efSearch = ef
        qps, ids = batch_qps(index, q)
        recall = recall_at_10(ids, exact_ids)
        if recall >= 0.95:
            break
    return {"build_s": built, "efSearch": ef, "recall@10": recall, "qps_1000": qps, "speedup_qps": qps / exact_qps}


def one_size(n: int, queries: int, singles: int, work: Path, hnsw: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {"n": n}
    start = time.perf_counter()
    x, _, q = clustered(n, queries, seed=n)
    row["generate_s"] = time.perf_counter() - start
    for kind in ("flat", "ivf-flat"):
        start = time.perf_counter()
        index, params = build_faiss_index(x, kind, progress=False)
        built = time.perf_counter() - start
        qps, ids = batch_qps(index, q)
        p50, p99 = latencies(index, q, singles)
        folder = work / f"{kind}-{n}"
        loaded = load_seconds(index, x, params, q, folder)
        size = sum(f.stat().st_size for f in folder.glob("gallery-*.faiss"))
        if kind == "flat":
            exact_ids = ids
        row[kind] = {"build_s": built, "peak_rss_mb": peak_rss_mb(), "index_mb": size / 1e6, "qps_1000": qps,
                     "p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99, "recall@10": recall_at_10(ids, exact_ids),
                     "load_s": loaded, "params": params}
        del index
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    if hnsw:
        row["hnsw"] = hnsw_row(x, q, exact_ids, row["flat"]["qps_1000"])
    row["speedup_qps"] = row["ivf-flat"]["qps_1000"] / row["flat"]["qps_1000"]
    row["speedup_p50"] = row["flat"]["p50_ms"] / row["ivf-flat"]["p50_ms"]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| n | index | build s | index MB | peak RSS MB | q/s (1,000) | p50 ms (1) | p99 ms (1) | recall@10 | "
            "load s | parameters |")
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        for kind in ("flat", "ivf-flat"):
            r = row[kind]
            p = r["params"]
            params = "exact" if kind == "flat" else (f"nlist {p['nlist']}, nprobe {p['nprobe']} "
                                                     f"(calibrated recall {p['calibration']['recall']:.3f})")
            lines.append(f"| {row['n']:,} | {kind} | {r['build_s']:.1f} | {r['index_mb']:.0f} | "
                         f"{r['peak_rss_mb']:.0f} | {r['qps_1000']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{r['recall@10']:.3f} | {r['load_s']:.2f} | {params} |")
        lines.append(f"| {row['n']:,} | ratio | | | | **{row['speedup_qps']:.1f}x** | **{row['speedup_p50']:.1f}x** "
                     "| | | | IVF over exact |")
        if "hnsw" in row:
            h = row["hnsw"]
            lines.append(f"| {row['n']:,} | hnsw | {h['build_s']:.1f} | | | {h['qps_1000']:.0f} "
                         f"({h['speedup_qps']:.1f}x) | | | {h['recall@10']:.3f} | | M 32, efSearch {h['efSearch']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=1000, help="the batch of queries (default 1000)")
    p.add_argument("--singles", type=int, default=50, help="single queries timed for p50 / p99 (default 50)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="faiss threads (default: every core)")
    p.add_argument("--hnsw-up-to", type=int, default=0, metavar="N",
                   help="also build HNSW (M 32) for sizes up to N, the alternative to IVF-Flat (default: none)")
    p.add_argument("--measure-spread", action="store_true", help="embed the synthetic test set with demo-baseline")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["index_scale.py", *argv])
    print(f"command: {command}")
    print(f"load average before: {os.getloadavg()}, cores {os.cpu_count()}, faiss threads {args.threads}")
    demo = measure_demo_spread() if args.measure_spread else DEMO_SPREAD
    x, labels, _ = clustered(1200, 0, seed=1)
    generated = spread(x, labels)
    print("spread (demo-baseline on the synthetic test set" + ("" if args.measure_spread else ", recorded") + "): "
          + json.dumps({k: round(v, 3) for k, v in demo.items()}))
    print("spread (generated, 30 clusters of 40): " + json.dumps({k: round(v, 3) for k, v in generated.items()}))
    rows = []
    with tempfile.TemporaryDirectory(prefix="index-scale-") as work:
        for n in tqdm(args.sizes, desc="sizes"):
            rows.append(one_size(n, args.queries, args.singles, Path(work), hnsw=n <= args.hnsw_up_to))
            tqdm.write(table(rows[-1:]))
    print(table(rows))
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "demo_spread": demo, "generated_spread": generated,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
