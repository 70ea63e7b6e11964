"""Heat maps and dictionary attention drawn over images (OpenCV colormaps).

`overlay` blends a heat map (an attribution, one entry's attention) over an image with one of
OpenCV's colormaps (`COLORMAPS`, by lower-case name); `attention_overlays` does so for every
dictionary entry, its maps being the mean over channels (or one channel) of the attention A
(N, c, h, w), upsampled to the image; `assignment_map` / `assignment_overlay` show the arg-max
entry of each place (Eq 6) in a qualitative palette (`assignment_colours`).
"""

from __future__ import annotations

import colorsys
from typing import Any

import cv2
import numpy as np
import torch

__all__ = [
    "COLORMAPS",
    "assignment_colours",
    "assignment_map",
    "assignment_overlay",
    "attention_overlays",
    "colormap_code",
    "overlay",
    "to_numpy",
]

# OpenCV's colormaps by lower-case name: "jet", "viridis", "magma", "inferno", "turbo", ...
COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_") :].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}
# Qualitative palette for entry legends (matplotlib's tab10, then tab20's light shades).
_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
]  # fmt: skip


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 -> (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image must be (H, W, 3) or (H, W), got {image.shape}")
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def colormap_code(name: str) -> int:
    """The cv2.COLORMAP_* constant for `name`; ValueError listing the choices."""
    key = name.lower()
    if key not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choices: {', '.join(sorted(COLORMAPS))}")
    return COLORMAPS[key]


def to_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array)


def overlay(image: np.ndarray, heat: np.ndarray, colormap: str = "jet", opacity: float = 0.5) -> np.ndarray:
    """(1 - opacity) * image + opacity * colormap(heat), heat (h, w) in [0, 1] resized to the image.

    image (H, W, 3) uint8 RGB -> (H, W, 3) uint8 RGB; values of heat outside [0, 1] are clipped.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    code = colormap_code(colormap)
    image = _rgb(image)
    heat = np.nan_to_num(to_numpy(heat).astype(np.float32), nan=0.0)
    if heat.ndim != 2:
        raise ValueError(f"heat must be (h, w), got {heat.shape}")
    height, width = image.shape[:2]
    heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)  # (H, W)
    levels = np.rint(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(levels, code), cv2.COLOR_BGR2RGB)  # (H, W, 3)
    blended = (1.0 - opacity) * image.astype(np.float64) + opacity * colour.astype(np.float64)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _entry_maps(attention: Any, channel: int | None) -> np.ndarray:
    """(N, c, h, w) attention -> (N, h, w): one channel, or the mean over channels."""
    a = to_numpy(attention).astype(np.float64)
    if a.ndim != 4:
        raise ValueError(f"attention must be (N, c, h, w), got {a.shape}")
    if channel is None:
        return a.mean(axis=1)
    if not -a.shape[1] <= channel < a.shape[1]:
        raise ValueError(f"channel must be in [0, {a.shape[1]}), got {channel}")
    return a[:, channel]


def attention_overlays(
    image: np.ndarray,
    attention: torch.Tensor,
    channel: int | None = None,
    colormap: str = "jet",
    opacity: float = 0.5,
    stretch: bool = False,
) -> list[np.ndarray]:
    """One overlay per dictionary entry: image (H, W, 3) uint8, attention (N, c or 1, h, w).

    The weights are shown as they are (in [0, 1], 1 = the place belongs wholly to the entry),
    so entries are comparable; `stretch=True` scales each map by its own maximum instead.
    """
    maps = _entry_maps(attention, channel)  # (N, h, w)
    if stretch:
        maps = maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)
    return [overlay(image, m, colormap, opacity) for m in maps]


def assignment_map(attention: torch.Tensor, channel: int | None = None) -> np.ndarray:
    """(N, c or 1, h, w) -> (h, w) int64: the arg-max entry of each place (ties: lowest index)."""
    return _entry_maps(attention, channel).argmax(axis=0)


def assignment_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB: a fixed qualitative palette (tab10, tab20 light), then golden-ratio hues."""
    colours = []
    for i in range(n):
        if i < len(_PALETTE):
            hex_ = _PALETTE[i].lstrip("#")
            colours.append([int(hex_[k : k + 2], 16) for k in (0, 2, 4)])
        else:
            r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.9)
            colours.append([round(r * 255), round(g * 255), round(b * 255)])
    return np.asarray(colours, dtype=np.uint8).reshape(n, 3)


def assignment_overlay(
    image: np.ndarray, attention: torch.Tensor, channel: int | None = None, opacity: float = 0.5
) -> np.ndarray:
    """image (H, W, 3) uint8 blended with each place's arg-max entry in `assignment_colours` (nearest)."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    image = _rgb(image)
    entries = to_numpy(attention).shape[0]
    labels = assignment_map(attention, channel)  # (h, w)
    colour = assignment_colours(entries)[labels]  # (h, w, 3)
    colour = cv2.resize(colour, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    blended = (1.0 - opacity) * image.astype(np.float64) + opacity * colour.astype(np.float64)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
