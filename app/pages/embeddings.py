"""Embeddings: a 2-D map (PCA or UMAP) of the gallery's embeddings or of one branch, by class."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative

if (_root := str(Path(__file__).resolve().parents[2])) not in sys.path:
    sys.path.insert(0, _root)  # a deep link on a fresh server runs this page without app/main.py

from app import lab  # noqa: E402

UMAP_EXPECTED_S = 45.0  # the first UMAP fit of a process compiles numba: 30-45 s on two cores

st.header("Embeddings")
st.caption(
    "Each point is a gallery image; colour = class. Select points with the box or lasso tool of the chart's "
    "toolbar to see the images below. The toolbar's camera icon downloads the chart as a PNG."
)

ctx = lab.context()
model = lab.require_model(ctx)
gallery = lab.require_gallery(ctx, model)
if len(gallery) < 3:
    st.warning("A 2-D map needs at least 3 gallery images.")
    st.stop()
index = lab.gallery_index(model, gallery)

controls = st.columns([1, 1, 2])
method = controls[0].radio("Method", ["PCA", "UMAP"], horizontal=True, key="embeddings_method")
branch_names = ["Full embedding", *[f"Branch {n}" for n in range(model.branches)]] if model.branches > 1 else [
    "Full embedding"]
branch_name = controls[1].selectbox("Embedding", branch_names, key="embeddings_branch")
branch = None if branch_name == "Full embedding" else branch_names.index(branch_name) - 1

points = lab.projection(index, "pca", branch)  # instant, shown until UMAP is ready
shown = "PCA"
if method == "UMAP":
    try:
        umap_points = lab.projection(index, "umap", branch)  # None while the background job runs
    except Exception as err:  # a failed fit is shown; PCA stays
        st.error(f"UMAP failed: {lab.describe_error(err)}")
        if st.button("Retry UMAP", key="embeddings_retry"):
            lab.forget_projection_jobs()
            st.rerun()
        umap_points = None
    if umap_points is not None:
        points, shown = umap_points, "UMAP"
    else:
        job = lab.projection_job(index, branch)

        @st.fragment(run_every=2.0)
        def _umap_status() -> None:
            if job.done():
                st.rerun(scope="app")
            st.progress(min(job.elapsed / UMAP_EXPECTED_S, 0.95),
                        text=f"Computing UMAP in the background ({job.elapsed:.0f} s; the first fit in a process "
                        "compiles numba, 30-45 s). Showing PCA meanwhile; this refreshes by itself.")
            st.button("Refresh", key="embeddings_refresh")

        _umap_status()

labels = np.asarray(gallery.labels)
classes = gallery.classes
hover = [f"{gallery.class_name(i)}<br>{gallery.file_name(i)} (#{i})" for i in range(len(gallery))]
trace = go.Scattergl if len(gallery) > 5000 else go.Scatter
fig = go.Figure()
if len(np.unique(labels)) <= 40:
    palette = qualitative.Dark24 + qualitative.Light24  # plotly's default 10 colours repeat from the 11th class
    for n, label in enumerate(np.unique(labels)):
        ids = np.flatnonzero(labels == label)
        fig.add_trace(trace(x=points[ids, 0], y=points[ids, 1], mode="markers", name=classes[label],
                            customdata=ids, hovertext=[hover[i] for i in ids],
                            hovertemplate="%{hovertext}<extra></extra>",
                            marker=dict(size=7, opacity=0.85, color=palette[n % len(palette)])))
else:  # too many classes for a legend: one trace coloured by label
    ids = np.arange(len(gallery))
    fig.add_trace(trace(x=points[:, 0], y=points[:, 1], mode="markers", customdata=ids, hovertext=hover,
                        hovertemplate="%{hovertext}<extra></extra>",
                        marker=dict(size=6, color=labels, colorscale="Turbo", opacity=0.85), showlegend=False))
where = branch_name.lower() if branch is not None else "full embedding"
fig.update_layout(title=f"{shown} of the {where} of {len(gallery)} gallery images ({model.name})", height=620,
                  dragmode="lasso", legend=dict(itemsizing="constant"), margin=dict(t=50))
event = lab.show_figure(fig, f"{model.name}-{shown.lower()}-{where.replace(' ', '-')}", key="embeddings_scatter",
                        on_select="rerun", selection_mode=("box", "lasso"))

selected = lab.selected_gallery_ids(event)
st.subheader("Selected images")
if not selected:
    st.info("Draw a box or a lasso around points to list their images here.")
else:
    cap = 60
    st.caption(f"{len(selected)} selected" + (f", showing the first {cap}" if len(selected) > cap else ""))
    shown_ids = selected[:cap]
    st.image([lab.thumbnail(gallery, i) for i in shown_ids],
             caption=[f"#{i} {gallery.class_name(i)}" for i in shown_ids], width=112)
    lab.download_png(
        "Selected images (PNG)",
        lambda: lab.montage([lab.thumbnail(gallery, i, 160) for i in shown_ids],
                            [f"#{i} {gallery.class_name(i)}" for i in shown_ids], columns=10),
        f"{model.name}-selection.png", key="embeddings_download",
    )
