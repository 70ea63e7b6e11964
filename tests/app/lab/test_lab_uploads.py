"""The upload decoding every page's picker calls (app.lab.uploads.read_upload), on hostile and odd bytes."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from lab_testing import png
from PIL import Image

from app.lab.uploads import read_upload


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one tiny compressed row (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 definitely not an image", "not an image"),
        (png((64, 64))[:120], "truncated"),
        (_png_header_only(40_000, 40_000), "decompression bomb"),
        (png((10, 64)), "too small"),
    ],
    ids=["empty", "not-an-image", "truncated", "bomb", "tiny"],
)
def test_refused_with_a_reason(data, reason):
    with pytest.raises(ValueError, match=reason):
        read_upload(data)


@pytest.mark.parametrize(
    ("mode", "fmt", "converted"),
    [("I;16", "PNG", "I;16"), ("CMYK", "JPEG", "CMYK"), ("RGBA", "PNG", "RGBA"), ("L", "PNG", "L"),
     ("P", "PNG", "P"), ("RGB", "JPEG", None)],
)
def test_converted_to_rgb(mode, fmt, converted):
    upload = read_upload(png((40, 32), mode, fmt))
    assert upload.image.mode == "RGB" and upload.image.size == (40, 32)
    assert upload.note.startswith("40 x 32 pixels")
    if converted:
        assert upload.changes == (f"converted from {converted} to RGB" + (
            " (transparency flattened onto white)" if converted == "RGBA" else ""),)
    else:
        assert upload.changes == ()


def test_exif_rotation_is_applied():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.new("RGB", (60, 30), "red").save(buffer, format="JPEG", exif=exif)
    upload = read_upload(buffer.getvalue())
    assert upload.image.size == (30, 60)
    assert upload.changes == ("turned upright by its EXIF orientation (6)",)
