"""What pages print besides charts: entry legends, result captions, metric rows, PNG downloads."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st

from app.lab.figures import entry_colours
from app.lab.galleries import Gallery


def legend(n: int, shares: Sequence[float] | None = None) -> None:
    """A colour chip and name for each entry, with its share of the image when given."""
    chips = []
    for i, colour in enumerate(entry_colours(n)):
        share = "" if shares is None else f" {100 * float(shares[i]):.0f}%"
        chips.append(
            f'<span style="display:inline-block;margin:0 10px 4px 0;white-space:nowrap">'
            f'<span style="display:inline-block;width:12px;height:12px;background:{colour};'
            f'border:1px solid #444;vertical-align:middle"></span> entry {i}{share}</span>'
        )
    st.markdown("".join(chips), unsafe_allow_html=True)


def download_png(label: str, make: Callable[[], np.ndarray], file_name: str, key: str) -> None:
    """A download button whose PNG (diablo.montage.png_bytes of `make()`) is encoded only when clicked."""
    from diablo.montage import png_bytes

    st.download_button(
        label, data=lambda: png_bytes(make()), file_name=file_name, mime="image/png", key=key, on_click="ignore",
        icon=":material/download:",
    )


def result_captions(
    gallery: Gallery, ids: Sequence[int], similarities: Sequence[float], query_label: int | None
) -> tuple[list[str], list[bool | None]]:
    """Caption and right/wrong mark of each result (marks None when the query's label is unknown)."""
    captions, marks = [], []
    for rank, (i, s) in enumerate(zip(ids, similarities, strict=True), start=1):
        right = None if query_label is None else int(gallery.labels[int(i)]) == int(query_label)
        sign = "" if right is None else ("✓ " if right else "✗ ")
        captions.append(f"{sign}{rank}. #{int(i)} · {float(s):.3f} · {gallery.class_name(int(i))}")
        marks.append(right)
    return captions, marks


def metrics_row(metrics: dict[str, float | None]) -> dict[str, str]:
    """Metrics as percent strings with readable names (Recall@1, MAP@R, NMI)."""
    row = {}
    for name, value in metrics.items():
        label = name.replace("recall", "Recall").replace("map@r", "MAP@R").replace("nmi", "NMI")
        row[label] = "n/a" if value is None else f"{100 * float(value):.1f}"
    return row
