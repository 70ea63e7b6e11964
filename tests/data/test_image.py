"""Decoding: EXIF orientation, mode conversion, bombs, and upload validation."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diablo.data.image import MIN_UPLOAD_SIDE, decode_upload, open_image


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width: int = 40000, height: int = 40000) -> bytes:
    """A tiny PNG whose header claims a huge 1-bit image (no pixel data is ever allocated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 40 x 20: left half red, right half blue. Orientation 6 = rotate 90 degrees clockwise.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    img = open_image(path)
    assert img.mode == "RGB"
    assert img.size == (20, 40)  # upright: portrait
    top, bottom = np.asarray(img)[5, 10], np.asarray(img)[35, 10]
    assert top[0] > 200 and top[2] < 60, top  # the stored left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_cmyk_decodes_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    img = open_image(path)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img)[16, 16]
    assert r > 200 and g < 60 and b < 60


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[:, :8] = (255, 0, 0, 255)  # opaque red
    arr[:, 8:] = (0, 0, 0, 0)  # fully transparent black
    path = tmp_path / "alpha.png"
    Image.fromarray(arr, mode="RGBA").save(path)
    out = np.asarray(open_image(path))
    assert tuple(out[4, 2]) == (255, 0, 0)
    assert tuple(out[4, 12]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1"])
def test_other_modes_decode_to_rgb(tmp_path: Path, mode: str) -> None:
    img = Image.new("RGB", (20, 20), (200, 200, 200)).convert(mode)
    path = tmp_path / f"img_{mode}.png"
    img.save(path)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (20, 20)


def test_palette_transparency_is_white(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.info["transparency"] = 0
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    assert tuple(np.asarray(open_image(path))[5, 5]) == (255, 255, 255)


def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0).repeat(4, axis=1)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(open_image(path))
    assert out.shape == (4, 16, 3)
    assert list(out[0, ::4, 0]) == [0, 3, 128, 255]


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png())
    with pytest.raises(ValueError, match="decompression bomb"):
        open_image(path)
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_upload(path.read_bytes())
    # An ordinary image above a lowered limit is refused as well (PIL's limit is honoured).
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="decompression bomb"):
        open_image(small)
    monkeypatch.undo()
    assert open_image(small).size == (100, 100)
    with pytest.raises(ValueError, match="decompression bomb"):
        open_image(small, max_pixels=5000)


def test_corrupt_file_raises_for_open_image(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"definitely not a jpeg")
    with pytest.raises(OSError):
        open_image(path)


def test_decode_upload_accepts_a_valid_image() -> None:
    img = decode_upload(_png_bytes(Image.new("RGBA", (64, 48), (0, 255, 0, 255))))
    assert img.mode == "RGB" and img.size == (64, 48)


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="JPEG")
    data = buf.getvalue()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is text" * 10, "not an image"),
        (_truncated_jpeg(), "truncated"),
        (_png_bytes(Image.new("RGB", (MIN_UPLOAD_SIDE - 1, 64))), "too small"),
        (_bomb_png(), "decompression bomb"),
    ],
)
def test_decode_upload_refuses_bad_input(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        decode_upload(data)
    assert "\n" not in str(info.value)
