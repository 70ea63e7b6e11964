"""Where the attention goes: each dictionary entry's share of attention mass on an object and its parts.

Notation: attention A (B, N, c, h, w), softmax over the N entries (c = 1 for feature-wise
selection); a part mask per image (0 = background, 1..P = parts, as the synthetic dataset gives);
frac_r(b, i, j) the share of the pixels of cell (i, j) of image b that lie in region r ("object" =
not background). Every sum below runs over all images b and places (i, j) of the batch.

- Mass share (channel mean), `localise`: with Abar^(n) = mean_k A^(n)_k,
      mass_r(n) = sum_{b,i,j} Abar^(n)_{b,ij} frac_r(b,i,j) / sum_{b,i,j} Abar^(n)_{b,ij}.
  Chance level is the region's share of the area, area_r = mean_{b,i,j} frac_r(b,i,j): a uniform
  (or mask-blind constant) attention map has mass_r = area_r.
- Ratio to chance, `ratio_to_chance`: ratio(n) = mass_object(n) / area_object; 1 = chance,
  2 = twice as much of the entry's mass on the object as the object's share of the area.
- Per-channel score (dimension-wise), `top_channel_mass`: the channel mean dilutes an entry that
  selects places in a few channels and is flat in the others. For each entry n and channel k the
  spatial variance v_nk = mean_b Var_{i,j} A^(n)_{b,k,ij} says how much that channel's weights vary
  across places; K_n is the ceil(q c) channels of largest v_nk (q = 10 % by default, at least one;
  ties to the lowest index), and
      top_mass(n) = sum_{b, k in K_n, i, j} A^(n)_{b,k,ij} frac_object(b,i,j) / sum_{b, k in K_n, i, j} A^(n)_{b,k,ij},
  the object mass share of the entry restricted to the channels where it selects most. Why this
  definition: it reads like `mass` (a share with chance = area_object, so it divides by area the
  same way) and it picks the channels without looking at the mask, so an entry whose attention
  varies but ignores the object still scores near chance (choosing the channels by their object
  mass would inflate every entry). For c = 1 it equals the channel-mean mass.
- Arg-max share, `argmax_share`: the fraction of assignments entry n wins, an assignment being one
  place (feature-wise) or one place and channel (dimension-wise, as Eq 6 applied per channel);
  ties to the lowest index, as `attention.hard_assignment`. Sums to 1.
- Assignment entropy, `assignment_entropy`: the mean over places (and channels) of
  -sum_n A^(n) log A^(n), divided by log N: 1 = uniform attention, 0 = one-hot.
  `share_entropy`: the entropy of the arg-max shares divided by log N (1 = every entry wins as
  often, 0 = one entry wins everything).

Targets (issue 8, `summarise`): at least `MIN_ENTRIES` = 2 entries with ratio to chance >=
`RATIO_TARGET` = 2, and no entry with an arg-max share above `MAX_SHARE` = 40 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf

RATIO_TARGET = 2.0  # ratio to chance an entry must reach ...
MIN_ENTRIES = 2  # ... in at least this many entries
MAX_SHARE = 0.4  # no entry may win a larger share of the arg-max assignments
TOP_CHANNELS = 0.1  # q of `top_channel_mass`: share of the channels kept per entry


@dataclass
class Localisation:
    """Attention mass shares, one row per dictionary entry."""

    regions: list[str]  # "object", then one name per part
    mass: np.ndarray  # (N, 1 + P): share of entry n's mass on each region
    area: np.ndarray  # (1 + P,): share of the area (the chance level)

    @property
    def ratio(self) -> np.ndarray:
        """(N, 1 + P): mass / area, the ratio to chance per entry and region (inf for an empty region)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.mass / self.area[None, :]


def region_fractions(masks: torch.Tensor, num_parts: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) int part masks -> (B, 1 + P, h, w): per cell, the share of its pixels on the object, each part."""
    parts = nnf.one_hot(masks.long(), num_parts + 1).permute(0, 3, 1, 2).float()  # (B, 1 + P, H, W)
    parts = nnf.adaptive_avg_pool2d(parts, size)  # (B, 1 + P, h, w)
    return torch.cat([1 - parts[:, :1], parts[:, 1:]], dim=1)  # object = not background


def object_fractions(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) int part masks -> (B, h, w): per cell, the share of its pixels on the object (mask > 0)."""
    return nnf.adaptive_avg_pool2d((masks > 0).float()[:, None], size)[:, 0]


def _check(attention: torch.Tensor) -> torch.Tensor:
    if attention.dim() != 5:
        raise ValueError(f"attention must be (B, N, c, h, w), got {tuple(attention.shape)}")
    return attention.double()


def localise(attention: torch.Tensor, masks: torch.Tensor, part_names: list[str]) -> Localisation:
    """attention (B, N, c or 1, h, w), masks (B, H, W) -> each entry's mass share on the object and parts."""
    a = _check(attention).mean(dim=2)  # (B, N, h, w)
    frac = region_fractions(masks, len(part_names), a.shape[-2:]).double()  # (B, R, h, w)
    mass = torch.einsum("bnhw,brhw->nr", a, frac) / a.sum(dim=(0, 2, 3)).clamp_min(1e-12)[:, None]  # (N, R)
    area = frac.mean(dim=(0, 2, 3))  # (R,)
    return Localisation(["object", *part_names], mass.float().cpu().numpy(), area.float().cpu().numpy())


def ratio_to_chance(attention: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """attention (B, N, c, h, w), masks (B, H, W) -> (N,): channel-mean object mass share / object area share."""
    a = _check(attention).mean(dim=2)  # (B, N, h, w)
    frac = object_fractions(masks, a.shape[-2:]).double()  # (B, h, w)
    mass = torch.einsum("bnhw,bhw->n", a, frac) / a.sum(dim=(0, 2, 3)).clamp_min(1e-12)  # (N,)
    return (mass / frac.mean()).cpu().numpy()


def top_channels(attention: torch.Tensor, q: float = TOP_CHANNELS) -> torch.Tensor:
    """attention (B, N, c, h, w) -> (N, ceil(q c)) long: per entry, the channels of largest spatial variance
    mean_b Var_ij A^(n)_{b,k,ij}, largest first, ties to the lowest index."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    a = _check(attention)
    keep = max(1, math.ceil(q * a.shape[2] - 1e-9))
    variance = a.flatten(3).var(dim=3, unbiased=False).mean(dim=0)  # (N, c)
    order = torch.sort(-variance, dim=1, stable=True).indices  # (N, c)
    return order[:, :keep]


def top_channel_mass(attention: torch.Tensor, masks: torch.Tensor, q: float = TOP_CHANNELS) -> np.ndarray:
    """attention (B, N, c, h, w), masks (B, H, W) -> (N,): each entry's object mass share over its `top_channels`.

    Divide by the object's area share (`object_fractions(...).mean()`) for the ratio to chance."""
    a = _check(attention)
    chosen = top_channels(a, q)  # (N, q')
    picked = torch.stack([a[:, n, chosen[n]] for n in range(a.shape[1])], dim=1)  # (B, N, q', h, w)
    frac = object_fractions(masks, a.shape[-2:]).double()  # (B, h, w)
    on_object = torch.einsum("bnkhw,bhw->n", picked, frac)  # (N,)
    return (on_object / picked.sum(dim=(0, 2, 3, 4)).clamp_min(1e-12)).cpu().numpy()


def argmax_share(attention: torch.Tensor) -> np.ndarray:
    """attention (B, N, c, h, w) -> (N,): share of the assignments (places x channels) whose arg-max entry is n."""
    a = _check(attention)
    winners = a.argmax(dim=1)  # (B, c, h, w), ties to the lowest index
    return (torch.bincount(winners.flatten(), minlength=a.shape[1]).double() / winners.numel()).cpu().numpy()


def assignment_entropy(attention: torch.Tensor) -> float:
    """attention (B, N, c, h, w) -> mean over places and channels of -sum_n A log A, divided by log N (0 if N = 1)."""
    a = _check(attention).clamp_min(0)
    n = a.shape[1]
    if n < 2:
        return 0.0
    entropy = -(a * a.clamp_min(1e-300).log()).sum(dim=1)  # (B, c, h, w)
    return float(entropy.mean()) / math.log(n)


def share_entropy(share: np.ndarray) -> float:
    """(N,) shares summing to 1 -> their entropy divided by log N (0 if N = 1)."""
    p = np.asarray(share, dtype=np.float64)
    if p.size < 2:
        return 0.0
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(p.size))


@dataclass
class Summary:
    """The per-entry figures of a batch of attention and the issue's two targets."""

    localisation: Localisation  # mass shares on the object and parts (channel mean)
    ratio: np.ndarray  # (N,): ratio to chance on the object (channel mean)
    top_mass: np.ndarray  # (N,): `top_channel_mass` (equals the channel mean when c = 1)
    top_ratio: np.ndarray  # (N,): top_mass / object area share
    share: np.ndarray  # (N,): `argmax_share`
    entropy: float  # `assignment_entropy`
    share_entropy: float  # `share_entropy(share)`
    channels: int  # c: 1 for feature-wise selection
    q: float  # the q of `top_channel_mass`

    @property
    def entries_over_ratio(self) -> int:
        """Number of entries with a (channel-mean) ratio to chance >= RATIO_TARGET."""
        return int((self.ratio >= RATIO_TARGET).sum())

    @property
    def entries_over_top_ratio(self) -> int:
        """Number of entries whose top-channel ratio to chance is >= RATIO_TARGET."""
        return int((self.top_ratio >= RATIO_TARGET).sum())

    @property
    def ratio_target_met(self) -> bool:
        return self.entries_over_ratio >= MIN_ENTRIES

    @property
    def share_target_met(self) -> bool:
        return bool(self.share.max() <= MAX_SHARE)


def summarise(attention: torch.Tensor, masks: torch.Tensor, part_names: list[str], q: float = TOP_CHANNELS) -> Summary:
    """attention (B, N, c, h, w), masks (B, H, W) -> every figure of this module for one model."""
    loc = localise(attention, masks, part_names)
    area = float(object_fractions(masks, attention.shape[-2:]).double().mean())
    ratio = ratio_to_chance(attention, masks)
    top = top_channel_mass(attention, masks, q)
    share = argmax_share(attention)
    return Summary(loc, ratio, top, top / area, share, assignment_entropy(attention), share_entropy(share),
                   int(attention.shape[2]), q)
