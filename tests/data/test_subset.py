"""Subsets: ClassSubset and split_classes (the validation split of §4.2), spread_indices and IndexSubset."""

from __future__ import annotations

import numpy as np
import pytest

from diablo.data.subset import ClassSubset, IndexSubset, split_classes, spread_indices


class Items:
    """A dataset whose item i is (f"item{i}", label i)."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels
        self.classes = [f"class{c}" for c in range(max(labels) + 1)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return f"item{i}", self.labels[i]


LABELS = [0, 1, 2, 0, 1, 2, 0, 2, 2, 3]


def test_class_ids_keep_the_items_of_those_classes_in_order() -> None:
    data = Items(LABELS)
    subset = ClassSubset(data, class_ids=[2, 0])
    assert subset.indices == [0, 2, 3, 5, 6, 7, 8]
    assert subset.labels == [0, 2, 0, 2, 0, 2, 2]  # the original labels, not renumbered
    assert subset.classes is data.classes
    assert len(subset) == 7
    assert [subset[i] for i in range(len(subset))] == [data[i] for i in subset.indices]
    assert ClassSubset(data, class_ids=np.array([3])).indices == [9]
    assert len(ClassSubset(data, class_ids=[])) == 0


def test_per_class_keeps_the_first_items_of_each_class() -> None:
    data = Items(LABELS)
    subset = ClassSubset(data, per_class=2)
    assert subset.indices == [0, 1, 2, 3, 4, 5, 9]
    assert subset.labels == [0, 1, 2, 0, 1, 2, 3]
    assert subset[6] == ("item9", 3)
    both = ClassSubset(data, class_ids={2}, per_class=3)
    assert both.indices == [2, 5, 7] and both.labels == [2, 2, 2]
    assert ClassSubset(data).indices == list(range(len(LABELS)))  # neither: everything


def test_split_classes_is_disjoint_seeded_and_sized() -> None:
    labels = np.repeat(np.arange(20), 3)
    kept, held = split_classes(labels, 0.25, seed=7)
    assert len(held) == 5 and len(kept) == 15
    assert set(kept).isdisjoint(held) and set(kept) | set(held) == set(range(20))
    assert kept == sorted(kept) and held == sorted(held)
    assert split_classes(list(labels), 0.25, seed=7) == (kept, held)  # the seed fixes the split
    assert any(split_classes(labels, 0.25, seed=s)[1] != held for s in range(8))  # other seeds differ
    assert len(split_classes(labels, 0.1)[1]) == 2  # round(0.1 * 20)
    assert len(split_classes(labels, 0.001)[1]) == 1  # at least one class is held out


def test_split_classes_refuses_to_hold_out_every_class() -> None:
    with pytest.raises(ValueError, match="cannot hold out"):
        split_classes([0, 1, 2, 3], 1.0)
    with pytest.raises(ValueError, match="cannot hold out"):
        split_classes([5, 5, 9], 0.8)  # round(1.6) = 2 of 2 classes
    assert split_classes([5, 5, 9], 0.4, seed=0)[0] in ([5], [9])


# ---- spread_indices and IndexSubset (the size cap of the lab's gallery) ------------------------


def test_spread_indices() -> None:
    assert spread_indices(5, None) == spread_indices(5, 0) == spread_indices(5, 9) == [0, 1, 2, 3, 4]
    assert spread_indices(0, 3) == []
    picked = spread_indices(100, 7)
    assert len(picked) == 7 and picked[0] == 0 and picked[-1] == 99 and picked == sorted(set(picked))
    assert len(spread_indices(10, 9)) == 9
    with pytest.raises(ValueError):
        spread_indices(-1, 2)
    with pytest.raises(ValueError):
        spread_indices(5, -1)


class Photos(Items):
    """Items with paths, an image and a mask per item and a per-class attribute."""

    part_names = ("head", "tail")

    def __init__(self, labels: list[int]) -> None:
        super().__init__(labels)
        self.paths = [f"p{i}.png" for i in range(len(labels))]

    def image(self, i: int) -> str:
        return f"image{i}"

    def mask(self, i: int, part: int = 0) -> tuple[int, int]:
        return i, part


def test_index_subset_keeps_order_labels_and_forwards_item_methods() -> None:
    data = Photos(LABELS)
    subset = IndexSubset(data, [9, 2, 4])
    assert len(subset) == 3 and subset.indices == [9, 2, 4]
    assert subset.labels == [3, 2, 1] and subset.classes is data.classes
    assert subset.paths == ["p9.png", "p2.png", "p4.png"]
    assert subset[1] == ("item2", 2) and subset.image(0) == "image9"
    assert subset.mask(2, part=1) == (4, 1)  # forwarded with the parent's index
    assert subset.part_names == ("head", "tail")
    with pytest.raises(AttributeError):
        subset.path(0)  # the parent has none
    with pytest.raises(AttributeError):
        subset.anything_else  # noqa: B018
    with pytest.raises(IndexError):
        IndexSubset(data, [0, 10])
    assert not hasattr(IndexSubset(Items(LABELS), [0]), "paths")


def test_index_subset_of_in_memory_items() -> None:
    """Fashion-MNIST's items live in memory behind `<idx file>#<i>` pseudo-paths: a subset reads them
    through the parent (a plain ImageDataset of those paths would find no readable file), and survives pickling
    (DataLoader workers)."""
    import pickle

    import torch

    from diablo.data.fashion_mnist import FashionMNIST

    pixels = np.repeat((np.arange(12, dtype=np.uint8) * 20)[:, None, None], 28, axis=1).repeat(28, axis=2)
    pixels[:, :14] //= 2  # a darker top half
    paths = [f"/nowhere/t10k-images-idx3-ubyte.gz#{i}" for i in range(12)]
    parent = FashionMNIST(pixels, paths, [i % 3 for i in range(12)], ["a", "b", "c"], None, name="stub")
    subset = IndexSubset(parent, spread_indices(12, 3))
    assert subset.indices == [0, 6, 11] and subset.labels == [0, 0, 2] and subset.paths[1] == paths[6]
    image = subset.image(2)
    assert image.mode == "RGB" and image.size == (28, 28)
    assert np.array_equal(np.asarray(image), np.asarray(parent.image(11)))
    x, y = subset[1]
    assert y == 0 and torch.equal(x, parent[6][0])
    assert not hasattr(subset, "mask")  # only when the parent has masks
    copy = pickle.loads(pickle.dumps(subset))
    assert copy.indices == subset.indices and np.array_equal(np.asarray(copy.image(2)), np.asarray(image))


def test_subsets_expose_the_parents_skipped_files(tmp_path) -> None:
    from diablo.data.base import ImageDataset

    from .conftest import write_corrupt, write_image

    paths = [write_image(tmp_path / f"{c}{i}.png", (80 * c, 0, 0)) for c in range(3) for i in range(2)]
    bad = [write_corrupt(tmp_path / "0bad.jpg", "text-as-jpg"), write_corrupt(tmp_path / "2bad.png", "truncated-png")]
    with pytest.warns(RuntimeWarning):
        data = ImageDataset([*paths, *bad], [0, 0, 1, 1, 2, 2, 0, 2], ["a", "b", "c"])
    assert data.skipped == [str(p) for p in bad]
    by_class = ClassSubset(data, class_ids=[1])
    assert by_class.skipped == data.skipped  # the parent's, even of classes left out
    assert by_class.labels == [1, 1] and ClassSubset(by_class, per_class=1).skipped == data.skipped
    spread = IndexSubset(data, [0, 5])
    assert spread.skipped == data.skipped and spread.skip_reasons == data.skip_reasons
    assert ClassSubset(Items(LABELS)).skipped == []  # a parent without the attribute
    assert not hasattr(IndexSubset(Items(LABELS), [0]), "skipped")
