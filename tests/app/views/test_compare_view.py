"""The Compare page: two checkpoints side by side on one image, their top K and Recall@K."""

from __future__ import annotations

from lab_testing import assert_ok, open_page, settle, texts


def test_defaults_side_by_side(app):
    open_page(app, "compare")
    settle(app)
    assert_ok(app)
    assert "Compare" in texts(app.header)
    assert app.selectbox(key="compare_a").value == "demo-pre-dimension.safetensors"
    assert app.selectbox(key="compare_b").value == "demo-post-feature.safetensors"
    captions = [c for image in app.image for c in image.captions]
    assert captions.count("hard assignment") == 2
    assert captions.count("entry 0") == 2
    table = app.dataframe[0].value
    assert list(table["checkpoint"]) == ["demo-pre-dimension", "demo-post-feature"]
    assert "Recall@1" in table.columns and "MAP@R" in table.columns
    assert len(app.get("download_button")) == 2


def test_switch_to_the_baseline_and_another_query(app):
    open_page(app, "compare")
    settle(app)
    app.selectbox(key="compare_b").set_value("demo-baseline.safetensors").run()
    settle(app)
    assert_ok(app)
    assert any(c == "the baseline has no attention" for image in app.image for c in image.captions)
    app.number_input(key="compare_item").set_value(9)
    app.slider(key="compare_k").set_value(2).run()
    assert_ok(app)
    assert list(app.dataframe[0].value["checkpoint"]) == ["demo-pre-dimension", "demo-baseline"]
