"""One torch thread per test process (on a shared 2-core machine more threads spin and slow down),
and the tiny folder dataset of the training tests."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> Path:
    """Eight classes of 6 small images: a colour per class plus noise; classes 0-3 train, 4-7 test."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(8):
        (root / f"class{c}").mkdir()
        colour = rng.integers(0, 255, 3)
        for i in range(6):
            pixels = np.clip(colour + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture
def scan_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $DIABLO_CACHE: the image scan caches nothing in the user's folder."""
    root = tmp_path_factory.mktemp("diablo-cache")
    monkeypatch.setenv("DIABLO_CACHE", str(root))
    return root
