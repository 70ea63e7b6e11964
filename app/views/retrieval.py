"""Retrieval: the top K of a query in the gallery, each result's similarity split by branch."""

from __future__ import annotations

import streamlit as st

from app.lab import figures, galleries, inspection, output, picker, sidebar
from diablo.montage import montage

COLUMNS = 4  # results per row

st.header("Retrieval")
st.caption(
    "A DIABLO embedding is N unit branches concatenated and divided by √N, so its cosine is the mean of the "
    "N branch cosines: the bars under each result show each branch's part (cosine_n / N), which sum to the "
    "similarity."
)

ctx = sidebar.context()
model = sidebar.require_model(ctx)
gallery = sidebar.require_gallery(ctx, model)
if len(gallery) < 2:
    st.warning("Retrieval needs a gallery of at least 2 images.")
    st.stop()
index = sidebar.require_index(model, gallery)

pick_column, result_column = st.columns([1, 3], gap="large")
with pick_column:
    picked = picker.pick_image("retrieval", gallery, label="Query")
    k = st.slider("Top K", 1, max(2, min(32, len(gallery) - 1)), min(8, len(gallery) - 1), key="retrieval_k")
if picked is None:
    st.stop()

result = inspection.search(model, index, picked, k)  # a gallery query is left out of its own results
query_image = inspection.inspect(model, picked).display
ids, similarities, shares = result.ids[0], result.similarities[0], result.branch_shares[0]  # (k,), (k,), (k, N)
captions, marks = output.result_captions(gallery, ids, similarities, picked.label)

with result_column:
    top = st.columns([1, 3])
    top[0].image(query_image, caption=f"Query: {picked.name} ({picked.note})", width="stretch")
    with top[1]:
        if picked.label is not None:
            st.metric("Same class in the top K", f"{sum(bool(m) for m in marks)} / {len(ids)}")
        else:
            st.info("An uploaded query has no label: results are not marked right or wrong.")
        output.download_png(
            "Results (PNG)",
            lambda: montage(
                [query_image, *[galleries.thumbnail(gallery, int(i), 256) for i in ids]],
                ["query", *[f"{r + 1}. {s:.3f}" for r, s in enumerate(similarities)]],
                columns=5, marks=[None, *marks],
            ),
            f"{model.name}-retrieval.png", key="retrieval_download",
        )

st.subheader(f"Top {len(ids)} results")
for start in range(0, len(ids), COLUMNS):
    for column, r in zip(st.columns(COLUMNS), range(start, min(start + COLUMNS, len(ids))), strict=False):
        column.image(galleries.thumbnail(gallery, int(ids[r]), 160), caption=captions[r], width="stretch")
        if model.branches > 1:
            with column:
                figures.show_figure(figures.branch_share_figure(shares[r], float(similarities[r])),
                                    f"{model.name}-result-{r + 1}-branches", key=f"retrieval_branches_{r}")

st.subheader("Recall@K on the gallery")
metrics = galleries.gallery_metrics(model, gallery)
st.dataframe([{"checkpoint": model.name, **output.metrics_row(metrics)}], hide_index=True)
skipped = len(gallery.skipped)
st.caption(f"{len(gallery)} images searched leave-one-out (each image queries the rest)"
           + (f", {skipped} unreadable file{'s' if skipped != 1 else ''} skipped" if skipped else "")
           + "; values in %.")
