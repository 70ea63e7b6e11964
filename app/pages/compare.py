"""Compare: two checkpoints on the same image: attention side by side, top K, Recall@K."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

if (_root := str(Path(__file__).resolve().parents[2])) not in sys.path:
    sys.path.insert(0, _root)  # a deep link on a fresh server runs this page without app/main.py

from app import lab  # noqa: E402
from diablo import explain  # noqa: E402

DEFAULTS = ("demo-pre-dimension.safetensors", "demo-post-feature.safetensors")

st.header("Compare")
st.caption("Two checkpoints on the same image and the same gallery (the sidebar's).")

ctx = lab.context()
found = lab.list_checkpoints()
if not found:
    st.error(f"No checkpoints in {lab.checkpoint_dir()} to compare.")
    st.stop()
names = list(found)
picks = st.columns(2)
chosen = []
for column, default, label, key in zip(picks, DEFAULTS, ("First checkpoint", "Second checkpoint"),
                                       ("compare_a", "compare_b"), strict=True):
    if st.session_state.get(key) not in names:
        fallback = next((n for n in names if n not in chosen), names[0])  # not the first one twice
        st.session_state[key] = default if default in names else fallback
    chosen.append(column.selectbox(label, names, key=key))

models: list[lab.Model | None] = []
for column, name in zip(picks, chosen, strict=True):
    model, error = lab.try_load_model(found[name])
    if model is None:
        column.error(f"{name} failed to load: {error}", icon=":material/error:")
    models.append(model)
loaded = [m for m in models if m is not None]
if not loaded:
    st.stop()
galleries = [None if m is None else lab.gallery_for(ctx, m, show_error=i == 0) for i, m in enumerate(models)]
first_gallery = next((g for g in galleries if g is not None), None)

settings = st.columns([2, 1, 1, 1])
with settings[0]:
    picked = lab.pick_image("compare", first_gallery, browse_columns=3)
colormaps = sorted(explain.COLORMAPS)
colormap = settings[1].selectbox("Colormap", colormaps, index=colormaps.index("jet"), key="compare_colormap")
opacity = settings[2].slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="compare_opacity")
k = settings[3].slider("Top K", 1, 16, 6, key="compare_k")
if picked is None:
    st.stop()

st.subheader("Attention and top K")
for slot, (column, model, gallery) in enumerate(zip(st.columns(2), models, galleries, strict=True)):
    if model is None:
        continue
    with column:
        st.markdown(f"**{model.name}** · {model.variant} · {model.config.backbone}")
        view = lab.inspect(model, picked)
        if view.attention is None:
            st.image(view.display, caption="the baseline has no attention", width=200)
            tiles, tile_captions = [view.display], ["image"]
        else:
            entries = view.attention.shape[0]
            assignment = explain.assignment_overlay(view.display, view.attention, opacity=1.0)
            overlays = explain.attention_overlays(view.display, view.attention, None, colormap, opacity)
            shares = explain.entry_statistics(view.attention)["share"]
            st.image([view.display, assignment], caption=["image", "hard assignment"], width=200)
            lab.legend(entries, shares)
            st.image(overlays, caption=[f"entry {n}" for n in range(entries)], width=100)
            tiles = [view.display, assignment, *overlays]
            tile_captions = ["image", "assignment", *[f"entry {n}" for n in range(entries)]]
        if gallery is None:
            continue
        index = lab.gallery_index(model, gallery)
        result = lab.search(model, index, picked, k)
        ids, sims = result.ids[0], result.similarities[0]
        captions, marks = lab.result_captions(gallery, ids, sims, picked.label)
        hits = "" if picked.label is None else f": {sum(bool(m) for m in marks)} of {len(ids)} of the query's class"
        st.markdown(f"Top {len(ids)}{hits}")
        st.image([lab.thumbnail(gallery, int(i)) for i in ids], caption=captions, width=112)
        lab.download_png(
            f"{model.name} (PNG)",
            lambda tiles=tiles, tile_captions=tile_captions, ids=ids, sims=sims, marks=marks, gallery=gallery: (
                lab.montage(
                    [*tiles, *[lab.thumbnail(gallery, int(i), 160) for i in ids]],
                    [*tile_captions, *[f"{r + 1}. {s:.3f}" for r, s in enumerate(sims)]],
                    columns=max(len(tiles), len(ids)), marks=[None] * len(tiles) + list(marks),
                )
            ),
            f"compare-{model.name}.png", key=f"compare_download_{slot}",
        )

st.subheader("Recall@K on the gallery")
rows = []
for model, gallery in zip(models, galleries, strict=True):
    if model is None or gallery is None:
        continue
    metrics = lab.gallery_metrics(model, gallery)
    rows.append({"checkpoint": model.name, "variant": model.variant, **lab.metrics_row(metrics)})
if rows:
    st.dataframe(rows, hide_index=True)
    st.caption("Leave-one-out over the sidebar's gallery; values in %.")
