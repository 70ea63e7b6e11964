"""Metric-learning losses on cosine similarities of unit embeddings.

The three losses the paper trains with (Jacob et al. 2020, §3.5), written as in
docs/design.md §5. For a batch of unit embeddings z (B, D) with labels (B,), s_ij = z_i . z_j
over all pairs i != j; positive pairs share a label, negative pairs do not.

- contrastive: mean_pos (1 - s_ij) + mean_neg max(0, s_ij - beta)
- triplet:     mean over valid triplets (a, p, n) of max(0, s_an - s_ap + margin)
- binomial:    sum_ij w_ij log(1 + exp(-a (s_ij - beta) m_ij)), m = 1 (pos) or -C (neg),
               w = 1 / #pos or 1 / #neg

Defaults are the paper's: beta = 0.5, margin = 0.1, a = 2, C = 25. A batch with no
positive (or no negative) pair contributes 0 for that term, never NaN.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSSES", "BinomialDevianceLoss", "ContrastiveLoss", "TripletLoss", "build_loss"]


def similarity_and_masks(z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine similarities (B, B) and boolean masks of positive and negative pairs (i != j)."""
    if z.dim() != 2 or labels.shape != z.shape[:1]:
        raise ValueError(
            f"expected z of shape (B, D) and labels of shape (B,), got {tuple(z.shape)} "
            f"and {tuple(labels.shape)}"
        )
    sim = z @ z.T  # (B, B)
    same = labels[:, None] == labels[None, :]  # (B, B)
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)  # (B, B)
    return sim, same & ~eye, ~same


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values where mask holds; 0 (with zero, finite gradient) when the mask is empty."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


def _check(name: str, value: float, *, positive: bool = False, nonnegative: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class ContrastiveLoss(nn.Module):
    """mean over positive pairs of (1 - s) + mean over negative pairs of max(0, s - beta)."""

    def __init__(self, *, beta: float = 0.5) -> None:
        super().__init__()
        self.beta = _check("beta", beta)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        sim, pos, neg = similarity_and_masks(z, labels)
        return _masked_mean(1 - sim, pos) + _masked_mean(F.relu(sim - self.beta), neg)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class TripletLoss(nn.Module):
    """mean over all valid triplets (a, p, n) of max(0, s_an - s_ap + margin)."""

    def __init__(self, *, margin: float = 0.1) -> None:
        super().__init__()
        self.margin = _check("margin", margin, nonnegative=True)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        sim, pos, neg = similarity_and_masks(z, labels)
        violation = F.relu(sim[:, None, :] - sim[:, :, None] + self.margin)  # (B, B, B): [a, p, n]
        valid = pos[:, :, None] & neg[:, None, :]  # (B, B, B)
        return _masked_mean(violation, valid)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class BinomialDevianceLoss(nn.Module):
    """sum over pairs of w log(1 + exp(-a (s - beta) m)); m = 1 / -C, w = 1/#pos / 1/#neg."""

    def __init__(self, *, a: float = 2.0, beta: float = 0.5, C: float = 25.0) -> None:
        super().__init__()
        self.a = _check("a", a, positive=True)
        self.beta = _check("beta", beta)
        self.C = _check("C", C, positive=True)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        sim, pos, neg = similarity_and_masks(z, labels)
        shifted = self.a * (sim - self.beta)  # (B, B)
        return _masked_mean(F.softplus(-shifted), pos) + _masked_mean(
            F.softplus(self.C * shifted), neg
        )

    def extra_repr(self) -> str:
        return f"a={self.a}, beta={self.beta}, C={self.C}"


_REGISTRY: dict[str, type[nn.Module]] = {
    "contrastive": ContrastiveLoss,
    "triplet": TripletLoss,
    "binomial": BinomialDevianceLoss,
}
LOSSES: tuple[str, ...] = tuple(_REGISTRY)


def build_loss(name: str, **params: float) -> nn.Module:
    """The loss called `name` (one of LOSSES), with the paper's defaults unless overridden."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    cls = _REGISTRY[name]
    allowed = tuple(inspect.signature(cls).parameters)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(
            f"loss {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"it takes {', '.join(allowed)}"
        )
    return cls(**params)
