"""ImageDataset: labels, accessors, and skipping of unreadable files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from diablo.data.base import ImageDataset, contiguous_labels

from .conftest import write_image


def test_items_are_tensors_with_labels(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}.png", (10 * i, 0, 0)) for i in range(3)]
    ds = ImageDataset(paths, [0, 1, 1], ["a", "b"])
    assert len(ds) == 3 and ds.labels == [0, 1, 1] and ds.classes == ["a", "b"]
    x, y = ds[1]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 30, 40) and y == 1
    assert ds.path(2) == str(paths[2]) and ds.paths[2] == str(paths[2])
    assert ds.image(0).mode == "RGB"
    x_last, _ = ds[-1]
    assert torch.equal(x_last, ds[2][0])
    with pytest.raises(IndexError):
        ds[3]


def test_transform_is_applied(tmp_path: Path) -> None:
    ds = ImageDataset([write_image(tmp_path / "a.png")], [0], ["a"], transform=lambda img: img.size)
    assert ds[0] == ((40, 30), 0)


def test_labels_must_match_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ImageDataset([tmp_path / "a.png"], [1], ["only"])
    with pytest.raises(ValueError):
        ImageDataset([tmp_path / "a.png"], [0, 0], ["only"])


def test_corrupt_file_is_skipped_with_one_warning(tmp_path: Path) -> None:
    good0 = write_image(tmp_path / "good0.png", (255, 0, 0))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    good2 = write_image(tmp_path / "good2.png", (0, 0, 255))
    ds = ImageDataset([good0, bad, good2], [0, 1, 2], ["r", "x", "b"])
    with pytest.warns(RuntimeWarning, match="bad.jpg"):
        x, y = ds[1]
    assert y == 2 and x[2].mean() > 0.9  # the next readable item (blue)
    assert ds.skipped == [str(bad)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert ds[1][1] == 2
    assert ds.skipped == [str(bad)]
    # an epoch runs through
    assert [ds[i][1] for i in range(len(ds))] == [0, 2, 2]


def test_missing_file_is_skipped_and_all_bad_raises(tmp_path: Path) -> None:
    ds = ImageDataset([tmp_path / "gone1.png", tmp_path / "gone2.png"], [0, 0], ["a"])
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="no readable image"):
        ds[0]
    assert len(ds.skipped) == 2


def test_contiguous_labels() -> None:
    labels, keys = contiguous_labels([105, 3, 105, 42])
    assert labels == [2, 0, 2, 1] and keys == [3, 42, 105]
