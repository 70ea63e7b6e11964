"""Why two images match: a DIABLO cosine written exactly as a sum over pairs of places, per entry.

Each branch n pools its map H^n (C channels on an h x w grid) and embeds it (`model.DiabloNet._readout`,
`model.BranchEmbedding`): ē_n = W_n (1/hw) Σ_ij h^n_ij + b_n, e_n = ē_n / max(|ē_n|, 1e-12), and
z = [e_1; ...; e_N] / sqrt(N). Nothing sits between the global average pooling and the linear layer, so
the bias moves inside the mean, ē_n = (1/hw) Σ_ij u^n_ij with u^n_ij = W_n h^n_ij + b_n, and the
inner product of a query's and a result's embeddings splits into pairs of places (Stylianou, Souvenir
and Pless, "Visualizing deep similarity networks", WACV 2019, here per dictionary entry):

    <z_q, z_r> = (1/N) Σ_n <e_n(q), e_n(r)>
               = Σ_n Σ_ij Σ_kl <u^n_ij(q), u^n_kl(r)> / (N hw h'w' |ē_n(q)| |ē_n(r)|)

with q's places (i, j) on its h x w grid and r's places (k, l) on its own h' x w' grid. This follows
the code as written: |ē_n| stands for the max(|ē_n|, 1e-12) of `torch.nn.functional.normalize`; with
`rescale=True` the N of `DiabloNet.scale` is part of h^n (post-attention pools N A^n ⊙ G); and the
left side is the inner product of the two embeddings, which is their cosine because both have unit
norm (every branch of norm 1, divided by sqrt(N)). The places are those of the map that is pooled:

- pre-attention: psi's output grid (H^n = psi(N A^n ⊙ F), one map per entry), half the side of F's;
- post-attention: the grid of G = psi(F), which is also the attention's (H^n = N A^n ⊙ G);
- the baseline (attention="none"): the backbone's last feature map, N = 1.

The attention is the soft one of Eq 7 / 11 (`inspect(x, hard=False)`, what `model(x)` computes);
the arg-max of Eq 6 is not offered here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from diablo.attention import merge
from diablo.model import Inspection

# torch.nn.functional.normalize's default eps, which BranchEmbedding uses.
_NORMALIZE_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class SimilarityDecomposition:
    """A match's cosine split over dictionary entries and pairs of places (`similarity_decomposition`).

    Tensors are on the model's device, in its dtype; h x w is the query's grid, h' x w' the result's.
    """

    pairs: torch.Tensor  # (N, h, w, h', w'): <u^n_ij(q), u^n_kl(r)> / (N hw h'w' |ē_n(q)| |ē_n(r)|); sums to cosine
    query_map: torch.Tensor  # (N, h, w): pairs summed over the result's places
    result_map: torch.Tensor  # (N, h', w'): pairs summed over the query's places
    entry_share: torch.Tensor  # (N,): pairs[n].sum() = cos(e_n(q), e_n(r)) / N
    cosine: float  # <model(query), model(result)>

    def strongest_links(
        self, entry: int | None = None, k: int = 5
    ) -> list[tuple[tuple[int, int], tuple[int, int], float]]:
        """The k largest pairs of `entry` (all entries summed when None), largest first, as
        ((i, j) in the query, (k, l) in the result, value)."""
        entries = self.pairs.shape[0]
        if entry is not None and not -entries <= entry < entries:
            raise ValueError(f"entry must be in [0, {entries}) or None, got {entry}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        grid = self.pairs.sum(dim=0) if entry is None else self.pairs[entry]  # (h, w, h', w')
        values, flat = grid.flatten().topk(min(k, grid.numel()))
        shape = grid.shape
        links = []
        for value, index in zip(values.tolist(), flat.tolist(), strict=True):
            index, l_ = divmod(index, shape[3])
            index, k_ = divmod(index, shape[2])
            i, j = divmod(index, shape[1])
            links.append(((i, j), (k_, l_), float(value)))
        return links


@contextlib.contextmanager
def _evaluation(model: nn.Module) -> Iterator[None]:
    """Eval mode, no gradients inside; every module's own mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _image(name: str, x: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """Check one (1, 3, H, W) image tensor and put it on the model's device, in its dtype."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be one image tensor of shape (1, 3, H, W), got a {type(x).__name__}")
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[:2] != (1, 3) or 0 in shape:
        raise ValueError(f"{name} must be one image tensor of shape (1, 3, H, W), got {shape}")
    return x.to(device=parameter.device, dtype=parameter.dtype)


def _places(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Inspection]:
    """One image's pooled maps H^n (N, C, h, w), the ones `_readout` averages, and its inspection."""
    captured: list[torch.Tensor] = []
    hook = None
    if model.config.attention == "pre":  # H = psi(G) on the B * N maps, (B * N, C, h', w')
        hook = model.psi.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        out = model.inspect(x, hard=False)
    finally:
        if hook is not None:
            hook.remove()
    if model.config.attention == "pre":
        h = captured[-1]  # (N, C, h', w'): B = 1
    elif model.config.attention == "post":
        h = merge(out.values, out.attention)[0] * model.scale  # (N, C, h, w), Eq 2 as in inspect
    else:
        h = out.values  # (1, C, h, w): the baseline pools the backbone's last map
    return h, out


def _place_vectors(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """u^n_ij = W_n h^n_ij + b_n: (N, C, h, w) -> (N, D/N, h, w)."""
    weight, bias = model.embedding.weight, model.embedding.bias  # (N, D/N, C), (N, D/N)
    return torch.einsum("nchw,noc->nohw", h, weight) + bias[:, :, None, None]


def similarity_decomposition(model: nn.Module, query: torch.Tensor, result: torch.Tensor) -> SimilarityDecomposition:
    """The cosine of model(query) and model(result) as an exact sum over entries and pairs of places.

    query (1, 3, H, W) and result (1, 3, H', W') ImageNet-normalised images (their sizes may differ).
    pairs[n, i, j, k, l] = <u^n_ij(q), u^n_kl(r)> / (N hw h'w' |ē_n(q)| |ē_n(r)|), u^n_ij = W_n h^n_ij + b_n
    (this module's docstring; Stylianou et al., WACV 2019, per dictionary entry). The model runs in
    eval mode without gradients (each module's mode is restored after), with the soft attention of
    Eq 7 / 11 (hard=False), on its own device and in its own dtype. Memory: pairs holds N hw h'w'
    numbers; no tensor of size D hw h'w' is formed.
    """
    parameter = next(model.parameters())
    query, result = _image("query", query, parameter), _image("result", result, parameter)
    with _evaluation(model):
        h_q, out_q = _places(model, query)  # (N, C, h, w)
        h_r, out_r = _places(model, result)  # (N, C, h', w')
        e_q, e_r = out_q.branch_embeddings[0], out_r.branch_embeddings[0]  # (N, D/N) each
        u_q, u_r = _place_vectors(model, h_q), _place_vectors(model, h_r)  # (N, D/N, h, w), (N, D/N, h', w')
        mean_q, mean_r = u_q.mean(dim=(-2, -1)), u_r.mean(dim=(-2, -1))  # ē_n: (N, D/N)
        norm_q = mean_q.norm(dim=-1).clamp_min(_NORMALIZE_EPS)  # (N,)
        norm_r = mean_r.norm(dim=-1).clamp_min(_NORMALIZE_EPS)  # (N,)
        # The decomposition is exact only if these are the model's own branch vectors: a guard against
        # a readout that no longer pools straight into the linear layer.
        tolerance = math.sqrt(torch.finfo(parameter.dtype).eps)
        for name, mean, norm, own in (("query", mean_q, norm_q, e_q), ("result", mean_r, norm_r, e_r)):
            if not torch.allclose(mean / norm[:, None], own, rtol=tolerance, atol=tolerance):
                raise RuntimeError(
                    f"the {name}'s branch embeddings are not normalize(W_n mean_ij h^n_ij + b_n): "
                    "the model's readout changed, the decomposition does not apply"
                )
        entries = u_q.shape[0]
        places_q, places_r = u_q.shape[-2] * u_q.shape[-1], u_r.shape[-2] * u_r.shape[-1]
        scale = 1.0 / (entries * places_q * places_r * norm_q * norm_r)  # (N,)
        pairs = torch.einsum("nohw,nokl->nhwkl", u_q, u_r) * scale[:, None, None, None, None]  # (N, h, w, h', w')
        cosine = float((out_q.embedding * out_r.embedding).sum())  # <model(query), model(result)>
    return SimilarityDecomposition(
        pairs=pairs,
        query_map=pairs.sum(dim=(3, 4)),  # (N, h, w)
        result_map=pairs.sum(dim=(1, 2)),  # (N, h', w')
        entry_share=pairs.sum(dim=(1, 2, 3, 4)),  # (N,)
        cosine=cosine,
    )
