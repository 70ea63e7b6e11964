"""diablo.approximate: the size rule, nlist, and nprobe calibrated against numpy's exact top 10."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from diablo.approximate import (
    RECALL_TARGET,
    build_faiss_index,
    calibrate_nprobe,
    calibration_count,
    index_kind,
    list_count,
    recall,
)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.normal(size=(n, dim))
    x = centres[np.arange(n) % clusters] + 1.2 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_without_self(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    sims = x[rows].astype(np.float64) @ x.astype(np.float64).T  # (m, n)
    sims[np.arange(len(rows)), rows] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def numpy_recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / len(e) for f, e in zip(found, exact, strict=True)]))


def test_kind_and_list_count() -> None:
    assert index_kind(199_999) == "flat" and index_kind(200_000) == "ivf-flat"
    assert index_kind(10, "auto", approximate_from=10) == "ivf-flat" and index_kind(10**7, "flat") == "flat"
    with pytest.raises(ValueError, match="unknown index type"):
        index_kind(10, "hnsw")
    assert list_count(10**6) == 4000 and list_count(200_000) == round(4 * math.sqrt(200_000))
    assert list_count(3000) == (3000 - 300) // 40 and list_count(5) == 1
    assert calibration_count(10**6) == 500 and calibration_count(3000) == 300


def test_recall() -> None:
    assert recall(np.array([[1, 2, 3], [4, -1, -1]]), np.array([[3, 2, 9], [4, 5, 6]])) == pytest.approx(3 / 6)


def test_calibrated_nprobe_is_the_smallest_that_reaches_the_target() -> None:
    x = clustered(4000, 24, 80, seed=0)
    index, params = build_faiss_index(x, "ivf-flat", progress=False)
    nprobe, reached = params["nprobe"], params["calibration"]["recall"]
    assert params["nlist"] == list_count(4000) and index.nprobe == nprobe and params["train_size"] <= 4000 - 400
    # The held-out rows are the ones build_faiss_index sets aside: the first calibration_count(n) of its permutation.
    rows = np.sort(np.random.default_rng(0).permutation(4000)[: calibration_count(4000)])
    exact = exact_without_self(x, rows, 10)

    def measured(p: int) -> float:
        index.nprobe = p
        _, found = index.search(x[rows], 11)
        found = np.array([[i for i in row if i != r][:10] for row, r in zip(found, rows, strict=True)])
        return numpy_recall(found, exact)

    assert reached == pytest.approx(measured(nprobe)) and reached >= RECALL_TARGET
    assert nprobe == 1 or measured(nprobe - 1) < RECALL_TARGET
    assert 1 < nprobe < params["nlist"]  # the test data needs more than one list and fewer than all
    assert calibrate_nprobe(index, x, rows, target=1.01)[0] == params["nlist"]  # unreachable: exhaustive


def test_flat_is_exact_and_ivf_similarities_are_exact() -> None:
    x = clustered(1500, 16, 30, seed=1)
    flat, params = build_faiss_index(x, "auto", approximate_from=2000, progress=False)
    assert params == {"type": "flat"} and isinstance(flat, faiss.IndexFlatIP)
    ivf, params = build_faiss_index(x, "auto", approximate_from=1000, progress=False)
    assert params["type"] == "ivf-flat"
    sims, ids = ivf.search(x[:50], 10)
    np.testing.assert_allclose(sims, np.take_along_axis(x[:50] @ x.T, ids, 1), atol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        build_faiss_index(x[:1], "ivf-flat", progress=False)
