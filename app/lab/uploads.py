"""Uploaded bytes to an RGB image the models can use, or a one-line reason why not."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import streamlit as st

from app.lab.errors import with_type

EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, eq=False)
class Upload:
    """A decoded upload: the upright RGB image and what decoding changed in it."""

    image: Any  # PIL RGB image
    changes: tuple[str, ...] = ()  # e.g. "converted from CMYK to RGB"

    @property
    def note(self) -> str:
        """'W x H pixels' and the changes."""
        return ", ".join([f"{self.image.size[0]} x {self.image.size[1]} pixels", *self.changes])


def _changes(data: bytes) -> tuple[str, ...]:
    """What decode_upload did to these (decodable) bytes: colour conversion, EXIF rotation."""
    from PIL import Image

    changes = []
    try:
        with Image.open(io.BytesIO(data)) as raw:
            if raw.mode != "RGB":
                extra = " (transparency flattened onto white)" if "A" in raw.mode or "transparency" in raw.info else ""
                changes.append(f"converted from {raw.mode} to RGB{extra}")
            orientation = raw.getexif().get(EXIF_ORIENTATION, 1)
            if orientation not in (0, 1):
                changes.append(f"turned upright by its EXIF orientation ({orientation})")
    except Exception:  # the note is optional; decoding already succeeded
        pass
    return tuple(changes)


@st.cache_data(show_spinner=False, max_entries=16)
def _read_upload(data: bytes) -> Upload:
    from diablo.data.image import decode_upload

    try:
        image = decode_upload(data)
    except ValueError:
        raise
    except Exception as err:  # whatever PIL raises on hostile bytes becomes a clear refusal
        raise ValueError(f"the upload could not be decoded ({with_type(err)})") from err
    return Upload(image, _changes(data))


def read_upload(data: bytes) -> Upload:
    """Decode uploaded bytes to an upright RGB image (cached by content).

    ValueError with a one-line reason for anything that is not a usable image: empty, not an
    image, truncated, a decompression bomb, too small (diablo.data.image.decode_upload's rules).
    16-bit, CMYK, RGBA, palette and greyscale images are converted to RGB and accepted, and
    EXIF orientation is applied; `Upload.changes` says so.
    """
    return _read_upload(bytes(data))
