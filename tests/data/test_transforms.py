"""The paper's train and test transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diablo.data.transforms import IMAGENET_MEAN, RandomResize, build_transform, denormalize


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(300, 200), (50, 40), (64, 256)])
def test_train_transform_gives_crops_of_the_right_size(size: tuple[int, int]) -> None:
    t = build_transform(train=True, image_size=64)
    for _ in range(5):
        x = t(_noise(*size))
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32


def test_random_resize_draws_between_0_8_and_1_8_of_the_crop() -> None:
    rr = RandomResize(100)
    torch.manual_seed(0)
    sizes = [rr.size() for _ in range(400)]
    assert min(sizes) >= 80 and max(sizes) <= 180
    assert min(sizes) < 85 and max(sizes) > 175  # spans the whole range
    img = _noise(300, 150)
    out = rr(img)
    assert min(out.size) in range(80, 181) and abs(out.size[0] / out.size[1] - 2) < 0.05
    square = RandomResize(100, square=True)(img)
    assert square.size[0] == square.size[1]
    with pytest.raises(ValueError):
        RandomResize(100, scale=(1.5, 1.0))


def test_train_transform_is_seeded_by_torch() -> None:
    t = build_transform(train=True, image_size=48)
    img = _noise(120, 90)
    torch.manual_seed(123)
    a = [t(img) for _ in range(3)]
    torch.manual_seed(123)
    b = [t(img) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])


def test_test_transform_is_a_deterministic_square_resize() -> None:
    t = build_transform(train=False, image_size=32)
    img = _noise(90, 60)
    x = t(img)
    assert x.shape == (3, 32, 32) and torch.equal(x, t(img))


def test_normalisation_uses_imagenet_statistics() -> None:
    mean_colour = tuple(round(255 * m) for m in IMAGENET_MEAN)
    x = build_transform(train=False, image_size=16)(Image.new("RGB", (20, 20), mean_colour))
    assert x.abs().max() < 0.02
    white = build_transform(train=False, image_size=16)(Image.new("RGB", (20, 20), (255, 255, 255)))
    assert torch.allclose(denormalize(white), torch.ones_like(white), atol=1e-5)
