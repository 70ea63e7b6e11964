"""Class-per-subfolder datasets with a class-disjoint split."""

from __future__ import annotations

from pathlib import Path

import pytest

from diablo.data.folder import load_folder

from .conftest import CORRUPTIONS, write_corrupt, write_image


def test_splits_are_disjoint_halves_of_the_sorted_classes(class_folder: Path) -> None:
    train, test, every = (load_folder(class_folder, s) for s in ("train", "test", "all"))
    assert train.classes == ["apple", "banana"] and test.classes == ["cherry", "date"]
    assert every.classes == ["apple", "banana", "cherry", "date"]  # empty_class is ignored
    assert [Path(p).name for p in train.paths] == ["a.JPG", "b.png", "c.jpeg"]
    assert train.labels == [0, 0, 1]
    assert [Path(p).name for p in test.paths] == ["d.webp", "e.TIFF", "f.bmp"]  # no .hidden.png, notes.txt
    assert test.labels == [0, 0, 1]
    assert len(every) == len(train) + len(test)
    x, y = test[2]
    assert x.shape == (3, 30, 40) and y == 1


def test_odd_class_count_gives_the_extra_class_to_train(class_folder: Path) -> None:
    write_image(class_folder / "elderberry" / "g.png")
    assert len(load_folder(class_folder, "train").classes) == 3
    assert load_folder(class_folder, "test").classes == ["date", "elderberry"]


def test_errors(tmp_path: Path, class_folder: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found in"):
        load_folder(empty)
    with pytest.raises(FileNotFoundError):
        load_folder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        load_folder(None)
    with pytest.raises(ValueError, match="train, test, all"):
        load_folder(class_folder, "val")
    single = tmp_path / "single"
    write_image(single / "only" / "x.png")
    with pytest.raises(ValueError, match="at least 2"):
        load_folder(single, "train")
    assert len(load_folder(single, "all")) == 1


def test_unreadable_files_are_dropped_and_the_split_kept(class_folder: Path) -> None:
    before = {s: load_folder(class_folder, s) for s in ("train", "test")}
    for i, kind in enumerate(CORRUPTIONS):
        write_corrupt(class_folder / "cherry" / f"broken{i}.{'png' if 'png' in kind else 'jpg'}", kind)
    write_corrupt(class_folder / "banana" / "nested" / "c.jpeg", "truncated-jpeg")  # banana's only image
    with pytest.warns(RuntimeWarning, match="folder/test: dropped 4 unreadable"):
        test = load_folder(class_folder, "test")
    assert test.paths == before["test"].paths and test.labels == before["test"].labels
    assert sorted(Path(p).name for p in test.skipped) == ["broken0.png", "broken1.jpg", "broken2.jpg", "broken3.jpg"]
    with pytest.warns(RuntimeWarning, match="c.jpeg"):
        train = load_folder(class_folder, "train")
    assert train.classes == ["apple", "banana"]  # banana keeps its place and label, with no items
    assert train.labels == [0, 0] and [Path(p).name for p in train.skipped] == ["c.jpeg"]
