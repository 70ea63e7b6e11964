"""Compare: two checkpoints on the same image: attention side by side, top K, Recall@K."""

from __future__ import annotations

import streamlit as st

from app.lab import controls, figures, galleries, inspection, models, output, passes, picker, sidebar, waiting
from app.lab.settings import checkpoint_dir
from diablo.montage import montage

DEFAULTS = ("demo-pre-dimension.safetensors", "demo-post-feature.safetensors")

st.header("Compare")
st.caption("Two checkpoints on the same image and the same gallery (the sidebar's).")

ctx = sidebar.context()
found = models.list_checkpoints()
if not found:
    st.error(f"No checkpoints in {checkpoint_dir()} to compare.")
    st.stop()
names = list(found)
picks = st.columns(2)
chosen: list[str] = []
for column, default, label, key in zip(picks, DEFAULTS, ("First checkpoint", "Second checkpoint"),
                                       ("compare_a", "compare_b"), strict=True):
    if st.session_state.get(key) not in names:
        fallback = next((n for n in names if n not in chosen), names[0])  # not the first one twice
        st.session_state[key] = default if default in names else fallback
    chosen.append(column.selectbox(label, names, key=key))

loaded: list[models.Model | None] = []
for column, name in zip(picks, chosen, strict=True):
    model, error = models.try_load_model(found[name])
    if model is None:
        column.error(f"{name} failed to load: {error}", icon=":material/error:")
    loaded.append(model)
if not any(loaded):
    st.stop()
gallery_list = [None if m is None else sidebar.gallery_for(ctx, m, show_error=i == 0) for i, m in enumerate(loaded)]
first_gallery = next((g for g in gallery_list if g is not None), None)

settings = st.columns([2, 1, 1, 1])
with settings[0]:
    picked = picker.pick_image("compare", first_gallery, browse_columns=3)
style = controls.overlay_style("compare", settings[1], settings[2])
k = settings[3].slider("Top K", 1, 16, 6, key="compare_k")
if picked is None:
    st.stop()

st.subheader("Attention and top K")
for slot, (column, model, gallery) in enumerate(zip(st.columns(2), loaded, gallery_list, strict=True)):
    if model is None:
        continue
    with column:
        st.markdown(f"**{model.name}** · {model.variant} · {model.config.backbone}")
        view = inspection.inspect(model, picked)
        if view.attention is None:
            st.image(view.display, caption="the baseline has no attention", width=200)
            tiles, tile_captions = [view.display], ["image"]
        else:
            entries = view.attention.shape[0]
            assignment = figures.assignment(view)
            overlays = figures.attention_overlays(view, style)
            st.image([view.display, assignment], caption=[picked.name, "hard assignment"], width=200)
            output.legend(entries, figures.image_statistics(view)["share"])
            st.image(overlays, caption=[f"entry {n}" for n in range(entries)], width=100)
            tiles = [view.display, assignment, *overlays]
            tile_captions = ["image", "assignment", *[f"entry {n}" for n in range(entries)]]
        if gallery is None:
            why = sidebar.refused(ctx, model) if slot else None  # the first slot's was said above
            if why:  # a built index embedded with another model: said in its column
                st.error(why, icon=":material/error:")
            continue
        found = sidebar.require_searchable(model, gallery, key=f"compare_retry_{slot}")
        if not found.complete:
            waiting.follow(found.job, f"Embedding the gallery with {model.name}")
        if found.index is None or len(found.index) < 2:
            continue
        result = inspection.search(model, found.index, picked, k)
        ids, sims = result.ids[0], result.similarities[0]
        captions, marks = output.result_captions(gallery, ids, sims, picked.label)
        hits = "" if picked.label is None else f": {sum(bool(m) for m in marks)} of {len(ids)} of the query's class"
        partial = "" if found.complete else f" (partial: {found.note()})"
        st.markdown(f"Top {len(ids)}{hits}{partial}")
        st.image([galleries.thumbnail_png(gallery, int(i)) for i in ids], caption=captions, width=112)
        output.download_png(
            f"{model.name} (PNG)",
            lambda tiles=tiles, tile_captions=tile_captions, ids=ids, sims=sims, marks=marks, gallery=gallery: (
                montage(
                    [*tiles, *[galleries.thumbnail(gallery, int(i), 160) for i in ids]],
                    [*tile_captions, *[f"{r + 1}. {s:.3f}" for r, s in enumerate(sims)]],
                    columns=max(len(tiles), len(ids)), marks=[None] * len(tiles) + list(marks),
                )
            ),
            f"compare-{model.name}.png", key=f"compare_download_{slot}",
        )

st.subheader("Recall@K on the gallery")
rows = []
for model, gallery in zip(loaded, gallery_list, strict=True):
    if model is None or gallery is None:
        continue
    metrics = passes.searchable(model, gallery).metrics
    if metrics is None:
        st.info(f"{model.name}: Recall@K comes once the whole gallery is embedded.")
        continue
    rows.append({"checkpoint": model.name, "variant": model.variant, **output.metrics_row(metrics)})
if rows:
    st.dataframe(rows, hide_index=True)
    st.caption(f"Leave-one-out over the sidebar's gallery ({len(first_gallery)} images); values in %.")
