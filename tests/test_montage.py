"""diablo.montage: the grids and PNG bytes of the lab's downloads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from diablo.montage import PAD, RIGHT, WRONG, montage, png_bytes


def test_grid_size_and_png_round_trip():
    tiles = [np.full((32, 48, 3), v, dtype=np.uint8) for v in (0, 80, 160, 240, 255)]
    grid = montage(tiles, ["a", "b", "c", "d", "✓ e"], columns=3, marks=[None, True, False, None, True], tile=40)
    assert grid.dtype == np.uint8 and grid.shape == (2 * (40 + 18 + PAD) + PAD, 3 * (40 + PAD) + PAD, 3)
    decoded = Image.open(io.BytesIO(png_bytes(grid)))
    assert decoded.format == "PNG" and decoded.size == (grid.shape[1], grid.shape[0])
    assert np.array_equal(np.asarray(decoded.convert("RGB")), grid)


def test_tiles_keep_their_pixels_and_marks_frame_them():
    red = np.zeros((40, 40, 3), dtype=np.uint8)
    red[..., 0] = 255
    grid = montage([red, red, red], columns=3, marks=[True, False, None], tile=40)
    assert np.array_equal(grid[PAD + 10, PAD + 10], [255, 0, 0])  # inside the first tile
    assert tuple(grid[PAD - 2, PAD + 20]) == RIGHT  # the frame above the first tile
    assert tuple(grid[PAD - 2, PAD + 46 + 20]) == WRONG
    assert tuple(grid[PAD - 2, PAD + 2 * 46 + 20]) == (255, 255, 255)  # no mark, no frame


def test_grey_and_rgba_tiles_and_nothing():
    grid = montage([np.full((10, 20), 7, dtype=np.uint8), np.full((20, 10, 4), 9, dtype=np.uint8)], tile=20)
    assert grid[PAD + 2, PAD + 2].tolist() == [7, 7, 7]
    assert grid[PAD + 2, PAD + 26 + 2].tolist() == [9, 9, 9]
    assert montage([]).shape == (8, 8, 3)


def test_mismatched_captions_or_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="captions"):
        montage([np.zeros((4, 4, 3), np.uint8)], ["a", "b"])
    with pytest.raises(ValueError, match="image"):
        png_bytes(np.zeros((4, 4, 2), np.uint8))
