"""Image decoding: any file or uploaded bytes to an upright 8-bit RGB PIL image.

`open_image` is what the datasets use; `decode_upload` is the stricter variant for bytes
coming from a user (the app's upload widget). Both apply the EXIF orientation, flatten
transparency onto white, map 16-bit and float images to 8 bits, and refuse decompression
bombs with a ValueError instead of PIL's own error.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MIN_UPLOAD_SIDE", "decode_upload", "open_image", "to_rgb"]

MIN_UPLOAD_SIDE = 16
"""Uploads with a side shorter than this many pixels are refused."""


def _max_pixels(max_pixels: int | None) -> int | None:
    """The effective limit: PIL's MAX_IMAGE_PIXELS, lowered to `max_pixels` if given."""
    limits = [x for x in (Image.MAX_IMAGE_PIXELS, max_pixels) if x is not None]
    return min(limits) if limits else None


def _bomb_message(name: str, size: tuple[int, int] | None, limit: int | None) -> str:
    dims = f" ({size[0]} x {size[1]} pixels)" if size else ""
    return (
        f"{name}: refused as a possible decompression bomb{dims}, above the limit of "
        f"{limit} pixels (raise PIL.Image.MAX_IMAGE_PIXELS if the image is genuine)"
    )


def _to_8bit(img: Image.Image) -> Image.Image:
    """Map integer (16/32-bit) and float single-channel images to mode 'L'."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8)
    elif img.mode == "I":
        a = np.clip(arr.astype(np.int64), 0, 65535)
        arr8 = (a >> 8 if a.max(initial=0) > 255 else a).astype(np.uint8)
    else:  # "F"
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if a.max(initial=0.0) <= 1.0:
            a = a * 255.0
        arr8 = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to RGB (transparency composited on white)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _to_8bit(img).convert("RGB")
    if img.mode == "P" or img.mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        has_alpha = img.mode != "P" or "transparency" in img.info
        if has_alpha:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _decode(source: str | os.PathLike | BinaryIO, name: str, max_pixels: int | None) -> Image.Image:
    limit = _max_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if limit is not None and img.size[0] * img.size[1] > limit:
                    raise ValueError(_bomb_message(name, img.size, limit))
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(_bomb_message(name, None, limit)) from err


def open_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Read an image file as an upright RGB PIL image.

    Raises FileNotFoundError for a missing file, ValueError for a decompression bomb (more
    pixels than `PIL.Image.MAX_IMAGE_PIXELS`, or than `max_pixels` if lower), and PIL's errors
    (`UnidentifiedImageError`, `OSError`) for unreadable or truncated files.
    """
    return _decode(os.fspath(path), os.fspath(path), max_pixels)


def decode_upload(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode uploaded bytes to an upright RGB image, or raise ValueError with a one-line reason.

    Refused: empty data, data that is not an image, truncated files, decompression bombs and
    images with a side under `MIN_UPLOAD_SIDE` pixels.
    """
    if not data:
        raise ValueError("the upload is empty")
    try:
        img = _decode(io.BytesIO(data), "the upload", max_pixels)  # a ValueError passes through
    except UnidentifiedImageError as err:
        raise ValueError("the upload is not an image in a format PIL can read") from err
    except (OSError, SyntaxError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"the upload is truncated or corrupt ({reason})") from err
    if min(img.size) < MIN_UPLOAD_SIDE:
        raise ValueError(
            f"the upload is too small ({img.size[0]} x {img.size[1]} pixels; "
            f"each side needs at least {MIN_UPLOAD_SIDE})"
        )
    return img
