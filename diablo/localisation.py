"""Where the attention goes: each dictionary entry's share of attention mass on an object and its parts.

With a per-pixel part mask (0 = background, 1..P = parts, as the synthetic dataset gives), the
mass of entry n on region r is sum_{b,i,j} A^(n)_{b,ij} * frac_r(b, i, j) / sum_{b,i,j} A^(n)_{b,ij},
where A^(n) is the attention map averaged over channels (dimension-wise) and frac_r the share of
the pixels of cell (i, j) that lie in r. Chance level is the region's share of the area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf


@dataclass
class Localisation:
    """Attention mass shares, one row per dictionary entry."""

    regions: list[str]  # "object", then one name per part
    mass: np.ndarray  # (N, 1 + P): share of entry n's mass on each region
    area: np.ndarray  # (1 + P,): share of the area (the chance level)


def region_fractions(masks: torch.Tensor, num_parts: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) int part masks -> (B, 1 + P, h, w): per cell, the share of its pixels on the object, each part."""
    parts = nnf.one_hot(masks.long(), num_parts + 1).permute(0, 3, 1, 2).float()  # (B, 1 + P, H, W)
    parts = nnf.adaptive_avg_pool2d(parts, size)  # (B, 1 + P, h, w)
    return torch.cat([1 - parts[:, :1], parts[:, 1:]], dim=1)  # object = not background


def localise(attention: torch.Tensor, masks: torch.Tensor, part_names: list[str]) -> Localisation:
    """attention (B, N, c or 1, h, w), masks (B, H, W) -> each entry's mass share on the object and parts."""
    a = attention.float().mean(dim=2)  # (B, N, h, w)
    frac = region_fractions(masks, len(part_names), a.shape[-2:])  # (B, R, h, w)
    mass = torch.einsum("bnhw,brhw->nr", a, frac) / a.sum(dim=(0, 2, 3)).clamp_min(1e-12)[:, None]  # (N, R)
    area = frac.mean(dim=(0, 2, 3))  # (R,)
    return Localisation(["object", *part_names], mass.cpu().numpy(), area.cpu().numpy())
