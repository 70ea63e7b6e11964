"""The PNG downloads (app.lab.montage, png_bytes) and the helpers pages share."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from app import lab


def test_montage_png_round_trip():
    tiles = [np.full((32, 48, 3), v, dtype=np.uint8) for v in (0, 80, 160, 240, 255)]
    grid = lab.montage(tiles, ["a", "b", "c", "d", "✓ e"], columns=3, marks=[None, True, False, None, True], tile=40)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[1] == 3 * (40 + 6) + 6  # 3 columns
    decoded = Image.open(io.BytesIO(lab.png_bytes(grid)))
    assert decoded.format == "PNG" and decoded.size == (grid.shape[1], grid.shape[0])
    assert np.array_equal(np.asarray(decoded.convert("RGB")), grid)


def test_montage_of_nothing_is_a_blank_image():
    assert lab.montage([]).shape == (8, 8, 3)


def test_entry_colours_and_metrics_row():
    colours = lab.entry_colours(12)
    assert len(colours) == 12 and len(set(colours)) == 12 and all(c.startswith("#") and len(c) == 7 for c in colours)
    assert lab.metrics_row({"recall@1": 0.5, "map@r": None, "nmi": 0.25}) == {
        "Recall@1": "50.0", "MAP@R": "n/a", "NMI": "25.0"}


def test_gallery_spec_describes_itself_stably():
    a = lab.GallerySpec("synthetic", "test", None, (("num_classes", 6),))
    b = lab.GallerySpec("synthetic", "test", None, (("num_classes", 6),))
    assert a.describe() == b.describe() and hash(a) == hash(b)
    assert a.describe() != lab.GallerySpec("synthetic", "test", None, (("num_classes", 8),)).describe()
