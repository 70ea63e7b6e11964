"""Any folder with one subfolder of images per class, split by class for metric learning."""

from __future__ import annotations

import os
from pathlib import Path

from diablo.data.base import ImageDataset, Transform

__all__ = ["IMAGE_EXTENSIONS", "FOLDER_SPLITS", "load_folder"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
FOLDER_SPLITS = ("train", "test", "all")


def _images(folder: Path) -> list[Path]:
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def load_folder(
    root: str | os.PathLike | None,
    split: str = "train",
    transform: Transform | None = None,
) -> ImageDataset:
    """Classes are the sorted subfolders of `root` that hold images (searched recursively).

    split "train" takes the first half of the sorted classes, "test" the second half (the
    metric-learning protocol: test classes are unseen), "all" every class. With an odd count
    the extra class goes to train. Classes are found by file name, before the files are decoded:
    unreadable files are then dropped (see `ImageDataset`), and a class whose files are all
    unreadable keeps its place and label with no items, so the split never depends on them.
    """
    if split not in FOLDER_SPLITS:
        raise ValueError(f"unknown split {split!r} for 'folder'; allowed: {', '.join(FOLDER_SPLITS)}")
    if root is None:
        raise FileNotFoundError("dataset 'folder' needs root=<folder with one subfolder of images per class>")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"dataset 'folder': {base} does not exist or is not a folder")
    subdirs = sorted((d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    per_class = [(d.name, imgs) for d in subdirs if (imgs := _images(d))]
    if not per_class:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"no images found in {base} (expected one subfolder per class holding {exts} files)")
    if split != "all":
        if len(per_class) < 2:
            raise ValueError(f"{base} has {len(per_class)} class; a train/test split needs at least 2 (or split='all')")
        n_train = (len(per_class) + 1) // 2
        per_class = per_class[:n_train] if split == "train" else per_class[n_train:]
    paths = [str(p) for _, imgs in per_class for p in imgs]
    labels = [y for y, (_, imgs) in enumerate(per_class) for _ in imgs]
    classes = [name for name, _ in per_class]
    return ImageDataset(paths, labels, classes, transform, name=f"folder/{split}")
