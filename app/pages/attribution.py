"""Attribution: which query pixels make it similar to a result (captum), beside the attention."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

if (_root := str(Path(__file__).resolve().parents[2])) not in sys.path:
    sys.path.insert(0, _root)  # a deep link on a fresh server runs this page without app/main.py

from app import lab  # noqa: E402
from diablo import explain  # noqa: E402

st.header("Attribution")
st.caption(
    "Integrated Gradients (against the all-zero, i.e. mean, image) and Grad-CAM (on the map the attention "
    "weights) of the cosine similarity between the query and a chosen result, beside the query's attention."
)

ctx = lab.context()
model = lab.require_model(ctx)
gallery = lab.require_gallery(ctx, model)
index = lab.gallery_index(model, gallery)

pick_column, main_column = st.columns([1, 3], gap="large")
with pick_column:
    picked = lab.pick_image("attribution", gallery, label="Query")
if picked is None:
    st.stop()
result = lab.search(model, index, picked, 8)
ids, sims = result.ids[0], result.similarities[0]
if len(ids) == 0:
    st.warning("The gallery has no other image to compare with.")
    st.stop()
captions, marks = lab.result_captions(gallery, ids, sims, picked.label)

with main_column:
    controls = st.columns(4)
    rank = controls[0].selectbox("Result to explain", list(range(len(ids))), format_func=lambda r: captions[r],
                                 key="attribution_result")
    targets = ["Whole embedding", *[f"Branch {n}" for n in range(model.branches)]] if model.branches > 1 else [
        "Whole embedding"]
    target_name = controls[1].selectbox("Explained similarity", targets, key="attribution_branch")
    branch = None if target_name == "Whole embedding" else targets.index(target_name) - 1
    steps = controls[2].select_slider("Integrated Gradients steps", [8, 16, 32, 64], 16, key="attribution_steps")
    colormaps = sorted(explain.COLORMAPS)
    colormap = controls[3].selectbox("Colormap", colormaps, index=colormaps.index("jet"), key="attribution_colormap")
    opacity = st.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="attribution_opacity")

target_id = int(ids[rank])
query_view = lab.inspect(model, picked)
result_picked = lab.gallery_item(gallery, target_id)
result_view = lab.inspect(model, result_picked)
with st.spinner("Computing Integrated Gradients and Grad-CAM…"):
    maps = lab.attributions(model, picked, index, target_id, branch, steps)
ig = explain.overlay(query_view.display, maps["integrated_gradients"], colormap, opacity)
cam = explain.overlay(query_view.display, maps["gradcam"], colormap, opacity)

st.subheader("Attributions")
what = "the whole embedding" if branch is None else f"branch {branch}"
tiles = [query_view.display, result_view.display, ig, cam]
tile_captions = ["query", f"result: {captions[rank]}", "Integrated Gradients", "Grad-CAM"]
st.image(tiles, caption=[f"Query: {picked.name}", f"Result {captions[rank]}", f"Integrated Gradients ({what})",
                         f"Grad-CAM ({what})"], width=220)

if query_view.attention is not None:
    st.subheader("Attention of the query and of the result")
    entries = query_view.attention.shape[0]
    query_overlays = explain.attention_overlays(query_view.display, query_view.attention, None, colormap, opacity)
    query_assignment = explain.assignment_overlay(query_view.display, query_view.attention, opacity=1.0)
    result_assignment = explain.assignment_overlay(result_view.display, result_view.attention, opacity=1.0)
    st.image([query_assignment, result_assignment], caption=["query: hard assignment", "result: hard assignment"],
             width=220)
    lab.legend(entries, explain.entry_statistics(query_view.attention)["share"])
    st.image(query_overlays, caption=[f"query, entry {n}" for n in range(entries)], width=130)
    tiles += [query_assignment, result_assignment, *query_overlays]
    tile_captions += ["query assignment", "result assignment", *[f"entry {n}" for n in range(entries)]]
else:
    st.info(f"{model.name} is the baseline: it has no attention to show beside the attributions.")

lab.download_png(
    "Attributions and attention (PNG)", lambda: lab.montage(tiles, tile_captions, columns=6, tile=192),
    f"{model.name}-attribution.png", key="attribution_download",
)
