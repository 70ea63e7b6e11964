"""Subsets of a dataset: class-disjoint ones (the validation split of the model-selection protocol,
§4.2) and evenly spread index subsets (a size cap, e.g. the lab's gallery)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset


class ClassSubset(Dataset):
    """The items of `dataset` whose label is in `class_ids` (None: all), at most `per_class` of each
    (the first ones, None: all); labels and class names kept. `skipped` is the parent's (the
    files dropped when it was built, of every class)."""

    def __init__(self, dataset: Any, class_ids: Iterable[int] | None = None, per_class: int | None = None) -> None:
        keep = None if class_ids is None else {int(c) for c in class_ids}
        taken: dict[int, int] = {}
        self.dataset = dataset
        self.indices = []
        for i, label in enumerate(dataset.labels):
            label = int(label)
            if (keep is None or label in keep) and (per_class is None or taken.get(label, 0) < per_class):
                taken[label] = taken.get(label, 0) + 1
                self.indices.append(i)
        self.labels = [int(dataset.labels[i]) for i in self.indices]
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    @property
    def skipped(self) -> list[str]:
        """The parent's unreadable files (dropped when it was built); [] when it has none."""
        return getattr(self.dataset, "skipped", [])


def split_classes(labels: Sequence[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Randomly hold out `fraction` of the classes: (kept class ids, held-out class ids), both sorted."""
    classes = np.unique(np.asarray(labels))
    held = max(1, round(fraction * len(classes)))
    if held >= len(classes):
        raise ValueError(f"cannot hold out {held} of {len(classes)} classes")
    order = np.random.default_rng(seed).permutation(classes)
    return sorted(int(c) for c in order[held:]), sorted(int(c) for c in order[:held])


def spread_indices(n: int, limit: int | None) -> list[int]:
    """At most `limit` of the indices 0..n-1, evenly spread (the first and the last included),
    sorted; all of them when `limit` is None or 0 or at least n."""
    if n < 0 or (limit is not None and limit < 0):
        raise ValueError(f"need n >= 0 and limit >= 0, got n={n}, limit={limit}")
    if not limit or limit >= n:
        return list(range(n))
    # the points lie more than 1 apart, so their roundings are `limit` distinct indices
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int)).tolist()


class IndexSubset(Dataset):
    """The items `indices` of `dataset`, in that order, keeping what the lab and the metrics use:
    `labels`, `classes`, `paths` (when the parent has them), `image(i)` and, when the parent has
    them, its other per-item methods (`mask(i)` of the synthetic set, `path(i)`),
    its per-class attributes (`part_names`, `describe(label)`, ...) and its `skipped` files
    (`skip_reasons`). `dataset` and `indices` are
    the parent and the parent's index of each item."""

    _ITEM_METHODS = frozenset({"mask", "path"})
    _SHARED = frozenset(
        {"transform", "part_names", "num_parts", "class_attributes", "describe", "skipped", "skip_reasons"}
    )

    def __init__(self, dataset: Any, indices: Iterable[int]) -> None:
        n = len(dataset)
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"index {bad[0]} out of range for {n} items")
        self.labels = [int(dataset.labels[i]) for i in self.indices]
        self.classes = dataset.classes
        if hasattr(dataset, "paths"):
            self.paths = [dataset.paths[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r}, {len(self)} items)"

    def image(self, index: int) -> Any:
        """Item `index` as the parent's `image` gives it (an RGB PIL image, no transform)."""
        return self.dataset.image(self.indices[index])

    def __getattr__(self, name: str) -> Any:
        # only called for what is not set on the subset; "dataset" guards copy/pickle before __init__
        parent = self.__dict__.get("dataset")
        if parent is not None and name in self._ITEM_METHODS:
            method = getattr(parent, name)  # AttributeError when the parent has none

            def item(index: int, *args: Any, **kwargs: Any) -> Any:
                return method(self.indices[index], *args, **kwargs)

            item.__doc__ = method.__doc__
            return item
        if parent is not None and name in self._SHARED:
            return getattr(parent, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
