"""diablo.overlay: heat maps and attention drawn over images, the arg-max assignment and its palette."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diablo import overlay


def photo(height: int = 48, width: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_overlay_shapes_and_opacity() -> None:
    image = photo()
    heat = np.random.default_rng(1).random((6, 5))
    out = overlay.overlay(image, heat, "viridis", 0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert np.array_equal(overlay.overlay(image, heat, "jet", 0.0), image)
    full = overlay.overlay(image, np.zeros((3, 3)), "jet", 1.0)  # jet(0) is dark blue, whatever the image
    assert (full == full[0, 0]).all()
    assert full[0, 0, 2] > 100 and full[0, 0, 0] == 0 and full[0, 0, 1] == 0
    grey = overlay.overlay(image[..., 0], heat, "jet", 0.3)
    assert grey.shape == image.shape


def test_overlay_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="viridis"):  # the message lists the choices
        overlay.overlay(photo(), np.zeros((4, 4)), "no-such-map")
    with pytest.raises(ValueError, match="opacity"):
        overlay.overlay(photo(), np.zeros((4, 4)), opacity=1.5)
    with pytest.raises(ValueError, match="uint8"):
        overlay.overlay(photo().astype(np.float32), np.zeros((4, 4)))


def random_attention(entries: int = 5, channels: int = 3, size: int = 4, seed: int = 0) -> torch.Tensor:
    """(N, c, h, w) weights summing to 1 over N."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(entries, channels, size, size, generator=g), dim=0)


def test_attention_overlays() -> None:
    image, attention = photo(), random_attention()
    overlays = overlay.attention_overlays(image, attention, opacity=0.6)
    assert len(overlays) == 5
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in overlays)
    assert not np.array_equal(overlays[0], overlays[1])
    mean = overlay.overlay(image, attention[2].mean(0).numpy(), "jet", 0.6)
    assert np.array_equal(overlays[2], mean)
    one = overlay.attention_overlays(image, attention, channel=1, opacity=0.6)
    assert np.array_equal(one[2], overlay.overlay(image, attention[2, 1].numpy(), "jet", 0.6))
    with pytest.raises(ValueError, match="channel"):
        overlay.attention_overlays(image, attention, channel=3)


def test_assignment_map_is_argmax() -> None:
    attention = random_attention()
    labels = overlay.assignment_map(attention)
    assert labels.shape == (4, 4)
    assert np.array_equal(labels, attention.mean(1).argmax(0).numpy())
    assert np.array_equal(overlay.assignment_map(attention, channel=2), attention[:, 2].argmax(0).numpy())
    feature_wise = random_attention(channels=1)
    assert np.array_equal(overlay.assignment_map(feature_wise), feature_wise[:, 0].argmax(0).numpy())


def test_assignment_colours_and_overlay() -> None:
    colours = overlay.assignment_colours(30)
    assert colours.shape == (30, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 30
    assert np.array_equal(overlay.assignment_colours(5), colours[:5])
    attention = random_attention()
    out = overlay.assignment_overlay(photo(8, 8), attention, opacity=1.0)
    labels = overlay.assignment_map(attention)  # (4, 4), each a 2 x 2 block of the 8 x 8 image
    assert np.array_equal(out[::2, ::2], colours[labels])
