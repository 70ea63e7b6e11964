"""The dictionary's starts beside the N(0, 1) default (`TrainConfig.dictionary_init`).

- "kmeans" (docs/design.md §9; NetVLAD initialises its centres so): spherical k-means (faiss) on the
  local features phi(f_ij) of training images gives N unit centres. Feature-wise selection takes
  them as its entries d^(n) (Eq 5); dimension-wise selection takes centre n as d_k^(n) for every
  channel k (Eq 10), so that its first attention maps are the feature-wise ones. The assignment
  is selective from the first step (entropy ~0.4 log N against ~0.9 for random entries).
- "shared" (dimension-wise only): random entries, the same for every channel, d_k^(n) = d_0^(n):
  the feature-wise start without k-means.

Measured on held-out training classes (checkpoints/README.md): pre-attention wants a near-uniform
start that scales every channel of a place alike, so that the pretrained psi sees F ("shared" for
dimension-wise, 70.3 R@1 against 61.7 from independent random entries); post-attention wants
selective or diverse branches ("kmeans" for feature-wise, independent "random" entries for
dimension-wise).
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np
import torch
import torch.nn.functional as nnf
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from diablo.data.subset import spread_indices
from diablo.model import DiabloNet


def local_features(
    model: DiabloNet, images: Dataset, batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """The unit-norm phi(f_ij) of every place of every image: (n * h * w, m) float32."""
    if model.phi is None:
        raise ValueError("the baseline has no dictionary to initialise")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.inference_mode():
            for x, _ in tqdm(DataLoader(images, batch_size=batch_size), desc="phi features", disable=not progress,
                             leave=False):
                phi = nnf.normalize(model.phi(model.features(x.to(device))), dim=1)  # (B, m, h, w)
                chunks.append(phi.permute(0, 2, 3, 1).flatten(0, 2).float().cpu().numpy())  # (B * h * w, m)
    finally:
        model.train(was_training)
    return np.concatenate(chunks)


def kmeans_centres(features: np.ndarray, k: int, seed: int = 0, niter: int = 25, nredo: int = 5) -> np.ndarray:
    """Spherical k-means: k unit centres (k, m) of the rows of `features` (n, m); the best of
    `nredo` runs (one run can merge two clusters and split another)."""
    if len(features) < k:
        raise ValueError(f"k-means needs at least {k} features, got {len(features)}")
    kmeans = faiss.Kmeans(features.shape[1], k, niter=niter, nredo=nredo, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=len(features))
    kmeans.train(np.ascontiguousarray(features, dtype=np.float32))
    return kmeans.centroids


def share_across_channels(model: DiabloNet) -> None:
    """Dimension-wise selection: every channel k takes channel 0's entries, d_k^(n) = d_0^(n)."""
    if model.dictionary is None or model.dictionary.dim() != 3:
        raise ValueError("only dimension-wise selection has per-channel entries to share")
    with torch.no_grad():
        model.dictionary.copy_(model.dictionary[:, :1].expand_as(model.dictionary).clone())


def initialise_dictionary(
    model: DiabloNet, images: Dataset, max_images: int = 256, seed: int = 0, progress: bool = True
) -> np.ndarray:
    """Set `model.dictionary` from k-means on phi features of at most `max_images` images (spread
    over `images`); returns the centres (N, m)."""
    if model.dictionary is None:
        raise ValueError("the baseline has no dictionary to initialise")
    subset = Subset(images, spread_indices(len(images), max_images))  # type: ignore[arg-type]
    centres = kmeans_centres(local_features(model, subset, progress=progress), model.config.num_entries, seed)
    d = torch.from_numpy(centres).to(model.dictionary)  # (N, m)
    with torch.no_grad():
        model.dictionary.copy_(d if model.dictionary.dim() == 2 else d.unsqueeze(1).expand_as(model.dictionary))
    return centres


def effective_start(start: str, attention: str, selection: str) -> str:
    """The start a `dictionary_init` gives a variant: "random" for the baseline (no dictionary)
    and for "shared" feature-wise selection (no channels to share)."""
    if attention == "none" or (start == "shared" and selection != "dimension"):
        return "random"
    return start


def start_dictionary(
    model: DiabloNet, start: str, images: Callable[[], Dataset], seed: int = 0, progress: bool = True
) -> None:
    """Apply `TrainConfig.dictionary_init` to a newly built model; `images()` (training images with
    the test transform) is only called for "kmeans"."""
    start = effective_start(start, model.config.attention, model.config.selection)
    if start == "kmeans":
        initialise_dictionary(model, images(), seed=seed, progress=progress)
    elif start == "shared":
        share_across_channels(model)
