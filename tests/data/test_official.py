"""CUB, Cars, SOP and In-Shop loaders on small trees in the official layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from diablo.data import official
from diablo.data.official import load_cars, load_cub, load_inshop, load_sop

from .conftest import write_corrupt


# ---------------------------------------------------------------------------- CUB
def test_cub_splits_by_class(cub_root: Path) -> None:
    train, test = load_cub(cub_root, "train"), load_cub(cub_root, "test")
    assert train.labels == [0, 0, 1, 1] and test.labels == [0, 0, 1, 1]
    assert train.classes == ["001.Black_footed_Albatross", "100.Brown_Pelican"]
    assert test.classes == ["101.White_Pelican", "200.Common_Yellowthroat"]
    assert all(Path(p).is_file() for p in train.paths + test.paths)
    assert set(train.paths).isdisjoint(test.paths)
    x, y = test[3]
    assert x.shape[0] == 3 and y == 1


def test_cub_accepts_the_parent_folder(cub_root: Path) -> None:
    assert len(load_cub(cub_root.parent, "train")) == 4


def test_cub_missing_files_are_named(cub_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="needs root="):
        load_cub(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cub(cub_root / "nowhere")
    (cub_root / "images" / "101.White_Pelican" / "White_Pelican_1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="White_Pelican_1.jpg"):
        load_cub(cub_root, "test")
    assert len(load_cub(cub_root, "train")) == 4  # the train split is complete
    with pytest.warns(RuntimeWarning, match="White_Pelican_1.jpg"):  # without the check: dropped
        test = load_cub(cub_root, "test", check_files=False)
    assert len(test) == 3 and test.labels == [0, 1, 1] and Path(test.skipped[0]).name == "White_Pelican_1.jpg"
    (cub_root / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match="image_class_labels.txt"):
        load_cub(cub_root)


def test_cub_unknown_split(cub_root: Path) -> None:
    with pytest.raises(ValueError, match="train, test"):
        load_cub(cub_root, "val")


def test_full_size_index_is_checked(cub_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the official CUB has 8 images: the tree then counts as "full" and is checked.
    monkeypatch.setitem(official.OFFICIAL_SIZES, "cub", {"total": (4, 8), "train": (2, 4), "test": (2, 4)})
    assert len(load_cub(cub_root, "train")) == 4
    monkeypatch.setitem(official.OFFICIAL_SIZES, "cub", {"total": (4, 8), "train": (2, 5), "test": (2, 3)})
    with pytest.raises(ValueError, match="official split has 5 images"):
        load_cub(cub_root, "train")
    # a partial tree (row count differs from the official total) is not checked
    monkeypatch.setitem(official.OFFICIAL_SIZES, "cub", {"total": (4, 9), "train": (2, 5), "test": (2, 4)})
    assert len(load_cub(cub_root, "train")) == 4


# --------------------------------------------------------------------------- Cars
def test_cars_splits_by_class_not_by_test_flag(cars_root: Path) -> None:
    train, test = load_cars(cars_root, "train"), load_cars(cars_root, "test")
    assert train.labels == [0, 0, 1] and train.classes == ["Car model 1", "Car model 98"]
    assert test.labels == [0, 0, 1] and test.classes == ["Car model 99", "Car model 196"]
    assert Path(train.paths[0]).name == "000001.jpg" and Path(test.paths[-1]).name == "000006.jpg"
    assert train[2][1] == 1


def test_cars_missing_mat(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cars_annos.mat"):
        load_cars(tmp_path)


def test_cars_full_size_check(cars_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(official.OFFICIAL_SIZES, "cars", {"total": (4, 6), "train": (2, 4), "test": (2, 2)})
    with pytest.raises(ValueError, match="official split"):
        load_cars(cars_root, "train")


# ---------------------------------------------------------------------------- SOP
def test_sop_reads_both_index_files(sop_root: Path) -> None:
    train, test = load_sop(sop_root, "train"), load_sop(sop_root, "test")
    assert train.labels == [0, 0, 1] and train.classes == ["bicycle_final/1", "chair_final/7"]
    assert test.labels == [0, 1, 1] and test.classes == ["bicycle_final/11319", "mug_final/11400"]
    assert set(train.classes).isdisjoint(test.classes)
    (sop_root / "Ebay_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="Ebay_test.txt"):
        load_sop(sop_root, "test")


def test_sop_full_size_check(sop_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(official.OFFICIAL_SIZES, "sop", {"train": (3, 3), "test": (2, 3)})
    with pytest.raises(ValueError, match="3 classes"):
        load_sop(sop_root, "train")
    assert len(load_sop(sop_root, "test")) == 3


# ------------------------------------------------------------------------- In-Shop
def test_inshop_query_and_gallery_share_labels(inshop_root: Path) -> None:
    train = load_inshop(inshop_root, "train")
    query, gallery = load_inshop(inshop_root, "query"), load_inshop(inshop_root, "gallery")
    assert train.labels == [0, 0, 1] and train.classes == ["id_00000001", "id_00000003"]
    assert query.classes == gallery.classes == ["id_00000007", "id_00000009", "id_00000012"]
    assert query.labels == [0, 1] and gallery.labels == [0, 1, 2]
    assert Path(query.paths[1]).parts[-2:] == ("id_00000009", "01_2_side.jpg")
    assert set(train.classes).isdisjoint(query.classes)
    with pytest.raises(ValueError, match="train, query, gallery"):
        load_inshop(inshop_root, "test")


def test_inshop_eval_folder_and_img_folder_variants(inshop_root: Path) -> None:
    (inshop_root / "Eval").mkdir()
    (inshop_root / "Anno" / "list_eval_partition.txt").rename(inshop_root / "Eval" / "list_eval_partition.txt")
    (inshop_root / "Img").mkdir()
    (inshop_root / "img").rename(inshop_root / "Img" / "img")
    gallery = load_inshop(inshop_root, "gallery")
    assert len(gallery) == 3 and all(Path(p).is_file() for p in gallery.paths)


def test_inshop_checks(inshop_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = inshop_root / "Anno" / "list_eval_partition.txt"
    lines = index.read_text().splitlines()
    index.write_text("\n".join(["99", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="declares 99 rows"):
        load_inshop(inshop_root, "train")
    index.write_text("\n".join(lines) + "\n")
    monkeypatch.setitem(
        official.OFFICIAL_SIZES,
        "inshop",
        {"total": (5, 8), "train": (2, 3), "query": (3, 2), "gallery": (3, 4)},
    )
    assert len(load_inshop(inshop_root, "query")) == 2
    with pytest.raises(ValueError, match="official split has 4 images"):
        load_inshop(inshop_root, "gallery")
    index.unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        load_inshop(inshop_root, "train")


# --------------------------------------------------------------- unreadable images
@pytest.mark.parametrize(
    ("loader", "root", "split", "victim", "kept_labels"),
    [
        (load_cub, "cub_root", "test", "images/200.Common_Yellowthroat/Common_Yellowthroat_0.jpg", [0, 0, 1]),
        (load_cars, "cars_root", "test", "car_ims/000005.jpg", [0, 1]),
        (load_sop, "sop_root", "test", "mug_final/950_0.JPG", [0, 1]),
        (load_inshop, "inshop_root", "gallery", "img/WOMEN/Tees/id_00000007/01_2_side.jpg", [1, 2]),
    ],
)
def test_an_unreadable_listed_image_is_dropped(
    loader, root: str, split: str, victim: str, kept_labels: list[int], request: pytest.FixtureRequest
) -> None:
    base = request.getfixturevalue(root)
    full = loader(base, split)
    write_corrupt(base / victim, "truncated-jpeg")
    with pytest.warns(RuntimeWarning, match="dropped 1 unreadable image file"):
        data = loader(base, split)
    assert data.skipped == [str(base / victim)]
    assert data.paths == [p for p in full.paths if p != str(base / victim)]
    assert data.labels == kept_labels and data.classes == full.classes
