"""Gallery passes a chunk at a time: the embeddings and the entry statistics of a dataset.

For callers that show progress and partial results between steps, and may switch to another
pass in between (the lab's background worker, app/lab/store.py). No Streamlit here. Each pass is
a generator: one step runs `chunk` images and yields what is known so far, so stopping early
costs nothing and a partial result is always a prefix of the dataset in its order.

- `embedding_pass` yields `(embeddings, labels)` of the first `done` items: views into one
  (n, D) float32 array filled in place (the same numbers `diablo.evaluation.embed` gives).
- `entry_statistics_pass` yields `diablo.explain.dataset_entry_statistics` of the first `done`
  items, chunks combined by `merge_entry_statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

__all__ = ["CHUNK", "embedding_pass", "entry_statistics_pass", "merge_entry_statistics"]

CHUNK = 32  # images per step: a step is ~1 s of one CPU thread for the 128 px demo models


def _device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def embedding_pass(
    model: nn.Module, dataset: Any, chunk: int = CHUNK, channels_last: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Embed `dataset` (image, label items) `chunk` images per step, in dataset order.

    Yields (embeddings (done, D) float32, labels (done,) int64) after each step: views of the
    first `done` rows of the arrays being filled (copy them to keep a snapshot). The model runs
    in eval mode under torch.inference_mode (its mode is restored when the pass ends or is
    closed); `channels_last` feeds it channels-last tensors. ValueError for an empty dataset.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot embed an empty dataset")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    device = _device(model)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    embeddings: np.ndarray | None = None
    labels = np.empty(n, dtype=np.int64)
    done = 0
    was_training = model.training
    model.eval()
    try:
        for images, batch_labels in DataLoader(dataset, batch_size=chunk, shuffle=False):
            with torch.inference_mode():
                z = model(images.to(device).contiguous(memory_format=memory)).float().cpu().numpy()  # (B, D)
            if embeddings is None:
                embeddings = np.empty((n, z.shape[1]), dtype=np.float32)
            embeddings[done : done + len(z)] = z
            labels[done : done + len(z)] = torch.as_tensor(batch_labels).reshape(-1).numpy()
            done += len(z)
            yield embeddings[:done], labels[:done]
    finally:
        model.train(was_training)


def merge_entry_statistics(first: dict[str, Any] | None, second: dict[str, Any]) -> dict[str, Any]:
    """`dataset_entry_statistics` of two disjoint sets of images from those of each (None: nothing yet).

    Images of one size (the same number of places each): shares, mean weights and the entropy are
    weighted by images, each entry's entropy by the places it wins (share x images).
    """
    if first is None:
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in second.items()}
    a, b = float(first["images"]), float(second["images"])
    total = a + b
    share = (first["share"] * a + second["share"] * b) / total
    won_a, won_b = first["share"] * a, second["share"] * b  # places won, in units of an image's places
    summed = np.nan_to_num(first["entry_entropy"]) * won_a + np.nan_to_num(second["entry_entropy"]) * won_b
    with np.errstate(invalid="ignore", divide="ignore"):
        entry_entropy = np.where(won_a + won_b > 0, summed / np.maximum(won_a + won_b, 1e-300), np.nan)
    entropy = (first["entropy"] * a + second["entropy"] * b) / total
    n = len(share)
    return {
        "share": share,
        "mean_weight": (first["mean_weight"] * a + second["mean_weight"] * b) / total,
        "entropy": entropy,
        "entropy_normalised": entropy / math.log(n) if n > 1 else 0.0,
        "entry_entropy": entry_entropy,
        "images": int(total),
    }


def entry_statistics_pass(model: nn.Module, dataset: Any, chunk: int = CHUNK) -> Iterator[dict[str, Any]]:
    """`diablo.explain.dataset_entry_statistics` of `dataset`, `chunk` images per step.

    Yields the statistics of the first `done` images after each step (the last one is the whole
    dataset's, equal to one call of `dataset_entry_statistics` up to rounding). ValueError for the
    baseline or an empty dataset.
    """
    from diablo.explain import dataset_entry_statistics

    n = len(dataset)
    if n == 0:
        raise ValueError("cannot summarise the attention of an empty dataset")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    merged: dict[str, Any] | None = None
    for start in range(0, n, chunk):
        part = dataset_entry_statistics(model, Subset(dataset, range(start, min(n, start + chunk))), batch_size=chunk)
        merged = merge_entry_statistics(merged, part)
        yield merged
