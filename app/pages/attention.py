"""Attention: where each dictionary entry looks in one image, and how the entries share the gallery."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

if (_root := str(Path(__file__).resolve().parents[2])) not in sys.path:
    sys.path.insert(0, _root)  # a deep link on a fresh server runs this page without app/main.py

from app import lab  # noqa: E402
from diablo import explain  # noqa: E402

st.header("Attention")
st.caption(
    "Each dictionary entry n of DIABLO gives every place of the feature map a weight (they sum to 1 over the "
    "entries): the overlays show those weights, the assignment map each place's strongest entry."
)

ctx = lab.context()
model = lab.require_model(ctx)
gallery = lab.gallery_for(ctx, model)

pick_column, view_column = st.columns([1, 3], gap="large")
with pick_column:
    picked = lab.pick_image("attention", gallery)
if picked is None:
    st.stop()
view = lab.inspect(model, picked)

if view.attention is None:
    with view_column:
        st.info(f"{model.name} is the baseline (global average pooling): it has no attention to show.")
        st.image(view.display, caption=f"{picked.name} ({picked.note})", width=256)
    st.stop()

entries, channels = view.attention.shape[:2]
colormaps = sorted(explain.COLORMAPS)
with view_column:
    controls = st.columns(4, vertical_alignment="bottom")  # the toggle on the inputs' line, not the labels'
    colormap = controls[0].selectbox("Colormap", colormaps, index=colormaps.index("jet"), key="attention_colormap")
    opacity = controls[1].slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="attention_opacity")
    entry = controls[2].selectbox(
        "Entry in focus", list(range(entries)), format_func=lambda n: f"entry {n}", key="attention_entry"
    )
    stretch = controls[3].toggle("Stretch maps", value=True, key="attention_stretch",
                                 help="Scale each entry's map by its own maximum instead of showing raw weights")
    channel = None
    if channels > 1:  # dimension-wise selection: one weight per channel
        modes = st.columns([2, 1, 1])  # room for the two radio options side by side
        mode = modes[0].radio("Channels", ["Mean over channels", "One channel"], key="attention_channel_mode",
                              horizontal=True)
        if mode == "One channel":
            channel = int(modes[1].number_input(f"Channel (0-{channels - 1})", 0, channels - 1, 0,
                                                key="attention_channel"))

    overlays = explain.attention_overlays(view.display, view.attention, channel, colormap, opacity, stretch)
    assignment = explain.assignment_overlay(view.display, view.attention, channel, opacity=1.0)
    image_stats = explain.entry_statistics(view.attention, channel)
    shares = image_stats["share"]

    which = "the mean over channels" if channels > 1 and channel is None else (
        f"channel {channel}" if channel is not None else "feature-wise weights")
    top = st.columns(3)
    top[0].image(view.display, caption=f"{picked.name} ({picked.note})", width="stretch")
    top[1].image(overlays[entry], caption=f"entry {entry}: {which}, {100 * shares[entry]:.0f}% of the places",
                 width="stretch")
    top[2].image(assignment, caption="Hard assignment: each place coloured by its arg-max entry", width="stretch")
    with top[2]:
        lab.legend(entries, shares)

st.subheader("Every entry")
st.image(overlays, caption=[f"entry {n} · {100 * shares[n]:.0f}%" for n in range(entries)], width=150)
downloads = st.columns(3)
with downloads[0]:
    lab.download_png(
        "Entry overlays (PNG)",
        lambda: lab.montage([view.display, *overlays], ["image", *[f"entry {n}" for n in range(entries)]],
                            columns=min(entries + 1, 9)),
        f"{model.name}-attention.png", key="attention_download_overlays",
    )
with downloads[1]:
    lab.download_png(
        "Assignment map (PNG)",
        lambda: lab.montage([view.display, assignment], ["image", "assignment"], columns=2, tile=256),
        f"{model.name}-assignment.png", key="attention_download_assignment",
    )
st.caption(
    f"This image: mean assignment entropy {image_stats['entropy']:.3f} nats "
    f"({100 * image_stats['entropy_normalised']:.0f}% of log N = {math.log(entries):.2f}; 0 = hard assignment)."
)

st.subheader("Entries over the gallery")
if gallery is None:
    st.info("Pick a gallery in the sidebar to see how the entries share it.")
    st.stop()
try:
    stats = lab.entry_statistics(model, gallery)
except Exception as err:  # shown, the rest of the page stays
    st.error(f"Could not summarise the gallery: {lab.describe_error(err)}")
    st.stop()
colours = lab.entry_colours(entries)
names = [f"entry {n}" for n in range(entries)]
charts = st.columns(2)
share_fig = go.Figure(go.Bar(x=names, y=100 * stats["share"], marker_color=colours))
share_fig.update_layout(title="Share of area (% of the places they win)", height=320, margin=dict(t=40, b=10),
                        yaxis_title="%")
entropy_fig = go.Figure(go.Bar(x=names, y=stats["entry_entropy"], marker_color=colours))
entropy_fig.add_hline(y=math.log(entries), line_dash="dot", annotation_text="log N (uniform)")
entropy_fig.update_layout(title="Mean assignment entropy of the places they win (nats)", height=320,
                          margin=dict(t=40, b=10), yaxis_title="nats")
with charts[0]:
    lab.show_figure(share_fig, f"{model.name}-entry-share", key="attention_share_chart")
with charts[1]:
    lab.show_figure(entropy_fig, f"{model.name}-entry-entropy", key="attention_entropy_chart")
st.dataframe(
    {
        "entry": list(range(entries)),
        "share of area (%)": [round(100 * float(v), 2) for v in stats["share"]],
        "mean weight": [round(float(v), 4) for v in stats["mean_weight"]],
        "mean entropy (nats)": [None if math.isnan(v) else round(float(v), 4) for v in stats["entry_entropy"]],
    },
    hide_index=True,
)
st.caption(
    f"Over {stats['images']} of the gallery's {len(gallery)} images (evenly spread), on the mean over channels: "
    f"mean assignment entropy "
    f"{stats['entropy']:.3f} nats ({100 * stats['entropy_normalised']:.0f}% of log N). "
    "Charts: the camera icon of the chart's toolbar downloads a PNG."
)
