"""Why is a result similar to a query: captum attributions of a cosine similarity, and overlays.

The explained quantity is s(x) = cos(z(x), z_t), the cosine similarity between the query's
embedding z(x) and a chosen result's embedding z_t (held fixed) -- for the whole embedding, or
for one branch n: cos(b_n(x), b_n,t) between branch n's unit vectors
(`model.inspect(x).branch_embeddings[:, n]`, paper §4.1).

- Integrated Gradients (Sundararajan et al. 2017, `captum.attr.IntegratedGradients`):
  a_i = (x_i - x'_i) * mean over the path of ds/dx_i, with the all-zero baseline x' = 0, which
  after ImageNet normalisation is the dataset's mean image. Completeness: sum_i a_i ~= s(x) - s(x').
  The pixel map sums a_i over the colour channels (signed), then keeps the absolute value
  (default, `sign="absolute"`: evidence for and against) or the positive part (`sign="positive"`:
  only what makes the query more similar to the result).
- Grad-CAM (Selvaraju et al. 2017, `captum.attr.LayerGradCam`): ReLU(sum_k mean_ij(ds/dA_k) A_k)
  on the map the attention weights (`Inspection.values`): the output of `model.features` (F)
  for pre-attention and the baseline, of `model.psi` (G = psi(F)) for post-attention. That is
  the last map with spatial resolution that is computed once per image: pre-attention's psi
  runs on the B * N masked copies, so its output is not one map per image. The map is upsampled
  to the image with `LayerAttribution.interpolate` (bilinear).

Both maps are scaled to [0, 1] by their 99th percentile (clipped above), so that a few extreme
pixels do not wash out the rest. The model is put in eval mode with every parameter's
`requires_grad` off while attributing (only the input gets gradients; no `.grad` is written),
then each module's mode and each parameter's flag are restored.

The exact counterpart, `similarity_decomposition` (implemented in `diablo.decomposition`, re-exported
here), needs no gradients: it writes the cosine of a query and a result as a sum over dictionary entries
and pairs of places, pairs (N, h, w, h', w'), with the query's and the result's maps as its marginals.
"""

from __future__ import annotations

import colorsys
import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from diablo.decomposition import SimilarityDecomposition as SimilarityDecomposition  # re-exported
from diablo.decomposition import similarity_decomposition as similarity_decomposition  # re-exported

# captum (about 1 s to import) is imported inside the attribution functions, so that the overlay
# helpers stay cheap to import (the app's first page uses them).

METHODS = ("integrated_gradients", "gradcam")
SIGNS = ("absolute", "positive")
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


# ---- the explained quantity ---------------------------------------------------------------


def _branch_vector(embedding: torch.Tensor, branch: int, branches: int) -> torch.Tensor:
    """Branch n's unit vector from a full embedding (concat of N unit branches / sqrt(N)). (D,) -> (D/N,)"""
    size = embedding.shape[-1] // branches
    return nnf.normalize(embedding[..., branch * size : (branch + 1) * size], dim=-1)


class SimilarityTarget(nn.Module):
    """forward(x) = cos(z(x), z_t) (B,), or branch n's cos(b_n(x), b_n,t); z_t is held fixed.

    `target` is a (D,) embedding (e.g. a gallery row) or a result image (3, H, W) / (1, 3, H, W),
    which is embedded once, without gradients, by the model in its current mode.
    """

    def __init__(self, model: nn.Module, target: torch.Tensor, branch: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.branches = int(model.config.branches)
        if branch is not None and not 0 <= branch < self.branches:
            raise ValueError(f"branch must be in [0, {self.branches}), got {branch}")
        self.branch = branch
        device = next(model.parameters()).device
        target = torch.as_tensor(target).to(device=device, dtype=torch.float32)
        if target.dim() in (3, 4):  # a result image
            with torch.no_grad():
                target = model.inspect(target.reshape(1, *target.shape[-3:])).embedding[0]  # (D,)
        if target.dim() != 1:
            raise ValueError(f"target must be a (D,) embedding or a (1, 3, H, W) image, got {tuple(target.shape)}")
        if branch is None:
            vector = nnf.normalize(target, dim=0)  # (D,)
        else:
            vector = _branch_vector(target, branch, self.branches)  # (D/N,)
        self.register_buffer("target", vector.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B,) cosine similarities to the target."""
        out = self.model.inspect(x)
        z = out.embedding if self.branch is None else out.branch_embeddings[:, self.branch]  # (B, D) or (B, D/N)
        return nnf.cosine_similarity(z, self.target.unsqueeze(0).expand_as(z), dim=1)


@contextlib.contextmanager
def attribution_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; every module's mode and flag restored after."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The module whose output is `Inspection.values`: psi for post-attention, else F."""
    return model.psi if model.config.attention == "post" else model.features


# ---- attributions ---------------------------------------------------------------------------


def _query(model: nn.Module, query: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) or (3, H, W) -> (1, 3, H, W) float32 on the model's device."""
    query = torch.as_tensor(query)
    if query.dim() == 3:
        query = query.unsqueeze(0)
    if query.dim() != 4 or query.shape[:2] != (1, 3):
        raise ValueError(f"query must be one (1, 3, H, W) image, got {tuple(query.shape)}")
    return query.to(device=next(model.parameters()).device, dtype=torch.float32)


def integrated_gradients(
    model: nn.Module,
    query: torch.Tensor,
    target: torch.Tensor,
    branch: int | None = None,
    steps: int = 32,
    internal_batch_size: int = 8,
) -> tuple[torch.Tensor, float]:
    """Raw IG attributions (1, 3, H, W) of s(query) against the zero baseline, and captum's
    convergence delta: sum(attributions) - (s(query) - s(0))."""
    from captum.attr import IntegratedGradients

    x = _query(model, query)
    with attribution_mode(model):
        forward = SimilarityTarget(model, target, branch)
        ig = IntegratedGradients(forward)
        attributions, delta = ig.attribute(
            x,
            baselines=torch.zeros_like(x),
            n_steps=steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    return attributions.detach(), float(delta.sum())


def gradcam(model: nn.Module, query: torch.Tensor, target: torch.Tensor, branch: int | None = None) -> torch.Tensor:
    """Grad-CAM of s(query) on `gradcam_layer(model)`, upsampled to the image: (1, 1, H, W), >= 0."""
    from captum.attr import LayerAttribution, LayerGradCam

    x = _query(model, query)
    with attribution_mode(model):
        forward = SimilarityTarget(model, target, branch)
        cam = LayerGradCam(forward, gradcam_layer(model)).attribute(x, relu_attributions=True)  # (1, 1, h, w)
        cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return cam.clamp_min(0)  # bilinear interpolation keeps >= 0, clamp for round-off


def _unit_range(heat: np.ndarray, quantile: float = 0.99) -> np.ndarray:
    """Non-negative map -> [0, 1], scaled by its `quantile` and clipped; all-zero stays zero."""
    scale = float(np.quantile(heat, quantile))
    if scale <= 0:
        scale = float(heat.max())
    if not math.isfinite(scale) or scale <= 0:
        return np.zeros_like(heat, dtype=np.float32)
    return np.clip(heat / scale, 0.0, 1.0).astype(np.float32)


def similarity_attribution(
    model: nn.Module,
    query: torch.Tensor,
    target: torch.Tensor,
    method: str = "integrated_gradients",
    branch: int | None = None,
    steps: int = 32,
    sign: str = "absolute",
    internal_batch_size: int = 8,
) -> np.ndarray:
    """(H, W) float32 map in [0, 1]: which query pixels drive its similarity to `target`.

    query (1, 3, H, W) normalised image; target (D,) embedding or result image; `branch` n
    explains branch n's cosine instead of the whole embedding's. See the module docstring.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choices: {', '.join(METHODS)}")
    if sign not in SIGNS:
        raise ValueError(f"unknown sign {sign!r}; choices: {', '.join(SIGNS)}")
    if method == "gradcam":
        heat = gradcam(model, query, target, branch)[0, 0].cpu().double().numpy()  # (H, W)
    else:
        attributions, _ = integrated_gradients(model, query, target, branch, steps, internal_batch_size)
        pixel = attributions[0].sum(dim=0).cpu().double().numpy()  # (H, W): signed sum over colours
        heat = np.abs(pixel) if sign == "absolute" else np.maximum(pixel, 0.0)
    heat = np.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    return _unit_range(heat)


# ---- overlays -------------------------------------------------------------------------------


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


def _numpy(array: Any) -> np.ndarray:
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
    heat = np.nan_to_num(_numpy(heat).astype(np.float32), nan=0.0)
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
    a = _numpy(attention).astype(np.float64)
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
    entries = _numpy(attention).shape[0]
    labels = assignment_map(attention, channel)  # (h, w)
    colour = assignment_colours(entries)[labels]  # (h, w, 3)
    colour = cv2.resize(colour, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    blended = (1.0 - opacity) * image.astype(np.float64) + opacity * colour.astype(np.float64)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


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
    a = _numpy(attention).astype(np.float64)
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


# ---- one image ------------------------------------------------------------------------------


def model_input(model: nn.Module, image: Any, image_size: int) -> torch.Tensor:
    """An RGB PIL image as the model's test input: (1, 3, S, S) float32 on the model's device,
    resized to `image_size` and normalised (`diablo.data.build_transform(False, image_size)`)."""
    from diablo.data import build_transform

    x = build_transform(False, int(image_size))(image).unsqueeze(0)
    return x.to(device=next(model.parameters()).device, dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class ImageInspection:
    """One image as a model sees it (`inspect_image`)."""

    input: torch.Tensor  # (1, 3, S, S): the model's input (`model_input`), on its device
    display: np.ndarray  # (S, S, 3) uint8: the input without the normalisation, for overlays
    attention: np.ndarray | None  # (N, c or 1, h, w) float32, sums to 1 over N; None for the baseline
    branch_embeddings: np.ndarray  # (N, D / N) float32, each of unit norm (the baseline: N = 1)
    embedding: np.ndarray  # (D,) float32, unit norm


def inspect_image(model: nn.Module, image: Any, image_size: int) -> ImageInspection:
    """Attention maps and embeddings of one RGB PIL image resized to `image_size`, in eval mode
    without gradients (the model's mode is restored after)."""
    from diablo.data import denormalize

    x = model_input(model, image, image_size)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model.inspect(x)
    finally:
        model.train(was_training)
    display = denormalize(x[0].float()).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()  # (S, S, 3)
    return ImageInspection(
        input=x,
        display=np.ascontiguousarray(display),
        attention=None if out.attention is None else out.attention[0].float().cpu().numpy(),
        branch_embeddings=out.branch_embeddings[0].float().cpu().numpy(),
        embedding=out.embedding[0].float().cpu().numpy(),
    )
