"""The dataset type every loader returns: image files with integer class labels."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from diablo.data.image import open_image

__all__ = ["ImageDataset", "contiguous_labels"]

Transform = Callable[[Image.Image], Any]


def contiguous_labels(keys: Sequence[Any]) -> tuple[list[int], list[Any]]:
    """Map arbitrary sortable class keys to labels 0..C-1 (in sorted key order).

    Returns (labels, sorted unique keys).
    """
    uniq = sorted(set(keys))
    index = {k: i for i, k in enumerate(uniq)}
    return [index[k] for k in keys], uniq


def _to_tensor(img: Image.Image) -> torch.Tensor:
    from torchvision.transforms.functional import to_tensor

    return to_tensor(img)


class ImageDataset(Dataset):
    """A list of image files, each with a class label.

    Attributes:
        paths: one file path per item (shown by the app).
        labels: one int per item, contiguous from 0 to len(classes) - 1.
        classes: class names, indexed by label.
        transform: applied to the decoded RGB PIL image; None gives a plain [0, 1] tensor.
        skipped: files that could not be decoded; each is warned about once and counted here.

    An unreadable item is replaced by the next readable one, so an epoch never stops on a
    corrupt file.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int],
        classes: Sequence[str],
        transform: Transform | None = None,
        name: str = "images",
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths: list[str] = [os.fspath(p) for p in paths]
        self.labels: list[int] = [int(y) for y in labels]
        self.classes: list[str] = [str(c) for c in classes]
        if self.labels and (min(self.labels) < 0 or max(self.labels) >= len(self.classes)):
            raise ValueError(f"labels must lie in 0..{len(self.classes) - 1}")
        self.transform = transform
        self.name = name
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {len(self.classes)} classes)"

    def path(self, index: int) -> str:
        """The file behind item `index`."""
        return self.paths[index]

    def image(self, index: int) -> Image.Image:
        """Item `index` decoded as an RGB PIL image, without the transform (for display; the items
        pass it through the transform); raises on unreadable files. Subclasses that do not read
        files override this."""
        return open_image(self.paths[index])

    def _skip(self, index: int, err: Exception) -> None:
        path = self.paths[index]
        if path not in self.skipped:
            self.skipped.append(path)
            warnings.warn(
                f"skipping unreadable image {path}: {type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=3,
            )

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for step in range(n):
            i = (index + step) % n
            try:
                img = self.image(i)
            except (OSError, ValueError, SyntaxError, EOFError) as err:
                self._skip(i, err)
                continue
            out = self.transform(img) if self.transform is not None else _to_tensor(img)
            return out, self.labels[i]
        raise RuntimeError(f"no readable image in {self!r} ({len(self.skipped)} skipped)")
