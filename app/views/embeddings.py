"""Embeddings: a 2-D map (PCA or UMAP) of the gallery's embeddings or of one branch, by class."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.lab import controls, figures, galleries, output, projections, sidebar
from app.lab.errors import describe_error
from diablo.montage import montage

UMAP_EXPECTED_S = 45.0  # the first UMAP fit of a process compiles numba: 30-45 s on two cores
SHOWN = 60  # selected images shown at most

st.header("Embeddings")
st.caption(
    "Each point is a gallery image; colour = class. Select points with the box or lasso tool of the chart's "
    "toolbar to see the images below. The toolbar's camera icon downloads the chart as a PNG."
)

ctx = sidebar.context()
model = sidebar.require_model(ctx)
gallery = sidebar.require_gallery(ctx, model)
if len(gallery) < 3:
    st.warning("A 2-D map needs at least 3 gallery images.")
    st.stop()
index = sidebar.require_index(model, gallery)
ids = np.arange(len(index))  # the gallery id of each point
if len(index) > projections.SAMPLE_LIMIT:
    ids = projections.sample_ids(len(index), projections.SAMPLE_LIMIT, projections.SAMPLE_SEED)
    index = projections.sample_index(index, ids, projections.SAMPLE_SEED)
    st.caption(f"The gallery holds {len(gallery):,} images: the map shows a random sample of {len(ids):,} "
               f"(seed {projections.SAMPLE_SEED}).")

row = st.columns([1, 1, 2])
method = row[0].radio("Method", ["PCA", "UMAP"], horizontal=True, key="embeddings_method")
branch = controls.embedding_choice("embeddings", model.branches, row[1])

points = projections.projection(index, "pca", branch)  # instant, shown until UMAP is ready
shown = "PCA"
if method == "UMAP":
    try:
        umap_points = projections.projection(index, "umap", branch)  # None while the background job runs
    except Exception as err:  # a failed fit is shown; PCA stays
        st.error(f"UMAP failed: {describe_error(err)}")
        if st.button("Retry UMAP", key="embeddings_retry"):
            projections.forget_projection_jobs()
            st.rerun()
        umap_points = None
    if umap_points is not None:
        points, shown = umap_points, "UMAP"
    else:
        job = projections.projection_job(index, branch)

        @st.fragment(run_every=2.0)
        def _umap_status() -> None:
            if job.done():
                st.rerun(scope="app")
            st.progress(min(job.elapsed / UMAP_EXPECTED_S, 0.95),
                        text=f"Computing UMAP in the background ({job.elapsed:.0f} s; the first fit in a process "
                        "compiles numba, 30-45 s). Showing PCA meanwhile; this refreshes by itself.")
            st.button("Refresh", key="embeddings_refresh")

        _umap_status()

what = controls.describe_embedding(branch)
hover = [f"{gallery.class_name(i)}<br>{gallery.file_name(i)} (#{i})" for i in ids.tolist()]
labels = np.asarray(gallery.labels)[ids]
sampled = f"a sample of {len(ids)} of " if len(ids) < len(gallery) else ""
fig = figures.embedding_scatter(points, labels, gallery.classes, hover,
                                f"{shown} of {what} of {sampled}{len(gallery)} gallery images ({model.name})")
event = figures.show_figure(fig, f"{model.name}-{shown.lower()}-{what.removeprefix('the ').replace(' ', '-')}",
                            key="embeddings_scatter", on_select="rerun", selection_mode=("box", "lasso"))

selected = [int(ids[p]) for p in figures.selected_gallery_ids(event) if 0 <= p < len(ids)]  # points to gallery ids
st.subheader("Selected images")
if not selected:
    st.info("Draw a box or a lasso around points to list their images here.")
else:
    st.caption(f"{len(selected)} selected" + (f", showing the first {SHOWN}" if len(selected) > SHOWN else ""))
    shown_ids = selected[:SHOWN]
    st.image([galleries.thumbnail_png(gallery, i) for i in shown_ids],
             caption=[f"#{i} {gallery.class_name(i)}" for i in shown_ids], width=112)
    output.download_png(
        "Selected images (PNG)",
        lambda: montage([galleries.thumbnail(gallery, i, 160) for i in shown_ids],
                        [f"#{i} {gallery.class_name(i)}" for i in shown_ids], columns=10),
        f"{model.name}-selection.png", key="embeddings_download",
    )
