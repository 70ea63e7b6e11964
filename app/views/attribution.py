"""Attribution: which query pixels make it similar to a result (captum), beside the attention."""

from __future__ import annotations

import streamlit as st

from app.lab import controls, figures, inspection, output, picker, sidebar, waiting
from diablo.montage import montage

STEPS = [8, 16, 32, 64]  # Integrated Gradients steps offered

st.header("Attribution")
st.caption(
    "Integrated Gradients (against the all-zero, i.e. mean, image) and Grad-CAM (on the map the attention "
    "weights) of the cosine similarity between the query and a chosen result, beside the query's attention."
)

ctx = sidebar.context()
model = sidebar.require_model(ctx)
gallery = sidebar.require_gallery(ctx, model)
found = sidebar.require_searchable(model, gallery)
if not found.complete:
    waiting.follow(found.job, f"Embedding the gallery with {model.name} (results so far: {found.note()})")
if found.index is None or len(found.index) < 2:
    st.stop()
index = found.index

pick_column, main_column = st.columns([1, 3], gap="large")
with pick_column:
    picked = picker.pick_image("attribution", gallery, label="Query")
if picked is None:
    st.stop()
result = inspection.search(model, index, picked, 8)
ids, sims = result.ids[0], result.similarities[0]
if len(ids) == 0:
    st.warning("The gallery has no other image to compare with.")
    st.stop()
captions, marks = output.result_captions(gallery, ids, sims, picked.label)

with main_column:
    row = st.columns(4)
    rank = row[0].selectbox("Result to explain", list(range(len(ids))), format_func=lambda r: captions[r],
                            key="attribution_result")
    branch = controls.embedding_choice("attribution", model.branches, row[1],
                                       help="Explain the cosine similarity of the whole embedding or of one branch")
    steps = row[2].select_slider("Integrated Gradients steps", STEPS, 16, key="attribution_steps")
    style = controls.overlay_style("attribution", row[3], st)

target_id = int(ids[rank])
query_view = inspection.inspect(model, picked)
result_view = inspection.inspect(model, inspection.gallery_item(gallery, target_id))
with st.spinner("Computing Integrated Gradients and Grad-CAM…"):
    maps = inspection.attributions(model, picked, index, target_id, branch, steps)
ig = figures.heat_overlay(query_view.display, maps["integrated_gradients"], style)
cam = figures.heat_overlay(query_view.display, maps["gradcam"], style)

st.subheader("Attributions")
what = controls.describe_embedding(branch)
tiles = [query_view.display, result_view.display, ig, cam]
tile_captions = ["query", f"result: {captions[rank]}", "Integrated Gradients", "Grad-CAM"]
st.image(tiles, caption=[f"Query: {picked.name}", f"Result {captions[rank]}", f"Integrated Gradients ({what})",
                         f"Grad-CAM ({what})"], width=220)

if query_view.attention is not None:
    st.subheader("Attention of the query and of the result")
    entries = query_view.attention.shape[0]
    query_overlays = figures.attention_overlays(query_view, style)
    query_assignment = figures.assignment(query_view)
    result_assignment = figures.assignment(result_view)
    st.image([query_assignment, result_assignment], caption=["query: hard assignment", "result: hard assignment"],
             width=220)
    output.legend(entries, figures.image_statistics(query_view)["share"])
    st.image(query_overlays, caption=[f"query, entry {n}" for n in range(entries)], width=130)
    tiles += [query_assignment, result_assignment, *query_overlays]
    tile_captions += ["query assignment", "result assignment", *[f"entry {n}" for n in range(entries)]]
else:
    st.info(f"{model.name} is the baseline: it has no attention to show beside the attributions.")

output.download_png(
    "Attributions and attention (PNG)", lambda: montage(tiles, tile_captions, columns=6, tile=192),
    f"{model.name}-attribution.png", key="attribution_download",
)
