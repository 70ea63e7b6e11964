"""Controls that mean the same thing on every page: defined once here, keyed by page.

- `overlay_style`: the colormap and opacity of every heat-map overlay (attention, attributions);
- `embedding_choice`: the whole embedding or one branch, with the same label and options
  wherever a page offers it;
- `channel_choice`: for dimension-wise attention, the mean over channels or one channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

COLORMAP = "jet"  # the default colormap of heat-map overlays
OPACITY = 0.5  # the default opacity of heat-map overlays
EMBEDDING_LABEL = "Embedding"
WHOLE = "Whole embedding"


@dataclass(frozen=True)
class OverlayStyle:
    """How a heat map is drawn over its image."""

    colormap: str = COLORMAP
    opacity: float = OPACITY


def colormaps() -> list[str]:
    """OpenCV's colormaps by name, sorted (diablo.explain.COLORMAPS)."""
    from diablo.explain import COLORMAPS

    return sorted(COLORMAPS)


def overlay_style(page: str, colormap_slot: Any = st, opacity_slot: Any = st) -> OverlayStyle:
    """The colormap selectbox and opacity slider (keys `<page>_colormap`, `<page>_opacity`), drawn in the
    given containers (columns, sidebar; default: where the page is)."""
    names = colormaps()
    colormap = colormap_slot.selectbox("Colormap", names, index=names.index(COLORMAP), key=f"{page}_colormap",
                                       help="The colours of the heat maps (OpenCV colormaps)")
    opacity = opacity_slot.slider("Opacity", 0.0, 1.0, OPACITY, 0.05, key=f"{page}_opacity",
                                  help="0: the image only, 1: the heat map only")
    return OverlayStyle(str(colormap), float(opacity))


def embedding_options(branches: int) -> list[str]:
    """'Whole embedding', then 'Branch n' for each branch when there are several."""
    return [WHOLE, *[f"Branch {n}" for n in range(branches)]] if branches > 1 else [WHOLE]


def embedding_choice(page: str, branches: int, slot: Any = st, help: str | None = None) -> int | None:
    """The embedding selectbox (key `<page>_branch`): None for the whole embedding, else the branch."""
    options = embedding_options(branches)
    name = slot.selectbox(EMBEDDING_LABEL, options, key=f"{page}_branch", help=help)
    return None if name == WHOLE else options.index(name) - 1


def describe_embedding(branch: int | None) -> str:
    """'the whole embedding' or 'branch n', for captions and titles."""
    return "the whole embedding" if branch is None else f"branch {branch}"


def channel_choice(page: str, channels: int) -> int | None:
    """For dimension-wise attention (several channels): the mean over channels (None) or one channel."""
    if channels <= 1:
        return None
    modes = st.columns([2, 1, 1])  # room for the two radio options side by side
    mode = modes[0].radio("Channels", ["Mean over channels", "One channel"], key=f"{page}_channel_mode",
                          horizontal=True)
    if mode != "One channel":
        return None
    return int(modes[1].number_input(f"Channel (0-{channels - 1})", 0, channels - 1, 0, key=f"{page}_channel"))
