"""Class-disjoint subsets of a dataset: the validation split of the model-selection protocol (§4.2)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset


class ClassSubset(Dataset):
    """The items of `dataset` whose label is in `class_ids` (None: all), at most `per_class` of each
    (the first ones, None: all); labels and class names kept."""

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


def split_classes(labels: Sequence[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Randomly hold out `fraction` of the classes: (kept class ids, held-out class ids), both sorted."""
    classes = np.unique(np.asarray(labels))
    held = max(1, round(fraction * len(classes)))
    if held >= len(classes):
        raise ValueError(f"cannot hold out {held} of {len(classes)} classes")
    order = np.random.default_rng(seed).permutation(classes)
    return sorted(int(c) for c in order[held:]), sorted(int(c) for c in order[:held])
