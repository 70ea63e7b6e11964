"""Image grids and PNG bytes for downloads: pure numpy / OpenCV helpers (no Streamlit).

`montage` lays out RGB tiles in a grid with a short ASCII caption under each and an optional
green / red frame (a right / wrong retrieval result); `png_bytes` encodes an RGB image as a PNG
file. The lab's download buttons use both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["montage", "png_bytes"]

PAD = 6  # pixels around each tile
CAPTION_HEIGHT = 18  # pixels under each tile when there are captions
CAPTION_CHARS = 28  # longer captions are cut
RIGHT, WRONG = (40, 160, 60), (210, 40, 40)  # RGB frame colours of marked tiles


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3) uint8 (alpha dropped)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or 0 in img.shape[:2]:
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def montage(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    columns: int = 8,
    marks: Sequence[bool | None] | None = None,
    tile: int = 160,
) -> np.ndarray:
    """One (H, W, 3) uint8 image: the images as a grid of `tile`-pixel tiles (aspect kept), `columns`
    wide, with each caption (ASCII, cut at 28 characters) below its tile.

    marks: per image, a green (True) or red (False) frame, none for None. An empty list gives a
    blank 8 x 8 image.
    """
    if not images:
        return np.full((8, 8, 3), 255, dtype=np.uint8)
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if marks is not None and len(marks) != len(images):
        raise ValueError(f"{len(images)} images but {len(marks)} marks")
    columns = max(1, min(int(columns), len(images)))
    rows = math.ceil(len(images) / columns)
    caption_h = CAPTION_HEIGHT if captions else 0
    cell_w, cell_h = tile + PAD, tile + caption_h + PAD
    canvas = np.full((rows * cell_h + PAD, columns * cell_w + PAD, 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        y, x = PAD + r * cell_h, PAD + c * cell_w
        img = _rgb(image)
        scale = tile / max(img.shape[:2])
        h, w = max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale))
        canvas[y : y + h, x : x + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST)
        mark = None if marks is None else marks[k]
        if mark is not None:
            cv2.rectangle(canvas, (x - 2, y - 2), (x + w + 1, y + h + 1), RIGHT if mark else WRONG, 3)
        if captions:
            text = str(captions[k]).encode("ascii", "replace").decode()
            cv2.putText(canvas, text[:CAPTION_CHARS], (x, y + tile + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (20, 20, 20), 1, cv2.LINE_AA)
    return canvas


def png_bytes(image: np.ndarray) -> bytes:
    """PNG file bytes of an RGB image (any shape `montage` accepts)."""
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()
