"""Attention: where each dictionary entry looks in one image, and how the entries share the gallery."""

from __future__ import annotations

import math

import streamlit as st

from app.lab import controls, figures, inspection, output, passes, picker, sidebar, waiting
from diablo.montage import montage

st.header("Attention")
st.caption(
    "Each dictionary entry n of DIABLO gives every place of the feature map a weight (they sum to 1 over the "
    "entries): the overlays show those weights, the assignment map each place's strongest entry."
)

ctx = sidebar.context()
model = sidebar.require_model(ctx)
gallery = sidebar.gallery_for(ctx, model)

@st.fragment
def image_view() -> None:
    """The picker and the picked image's maps: reruns alone when they change (not the sidebar, not
    the gallery statistics below)."""
    pick_column, view_column = st.columns([1, 3], gap="large")
    with pick_column:
        picked = picker.pick_image("attention", gallery)
    if picked is None:
        return
    view = inspection.inspect(model, picked)

    if view.attention is None:
        with view_column:
            st.info(f"{model.name} is the baseline (global average pooling): it has no attention to show.")
            st.image(view.display, caption=f"{picked.name} ({picked.note})", width=256)
        return

    entries, channels = view.attention.shape[:2]
    with view_column:
        row = st.columns(4, vertical_alignment="bottom")  # the toggle on the inputs' line, not the labels'
        style = controls.overlay_style("attention", row[0], row[1])
        entry = row[2].selectbox("Entry in focus", list(range(entries)), format_func=lambda n: f"entry {n}",
                                 key="attention_entry")
        stretch = row[3].toggle("Stretch maps", value=True, key="attention_stretch",
                                help="Scale each entry's map by its own maximum instead of showing raw weights")
        channel = controls.channel_choice("attention", channels)

        overlays = figures.attention_overlays(view, style, channel, stretch)
        assignment = figures.assignment(view, channel)
        image_stats = figures.image_statistics(view, channel)
        shares = image_stats["share"]

        which = "the mean over channels" if channels > 1 and channel is None else (
            f"channel {channel}" if channel is not None else "feature-wise weights")
        top = st.columns(3)
        top[0].image(view.display, caption=f"{picked.name} ({picked.note})", width="stretch")
        top[1].image(overlays[entry], caption=f"entry {entry}: {which}, {100 * shares[entry]:.0f}% of the places",
                     width="stretch")
        top[2].image(assignment, caption="Hard assignment: each place coloured by its arg-max entry", width="stretch")
        with top[2]:
            output.legend(entries, shares)

    st.subheader("Every entry")
    st.image(overlays, caption=[f"entry {n} · {100 * shares[n]:.0f}%" for n in range(entries)], width=150)
    downloads = st.columns(3)
    with downloads[0]:
        output.download_png(
            "Entry overlays (PNG)",
            lambda: montage([view.display, *overlays], ["image", *[f"entry {n}" for n in range(entries)]],
                            columns=min(entries + 1, 9)),
            f"{model.name}-attention.png", key="attention_download_overlays",
        )
    with downloads[1]:
        output.download_png(
            "Assignment map (PNG)", lambda: montage([view.display, assignment], ["image", "assignment"], columns=2,
                                                    tile=256),
            f"{model.name}-assignment.png", key="attention_download_assignment",
        )
    st.caption(
        f"This image: mean assignment entropy {image_stats['entropy']:.3f} nats "
        f"({100 * image_stats['entropy_normalised']:.0f}% of log N = {math.log(entries):.2f}; 0 = hard assignment)."
    )


image_view()
if not model.has_attention:
    st.stop()

st.subheader("Entries over the gallery")
if gallery is None:
    st.info("Pick a gallery in the sidebar to see how the entries share it.")
    st.stop()
job = passes.statistics_job(model, gallery)
if waiting.failed(job, "Could not summarise the gallery", key="attention_statistics_retry"):
    st.stop()
if not job.ok:
    waiting.follow(job, f"Summarising {model.name}'s attention over the gallery")
    st.stop()
stats = job.result
charts = st.columns(2)
with charts[0]:
    figures.show_figure(figures.entry_share_figure(stats["share"]), f"{model.name}-entry-share",
                        key="attention_share_chart")
with charts[1]:
    figures.show_figure(figures.entry_entropy_figure(stats["entry_entropy"]), f"{model.name}-entry-entropy",
                        key="attention_entropy_chart")
st.dataframe(
    {
        "entry": list(range(len(stats["share"]))),
        "share of area (%)": [round(100 * float(v), 2) for v in stats["share"]],
        "mean weight": [round(float(v), 4) for v in stats["mean_weight"]],
        "mean entropy (nats)": [None if math.isnan(v) else round(float(v), 4) for v in stats["entry_entropy"]],
    },
    hide_index=True,
)
st.caption(
    f"Over {stats['images']} of the gallery's {len(gallery)} images (evenly spread), on the mean over channels: "
    f"mean assignment entropy {stats['entropy']:.3f} nats ({100 * stats['entropy_normalised']:.0f}% of log N). "
    "Charts: the camera icon of the chart's toolbar downloads a PNG."
)
