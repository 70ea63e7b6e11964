"""Galleries: which images the lab searches, their datasets, embeddings, metrics and thumbnails."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from app.lab.models import CheckpointRef, Model
from app.lab.settings import synthetic_options
from app.lab.store import gallery_folder, progress, read_json, store, write_json

THUMBNAIL = 112  # pixels, the side of gallery thumbnails
STATISTICS_IMAGES = 400  # entry statistics use at most this many gallery images, evenly spread
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
        where = f" in {self.root}" if self.root else ""
        capped = f", at most {self.limit} images" if self.limit else ""
        return f"{self.dataset}/{self.split}{where}{capped}"


def default_gallery() -> GallerySpec:
    """The synthetic dataset's test split ($DIABLO_SYNTHETIC sets its parameters)."""
    return GallerySpec("synthetic", "test", None, tuple(sorted(synthetic_options().items())))


@st.cache_resource(show_spinner="Loading the gallery (the synthetic set is generated on first use)…", max_entries=8)
def _load_gallery(spec: GallerySpec, image_size: int) -> Any:
    from diablo.data import build_transform, load_dataset
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
        text = f"{len(self)} images, {len(self.classes)} classes ({self.spec.dataset}/{self.spec.split})"
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
def _gallery_key(ref: CheckpointRef, spec: GallerySpec, image_size: int) -> str:
    """diablo.index.index_key of the checkpoint (its content hash) and the gallery."""
    from diablo.index import index_key

    return index_key(ref.path, f"{spec.describe()}|image_size={image_size}")


def gallery_index(model: Model, gallery: Gallery) -> Any:
    """The gallery's embeddings under `model` in a diablo.index.GalleryIndex.

    From the store, else from the disk cache, else embedded now (a progress bar) and saved.
    """
    from diablo.index import GalleryIndex

    def compute() -> Any:
        key = _gallery_key(model.ref, gallery.spec, gallery.image_size)
        folder = gallery_folder(key)
        try:
            index = GalleryIndex.load(folder, key)
        except ValueError:  # a corrupt cache is rebuilt
            index = None
        if index is None:
            index = _embed_gallery(model, gallery, key)
            try:
                index.save(folder)
            except OSError:
                pass  # a read-only cache: keep the index in memory only
        return index

    return store().memo(("index", model.ref, gallery.spec, gallery.image_size), compute)


def _embed_gallery(model: Model, gallery: Gallery, key: str) -> Any:
    from torch.utils.data import Subset

    from diablo.evaluation import embed
    from diablo.index import GalleryIndex

    n = len(gallery)
    bar, update = progress(f"Embedding the gallery with {model.name} (once, then cached on disk):")
    chunk = 128
    parts, labels = [], []
    for start in range(0, n, chunk):
        with model.lock:
            emb, lab = embed(model.net, Subset(gallery.dataset, range(start, min(n, start + chunk))),
                             batch_size=32, progress=False)
        parts.append(emb)
        labels.append(lab)
        update(min(n, start + chunk), n)
    bar.empty()
    return GalleryIndex.build(np.concatenate(parts), np.concatenate(labels), model.branches, key,
                              gallery.dataset.paths)


@st.cache_data(show_spinner="Scoring the gallery (Recall@K, MAP@R)…", max_entries=64)
def _gallery_metrics(key: str, ks: tuple[int, ...], _index: Any) -> dict[str, float | None]:
    from diablo.evaluation import evaluate

    file = gallery_folder(key) / f"metrics-{'-'.join(map(str, ks))}.json"
    cached = read_json(file)
    if isinstance(cached, dict) and cached.get("key") == key:
        return cached["metrics"]
    metrics = evaluate(_index.embeddings, _index.labels, ks, with_nmi=True)
    metrics = {name: (None if isinstance(v, float) and math.isnan(v) else float(v)) for name, v in metrics.items()}
    write_json(file, {"key": key, "metrics": metrics})
    return metrics


def gallery_metrics(model: Model, gallery: Gallery, ks: Sequence[int] | None = None) -> dict[str, float | None]:
    """{"recall@K": .., "map@r": .., "nmi": ..} of the gallery searched leave-one-out (cached); `ks` defaults
    to the gallery dataset's Recall@K list (`diablo.data.k_list`)."""
    from diablo.data import k_list

    if ks is None:
        ks = k_list(gallery.spec.dataset)
    index = gallery_index(model, gallery)
    return _gallery_metrics(index.key, tuple(int(k) for k in ks), index)


def entry_statistics(model: Model, gallery: Gallery) -> dict[str, Any]:
    """diablo.explain.dataset_entry_statistics over (at most STATISTICS_IMAGES of) the gallery.

    From the store, else from the disk cache, else computed now (a progress bar) and saved.
    """
    from torch.utils.data import Subset

    from diablo.data.subset import spread_indices
    from diablo.explain import dataset_entry_statistics

    def compute() -> dict[str, Any]:
        key = _gallery_key(model.ref, gallery.spec, gallery.image_size)
        file = gallery_folder(key) / f"entries-{STATISTICS_IMAGES}.json"
        cached = read_json(file)
        if isinstance(cached, dict) and cached.get("key") == key:
            return {name: np.asarray([np.nan if x is None else x for x in v], dtype=np.float64)
                    if isinstance(v, list) else v for name, v in cached["statistics"].items()}
        ids = spread_indices(len(gallery), STATISTICS_IMAGES)
        bar, update = progress(f"Summarising {model.name}'s attention over the gallery (once, then cached):")
        with model.lock:
            stats = dataset_entry_statistics(model.net, Subset(gallery.dataset, ids), batch_size=32, progress=update)
        bar.empty()
        serial = {name: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for name, v in stats.items()}
        serial["entry_entropy"] = [None if math.isnan(v) else v for v in stats["entry_entropy"]]
        write_json(file, {"key": key, "statistics": serial})
        return stats

    return store().memo(("entries", model.ref, gallery.spec, gallery.image_size), compute)


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
