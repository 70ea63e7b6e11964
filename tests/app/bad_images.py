"""The bad-image corpus the lab is fed in tests: refused files, files that need converting, and a
symlink loop for gallery folders (kept out of conftest.py so that test modules import it by name)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from lab_testing import png
from PIL import Image

BOMB_SIDE = 30_000  # the decompression bomb's declared width and height


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one tiny compressed row: a decompression bomb of a few
    dozen bytes (nothing that big is ever allocated unless a decoder believes the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def exif_rotated(size: tuple[int, int] = (60, 30), orientation: int = 6) -> bytes:
    """A JPEG whose EXIF orientation says to turn it on display (6: 90 degrees clockwise)."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", size, "red").save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    """One corpus file, what an upload of it shows, and whether a gallery folder can read it."""

    name: str  # file name (its suffix makes gallery folders list it)
    data: bytes
    upload: str  # "error" (refused) or "warning" (converted, then used)
    says: str  # a phrase the upload's message contains
    readable: bool  # can a gallery folder show it


CORPUS = [
    Case("truncated.png", png((64, 64))[:200], "error", "truncated", False),
    Case("not-an-image.png", b"%PDF-1.4 a document, not an image", "error", "not an image", False),
    Case("deep.png", png((48, 40), "I;16"), "warning", "converted from I;16 to RGB", True),
    Case("cmyk.jpg", png((48, 40), "CMYK", "JPEG"), "warning", "converted from CMYK to RGB", True),
    Case("rgba.png", png((48, 40), "RGBA"), "warning", "converted from RGBA to RGB", True),
    Case("palette.png", png((48, 40), "P"), "warning", "converted from P to RGB", True),
    Case("grey.png", png((48, 40), "L"), "warning", "converted from L to RGB", True),
    Case("one-pixel.png", png((1, 1)), "error", "too small", True),
    Case("bomb.png", png_header_only(BOMB_SIDE, BOMB_SIDE), "error", "decompression bomb", False),
    Case("rotated.jpg", exif_rotated(), "warning", "EXIF orientation", True),
    Case("zero-bytes.png", b"", "error", "empty", False),
]


def image_folder(root: Path, bad: list[Case], good_per_class: int = 3, loop: bool = False) -> Path:
    """A gallery folder of two classes with `good_per_class` plain images each, the `bad` files in class
    "b" (named to sort after the good ones, so last in the gallery) and, with `loop`, a file symlink that
    points at itself and a folder symlink to its own parent in class "b" too."""
    root.mkdir(parents=True)
    for label in ("a", "b"):
        (root / label).mkdir()
        for i in range(good_per_class):
            (root / label / f"good-{i}.png").write_bytes(png((40 + 8 * i, 40)))
    for case in bad:
        (root / "b" / f"z-{case.name}").write_bytes(case.data)
    if loop:
        os.symlink("z-loop.png", root / "b" / "z-loop.png")  # ELOOP when opened
        os.symlink("..", root / "b" / "z-up")  # b/z-up/b/z-up/... a directory loop
    return root
