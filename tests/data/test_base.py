"""ImageDataset: labels, accessors, unreadable files dropped at build time and never substituted."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diablo.data.base import SKIPPED_SHOWN, ImageDataset, UnreadableImageError, contiguous_labels

from .conftest import CORRUPTIONS, write_corrupt, write_image


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


def test_unreadable_files_are_dropped_with_one_warning(tmp_path: Path) -> None:
    red = write_image(tmp_path / "red.png", (255, 0, 0))
    broken = [write_corrupt(tmp_path / f"{kind}.{'png' if 'png' in kind else 'jpg'}", kind) for kind in CORRUPTIONS]
    blue = write_image(tmp_path / "blue.png", (0, 0, 255))
    gone = tmp_path / "gone.png"
    paths = [red, broken[0], broken[1], blue, broken[2], gone, broken[3]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageDataset(paths, [0, 1, 1, 2, 2, 2, 1], ["r", "x", "b"])
    assert [w.category for w in caught] == [RuntimeWarning]  # one warning for every dropped file
    message = str(caught[0].message)
    assert "dropped 5 unreadable image file(s) of 7" in message
    assert all(str(p) in message for p in [broken[0], broken[1], broken[2], gone, broken[3]][:SKIPPED_SHOWN])
    assert ds.skipped == [str(p) for p in (broken[0], broken[1], broken[2], gone, broken[3])]
    assert set(ds.skip_reasons) == set(ds.skipped) and "truncated" in ds.skip_reasons[str(broken[1])]
    # the readable items only, each itself: no item stands in for another
    assert ds.paths == [str(red), str(blue)] and ds.labels == [0, 2] and len(ds) == 2
    assert ds.classes == ["r", "x", "b"]  # class "x" lost all its images and keeps its place
    assert ds[0][0][0].mean() > 0.99 and ds[1][0][2].mean() > 0.99
    with pytest.raises(IndexError):
        ds[2]


def test_the_warning_names_the_first_few(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.png")
    bad = [write_corrupt(tmp_path / f"bad{i:02d}.jpg", "zero-bytes") for i in range(SKIPPED_SHOWN + 3)]
    with pytest.warns(RuntimeWarning) as record:
        ds = ImageDataset([good, *bad], [0] * (len(bad) + 1), ["a"])
    assert len(record) == 1
    message = str(record[0].message)
    assert f"dropped {len(bad)} " in message and "and 3 more" in message
    assert [str(p) in message for p in bad] == [True] * SKIPPED_SHOWN + [False] * 3
    assert len(ds.skipped) == len(bad) and len(ds) == 1


def test_truncated_jpeg_that_passes_pil_verify_is_dropped(tmp_path: Path) -> None:
    """The scan decodes: PIL's header check alone lets a truncated JPEG through."""
    cut = write_corrupt(tmp_path / "cut.jpg", "truncated-jpeg")
    with Image.open(cut) as img:
        img.verify()  # no error: verify() does not read JPEG data
    with pytest.warns(RuntimeWarning, match="cut.jpg"):
        ds = ImageDataset([write_image(tmp_path / "ok.jpg"), cut], [0, 0], ["a"])
    assert ds.skipped == [str(cut)]


def test_readable_files_give_no_warning(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}.png") for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageDataset(paths, [0, 0, 0], ["a"])
    assert ds.skipped == [] and ds.skip_reasons == {} and len(ds) == 3


def test_no_readable_file_raises(tmp_path: Path) -> None:
    bad = [write_corrupt(tmp_path / "a.png", "zero-bytes"), tmp_path / "missing.png"]
    with pytest.raises(ValueError, match="none of its 2 image files is readable"):
        ImageDataset(bad, [0, 0], ["a"])


def test_a_file_broken_after_the_build_raises_naming_it(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{i}.png", (40 * i, 0, 0)) for i in range(3)]
    ds = ImageDataset(paths, [0, 0, 1], ["a", "b"])
    paths[1].unlink()
    with pytest.raises(UnreadableImageError, match=r"1\.png.*changed since"):
        ds[1]
    write_corrupt(paths[2], "truncated-png")
    with pytest.raises(OSError, match=r"2\.png"):  # UnreadableImageError is an OSError
        ds[2]
    assert ds[0][1] == 0 and ds.skipped == []  # nothing substituted, nothing re-counted


def test_scan_false_reads_no_file(tmp_path: Path) -> None:
    ds = ImageDataset([tmp_path / "not-read.png"], [0], ["a"], scan=False)
    assert len(ds) == 1 and ds.skipped == []
    with pytest.raises(UnreadableImageError, match="not-read.png"):
        ds[0]


def test_a_class_without_items_breaks_neither_sampler_nor_nmi(tmp_path: Path) -> None:
    """Class 1 loses its only image: its name stays, the sampler and NMI see the other classes."""
    from diablo.evaluation import nmi
    from diablo.samplers import ClassBalancedSampler

    paths, labels = [], []
    for c in (0, 2, 3):
        for i in range(3):
            paths.append(write_image(tmp_path / f"{c}_{i}.png", (60 * c, 10 * i, 0)))
            labels.append(c)
    paths.append(write_corrupt(tmp_path / "1_0.jpg", "text-as-jpg"))
    labels.append(1)
    with pytest.warns(RuntimeWarning):
        ds = ImageDataset(paths, labels, ["c0", "c1", "c2", "c3"])
    assert ds.classes == ["c0", "c1", "c2", "c3"] and 1 not in ds.labels and len(ds) == 9
    sampler = ClassBalancedSampler(ds.labels, classes_per_batch=3, images_per_class=2, seed=0)
    batch = next(iter(sampler))
    assert sorted({ds.labels[i] for i in batch}) == [0, 2, 3]
    emb = np.eye(4, dtype=np.float32)[ds.labels]
    assert nmi(emb, np.array(ds.labels)) == pytest.approx(1.0)


def test_contiguous_labels() -> None:
    labels, keys = contiguous_labels([105, 3, 105, 42])
    assert labels == [2, 0, 2, 1] and keys == [3, 42, 105]
