"""Fashion-MNIST from the Debian package, and the idx parser on a small fake copy."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from diablo.data import fashion_mnist
from diablo.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28))
        images[:, 0, 0] = labels  # mark each image with its label
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
    return tmp_path


def test_split_by_class_on_a_fake_copy(fake_root: Path) -> None:
    train = load_fashion_mnist(fake_root, "train")
    test = load_fashion_mnist(fake_root, "test", per_class=2)
    assert len(train) == 30 and sorted(set(train.labels)) == [0, 1, 2, 3, 4]
    assert train.classes == list(FASHION_MNIST_CLASSES[:5]) and test.classes == list(FASHION_MNIST_CLASSES[5:])
    assert len(test) == 10 and test.labels == [0, 1, 2, 3, 4] * 2
    for i in range(len(test)):
        assert int(np.asarray(test.image(i))[0, 0, 0]) == test.labels[i] + 5  # label matches the pixels
    assert test.image(0).mode == "RGB" and test.image(0).size == (28, 28)
    x, y = test[0]
    assert x.shape == (3, 28, 28)
    assert "t10k-images" in test.paths[-1] or "train-images" in test.paths[-1]


def test_missing_files_say_how_to_install(tmp_path: Path) -> None:
    fashion_mnist._arrays.cache_clear()
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="train, test, all"):
        load_fashion_mnist(tmp_path, "val")


def test_the_debian_package() -> None:
    train = load_fashion_mnist(split="train", per_class=20)
    test = load_fashion_mnist(split="test", per_class=20)
    assert len(train) == 100 and len(test) == 100
    assert train.labels.count(0) == 20 and test.classes[0] == "Sandal"
    assert len(load_fashion_mnist(split="all")) == 70000
    pixels = np.asarray(test.image(0))
    assert pixels.shape == (28, 28, 3) and pixels.std() > 10  # a real picture, not blank
