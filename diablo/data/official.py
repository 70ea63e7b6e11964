"""Loaders for the paper's four benchmarks in their official layouts (docs/design.md §6).

Nothing is downloaded: each loader reads the official index files under `root` and raises
FileNotFoundError naming the missing file and where to get it. Splits follow the usual DML
protocol (train and test classes disjoint). When an index holds the full official data, the
split sizes are checked against the published numbers; smaller trees (tests, subsets) skip it.
A listed file that is missing is an error (`check_files=True`, the default; with False it is
dropped like an unreadable one); a listed file that cannot be decoded is dropped when the
dataset is built (see `ImageDataset`). The split sizes are checked on the index, before a drop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from diablo.data.base import ImageDataset, Transform, contiguous_labels

__all__ = ["OFFICIAL_SIZES", "SPLITS", "load_cars", "load_cub", "load_inshop", "load_sop"]

SPLITS: dict[str, tuple[str, ...]] = {
    "cub": ("train", "test"),
    "cars": ("train", "test"),
    "sop": ("train", "test"),
    "inshop": ("train", "query", "gallery"),
}

OFFICIAL_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    # split: (classes, images); "total": (all classes, rows of the full index)
    "cub": {"total": (200, 11788), "train": (100, 5864), "test": (100, 5924)},
    "cars": {"total": (196, 16185), "train": (98, 8054), "test": (98, 8131)},
    "sop": {"train": (11318, 59551), "test": (11316, 60502)},
    "inshop": {"total": (7982, 52712), "train": (3997, 25882), "query": (3985, 14218), "gallery": (3985, 12612)},
}

_SOURCES = {
    "cub": "CUB_200_2011 (https://www.vision.caltech.edu/datasets/cub_200_2011/)",
    "cars": "Cars-196 (cars_annos.mat and car_ims/ from the Stanford Cars dataset)",
    "sop": "Stanford_Online_Products (https://cvgl.stanford.edu/projects/lifted_struct/)",
    "inshop": "DeepFashion In-shop Clothes Retrieval (Anno/ or Eval/list_eval_partition.txt and img/)",
}


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS[name]:
        raise ValueError(f"unknown split {split!r} for {name!r}; allowed: {', '.join(SPLITS[name])}")


def _need_root(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        raise FileNotFoundError(
            f"dataset {name!r} needs root=<folder>: download {_SOURCES[name]} yourself and pass "
            "its folder (diablo never downloads data)"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: root folder {path} does not exist; get {_SOURCES[name]}")
    return path


def _find(name: str, root: Path, candidates: Sequence[str], subdirs: Sequence[str] = ()) -> Path:
    """The first existing root/[subdir/]candidate, or FileNotFoundError naming what is missing."""
    for base in (root, *(root / s for s in subdirs)):
        for rel in candidates:
            if (base / rel).is_file():
                return base / rel
    wanted = " or ".join(str(root / c) for c in candidates)
    raise FileNotFoundError(
        f"dataset {name!r}: missing {wanted}; root must be the folder of {_SOURCES[name]} "
        "as unpacked from the official archive"
    )


def _check_images(name: str, paths: Sequence[str]) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"dataset {name!r}: image file {missing[0]} is missing ({len(missing)} of {len(paths)} "
            f"listed images missing); unpack the complete {_SOURCES[name]} under root"
        )


def _check_sizes(name: str, split: str, labels: Sequence[int], rows: int | None = None) -> None:
    """Compare with the published numbers when the index holds the full official data."""
    sizes = OFFICIAL_SIZES[name]
    full = sizes["total"][1] if "total" in sizes else sizes[split][1]
    if rows is None or rows != full:
        return
    want_classes, want_images = sizes[split]
    got_classes, got_images = len(set(labels)), len(labels)
    if (got_classes, got_images) != (want_classes, want_images):
        raise ValueError(
            f"dataset {name!r} split {split!r}: {got_images} images of {got_classes} classes, "
            f"but the official split has {want_images} images of {want_classes} classes"
        )


def _rows(path: Path, skip: int = 0) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()[skip:]
    return [line.split() for line in lines if line.strip()]


def _build(
    name: str,
    split: str,
    items: Sequence[tuple[str, int]],
    class_name: Callable[[int], str],
    transform: Transform | None,
    rows: int,
    check_files: bool,
) -> ImageDataset:
    paths = [p for p, _ in items]
    labels, keys = contiguous_labels([c for _, c in items])
    if not paths:
        raise ValueError(f"dataset {name!r} split {split!r} has no images")
    if check_files:
        _check_images(name, paths)
    _check_sizes(name, split, labels, rows)
    return ImageDataset(paths, labels, [class_name(k) for k in keys], transform, name=f"{name}/{split}")


def load_cub(
    root: str | os.PathLike | None,
    split: str = "train",
    transform: Transform | None = None,
    check_files: bool = True,
) -> ImageDataset:
    """CUB-200-2011: images.txt, image_class_labels.txt, images/; classes 1-100 train, 101-200 test."""
    _check_split("cub", split)
    base = _need_root("cub", root)
    images_txt = _find("cub", base, ["images.txt"], ["CUB_200_2011"])
    base = images_txt.parent
    labels_txt = _find("cub", base, ["image_class_labels.txt"])
    paths = {r[0]: r[1] for r in _rows(images_txt)}
    classes = {r[0]: int(r[1]) for r in _rows(labels_txt)}
    missing = sorted(set(paths) - set(classes))
    if missing:
        raise ValueError(f"dataset 'cub': image id {missing[0]} of {images_txt} has no row in {labels_txt}")
    names: dict[int, str] = {}
    if (base / "classes.txt").is_file():
        names = {int(r[0]): r[1] for r in _rows(base / "classes.txt") if len(r) > 1}
    for image_id, rel in paths.items():
        names.setdefault(classes[image_id], rel.split("/")[0])
    keep = (lambda c: c <= 100) if split == "train" else (lambda c: c > 100)
    items = [(str(base / "images" / rel), classes[i]) for i, rel in paths.items() if keep(classes[i])]
    return _build("cub", split, items, names.__getitem__, transform, len(paths), check_files)


def load_cars(
    root: str | os.PathLike | None,
    split: str = "train",
    transform: Transform | None = None,
    check_files: bool = True,
) -> ImageDataset:
    """Cars-196: cars_annos.mat (annotations.relative_im_path, .class), car_ims/; classes 1-98 train."""
    import numpy as np
    from scipy.io import loadmat

    _check_split("cars", split)
    base = _need_root("cars", root)
    mat_path = _find("cars", base, ["cars_annos.mat"])
    base = mat_path.parent
    mat = loadmat(mat_path, squeeze_me=True)
    if "annotations" not in mat:
        raise ValueError(f"dataset 'cars': {mat_path} has no 'annotations' struct")
    annos = np.atleast_1d(mat["annotations"])
    fields = annos.dtype.names or ()
    for field in ("relative_im_path", "class"):
        if field not in fields:
            raise ValueError(f"dataset 'cars': {mat_path} annotations lack the field {field!r}")
    rels = [str(r) for r in annos["relative_im_path"]]
    cls = [int(c) for c in annos["class"]]
    class_names = [str(n) for n in np.atleast_1d(mat["class_names"])] if "class_names" in mat else []

    def name(c: int) -> str:
        return class_names[c - 1] if 0 < c <= len(class_names) else f"class {c}"

    keep = (lambda c: c <= 98) if split == "train" else (lambda c: c > 98)
    items = [(str(base / r), c) for r, c in zip(rels, cls, strict=True) if keep(c)]
    return _build("cars", split, items, name, transform, len(rels), check_files)


def load_sop(
    root: str | os.PathLike | None,
    split: str = "train",
    transform: Transform | None = None,
    check_files: bool = True,
) -> ImageDataset:
    """Stanford Online Products: Ebay_train.txt / Ebay_test.txt (image_id class_id super_class_id path)."""
    _check_split("sop", split)
    base = _need_root("sop", root)
    index = _find("sop", base, [f"Ebay_{split}.txt"], ["Stanford_Online_Products"])
    base = index.parent
    rows = _rows(index)
    if rows and rows[0][:2] == ["image_id", "class_id"]:
        rows = rows[1:]
    supers: dict[int, str] = {}
    items = []
    for row in rows:
        if len(row) < 4:
            raise ValueError(f"dataset 'sop': malformed row {' '.join(row)!r} in {index}")
        c, rel = int(row[1]), row[3]
        supers.setdefault(c, rel.split("/")[0])
        items.append((str(base / rel), c))
    return _build("sop", split, items, lambda c: f"{supers[c]}/{c}", transform, len(rows), check_files)


def load_inshop(
    root: str | os.PathLike | None,
    split: str = "train",
    transform: Transform | None = None,
    check_files: bool = True,
) -> ImageDataset:
    """In-Shop Clothes: list_eval_partition.txt (count, header, `image_name item_id status`).

    Splits "train", "query", "gallery"; the label is the item id, and query and gallery share
    label ids (both are numbered over the union of their items).
    """
    _check_split("inshop", split)
    base = _need_root("inshop", root)
    index = _find(
        "inshop",
        base,
        ["Anno/list_eval_partition.txt", "Eval/list_eval_partition.txt", "list_eval_partition.txt"],
    )
    rows = _rows(index)
    if len(rows) < 2:
        raise ValueError(f"dataset 'inshop': {index} has no rows")
    declared = int(rows[0][0])
    rows = rows[2:]
    if declared != len(rows):
        raise ValueError(f"dataset 'inshop': {index} declares {declared} rows but holds {len(rows)}")
    statuses = {r[2] for r in rows}
    unknown = statuses - {"train", "query", "gallery"}
    if unknown:
        raise ValueError(f"dataset 'inshop': unknown evaluation_status {sorted(unknown)[0]!r} in {index}")
    image_base = base
    if rows and not (base / rows[0][0]).exists() and (base / "Img" / rows[0][0]).exists():
        image_base = base / "Img"
    wanted = {"train"} if split == "train" else {"query", "gallery"}
    pool = [r for r in rows if r[2] in wanted]
    _, items_sorted = contiguous_labels([r[1] for r in pool])
    label_of = {item: i for i, item in enumerate(items_sorted)}
    chosen = [r for r in pool if r[2] == split]
    if not chosen:
        raise ValueError(f"dataset 'inshop' split {split!r} has no images in {index}")
    paths = [str(image_base / r[0]) for r in chosen]
    labels = [label_of[r[1]] for r in chosen]
    if check_files:
        _check_images("inshop", paths)
    if len(rows) == OFFICIAL_SIZES["inshop"]["total"][1]:
        want_classes, want_images = OFFICIAL_SIZES["inshop"][split]
        got_classes = len(items_sorted)
        if (got_classes, len(paths)) != (want_classes, want_images):
            raise ValueError(
                f"dataset 'inshop' split {split!r}: {len(paths)} images of {got_classes} classes, "
                f"but the official split has {want_images} images of {want_classes} classes"
            )
    return ImageDataset(paths, labels, list(items_sorted), transform, name=f"inshop/{split}")
