"""Embedding extraction and retrieval metrics: Recall@K, MAP@R and NMI (paper §5).

Protocol. Without a gallery the test set is searched leave-one-out: every item is a query and
the gallery is the rest of the test set (the query is removed by index, not by similarity, so an
exact duplicate of the query still counts as a neighbour). With a gallery (In-Shop) the queries
search the gallery only. The ranking is exact: inner products (embeddings are unit norm, so this
is the cosine) in decreasing order, equal similarities in gallery-index order (the rule of
`diablo.index.ranked_search`); a K larger than the gallery is clamped to the gallery size.

Computation: diablo.ranking (one blocked pass over the similarity matrix, no top-K search).

Queries without a positive (a class with a single test image, or a query class absent from the
gallery) count as misses for Recall@K and are left out of MAP@R, whose R would be 0 for them;
`without_positive` counts them.
MAP@R (Musgrave et al. 2020, "A metric learning reality check"): R is the number of items of the
query's class in the gallery (the query itself excluded); the query's score is the mean over the
top R positions of precision@i at the relevant ones, i.e. sum_{i<=R} P@i * rel_i / R.
NMI: k-means (faiss, seeded) of the queries into as many clusters as they have classes, compared
with the labels by sklearn's normalized_mutual_info_score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import faiss
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diablo.index import as_embedding_matrix, as_label_vector
from diablo.ranking import BLOCK_SIZE, retrieve


def embed(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (n, D) float32 and labels (n,) int64 of a dataset of (image, label) items.

    The model runs in eval mode under torch.inference_mode, batches in dataset order; its
    training mode is restored afterwards. device defaults to the device of its parameters.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("cannot embed an empty dataset")
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    label_chunks: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for images, labels in tqdm(loader, desc="embed", disable=not progress, leave=False):
                z = model(images.to(device))  # (B, D)
                chunks.append(z.float().cpu().numpy())
                label_chunks.append(torch.as_tensor(labels).reshape(-1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chunks).astype(np.float32, copy=False), np.concatenate(label_chunks).astype(np.int64)


def without_positive(labels: object, gallery_labels: object | None = None) -> int:
    """How many queries have no positive, i.e. score a miss for every Recall@K and are left out of
    MAP@R: leave-one-out (gallery_labels None), a query whose class has no other item in `labels`;
    queries vs gallery, a query whose class is absent from `gallery_labels`."""
    q_labels = np.asarray(labels).reshape(-1)
    if gallery_labels is None:
        _, counts = np.unique(q_labels, return_counts=True)
        return int(counts[counts == 1].sum())
    return int((~np.isin(q_labels, np.asarray(gallery_labels).reshape(-1))).sum())


def recall_at_k(
    emb: np.ndarray,
    labels: np.ndarray,
    ks: Iterable[int] = (1, 2, 4, 8),
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    *,
    block_size: int = BLOCK_SIZE,
) -> dict[int, float]:
    """{k: fraction of queries with a same-label item in their top k}.

    emb (q, D) unit-norm queries with labels (q,). Leave-one-out over emb when gallery is None,
    otherwise queries vs gallery (m, D) with gallery_labels (m,). Queries with no positive count
    as misses. block_size: items per block of the similarity matrix (memory and speed only).
    """
    result = retrieve(emb, labels, ks, gallery, gallery_labels, with_map=False, block_size=block_size)
    return {k: float(hit.mean()) for k, hit in result.hits.items()}


def map_at_r(
    emb: np.ndarray,
    labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    *,
    block_size: int = BLOCK_SIZE,
) -> float:
    """MAP@R (Musgrave et al. 2020), leave-one-out or queries vs gallery as in `recall_at_k`.

    Queries with no positive (R = 0) are left out; NaN if no query has one.
    """
    ap = retrieve(emb, labels, (1,), gallery, gallery_labels, block_size=block_size).average_precision
    return _nanmean(ap)


def nmi(emb: np.ndarray, labels: np.ndarray, seed: int = 0, niter: int = 20) -> float:
    """Normalized mutual information between the labels and a seeded k-means of emb (n, D).

    The number of clusters is the number of classes in labels.
    """
    from sklearn.metrics import normalized_mutual_info_score

    x = as_embedding_matrix(emb)
    y = as_label_vector(labels, x.shape[0])
    num_classes = len(np.unique(y))
    if num_classes == 1:
        clusters = np.zeros(len(y), dtype=np.int64)
    else:
        kmeans = faiss.Kmeans(x.shape[1], num_classes, niter=niter, seed=seed, verbose=False)
        kmeans.cp.min_points_per_centroid = 1  # no warning for small test sets
        kmeans.train(x)
        _, assigned = kmeans.index.search(x, 1)
        clusters = assigned[:, 0]
    return float(normalized_mutual_info_score(y, clusters))


def evaluate(
    emb: np.ndarray,
    labels: np.ndarray,
    ks: Iterable[int],
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    with_nmi: bool = True,
    *,
    block_size: int = BLOCK_SIZE,
) -> dict[str, float]:
    """{"recall@K": .., ..., "map@r": .., "nmi": ..} from one search (JSON-ready keys).

    NMI clusters the queries (the whole test set when leave-one-out); with_nmi=False skips the
    k-means, which is slow for thousands of classes (SOP). MAP@R is NaN if no query has a positive.
    block_size as in `recall_at_k`.
    """
    result = retrieve(emb, labels, ks, gallery, gallery_labels, block_size=block_size)
    metrics = {f"recall@{k}": float(hit.mean()) for k, hit in result.hits.items()}
    metrics["map@r"] = _nanmean(result.average_precision)
    if with_nmi:
        metrics["nmi"] = nmi(emb, labels)
    return metrics


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan
