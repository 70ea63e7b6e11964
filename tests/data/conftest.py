"""Small directory trees in the official dataset layouts, written into tmp folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, colour: tuple[int, int, int] = (120, 60, 30), size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


CORRUPTIONS = ("truncated-png", "truncated-jpeg", "zero-bytes", "text-as-jpg")
"""The kinds of unreadable file `write_corrupt` writes."""


def write_corrupt(path: Path, kind: str) -> Path:
    """An unreadable image file at `path` (its suffix is kept as given): a PNG or a JPEG cut in
    the middle of its pixel data, an empty file, or a text file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("truncated-png", "truncated-jpeg"):
        noise = np.random.default_rng(len(path.name)).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG" if kind == "truncated-png" else "JPEG")
        data = buffer.getvalue()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "text-as-jpg":
        path.write_text("this is a text file, not an image\n")
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return path


@pytest.fixture(autouse=True)
def _fresh_scan_cache(scan_cache: Path) -> Path:
    """Every data test caches its image scans in a fresh folder (`scan_cache`, tests/conftest.py)."""
    return scan_cache


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    """CUB_200_2011 with classes 1, 100 (train) and 101, 200 (test), 2 images each."""
    root = tmp_path / "CUB_200_2011"
    classes = {
        1: "001.Black_footed_Albatross",
        100: "100.Brown_Pelican",
        101: "101.White_Pelican",
        200: "200.Common_Yellowthroat",
    }
    images, labels = [], []
    k = 0
    for c, name in classes.items():
        for j in range(2):
            k += 1
            rel = f"{name}/{name.split('.')[1]}_{j}.jpg"
            write_image(root / "images" / rel, (c, 50, 50))
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{c} {n}" for c, n in classes.items()) + "\n")
    return root


@pytest.fixture
def cars_root(tmp_path: Path) -> Path:
    """cars_annos.mat (scipy.io.savemat) with classes 1, 98 (train) and 99, 196 (test)."""
    from scipy.io import savemat

    root = tmp_path / "cars"
    rows = [(1, 0), (1, 1), (98, 0), (99, 1), (99, 0), (196, 1)]  # (class, test flag): flags are ignored
    annos = np.zeros((1, len(rows)), dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    for i, (c, test) in enumerate(rows):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_image(root / rel, (c, 10, 10))
        annos[0, i] = (rel, np.array([[c]], dtype=np.uint8), np.array([[test]], dtype=np.uint8))
    names = np.array([f"Car model {k}" for k in range(1, 197)], dtype=object).reshape(1, -1)
    savemat(root / "cars_annos.mat", {"annotations": annos, "class_names": names})
    return root


@pytest.fixture
def sop_root(tmp_path: Path) -> Path:
    """Stanford_Online_Products with Ebay_train.txt / Ebay_test.txt."""
    root = tmp_path / "Stanford_Online_Products"
    split_rows = {
        "train": [
            (1, 1, "bicycle_final/111_0.JPG"),
            (1, 1, "bicycle_final/111_1.JPG"),
            (7, 2, "chair_final/777_0.JPG"),
        ],
        "test": [
            (11319, 1, "bicycle_final/900_0.JPG"),
            (11400, 3, "mug_final/950_0.JPG"),
            (11400, 3, "mug_final/950_1.JPG"),
        ],
    }
    k = 0
    for split, rows in split_rows.items():
        lines = ["image_id class_id super_class_id path"]
        for c, s, rel in rows:
            k += 1
            write_image(root / rel)
            lines.append(f"{k} {c} {s} {rel}")
        (root / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "train"),
    ("img/WOMEN/Dresses/id_00000001/01_2_side.jpg", "id_00000001", "train"),
    ("img/MEN/Denim/id_00000003/01_1_front.jpg", "id_00000003", "train"),
    ("img/WOMEN/Tees/id_00000007/01_1_front.jpg", "id_00000007", "query"),
    ("img/WOMEN/Tees/id_00000007/01_2_side.jpg", "id_00000007", "gallery"),
    ("img/MEN/Shirts/id_00000009/01_1_front.jpg", "id_00000009", "gallery"),
    ("img/MEN/Shirts/id_00000009/01_2_side.jpg", "id_00000009", "query"),
    ("img/MEN/Shirts/id_00000012/01_4_full.jpg", "id_00000012", "gallery"),
]


@pytest.fixture
def inshop_root(tmp_path: Path) -> Path:
    """In-Shop with Anno/list_eval_partition.txt (count, header, rows) and img/."""
    root = tmp_path / "inshop"
    lines = [str(len(INSHOP_ROWS)), "image_name item_id evaluation_status"]
    for rel, item, status in INSHOP_ROWS:
        write_image(root / rel)
        lines.append(f"{rel}    {item}    {status}")
    (root / "Anno").mkdir(parents=True)
    (root / "Anno" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Four class folders (mixed extension case, a nested folder, non-images and hidden files)."""
    root = tmp_path / "folder"
    write_image(root / "apple" / "a.JPG")
    write_image(root / "apple" / "b.png")
    write_image(root / "banana" / "nested" / "c.jpeg")
    write_image(root / "cherry" / "d.webp")
    write_image(root / "cherry" / "e.TIFF")
    write_image(root / "date" / "f.bmp")
    write_image(root / "date" / ".hidden.png")
    (root / "date" / "notes.txt").write_text("not an image")
    (root / "empty_class").mkdir()
    return root
