"""Train and test image transforms of the paper (§3.5, docs/design.md §6).

Train: resize to a size drawn uniformly in [0.8, 1.8] x the crop size, random crop of the
crop size (padded when the resized image is smaller), horizontal flip. Test: resize to
size x size. Both end with ToTensor and the ImageNet mean/std normalisation.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RandomResize", "build_transform", "denormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomResize:
    """Resize to a random size drawn uniformly in [low, high] x `base` (torch's RNG).

    `square=False` resizes the shorter side (aspect ratio kept), `square=True` resizes to a
    square. The draw uses `torch.rand`, so `torch.manual_seed` and DataLoader worker seeding
    make it reproducible.
    """

    def __init__(self, base: int, scale: tuple[float, float] = (0.8, 1.8), square: bool = False) -> None:
        low, high = scale
        if base <= 0 or not 0 < low <= high:
            raise ValueError(f"need base > 0 and 0 < low <= high, got base={base}, scale={scale}")
        self.base = int(base)
        self.scale = (float(low), float(high))
        self.square = square

    def size(self) -> int:
        """Draw one target size in pixels."""
        low, high = self.scale
        u = float(torch.rand(()))
        return max(1, int(round(self.base * (low + (high - low) * u))))

    def __call__(self, img: Image.Image) -> Image.Image:
        s = self.size()
        target = [s, s] if self.square else [s]
        return TF.resize(img, target, interpolation=T.InterpolationMode.BILINEAR, antialias=True)

    def __repr__(self) -> str:
        return f"RandomResize(base={self.base}, scale={self.scale}, square={self.square})"


def build_transform(train: bool, image_size: int = 256) -> T.Compose:
    """The paper's transform: random resize/crop/flip for training, a square resize for testing."""
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        geometry = [
            RandomResize(image_size),
            T.RandomCrop(image_size, pad_if_needed=True),
            T.RandomHorizontalFlip(),
        ]
    else:
        geometry = [T.Resize((image_size, image_size), antialias=True)]
    return T.Compose([*geometry, *normalize])


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: (..., 3, H, W) back to [0, 1] (clamped)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1)
