"""Retrieval: the top K of a query in the gallery, each result's similarity split by branch, and
why the query and a chosen result match (entry by entry, place by place)."""

from __future__ import annotations

import streamlit as st

from app.lab import controls, figures, galleries, inspection, output, passes, picker, sidebar, waiting
from diablo.montage import montage

COLUMNS = 4  # results per row
REFRESH_S = 2.0  # seconds between two searches while the gallery is being embedded
PLACES = {
    "pre": "pre-attention: the places are psi's output grid ({grid}), half the side of the backbone map F, i.e. "
           "the maps H^n = psi(N A^n ⊙ F) that each branch pools",
    "post": "post-attention: the places are the grid of G = psi(F) ({grid}), the attention's own grid",
    "none": "the baseline: one branch, the places are the backbone's last feature map ({grid})",
}

st.header("Retrieval")
st.caption(
    "A DIABLO embedding is N unit branches concatenated and divided by √N, so its cosine is the mean of the "
    "N branch cosines: the chart shows each branch's part of every result (cosine_n / N), which sum to the "
    "similarity."
)

ctx = sidebar.context()
model = sidebar.require_model(ctx)
gallery = sidebar.require_gallery(ctx, model)
if len(gallery) < 2:
    st.warning("Retrieval needs a gallery of at least 2 images.")
    st.stop()
first = sidebar.require_searchable(model, gallery)


def explain(picked: inspection.Picked, ids: list[int], captions: list[str]) -> None:
    """'Why these two match': the decomposition of the query's cosine with a chosen result."""
    st.subheader("Why these two match")
    row = st.columns(5)
    rank = row[0].selectbox("Result to explain", list(range(len(ids))), format_func=lambda r: captions[r],
                            key="retrieval_match")
    entries = model.branches
    names = ["all entries", *[f"entry {n}" for n in range(entries)]]
    chosen = row[1].selectbox("Links of", names, key="retrieval_match_entry")
    focus = None if chosen == names[0] else names.index(chosen) - 1
    count = row[2].slider("Links", 1, inspection.LINKS, 8, key="retrieval_match_links")
    style = controls.overlay_style("retrieval", row[3], row[4])
    result = inspection.gallery_item(gallery, int(ids[rank]))
    found = inspection.match(model, picked, result)
    grid = "{} x {} places".format(*found.query_map.shape[1:])
    st.caption(
        f"The cosine of the query and result {rank + 1} written exactly as a sum over dictionary entries and pairs "
        "of places (Stylianou et al., WACV 2019, per entry): each map shows a place's part of its entry's share "
        f"(one scale for both images, negative parts dark). For {PLACES[found.attention].format(grid=grid)}."
    )
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.image(figures.match_links(found, focus, style, count), width="stretch",
                 caption=f"The {count} strongest region-to-region links of "
                         f"{'all entries' if focus is None else f'entry {focus}'} (query left, result right)")
    with right:
        st.metric("Cosine of the pair", f"{found.cosine:.4f}")
        st.table(  # a static table: lighter to draw than a data grid
            {"entry": list(range(entries)),
             "share of the cosine": [f"{float(v):.4f}" for v in found.entry_share],
             "% of the cosine": [f"{100 * float(v) / found.cosine:.1f}" if found.cosine else "n/a"
                                 for v in found.entry_share]},
            hide_index=True,
        )
        st.caption(f"The {entries} shares sum to the cosine: Σ = {float(found.entry_share.sum()):.4f}.")
        output.download_png("Why these two match (PNG)", lambda: figures.match_figure(found, focus, style, count),
                            f"{model.name}-match-{picked.name}-{rank + 1}.png", key="retrieval_match_download")
    pairs, pair_captions = [], []
    for n in range(entries):
        pairs += figures.match_overlays(found, n, style)
        share = float(found.entry_share[n])
        pair_captions += [f"entry {n} · query", f"entry {n} · result · share {share:+.4f}"]
    st.image(pairs, caption=pair_captions, width=120)


@st.fragment(run_every=None if first.complete else REFRESH_S)
def results() -> None:
    """The query picker, the top K and the match explanation: reruns alone on their widgets, and
    every REFRESH_S while the gallery is being embedded (search over what is embedded so far)."""
    now = sidebar.require_searchable(model, gallery)
    if now.complete and not first.complete:
        st.rerun(scope="app")  # once: the whole page, with Recall@K and without polling
    pick_column, result_column = st.columns([1, 3], gap="large")
    with pick_column:
        picked = picker.pick_image("retrieval", gallery, label="Query")
        k = st.slider("Top K", 1, max(2, min(32, len(gallery) - 1)), min(8, len(gallery) - 1), key="retrieval_k")
    if picked is None:
        return
    if now.index is None or len(now.index) < 2:
        with result_column:
            waiting.show_progress(now.job, f"Embedding the gallery with {model.name}")
        return
    result = inspection.search(model, now.index, picked, k)  # a gallery query is left out of its own results
    query_image = inspection.inspect(model, picked).display
    ids, similarities, shares = result.ids[0], result.similarities[0], result.branch_shares[0]  # (k,) (k,) (k, N)
    captions, marks = output.result_captions(gallery, ids, similarities, picked.label)

    with result_column:
        top = st.columns([1, 3])
        top[0].image(query_image, caption=f"Query: {picked.name} ({picked.note})", width="stretch")
        with top[1]:
            if picked.label is not None:
                st.metric("Same class in the top K", f"{sum(bool(m) for m in marks)} / {len(ids)}")
            else:
                st.info("An uploaded query has no label: results are not marked right or wrong.")
            if not now.complete:
                waiting.show_progress(now.job, f"Partial results: searching the {now.note()}")
            output.download_png(
                "Results (PNG)",
                lambda: montage(
                    [query_image, *[galleries.thumbnail(gallery, int(i), 256) for i in ids]],
                    ["query", *[f"{r + 1}. {s:.3f}" for r, s in enumerate(similarities)]],
                    columns=5, marks=[None, *marks],
                ),
                f"{model.name}-retrieval.png", key="retrieval_download",
            )

    partial = "" if now.complete else f" (partial: {now.note()})"
    st.subheader(f"Top {len(ids)} results{partial}")
    for start in range(0, len(ids), COLUMNS):
        for column, r in zip(st.columns(COLUMNS), range(start, min(start + COLUMNS, len(ids))), strict=False):
            column.image(galleries.thumbnail_png(gallery, int(ids[r]), 160), caption=captions[r], width="stretch")
    if model.branches > 1:
        figures.show_figure(figures.branch_shares_figure(shares, similarities), f"{model.name}-branch-shares",
                            key="retrieval_branches")
    explain(picked, [int(i) for i in ids], captions)


results()

st.subheader("Recall@K on the gallery")
if first.metrics is None and gallery.built is not None:
    st.info(f"Recall@K and MAP@R of a built index are computed in the background, for indexes of at most "
            f"{passes.BUILT_METRICS_MAX:,} images (this one has {len(gallery):,}).")
elif first.metrics is None:
    st.info(f"Recall@K and MAP@R are computed once the whole gallery is embedded ({first.note()}).")
else:
    st.dataframe([{"checkpoint": model.name, **output.metrics_row(first.metrics)}], hide_index=True)
    skipped = len(gallery.skipped)
    st.caption(f"{len(gallery)} images searched leave-one-out (each image queries the rest)"
               + (f", {skipped} unreadable file{'s' if skipped != 1 else ''} skipped" if skipped else "")
               + "; values in %.")
