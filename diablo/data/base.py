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
from diablo.data.scan import failure_reason, scan_images

__all__ = ["SKIPPED_SHOWN", "ImageDataset", "UnreadableImageError", "contiguous_labels"]

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


class UnreadableImageError(OSError):
    """An image file that was readable when its dataset was built cannot be read any more."""


SKIPPED_SHOWN = 5
"""How many dropped files the warning names (all of them are in `dataset.skipped`)."""


class ImageDataset(Dataset):
    """A list of image files, each with a class label.

    Attributes:
        paths: one file path per item (shown by the app).
        labels: one int per item, contiguous from 0 to len(classes) - 1.
        classes: class names, indexed by label.
        transform: applied to the decoded RGB PIL image; None gives a plain [0, 1] tensor.
        skipped: the files dropped when the dataset was built, in the given order.
        skip_reasons: {path: why it was dropped} for the files in `skipped`.

    With `scan=True` every file is decoded once when the dataset is built (`scan_images`: in
    parallel, cached by path, mtime and size) and the unreadable ones are dropped with one
    RuntimeWarning naming the first few; an item is never replaced by another. The classes
    are kept as given: a class whose files are all unreadable keeps its name and label and has
    no items. A file that fails after the build raises UnreadableImageError naming it.
    Datasets that do not read files (pixels held in memory) pass `scan=False`.

    Raises ValueError when labels do not match paths or classes, or when no file is readable.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int],
        classes: Sequence[str],
        transform: Transform | None = None,
        name: str = "images",
        scan: bool = True,
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
        self.skip_reasons: dict[str, str] = {}
        self.scanned = bool(scan)
        if scan and self.paths:
            self._drop_unreadable()

    def _drop_unreadable(self) -> None:
        bad = scan_images(self.paths, desc=f"scan {self.name}")
        if not bad:
            return
        total = len(self.paths)
        keep = [i for i, p in enumerate(self.paths) if p not in bad]
        self.skipped = [p for p in self.paths if p in bad]
        self.skip_reasons = {p: bad[p] for p in self.skipped}
        shown = "; ".join(f"{p} ({bad[p]})" for p in self.skipped[:SKIPPED_SHOWN])
        more = f"; and {len(self.skipped) - SKIPPED_SHOWN} more" if len(self.skipped) > SKIPPED_SHOWN else ""
        if not keep:
            raise ValueError(f"{self.name}: none of its {total} image files is readable: {shown}{more}")
        self.paths = [self.paths[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        warnings.warn(
            f"{self.name}: dropped {len(self.skipped)} unreadable image file(s) of {total}: {shown}{more}",
            RuntimeWarning,
            stacklevel=3,
        )

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

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        try:
            img = self.image(index)
        except Exception as err:
            why = failure_reason(err, self.paths[index])
            since = "; it was readable when the dataset was built, so it changed since" if self.scanned else ""
            raise UnreadableImageError(f"cannot read image {self.paths[index]} of {self.name} ({why}){since}") from err
        out = self.transform(img) if self.transform is not None else _to_tensor(img)
        return out, self.labels[index]
