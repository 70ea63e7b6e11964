"""DiabloNet: the paper's Figure 1 (pre- and post-attention) and the global-pooling baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import nn

from diablo.attention import DimensionSelection, FeatureSelection, Selection, merge
from diablo.backbones import OUT_CHANNELS, build_backbone
from diablo.config import ModelConfig


@dataclass
class Inspection:
    """Every intermediate a user may want to look at; every tensor has B rows, also when B = 0."""

    values: torch.Tensor  # (B, c, h, w): F (pre, baseline) or G = psi(F) (post), what the attention weights
    phi: torch.Tensor | None  # (B, m, h, w): phi(F); None for the baseline
    attention: torch.Tensor | None  # (B, N, c or 1, h, w), sums to 1 over N; None for the baseline
    branch_embeddings: torch.Tensor  # (B, N, D / N), each of unit L2 norm
    embedding: torch.Tensor  # (B, D): the branches concatenated / sqrt(N), unit L2 norm


class BranchEmbedding(nn.Module):
    """Each branch's own linear layer to D / N, then L2 normalisation (§4.1)."""

    def __init__(self, branches: int, in_features: int, out_features: int) -> None:
        super().__init__()
        layers = [nn.Linear(in_features, out_features) for _ in range(branches)]  # torch's default init
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))  # (N, D/N, C)
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))  # (N, D/N)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, D / N), unit norm per branch."""
        return nnf.normalize(torch.einsum("bnc,noc->bno", pooled, self.weight) + self.bias, dim=-1)


class DiabloNet(nn.Module):
    """F, phi, S, M, psi, then per-branch pooling and embedding (Fig. 1, §3.1)."""

    def __init__(self, config: ModelConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        split = build_backbone(config.backbone, config.pretrained if load_pretrained else "none", config.attention)
        self.features = split.features  # F
        self.phi = split.phi  # phi, or None for the baseline
        self.psi = split.psi  # psi, or Identity for the baseline
        self.selection: Selection | None = None
        if split.cut is not None:
            n, c, m = config.num_entries, split.cut.values_channels, split.cut.phi_channels
            self.selection = (
                FeatureSelection(n, m, config.alpha, config.learn_alpha)
                if config.selection == "feature"
                else DimensionSelection(n, c, m, config.alpha, config.learn_alpha)
            )
        out_channels = OUT_CHANNELS[config.backbone]
        self.embedding = BranchEmbedding(config.branches, out_channels, config.embedding_dim // config.branches)
        # Uniform attention (A = 1/N) times N gives psi / the pooling exactly the pretrained input.
        self.scale = float(config.num_entries) if config.rescale else 1.0
        self.train()

    @property
    def dictionary(self) -> nn.Parameter | None:
        """(N, m) feature-wise, (N, c, m) dimension-wise; None for the baseline."""
        return None if self.selection is None else self.selection.dictionary

    @property
    def alpha(self) -> torch.Tensor | float | None:
        return None if self.selection is None else self.selection.alpha

    def train(self, mode: bool = True) -> DiabloNet:
        """Like nn.Module.train, but the backbone's BatchNorm keeps its pretrained running statistics
        when frozen (a randomly initialised backbone has none worth keeping: it trains them)."""
        super().train(mode)
        if self.config.freeze_bn and self.config.pretrained != "none":
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised images -> (B, D) unit embeddings."""
        return self.inspect(x).embedding

    def inspect(self, x: torch.Tensor, hard: bool = False) -> Inspection:
        """The forward pass with its intermediates; `hard` uses the arg-max of Eq 6."""
        f = self.features(x)  # (B, c, h, w)
        if self.selection is None:  # baseline: global average pooling of the last map
            return self._readout(f.unsqueeze(1), values=f, phi=None, attention=None)
        phi = self.phi(f)  # (B, m, h, w)
        a = self.selection(phi, hard=hard)  # (B, N, c or 1, h, w)   A = S(phi(F); D)
        if self.config.attention == "pre":
            g = merge(f, a) * self.scale  # (B, N, c, h, w)            G = M(F; A), Eq 3
            h = self.psi(g.flatten(0, 1))  # (B * N, C, h', w')      H = psi(G), Eq 4, one batch
            h = h.unflatten(0, g.shape[:2])  # (B, N, C, h', w'); explicit N, so that B = 0 works too
            return self._readout(h, values=f, phi=phi, attention=a)
        g = self.psi(f)  # (B, C, h, w)                               G = psi(F), Eq 1
        h = merge(g, a) * self.scale  # (B, N, C, h, w)               H = M(G; A), Eq 2
        return self._readout(h, values=g, phi=phi, attention=a)

    def _readout(
        self, h: torch.Tensor, values: torch.Tensor, phi: torch.Tensor | None, attention: torch.Tensor | None
    ) -> Inspection:
        """Global average pooling and embedding of each branch, then concatenation / sqrt(N)."""
        branches = self.embedding(h.mean(dim=(-2, -1)))  # (B, N, D / N)
        embedding = branches.flatten(1) / math.sqrt(branches.shape[1])  # (B, D)
        return Inspection(values, phi, attention, branches, embedding)


def build_model(config: ModelConfig, load_pretrained: bool = True) -> DiabloNet:
    """The DiabloNet that `config` describes; `load_pretrained=False` skips reading the backbone
    weights (when a checkpoint's weights follow), keeping `config.pretrained` as recorded."""
    return DiabloNet(config, load_pretrained)
