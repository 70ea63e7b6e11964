"""Recall@K, MAP@R, NMI and embed against brute-force numpy and pytorch-metric-learning."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from diablo.evaluation import embed, evaluate, map_at_r, nmi, recall_at_k, without_positive


def integer_embeddings(n: int, d: int = 5, classes: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vectors with small integer entries: every inner product is exact in float32 and many tie."""
    rng = np.random.default_rng(seed)
    return rng.integers(-2, 3, size=(n, d)).astype(np.float32), rng.integers(0, classes, size=n)


def unit_embeddings(n: int, d: int = 16, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), rng.integers(0, classes, size=n)


def brute_force_relevance(q, q_labels, g, g_labels, leave_one_out: bool) -> list[np.ndarray]:
    """Per query: relevance of the whole ranked gallery, ties in index order, self removed."""
    sims = q.astype(np.float64) @ g.astype(np.float64).T
    out = []
    for i in range(len(q)):
        order = np.argsort(-sims[i], kind="stable")
        if leave_one_out:
            order = order[order != i]
        out.append(g_labels[order] == q_labels[i])
    return out


def brute_force_metrics(q, q_labels, ks, g=None, g_labels=None) -> tuple[dict[int, float], float]:
    loo = g is None
    rels = brute_force_relevance(q, q_labels, q if loo else g, q_labels if loo else g_labels, loo)
    recall = {k: float(np.mean([rel[:k].any() for rel in rels])) for k in ks}
    aps = []
    for rel in rels:
        r = int(rel.sum())
        if r == 0:
            continue
        precision = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        aps.append(float((precision * rel[:r]).sum() / r))
    return recall, float(np.mean(aps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leave_one_out_matches_brute_force_with_ties(seed: int) -> None:
    x, y = integer_embeddings(150, seed=seed)
    ks = (1, 2, 4, 8, 16)
    expected_recall, expected_map = brute_force_metrics(x, y, ks)
    assert recall_at_k(x, y, ks) == pytest.approx(expected_recall, abs=1e-12)
    assert map_at_r(x, y) == pytest.approx(expected_map, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_query_vs_gallery_matches_brute_force(seed: int) -> None:
    q, q_labels = integer_embeddings(60, seed=seed)
    g, g_labels = integer_embeddings(90, seed=seed + 10)
    ks = (1, 10, 20, 30)
    expected_recall, expected_map = brute_force_metrics(q, q_labels, ks, g, g_labels)
    assert recall_at_k(q, q_labels, ks, gallery=g, gallery_labels=g_labels) == pytest.approx(expected_recall)
    assert map_at_r(q, q_labels, gallery=g, gallery_labels=g_labels) == pytest.approx(expected_map)


def test_ties_keep_index_order() -> None:
    # Items 0, 1, 2 are identical. Query 0's neighbours tie and rank 1, 2 (index order), so with
    # item 1 of another class query 0 misses at K = 1 (faiss alone returns 2 first: a hit).
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert recall_at_k(x, np.array([0, 1, 0, 2]), ks=(1, 2)) == {1: 0.25, 2: 0.5}
    assert recall_at_k(x, np.array([0, 0, 1, 2]), ks=(1, 2)) == {1: 0.5, 2: 0.5}
    # Query 3 ties with everything at 0 and takes item 0 first: the only hit.
    assert recall_at_k(x, np.array([5, 0, 0, 5]), ks=(1,)) == {1: 0.25}


def test_self_is_dropped_by_index_not_similarity() -> None:
    # Two identical embeddings of the same class: each one's duplicate is its first neighbour.
    x = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    assert recall_at_k(x, np.array([0, 0, 1, 1]), ks=(1,)) == {1: 1.0}
    assert map_at_r(x, np.array([0, 0, 1, 1])) == 1.0


def test_single_image_classes_miss_and_leave_map_at_r() -> None:
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], dtype=np.float32)
    y = np.array([0, 0, 1, 1, 2])  # class 2 has a single image
    assert recall_at_k(x, y, ks=(1, 4)) == {1: 0.8, 4: 0.8}
    assert map_at_r(x, y) == 1.0  # the four queries with a positive are perfect
    assert np.isnan(map_at_r(x[:1], y[:1])) and np.isnan(evaluate(x, np.arange(5), (1,))["map@r"])


def test_k_larger_than_gallery_is_clamped() -> None:
    x, y = integer_embeddings(10, classes=4)
    has_positive = np.mean([(y == label).sum() > 1 for label in y])
    result = recall_at_k(x, y, ks=(1, 9, 100))
    assert list(result) == [1, 9, 100] and all(isinstance(k, int) for k in result)
    assert result[100] == result[9] == pytest.approx(has_positive)
    g, g_labels = x[:3], y[:3]
    clamped = recall_at_k(x, y, ks=(50,), gallery=g, gallery_labels=g_labels)[50]
    assert clamped == pytest.approx(np.isin(y, g_labels).mean())
    assert recall_at_k(x[:1], y[:1], ks=(1,)) == {1: 0.0}  # a gallery of one item minus itself


def test_matches_pytorch_metric_learning() -> None:
    pml = importlib.import_module("pytorch_metric_learning.utils.accuracy_calculator")
    x, y = unit_embeddings(300, d=8, classes=15, seed=3)
    calc = pml.AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count", device=torch.device("cpu")
    )
    oracle = calc.get_accuracy(x, y)  # leave-one-out: reference = query
    assert recall_at_k(x, y, ks=(1,))[1] == pytest.approx(oracle["precision_at_1"], abs=1e-6)
    assert map_at_r(x, y) == pytest.approx(oracle["mean_average_precision_at_r"], abs=1e-6)
    g, g_labels = unit_embeddings(200, d=8, classes=15, seed=4)
    oracle = calc.get_accuracy(x, y, g, g_labels, ref_includes_query=False)
    assert recall_at_k(x, y, (1,), g, g_labels)[1] == pytest.approx(oracle["precision_at_1"], abs=1e-6)
    assert map_at_r(x, y, g, g_labels) == pytest.approx(oracle["mean_average_precision_at_r"], abs=1e-6)


def test_nmi_perfect_and_seeded() -> None:
    y = np.repeat(np.arange(5), 6)
    centres = np.eye(8, dtype=np.float32)[:5] * 10
    x = centres[y] + np.random.default_rng(0).normal(scale=0.01, size=(30, 8)).astype(np.float32)
    assert nmi(x, y) == pytest.approx(1.0)
    noisy, labels = unit_embeddings(120, classes=6)
    assert nmi(noisy, labels, seed=1) == nmi(noisy, labels, seed=1)
    assert nmi(noisy[:3], np.zeros(3, dtype=int)) == pytest.approx(1.0)


def test_evaluate_keys_and_values() -> None:
    x, y = integer_embeddings(80)
    metrics = evaluate(x, y, (1, 2, 4))
    assert list(metrics) == ["recall@1", "recall@2", "recall@4", "map@r", "nmi"]
    assert metrics["recall@2"] == recall_at_k(x, y, (2,))[2]
    assert metrics["map@r"] == map_at_r(x, y)
    assert "nmi" not in evaluate(x, y, (1,), with_nmi=False)


@pytest.mark.parametrize(
    ("emb", "labels", "message"),
    [
        (np.zeros((3, 2)), np.zeros(4), "shape"),
        (np.zeros((0, 2)), np.zeros(0), "empty"),
        (np.zeros(3), np.zeros(3), "2-D"),
        (np.array([[np.nan, 1.0], [0.0, 1.0]]), np.zeros(2), "NaN"),
        (np.eye(2), np.array([0.5, 1.0]), "integers"),
    ],
)
def test_invalid_inputs(emb, labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        recall_at_k(emb, labels)


def test_invalid_gallery_and_ks() -> None:
    x, y = integer_embeddings(10)
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(x, y, ks=(0, 1))
    with pytest.raises(ValueError, match="gallery_labels"):
        recall_at_k(x, y, gallery=x)
    with pytest.raises(ValueError, match="D="):
        recall_at_k(x, y, gallery=x[:, :3], gallery_labels=y)


class TinyDataset(Dataset):
    def __init__(self, n: int = 10) -> None:
        self.images = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
        self.labels = [i % 3 for i in range(n)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], self.labels[i]


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.dropout(self.linear(x)), dim=1)


def test_embed_in_order_eval_mode_restored() -> None:
    torch.manual_seed(0)
    model, data = TinyModel(), TinyDataset(10)
    model.train()
    emb, labels = embed(model, data, batch_size=4, progress=False)
    assert emb.shape == (10, 4) and emb.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == data.labels
    assert model.training  # restored
    with torch.no_grad():  # eval mode: no dropout, rows in dataset order
        expected = nn.functional.normalize(model.linear(data.images), dim=1).numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    model.eval()
    embed(model, data, batch_size=3, device="cpu", progress=False)
    assert not model.training


def test_embed_empty_dataset_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        embed(TinyModel(), TinyDataset(0), progress=False)


# ---- queries without a positive ---------------------------------------------------------------


def loop_without_positive(labels, gallery_labels=None) -> int:
    """By definition: leave-one-out, no other item of the query's class; else, none in the gallery."""
    labels = [int(y) for y in labels]
    count = 0
    for i, y in enumerate(labels):
        if gallery_labels is None:
            others = [z for j, z in enumerate(labels) if j != i]
        else:
            others = [int(z) for z in gallery_labels]
        count += y not in others
    return count


@pytest.mark.parametrize("seed", range(6))
def test_without_positive_matches_the_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 15, size=int(rng.integers(1, 40)))
    gallery = rng.integers(5, 25, size=int(rng.integers(0, 30)))
    assert without_positive(labels) == loop_without_positive(labels)
    assert without_positive(labels, gallery) == loop_without_positive(labels, gallery)
    assert without_positive(list(labels), list(gallery)) == loop_without_positive(labels, gallery)


def test_without_positive_by_hand() -> None:
    assert without_positive([0, 0, 1, 2, 2, 3]) == 2  # classes 1 and 3 have a single item
    assert without_positive([4]) == 1 and without_positive([]) == 0
    assert without_positive([0, 1, 2], [1, 1, 5]) == 2  # 0 and 2 are not in the gallery
    assert without_positive([7, 7], []) == 2
    assert without_positive(np.array([[3], [3]]), np.array([3])) == 0


@pytest.mark.parametrize("gallery", [False, True])
def test_queries_without_positive_are_the_misses_of_a_whole_gallery_recall(gallery: bool) -> None:
    """With K >= the gallery size every query with a positive is a hit: the rest are the misses."""
    x, y = unit_embeddings(60, classes=40, seed=3)
    if gallery:
        g, g_labels = unit_embeddings(50, classes=40, seed=4)
        recall = recall_at_k(x, y, (50,), g, g_labels)[50]
        missing = loop_without_positive(y, g_labels)
    else:
        recall = recall_at_k(x, y, (59,))[59]
        missing = loop_without_positive(y)
    assert missing > 0
    assert recall == pytest.approx(1 - missing / 60)
    assert without_positive(y, g_labels if gallery else None) == missing


# ---- the blocked computation against a loop over queries ---------------------------------------


def loop_metrics(q, q_labels, ks, g=None, g_labels=None) -> tuple[dict[int, float], float]:
    """Recall@K and MAP@R by definition, one query at a time: the gallery sorted by decreasing
    float64 inner product, equal values by increasing index, the query itself skipped by index
    (leave-one-out); K beyond the gallery takes the whole gallery."""
    leave_one_out = g is None
    if leave_one_out:
        g, g_labels = q, q_labels
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    hits = dict.fromkeys(ks, 0)
    aps = []
    for i in range(len(q)):
        ranking = sorted((-float(np.dot(q64[i], g64[j])), j) for j in range(len(g)) if not (leave_one_out and j == i))
        rel = [int(g_labels[j] == q_labels[i]) for _, j in ranking]
        if 1 in rel:
            first = rel.index(1) + 1
            for k in ks:
                hits[k] += first <= k
        r = sum(rel)
        if r:
            found, total = 0, 0.0
            for position, relevant in enumerate(rel[:r], start=1):
                if relevant:
                    found += 1
                    total += found / position
            aps.append(total / r)
    return {k: hits[k] / len(q) for k in ks}, float(np.mean(aps)) if aps else float("nan")


def copy_rows(x: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """x with `count` rows replaced by exact copies of other rows: ties by construction."""
    x = x.copy()
    x[rng.choice(len(x), size=count, replace=False)] = x[rng.integers(0, len(x), size=count)]
    return x


def tied_data(n: int, seed: int, d: int = 6, classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Half-integer entries (every float32 inner product is exact, many tie) with copied rows,
    classes larger than the small block sizes and three single-item classes (no positive)."""
    rng = np.random.default_rng(seed)
    x = copy_rows((rng.integers(-2, 3, size=(n, d)) / 2).astype(np.float32), rng, n // 5)
    y = rng.integers(0, classes, size=n)
    y[rng.choice(n, size=3, replace=False)] = [100, 101, 102]
    return x, y


def copied_unit_data(n: int, seed: int, d: int = 12, classes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Random unit vectors with a fifth of them exact copies of others (of any class): the only
    ties are between copies. Checked: distinct vectors' similarities to each query are at least
    1e-6 apart, so float32 and float64 rank them alike and the loop is a fair reference."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x = copy_rows(x / np.linalg.norm(x, axis=1, keepdims=True), rng, n // 5)
    sims = np.sort(x.astype(np.float64) @ x.astype(np.float64).T, axis=1)  # (n, n)
    gaps = np.diff(sims, axis=1)
    assert ((gaps == 0) | (gaps > 1e-6)).all(), "a near-tie between distinct vectors: pick another seed"
    return x, rng.integers(0, classes, size=n)


DATA = {"tied": tied_data, "copied_unit": copied_unit_data}


@pytest.mark.parametrize("block_size", [2, 5, 16, 4096])
@pytest.mark.parametrize(("kind", "seed"), [("tied", 0), ("tied", 1), ("copied_unit", 4), ("copied_unit", 5)])
def test_blocked_leave_one_out_matches_the_loop(kind: str, seed: int, block_size: int) -> None:
    x, y = DATA[kind](120, seed)
    for ks in [(1, 2), (1, 3, 10, 119, 500)]:  # 119 = the whole gallery, 500 beyond it
        expected_recall, expected_map = loop_metrics(x, y, ks)
        result = evaluate(x, y, ks, with_nmi=False, block_size=block_size)
        assert {k: result[f"recall@{k}"] for k in ks} == pytest.approx(expected_recall, abs=1e-12)
        assert result["map@r"] == pytest.approx(expected_map, abs=1e-12)


@pytest.mark.parametrize("block_size", [3, 8, 4096])
@pytest.mark.parametrize(("kind", "seed"), [("tied", 4), ("copied_unit", 11)])
def test_blocked_query_vs_gallery_matches_the_loop(kind: str, seed: int, block_size: int) -> None:
    x, y = DATA[kind](150, seed)
    q, q_labels = x[:70], y[:70]
    g, g_labels = x[70:], y[70:].copy()
    g_labels[g_labels == q_labels[0]] = 200  # a query class absent from the gallery: no positive
    g[:5] = q[:5]  # gallery copies of queries
    ks = (1, 5, 80, 1000)  # 80 = the whole gallery, 1000 beyond it
    expected_recall, expected_map = loop_metrics(q, q_labels, ks, g, g_labels)
    assert recall_at_k(q, q_labels, ks, g, g_labels, block_size=block_size) == pytest.approx(expected_recall, abs=1e-12)
    assert map_at_r(q, q_labels, g, g_labels, block_size=block_size) == pytest.approx(expected_map, abs=1e-12)


@pytest.mark.parametrize("gallery", [False, True])
def test_memory_bounded_paths_match_the_loop(monkeypatch: pytest.MonkeyPatch, gallery: bool) -> None:
    """Queries in groups of one block (lists over the memory bound: no symmetry), a merge after
    every candidate and tau raised from each block's (max R + 1)-th similarity."""
    ranking = importlib.import_module("diablo.ranking")
    monkeypatch.setattr(ranking, "_MAX_LIST_ENTRIES", 8)
    monkeypatch.setattr(ranking, "_MERGE_AT", 1)
    monkeypatch.setattr(ranking, "_CROWDED", -(10**6))
    x, y = tied_data(110, seed=6)
    q, q_labels, g, g_labels = (x[:60], y[:60], x[60:], y[60:]) if gallery else (x, y, None, None)
    ks = (1, 4, 200)
    expected_recall, expected_map = loop_metrics(q, q_labels, ks, g, g_labels)
    result = evaluate(q, q_labels, ks, g, g_labels, with_nmi=False, block_size=7)
    assert {k: result[f"recall@{k}"] for k in ks} == pytest.approx(expected_recall, abs=1e-12)
    assert result["map@r"] == pytest.approx(expected_map, abs=1e-12)


@pytest.mark.parametrize("block_size", [1, 2, 3])
def test_ties_keep_index_order_across_blocks(block_size: int) -> None:
    # As test_ties_keep_index_order, with the tied items in different blocks.
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert recall_at_k(x, np.array([0, 1, 0, 2]), ks=(1, 2), block_size=block_size) == {1: 0.25, 2: 0.5}
    assert recall_at_k(x, np.array([0, 0, 1, 2]), ks=(1, 2), block_size=block_size) == {1: 0.5, 2: 0.5}
    assert recall_at_k(x, np.array([5, 0, 0, 5]), ks=(1,), block_size=block_size) == {1: 0.25}
    # MAP@R: query 0 (class 0, R = 1) ranks 1 (class 1) then 2 (class 0): AP@1 = 0; query 2
    # ranks 0 first: AP 1; queries 1 and 3 have no positive.
    assert map_at_r(x, np.array([0, 1, 0, 2]), block_size=block_size) == 0.5


def test_block_size_must_be_positive() -> None:
    x, y = integer_embeddings(10)
    with pytest.raises(ValueError, match="block_size"):
        recall_at_k(x, y, block_size=0)


def test_raised_tau_leaves_room_for_the_query_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """tau raised from a block's similarities must count the query itself among them: query 0's
    top R = 2 are items 1 (0.8) and 2 (0.6), below its own 1.0; both must stay in its list."""
    ranking = importlib.import_module("diablo.ranking")
    monkeypatch.setattr(ranking, "_CROWDED", -(10**6))  # raise tau in every block
    x = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    y = np.array([0, 0, 0, 1])
    # Every query of class 0 ranks its two positives first (AP 1); item 3 has no positive.
    assert map_at_r(x, y) == 1.0
    assert map_at_r(x, y, block_size=2) == 1.0
