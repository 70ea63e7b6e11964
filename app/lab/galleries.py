"""Galleries: which images the lab searches, their datasets, cache keys and thumbnails (their embeddings,
metrics and entry statistics are background passes: passes.py)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from app.lab.models import CheckpointRef
from app.lab.settings import synthetic_options

INDEX = "index"  # GallerySpec.dataset of a gallery index built by `python -m diablo.index build` (root: its directory)
THUMBNAIL = 112  # pixels, the side of gallery thumbnails
UNREADABLE_TILE = 200  # the grey of a thumbnail whose file cannot be decoded


@dataclass(frozen=True)
class GallerySpec:
    """Which images the lab searches: a dataset name, split, root, loader options and a size cap."""

    dataset: str
    split: str = "test"
    root: str | None = None
    options: tuple[tuple[str, int], ...] = ()
    limit: int = 0  # at most this many images (evenly spread over the split), 0 = all

    def describe(self) -> str:
        """A stable text that identifies the gallery (part of the cache key)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @property
    def title(self) -> str:
        if self.dataset == INDEX:
            return f"the built index in {self.root}"
        where = f" in {self.root}" if self.root else ""
        capped = f", at most {self.limit} images" if self.limit else ""
        return f"{self.dataset}/{self.split}{where}{capped}"


def default_gallery() -> GallerySpec:
    """The synthetic dataset's test split ($DIABLO_SYNTHETIC sets its parameters)."""
    return GallerySpec("synthetic", "test", None, tuple(sorted(synthetic_options().items())))


class IndexDataset:
    """The items of a built gallery index (diablo.index.BuiltIndex): labels, classes and paths from its
    files, images read from their recorded paths only when asked for (thumbnails, inspection)."""

    def __init__(self, built: Any, transform: Any) -> None:
        if built.paths is None:
            raise ValueError(f"{built.directory} records no image paths")
        self.built = built
        self.paths = built.paths
        self.labels = [int(y) for y in built.labels]
        top = max(self.labels, default=-1) + 1
        self.classes = list(built.classes) if built.classes else [str(y) for y in range(top)]
        self.skipped = list(built.build.get("skipped") or [])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return image.convert("RGB")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(self.image(index)), self.labels[index]


@st.cache_resource(show_spinner="Loading the gallery (the synthetic set is generated on first use)…", max_entries=8)
def _load_gallery(spec: GallerySpec, image_size: int) -> Any:
    from diablo.data import build_transform, load_dataset

    if spec.dataset == INDEX:
        from diablo.index import open_index

        if not spec.root:
            raise ValueError("no index directory given")
        return IndexDataset(open_index(Path(spec.root).expanduser()), build_transform(False, image_size))
    from diablo.data.subset import IndexSubset, spread_indices

    dataset = load_dataset(
        spec.dataset, split=spec.split, root=spec.root, transform=build_transform(False, image_size),
        **dict(spec.options),
    )
    if len(dataset) == 0:
        raise ValueError(f"the gallery {spec.title} has no readable images")
    if spec.limit and len(dataset) > spec.limit:  # the dataset's own items (in-memory pixels, masks) kept
        dataset = IndexSubset(dataset, spread_indices(len(dataset), spec.limit))
    return dataset


@dataclass(frozen=True, eq=False)
class Gallery:
    """A loaded gallery: its spec, the image size it is transformed to, and the dataset."""

    spec: GallerySpec
    image_size: int
    dataset: Any  # diablo.data.base.ImageDataset, or a diablo.data.subset.IndexSubset of one (the size cap)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> list[int]:
        return self.dataset.labels

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def built(self) -> Any:
        """The diablo.index.BuiltIndex of a gallery opened from a built index directory, else None."""
        return self.dataset.built if isinstance(self.dataset, IndexDataset) else None

    @property
    def total(self) -> int:
        """The images of the split before the size cap."""
        parent = getattr(self.dataset, "dataset", None)
        return len(parent) if parent is not None and hasattr(self.dataset, "indices") else len(self)

    @property
    def skipped(self) -> list[str]:
        """Files the dataset skipped as unreadable (its `skipped` list, [] for datasets without one)."""
        found = getattr(self.dataset, "skipped", None)
        if found is None:  # a capped gallery: the parent dataset's list
            found = getattr(getattr(self.dataset, "dataset", None), "skipped", None)
        return list(found or [])

    def path(self, index: int) -> str:
        return self.dataset.paths[index]

    def file_name(self, index: int) -> str:
        return Path(self.dataset.paths[index]).name

    def class_name(self, index: int) -> str:
        return self.dataset.classes[self.dataset.labels[index]]

    def image(self, index: int) -> Any:
        """Item `index` as an RGB PIL image (no transform); raises on an unreadable file."""
        return self.dataset.image(index)

    def summary(self) -> str:
        """The sidebar's caption: images shown (and before the cap), classes, files skipped as unreadable."""
        source = f"{self.spec.dataset}/{self.spec.split}"
        if self.built is not None:
            build = self.built.build
            source = f"built index of {build.get('dataset', '?')}/{build.get('split', '?')}, {self.built.kind}"
        text = f"{len(self)} images, {len(self.classes)} classes ({source})"
        if self.total > len(self):
            text += f", evenly spread over {self.total}"
        skipped = len(self.skipped)
        if skipped:
            text += f"; {skipped} unreadable file{'s' if skipped != 1 else ''} skipped"
        return text


def load_gallery(spec: GallerySpec, image_size: int) -> Gallery:
    """The cached gallery; FileNotFoundError / ValueError (e.g. a folder without images)."""
    return Gallery(spec, image_size, _load_gallery(spec, image_size))


@st.cache_data(show_spinner=False, max_entries=256)
def gallery_key(ref: CheckpointRef, spec: GallerySpec, image_size: int) -> str:
    """diablo.index.index_key of the checkpoint (its content hash) and the gallery: the key of its
    passes (passes.py) and of their disk cache."""
    from diablo.index import index_key

    return index_key(ref.path, f"{spec.describe()}|image_size={image_size}")


@st.cache_data(show_spinner=False, max_entries=1024)
def _thumbnail(gallery_key: str, index: int, size: int, _dataset: Any) -> np.ndarray:
    from PIL import Image

    try:
        image = _dataset.image(index).convert("RGB")
    except Exception:  # an unreadable gallery file shows as a grey tile
        return np.full((size, size, 3), UNREADABLE_TILE, dtype=np.uint8)
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def thumbnail(gallery: Gallery, index: int, size: int = THUMBNAIL) -> np.ndarray:
    """(h, w, 3) uint8 RGB thumbnail of a gallery item (its dataset's `image`, so in-memory items such as
    Fashion-MNIST's work too), at most `size` pixels a side (cached); grey when the file is unreadable."""
    return _thumbnail(gallery.spec.describe(), int(index), int(size), gallery.dataset)


@st.cache_data(show_spinner=False, max_entries=1024)
def _thumbnail_png(gallery_key: str, index: int, size: int, _dataset: Any) -> bytes:
    from diablo.montage import png_bytes

    return png_bytes(_thumbnail(gallery_key, index, size, _dataset))


def thumbnail_png(gallery: Gallery, index: int, size: int = THUMBNAIL) -> bytes:
    """`thumbnail` as PNG file bytes (cached), for st.image: an encoded image is not encoded again on
    every run."""
    return _thumbnail_png(gallery.spec.describe(), int(index), int(size), gallery.dataset)
