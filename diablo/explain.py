"""Why is a result similar to a query: captum attributions of a cosine similarity.

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
here, as are diablo.overlay's drawing helpers and diablo.entry_statistics for the app), needs no
gradients: it writes the cosine of a query and a result as a sum over dictionary entries
and pairs of places, pairs (N, h, w, h', w'), with the query's and the result's maps as its marginals.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from diablo.decomposition import SimilarityDecomposition as SimilarityDecomposition  # re-exported
from diablo.decomposition import similarity_decomposition as similarity_decomposition  # re-exported
from diablo.entry_statistics import dataset_entry_statistics as dataset_entry_statistics  # re-exported
from diablo.entry_statistics import entry_statistics as entry_statistics  # re-exported
from diablo.overlay import COLORMAPS as COLORMAPS  # re-exported
from diablo.overlay import assignment_colours as assignment_colours  # re-exported
from diablo.overlay import assignment_map as assignment_map  # re-exported
from diablo.overlay import assignment_overlay as assignment_overlay  # re-exported
from diablo.overlay import attention_overlays as attention_overlays  # re-exported
from diablo.overlay import colormap_code as colormap_code  # re-exported
from diablo.overlay import overlay as overlay  # re-exported

# captum (about 1 s to import) is imported inside the attribution functions, so that importing this
# module (and its re-exports of diablo.overlay and diablo.entry_statistics, which the app's first
# page uses) stays cheap.

METHODS = ("integrated_gradients", "gradcam")
SIGNS = ("absolute", "positive")


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
