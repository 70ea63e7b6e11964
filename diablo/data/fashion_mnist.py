"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (real images, offline).

All 70,000 images (the package's train and t10k files together) are split by class for
metric learning: classes 0-4 train, 5-9 test. Images are 28 x 28 grey, returned as RGB.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image

from diablo.data.base import ImageDataset, Transform

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_ROOT", "FashionMNIST", "load_fashion_mnist"]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = (
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)
_SPLITS = ("train", "test", "all")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: not an idx file (magic {got}, expected {magic})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated idx file ({body.size} bytes for shape {dims})")
    return body.reshape(dims)


@functools.lru_cache(maxsize=2)
def _arrays(root: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (N, 28, 28) uint8, labels (N,), pseudo-paths) over both package files."""
    images, labels, names = [], [], []
    for image_file, label_file in _FILES:
        for f in (image_file, label_file):
            if not (Path(root) / f).is_file():
                raise FileNotFoundError(
                    f"Fashion-MNIST file {Path(root) / f} is missing: install it with "
                    "`apt-get install dataset-fashion-mnist` (or pass root= to a folder holding the idx .gz files)"
                )
        x = _read_idx(Path(root) / image_file, 2051)
        y = _read_idx(Path(root) / label_file, 2049)
        if len(x) != len(y):
            raise ValueError(f"Fashion-MNIST in {root}: {len(x)} images but {len(y)} labels in {image_file}")
        images.append(x)
        labels.append(y)
        names += [f"{Path(root) / image_file}#{i}" for i in range(len(x))]
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), names


class FashionMNIST(ImageDataset):
    """Fashion-MNIST items held in memory; `paths` are `<idx file>#<index>` pseudo-paths."""

    def __init__(
        self,
        pixels: np.ndarray,
        paths: list[str],
        labels: list[int],
        classes: list[str],
        transform: Transform | None,
        name: str,
    ) -> None:
        super().__init__(paths, labels, classes, transform, name=name, scan=False)  # no files to read
        self.pixels = pixels

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index], mode="L").convert("RGB")


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    transform: Transform | None = None,
    per_class: int | None = None,
) -> FashionMNIST:
    """Classes 0-4 for "train", 5-9 for "test", all ten for "all".

    `per_class` keeps the first that many images of each class (file order) for quick runs.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r} for 'fashion-mnist'; allowed: {', '.join(_SPLITS)}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be positive, got {per_class}")
    base = os.fspath(Path(root if root is not None else FASHION_MNIST_ROOT).expanduser())
    images, labels, names = _arrays(base)
    class_ids = {"train": range(0, 5), "test": range(5, 10), "all": range(0, 10)}[split]
    keep: list[int] = []
    for c in class_ids:
        idx = np.flatnonzero(labels == c)
        keep += idx[:per_class].tolist() if per_class is not None else idx.tolist()
    keep.sort()
    first = class_ids[0]
    return FashionMNIST(
        images[keep],
        [names[i] for i in keep],
        [int(labels[i]) - first for i in keep],
        [FASHION_MNIST_CLASSES[c] for c in class_ids],
        transform,
        name=f"fashion-mnist/{split}",
    )
