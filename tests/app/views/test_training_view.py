"""The Training page: loss and Recall@K / MAP@R curves from checkpoints' metrics history."""

from __future__ import annotations

from lab_testing import assert_ok, open_page, texts


def test_curves_of_the_sidebar_checkpoint(app):
    open_page(app, "training")
    assert_ok(app)
    assert "Training" in texts(app.header)
    assert app.multiselect(key="training_checkpoints").value == ["demo-pre-dimension.safetensors"]
    assert len(app.get("plotly_chart")) == 2


def test_several_checkpoints_and_one_without_history(app):
    open_page(app, "training")
    app.multiselect(key="training_checkpoints").set_value(
        ["demo-pre-dimension.safetensors", "demo-post-feature.safetensors", "no-history.safetensors"]
    ).run()
    assert_ok(app)
    assert len(app.get("plotly_chart")) == 2
    assert any("no metrics history" in i for i in texts(app.info))
