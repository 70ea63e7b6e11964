"""Retrieval: the top K of a query in the gallery, each result's similarity split by branch."""

from __future__ import annotations

import sys
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

if (_root := str(Path(__file__).resolve().parents[2])) not in sys.path:
    sys.path.insert(0, _root)  # a deep link on a fresh server runs this page without app/main.py

from app import lab  # noqa: E402

st.header("Retrieval")
st.caption(
    "A DIABLO embedding is N unit branches concatenated and divided by √N, so its cosine is the mean of the "
    "N branch cosines: the bars under each result show each branch's part (cosine_n / N), which sum to the "
    "similarity."
)

ctx = lab.context()
model = lab.require_model(ctx)
gallery = lab.require_gallery(ctx, model)
if len(gallery) < 2:
    st.warning("Retrieval needs a gallery of at least 2 images.")
    st.stop()
index = lab.gallery_index(model, gallery)

pick_column, result_column = st.columns([1, 3], gap="large")
with pick_column:
    picked = lab.pick_image("retrieval", gallery, label="Query")
    k = st.slider("Top K", 1, max(2, min(32, len(gallery) - 1)), min(8, len(gallery) - 1), key="retrieval_k")
if picked is None:
    st.stop()

result = lab.search(model, index, picked, k)  # a gallery query is left out of its own results
query_image = lab.inspect(model, picked).display
ids, similarities, shares = result.ids[0], result.similarities[0], result.branch_shares[0]  # (k,), (k,), (k, N)
captions, marks = lab.result_captions(gallery, ids, similarities, picked.label)

with result_column:
    top = st.columns([1, 3])
    top[0].image(query_image, caption=f"Query: {picked.name} ({picked.note})", width="stretch")
    with top[1]:
        if picked.label is not None:
            hits = sum(bool(m) for m in marks)
            st.metric("Same class in the top K", f"{hits} / {len(ids)}")
        else:
            st.info("An uploaded query has no label: results are not marked right or wrong.")
        lab.download_png(
            "Results (PNG)",
            lambda: lab.montage(
                [query_image, *[lab.thumbnail(gallery, int(i), 256) for i in ids]],
                ["query", *[f"{r + 1}. {s:.3f}" for r, s in enumerate(similarities)]],
                columns=5, marks=[None, *marks],
            ),
            f"{model.name}-retrieval.png", key="retrieval_download",
        )

st.subheader(f"Top {len(ids)} results")
colours = lab.entry_colours(model.branches)
columns_per_row = 4
for start in range(0, len(ids), columns_per_row):
    for column, r in zip(st.columns(columns_per_row), range(start, min(start + columns_per_row, len(ids))),
                         strict=False):
        i = int(ids[r])
        column.image(lab.thumbnail(gallery, i, 160), caption=captions[r], width="stretch")
        if model.branches > 1:
            fig = go.Figure(go.Bar(x=[f"b{n}" for n in range(model.branches)], y=shares[r], marker_color=colours,
                                   hovertemplate="branch %{x}: %{y:.3f}<extra></extra>"))
            fig.update_layout(height=150, margin=dict(l=0, r=0, t=22, b=0), showlegend=False,
                              title=dict(text=f"branch shares (sum {similarities[r]:.3f})", font=dict(size=11)))
            with column:
                lab.show_figure(fig, f"{model.name}-result-{r + 1}-branches", key=f"retrieval_branches_{r}")

st.subheader("Recall@K on the gallery")
metrics = lab.gallery_metrics(model, gallery)
st.dataframe([{"checkpoint": model.name, **lab.metrics_row(metrics)}], hide_index=True)
st.caption(f"{len(gallery)} images searched leave-one-out (each image queries the rest); values in %.")
