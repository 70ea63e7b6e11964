"""The selection blocks S (paper §3.3.1, §3.4.1) and the merging block M (§3.3.2, §3.4.2).

S compares each local feature phi(f_ij) with the dictionary by cosine similarity (Eq 5, 10)
and turns the similarities into N attention maps that sum to 1 over the entries: a softmax
with hardness alpha (Eq 7, 11) for training, or the one-hot arg-max (Eq 6) for inspection.
M weights the feature map with each attention map (Eq 9, 13).

Dictionary initialisation here: i.i.d. N(0, 1) entries. Only directions matter (Eq 5 and 10
are cosines) and random directions in R^m are nearly orthogonal, so no entry starts favoured and
the initial attention is close to uniform; the entries then specialise under the metric loss.
For dimension-wise selection this draws each channel's entries independently, so each branch
starts with its own random per-channel weights. `diablo.dictionary` offers the alternatives
(k-means centres of phi features, the same for every channel; random entries shared across
channels), which `TrainConfig.dictionary_init` selects, and says which variant wants which.

Default alpha = 10. A cosine lies in [-1, 1], so alpha bounds the ratio between the largest
and smallest weight of a place by e^(2 alpha): with alpha = 1 the weights stay within e^2 of each
other and the attention is nearly uniform; with alpha = 100 the assignment is hard from the first
steps and non-winning entries get no gradient. Measured (`benchmarks/quality.py --datasets
fashion-mnist --variants pre-dimension --seeds 0 --steps 40 --alphas 1 100`, pre-attention +
dimension-wise, N = 8, unseen classes):

    alpha   R@1   MAP@R   assignment entropy / log N
        1   89.4   42.3   0.998  (uniform: every branch sees the same features)
       10   91.9   39.6   0.822
      100   74.1   23.6   0.117

alpha = 10 is the value at which the attention actually selects (entropy well below log N)
without the collapse of alpha = 100. `learn_alpha=True` learns it (in log space) instead.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as nnf
from torch import nn


def soft_assignment(similarity: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """Eq 7 / 11: softmax of alpha * s over the N dictionary entries (dim 1)."""
    return torch.softmax(alpha * similarity, dim=1)


def hard_assignment(similarity: torch.Tensor) -> torch.Tensor:
    """Eq 6: one-hot arg-max over the N entries (dim 1); ties go to the lowest index."""
    winner = similarity.argmax(dim=1, keepdim=True)
    return torch.zeros_like(similarity).scatter_(1, winner, 1.0)


def merge(values: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """M: H^(n) = A^(n) ⊙ values, Eq 9 (A has one channel, broadcast: the Kronecker product)
    or Eq 13 (A has c channels: the N-fold copy of the values, Hadamard product).

    values (B, c, h, w), attention (B, N, 1 or c, h, w) -> (B, N, c, h, w)
    """
    return attention * values.unsqueeze(1)


class Selection(nn.Module):
    """S: attention maps from phi(F) and a dictionary; subclasses define the similarity."""

    def __init__(self, dictionary_shape: tuple[int, ...], alpha: float, learn_alpha: bool) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < math.inf:
            raise ValueError(f"alpha must be a finite positive number, got {alpha!r}")
        self.dictionary = nn.Parameter(torch.randn(dictionary_shape))
        self.learn_alpha = learn_alpha
        self.fixed_alpha = float(alpha)
        if learn_alpha:  # learned in log space so that it stays positive
            self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)))

    @property
    def alpha(self) -> torch.Tensor | float:
        """The hardness of Eq 7 / 11: a float, or a positive tensor when learned."""
        return self.log_alpha.exp() if self.learn_alpha else self.fixed_alpha

    def similarity(self, phi: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, phi: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """phi (B, m, h, w) -> attention (B, N, 1 or c, h, w), summing to 1 over N."""
        s = self.similarity(phi)
        return hard_assignment(s) if hard else soft_assignment(s, self.alpha)


class FeatureSelection(Selection):
    """Feature-wise selection: one entry d^(n) in R^m per attention map (§3.3)."""

    def __init__(self, num_entries: int, phi_channels: int, alpha: float = 10.0, learn_alpha: bool = False):
        super().__init__((num_entries, phi_channels), alpha, learn_alpha)

    def similarity(self, phi: torch.Tensor) -> torch.Tensor:
        """Eq 5: s(phi(f_ij), d^(n)), (B, m, h, w) -> (B, N, 1, h, w)."""
        phi = nnf.normalize(phi, dim=1)  # (B, m, h, w)
        d = nnf.normalize(self.dictionary, dim=-1)  # (N, m)
        return torch.einsum("bmhw,nm->bnhw", phi, d).unsqueeze(2)


class DimensionSelection(Selection):
    """Dimension-wise selection: one direction d_k^(n) in R^m per entry and channel k (§3.4)."""

    def __init__(
        self, num_entries: int, channels: int, phi_channels: int, alpha: float = 10.0, learn_alpha: bool = False
    ):
        super().__init__((num_entries, channels, phi_channels), alpha, learn_alpha)

    def similarity(self, phi: torch.Tensor) -> torch.Tensor:
        """Eq 10: s(phi(f_ij), d_k^(n)) as one contraction over m, (B, m, h, w) -> (B, N, c, h, w)."""
        phi = nnf.normalize(phi, dim=1)  # (B, m, h, w)
        d = nnf.normalize(self.dictionary, dim=-1)  # (N, c, m)
        return torch.einsum("bmhw,nkm->bnkhw", phi, d)
