"""How a model uses its dictionary entries: arg-max shares and assignment entropy, on one image's
attention or over a whole image set (the lab's entry statistics)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from diablo.overlay import to_numpy

__all__ = ["dataset_entry_statistics", "entry_statistics"]


def _assignments(a: np.ndarray, channel: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attention a (B, N, c, h, w) float64 -> (a on `channel` (all channels if None) (B, N, c', h, w),
    the arg-max entry of each place on the channel mean (B, h, w), the assignment entropy
    -sum_n a_n log a_n in nats (B, c', h, w)); ValueError for a channel out of range."""
    if channel is not None:
        if not -a.shape[2] <= channel < a.shape[2]:
            raise ValueError(f"channel must be in [0, {a.shape[2]}), got {channel}")
        a = a[:, :, channel : channel + 1] if channel >= 0 else a[:, :, channel:][:, :, :1]
    winners = a.mean(axis=2).argmax(axis=1)  # (B, h, w)
    p = np.clip(a, 0.0, None)
    entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)  # (B, c', h, w)
    return a, winners, entropy


def entry_statistics(attention: torch.Tensor | Sequence[Any], channel: int | None = None) -> dict[str, Any]:
    """How a batch of attention (B, N, c or 1, h, w) uses the dictionary.

    - "share" (N,): fraction of places (over the batch) whose arg-max entry is n, on the channel
      mean (or one `channel`), as in `assignment_map`; sums to 1.
    - "mean_weight" (N,): the mean attention weight of entry n.
    - "entropy": mean over places (and channels, for dimension-wise attention) of
      H = -sum_n a_n log a_n, in nats: 0 for one-hot (hard) assignment, log N for uniform.
    - "entropy_normalised": entropy / log N in [0, 1] (0 when N = 1).
    """
    a = to_numpy(attention).astype(np.float64)
    if a.ndim == 4:  # one image
        a = a[None]
    if a.ndim != 5:
        raise ValueError(f"attention must be (B, N, c, h, w), got {a.shape}")
    n = a.shape[1]
    a, winners, place_entropy = _assignments(a, channel)
    share = np.bincount(winners.ravel(), minlength=n).astype(np.float64) / winners.size  # (N,)
    entropy = max(float(place_entropy.mean()), 0.0)  # over (B, c, h, w)
    return {
        "share": share,
        "mean_weight": a.mean(axis=(0, 2, 3, 4)),
        "entropy": entropy,
        "entropy_normalised": entropy / math.log(n) if n > 1 else 0.0,
    }


def dataset_entry_statistics(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 32,
    channel: int | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """`entry_statistics` over a whole dataset of (image, label) items, batch by batch, plus
    each entry's own mean entropy.

    Returns the keys of `entry_statistics` ("share", "mean_weight", "entropy",
    "entropy_normalised") over all places of all images, and:
    - "entry_entropy" (N,): the mean assignment entropy (nats, channel mean for dimension-wise
      attention) of the places whose arg-max entry is n; NaN for an entry that wins no place.
    - "images": the number of images.
    `progress(done, total)` is called after each batch. ValueError for the baseline (no attention).
    """
    from torch.utils.data import DataLoader

    if getattr(model, "selection", None) is None:
        raise ValueError("the baseline (attention='none') has no attention to summarise")
    n = int(model.config.num_entries)
    total = len(dataset)
    if total == 0:
        raise ValueError("cannot summarise the attention of an empty dataset")
    device = next(model.parameters()).device
    places = 0
    counts = np.zeros(n, dtype=np.float64)  # places won by each entry
    entropy_sums = np.zeros(n, dtype=np.float64)  # summed place entropies, by winning entry
    weight_sums = np.zeros(n, dtype=np.float64)  # summed mean weights per image
    was_training = model.training
    model.eval()
    done = 0
    try:
        with torch.inference_mode():
            for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                a = model.inspect(images.to(device)).attention.double().cpu().numpy()  # (B, N, c, h, w)
                a, winners, channel_entropy = _assignments(a, channel)
                place_entropy = channel_entropy.mean(axis=1)  # (B, h, w)
                counts += np.bincount(winners.ravel(), minlength=n)
                entropy_sums += np.bincount(winners.ravel(), weights=place_entropy.ravel(), minlength=n)
                weight_sums += a.mean(axis=(2, 3, 4)).sum(axis=0)
                places += winners.size
                done += a.shape[0]
                if progress is not None:
                    progress(done, total)
    finally:
        model.train(was_training)
    entropy = max(float(entropy_sums.sum() / places), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        entry_entropy = np.where(counts > 0, entropy_sums / np.maximum(counts, 1), np.nan)
    return {
        "share": counts / places,
        "mean_weight": weight_sums / done,
        "entropy": entropy,
        "entropy_normalised": entropy / math.log(n) if n > 1 else 0.0,
        "entry_entropy": np.maximum(entry_entropy, 0.0),
        "images": done,
    }
