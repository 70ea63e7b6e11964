"""The image picker every page uses: a gallery item (by number or from a grid) or an upload.

The gallery item picked last is shared by every page (session state `PICKED`).
"""

from __future__ import annotations

import hashlib
import math

import streamlit as st

from app.lab.errors import describe_error
from app.lab.galleries import Gallery, thumbnail_png
from app.lab.inspection import Picked, gallery_item
from app.lab.uploads import read_upload

PICKED = "lab_picked_gallery_id"  # the gallery image picked last, shared by every page
UPLOAD_FORMATS = "PNG, JPEG, WebP, TIFF, BMP, GIF …"


def _remember(widget_key: str) -> None:
    st.session_state[PICKED] = int(st.session_state[widget_key])


def _choose(page: str, index: int) -> None:
    st.session_state[f"{page}_item"] = index
    st.session_state[PICKED] = index


def _browser(page: str, gallery: Gallery, per_page: int = 12, columns: int = 2) -> None:
    """A paged grid of gallery thumbnails, each with a button that picks it.

    `columns` suits the picker's column: 2 in the pages' narrow (1/4 wide) picker column, where
    6 made 20-pixel thumbnails, captions one letter wide and empty buttons.
    """
    names = ["All classes", *gallery.classes]
    chosen = st.selectbox("Class", names, key=f"{page}_browse_class")
    if chosen == "All classes":
        ids = list(range(len(gallery)))
    else:
        label = gallery.classes.index(chosen)
        ids = [i for i, y in enumerate(gallery.labels) if y == label]
    pages = max(1, math.ceil(len(ids) / per_page))
    number = st.number_input(f"Page (1-{pages})", 1, pages, 1, key=f"{page}_browse_page") if pages > 1 else 1
    shown = ids[(int(number) - 1) * per_page : int(number) * per_page]
    for start in range(0, len(shown), columns):
        for column, i in zip(st.columns(columns), shown[start : start + columns], strict=False):
            column.image(thumbnail_png(gallery, i), caption=f"#{i} {gallery.class_name(i)}", width="stretch")
            column.button(f"Pick #{i}", key=f"{page}_pick_{i}", on_click=_choose, args=(page, i), width="stretch")


def _upload(page: str, label: str) -> Picked | None:
    """The upload widget; the decoded image, or None after one message (nothing yet, or refused)."""
    upload = st.file_uploader(f"Upload an image ({label.lower()})", key=f"{page}_upload")
    if upload is None:
        st.info(f"Upload an image ({UPLOAD_FORMATS}) to use it here.")
        return None
    data = upload.getvalue()
    try:
        decoded = read_upload(data)
    except ValueError as err:
        st.error(f"Cannot use {upload.name!r}: {err}.", icon=":material/error:")
        return None
    if decoded.changes:
        st.warning(f"Using {upload.name!r} {'; '.join(decoded.changes)}.", icon=":material/warning:")
    digest = hashlib.sha256(data).hexdigest()[:24]
    return Picked(image=decoded.image, key=f"upload:{digest}", name=upload.name, note=decoded.note)


def pick_image(page: str, gallery: Gallery | None, label: str = "Image", browse_columns: int = 2) -> Picked | None:
    """The image picker: a gallery item (by number or from the grid) or an upload.

    Without a gallery only the upload is offered. Returns None (after saying why) when there is
    nothing usable yet, e.g. a refused upload or an unreadable gallery file.
    """
    if gallery is None:  # nothing to choose from
        return _upload(page, label)
    source = st.radio(f"{label} source", ["Gallery", "Upload"], horizontal=True, key=f"{page}_source")
    if source == "Upload":
        return _upload(page, label)
    n = len(gallery)
    item_key = f"{page}_item"
    if item_key not in st.session_state or not 0 <= int(st.session_state[item_key]) < n:
        st.session_state[item_key] = min(max(int(st.session_state.get(PICKED, 0)), 0), n - 1)
    st.number_input(
        f"Gallery image # (0-{n - 1})", min_value=0, max_value=n - 1, step=1, key=item_key,
        on_change=_remember, args=(item_key,),
    )
    with st.expander("Browse the gallery"):
        _browser(page, gallery, columns=browse_columns)
    index = int(st.session_state[item_key])
    st.session_state[PICKED] = index
    try:
        return gallery_item(gallery, index)
    except Exception as err:  # an unreadable gallery file is reported, not fatal
        st.error(f"Cannot read gallery image #{index} ({gallery.path(index)}): {describe_error(err)}",
                 icon=":material/error:")
        return None
