"""The package front door: load_dataset, DATASETS, K_LIST, build_transform."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import diablo.data as data
from diablo.data import DATASETS, K_LIST, SPLITS, build_transform, load_dataset

SMALL = {"num_classes": 4, "images_per_class": 2, "resolution": 48, "group_size": 2}


def test_registry() -> None:
    assert DATASETS == ("cub", "cars", "sop", "inshop", "folder", "fashion-mnist", "synthetic")
    assert set(K_LIST) == set(DATASETS) == set(SPLITS)
    assert K_LIST["cub"] == K_LIST["cars"] == (1, 2, 4, 8, 16, 32)
    assert K_LIST["sop"] == (1, 10, 100, 1000) and K_LIST["inshop"] == (1, 10, 20, 30, 40, 50)
    assert K_LIST["synthetic"] == (1, 2, 4, 8)
    assert callable(build_transform) and callable(data.decode_upload) and callable(data.open_image)


def test_k_list_and_default_image_size() -> None:
    assert data.k_list("cub") == K_LIST["cub"] and data.k_list("SOP") == (1, 10, 100, 1000)
    assert data.k_list("fashion_mnist") == K_LIST["fashion-mnist"]
    assert data.k_list("elsewhere") == data.DEFAULT_KS == (1, 2, 4, 8)
    assert data.default_image_size("cub") == 256 and data.default_image_size("fashion-mnist") == 64
    assert data.default_image_size("synthetic") == 128 and data.default_image_size("synthetic", 48) == 48
    with pytest.raises(ValueError, match="unknown dataset"):
        data.default_image_size("imagenet")


def test_unknown_name_split_or_option() -> None:
    with pytest.raises(ValueError, match="cub, cars, sop, inshop, folder, fashion-mnist, synthetic"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="train, query, gallery"):
        load_dataset("inshop", split="test")
    with pytest.raises(ValueError, match="train, test"):
        load_dataset("cub", split="query")
    with pytest.raises(TypeError, match="per_class"):
        load_dataset("fashion-mnist", color=True)


def test_missing_root_says_what_to_provide() -> None:
    for name in ("cub", "cars", "sop", "inshop"):
        with pytest.raises(FileNotFoundError, match="root="):
            load_dataset(name)
    with pytest.raises(FileNotFoundError):
        load_dataset("folder")


def test_every_dataset_exposes_labels_and_classes(
    tmp_path: Path, cub_root: Path, cars_root: Path, sop_root: Path, inshop_root: Path, class_folder: Path
) -> None:
    roots = {"cub": cub_root, "cars": cars_root, "sop": sop_root, "inshop": inshop_root, "folder": class_folder}
    for name, root in roots.items():
        for split in SPLITS[name]:
            if split == "all":
                continue
            ds = load_dataset(name, split=split, root=root, image_size=32)
            assert len(ds.labels) == len(ds) == len(ds.paths) > 0, (name, split)
            assert sorted(set(ds.labels)) == list(range(len(set(ds.labels))))
            assert max(ds.labels) < len(ds.classes)
            x, y = ds[0]
            assert x.shape == (3, 32, 32) and y == ds.labels[0]
    ds = load_dataset("synthetic", split="test", root=tmp_path, **SMALL)
    assert ds.classes and len(ds.labels) == 4
    x, _ = ds[0]
    assert x.shape == (3, 48, 48)  # default size = the generated resolution


def test_default_transform_follows_the_split(class_folder: Path) -> None:
    train = load_dataset("folder", "train", root=class_folder, image_size=24)
    test = load_dataset("folder", "test", root=class_folder, image_size=24)
    torch.manual_seed(0)
    assert train[0][0].shape == (3, 24, 24)
    assert torch.equal(test[0][0], test[0][0])  # the test transform is deterministic
    raw = load_dataset("folder", "all", root=class_folder, transform=lambda img: img.size)
    assert raw[0][0] == (40, 30)
