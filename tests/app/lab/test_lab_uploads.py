"""The upload decoding every page's picker calls (app.lab.uploads.read_upload), on hostile and odd bytes."""

from __future__ import annotations

import io

import pytest
from bad_images import BOMB_SIDE, png_header_only
from lab_testing import png
from PIL import Image

from app.lab.uploads import read_upload


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 definitely not an image", "not an image"),
        (png((64, 64))[:120], "truncated"),
        (png_header_only(BOMB_SIDE, BOMB_SIDE), "decompression bomb"),
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
