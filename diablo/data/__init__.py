"""Datasets with the metric-learning splits of the paper, their transforms, and Recall@K lists.

`load_dataset(name, split)` returns an `ImageDataset` yielding `(image_tensor, label)` with
`.labels`, `.classes`, `.paths` and `.skipped` (the unreadable files, dropped when the dataset
is built: see `diablo.data.base`). Train and test classes are always disjoint. Nothing is
ever downloaded: the four benchmarks read a local copy (`root=`), Fashion-MNIST reads the
Debian package, and "synthetic" (the default, see `diablo.data.synthetic`) is generated
locally on first use.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from diablo.data.base import ImageDataset, Transform, UnreadableImageError
from diablo.data.image import decode_upload, open_image
from diablo.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomResize, build_transform, denormalize

__all__ = [
    "DATASETS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_KS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "K_LIST",
    "SPLITS",
    "ImageDataset",
    "RandomResize",
    "UnreadableImageError",
    "build_transform",
    "decode_upload",
    "default_image_size",
    "denormalize",
    "k_list",
    "load_dataset",
    "open_image",
]

DATASETS: tuple[str, ...] = ("cub", "cars", "sop", "inshop", "folder", "fashion-mnist", "synthetic")

SPLITS: dict[str, tuple[str, ...]] = {
    "cub": ("train", "test"),
    "cars": ("train", "test"),
    "sop": ("train", "test"),
    "inshop": ("train", "query", "gallery"),
    "folder": ("train", "test", "all"),
    "fashion-mnist": ("train", "test", "all"),
    "synthetic": ("train", "test", "all"),
}

K_LIST: dict[str, tuple[int, ...]] = {
    "cub": (1, 2, 4, 8, 16, 32),
    "cars": (1, 2, 4, 8, 16, 32),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40, 50),
    "folder": (1, 2, 4, 8),
    "fashion-mnist": (1, 2, 4, 8),
    "synthetic": (1, 2, 4, 8),
}
"""The Recall@K values reported for each dataset (paper §5)."""

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)
"""The Recall@K values of a dataset outside K_LIST (see `k_list`)."""

DEFAULT_IMAGE_SIZE: dict[str, int | None] = {
    "cub": 256,
    "cars": 256,
    "sop": 256,
    "inshop": 256,
    "folder": 256,
    "fashion-mnist": 64,
    "synthetic": None,  # the generated resolution (128 by default)
}
"""Crop / resize size used when `image_size` is not given (the paper's 256 for real photos)."""


def _loader(name: str) -> Callable[..., ImageDataset]:
    if name == "cub":
        from diablo.data.official import load_cub as fn
    elif name == "cars":
        from diablo.data.official import load_cars as fn
    elif name == "sop":
        from diablo.data.official import load_sop as fn
    elif name == "inshop":
        from diablo.data.official import load_inshop as fn
    elif name == "folder":
        from diablo.data.folder import load_folder as fn
    elif name == "fashion-mnist":
        from diablo.data.fashion_mnist import load_fashion_mnist as fn
    else:
        from diablo.data.synthetic import load_synthetic as fn
    return fn


def _normalised(name: str) -> str:
    return str(name).lower().replace("_", "-")


def _canonical(name: str) -> str:
    key = _normalised(name)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return key


def k_list(name: str) -> tuple[int, ...]:
    """The Recall@K values of dataset `name` (any spelling `load_dataset` accepts); (1, 2, 4, 8)
    for a name outside K_LIST."""
    return tuple(K_LIST.get(_normalised(name), DEFAULT_KS))


def default_image_size(name: str, resolution: int | None = None) -> int:
    """The image size `load_dataset` uses when none is given: DEFAULT_IMAGE_SIZE[name], or for
    "synthetic" the generated `resolution` (128 by default). ValueError for an unknown name."""
    return DEFAULT_IMAGE_SIZE[_canonical(name)] or (128 if resolution is None else int(resolution))


def load_dataset(
    name: str = "synthetic",
    split: str = "train",
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    transform: Transform | None = None,
    **options: Any,
) -> ImageDataset:
    """Load one split of a dataset.

    Args:
        name: one of DATASETS.
        split: one of SPLITS[name] ("train"/"test"; In-Shop: "train"/"query"/"gallery";
            folder, fashion-mnist, synthetic also "all").
        root: the dataset folder (required for cub, cars, sop, inshop, folder; the cache folder
            for synthetic; the idx folder for fashion-mnist).
        image_size: crop / resize size of the default transform (DEFAULT_IMAGE_SIZE[name]).
        transform: replaces the default `build_transform(split == "train", image_size)`.
        **options: per dataset: cub/cars/sop/inshop `check_files`; fashion-mnist `per_class`;
            synthetic `num_classes`, `images_per_class`, `resolution`, `seed`, `group_size`.

    Raises:
        ValueError: unknown name, split or option value.
        FileNotFoundError: missing root or files, with the file and how to provide it.
    """
    key = _canonical(name)
    if split not in SPLITS[key]:
        raise ValueError(f"unknown split {split!r} for {key!r}; allowed: {', '.join(SPLITS[key])}")
    fn = _loader(key)
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("root", "split", "transform")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option {unknown[0]!r} for {key!r}; allowed: {', '.join(allowed) or 'none'}")
    if transform is None:
        size = image_size or default_image_size(key, options.get("resolution"))
        transform = build_transform(train=split == "train", image_size=size)
    return fn(root=root, split=split, transform=transform, **options)
