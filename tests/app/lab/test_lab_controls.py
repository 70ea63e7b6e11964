"""app.lab.controls: a control means the same thing on every page (labels, options, defaults)."""

from __future__ import annotations

from lab_testing import assert_ok, open_page, settle

from app.lab.controls import COLORMAP, OPACITY, WHOLE, colormaps, describe_embedding, embedding_options


def test_embedding_choice_is_labelled_the_same_on_every_page(app):
    seen = {}
    for page in ("embeddings", "attribution"):
        open_page(app, page)
        settle(app)  # both wait for the gallery's embedding (a background pass)
        assert_ok(app)
        box = app.selectbox(key=f"{page}_branch")
        seen[page] = (box.label, box.options, box.value)
    assert seen["embeddings"] == seen["attribution"] == ("Embedding", embedding_options(4), WHOLE)


def test_overlay_style_is_the_same_on_every_page(app):
    seen = {}
    for page in ("attention", "compare", "attribution", "retrieval"):
        open_page(app, page)
        settle(app)
        assert_ok(app)
        colormap, opacity = app.selectbox(key=f"{page}_colormap"), app.slider(key=f"{page}_opacity")
        seen[page] = (colormap.label, colormap.options, colormap.value, opacity.label, opacity.value,
                      opacity.min, opacity.max, opacity.step)
    assert seen["attention"] == seen["compare"] == seen["attribution"] == seen["retrieval"]
    assert seen["attention"][1:3] == (colormaps(), COLORMAP) and seen["attention"][4] == OPACITY


def test_embedding_options_and_descriptions():
    assert embedding_options(1) == [WHOLE]
    assert embedding_options(3) == [WHOLE, "Branch 0", "Branch 1", "Branch 2"]
    assert describe_embedding(None) == "the whole embedding" and describe_embedding(2) == "branch 2"
