"""The Attribution page: IG and Grad-CAM of a query's similarity to a result, beside the attention."""

from __future__ import annotations

from lab_testing import assert_ok, open_page, settle, texts


def captions(app) -> list[str]:
    return [c for image in app.image for c in image.captions]


def test_attributions_beside_the_attention(app):
    open_page(app, "attribution")
    settle(app)
    assert_ok(app)
    assert "Attribution" in texts(app.header)
    shown = captions(app)
    assert "Integrated Gradients (the whole embedding)" in shown
    assert "Grad-CAM (the whole embedding)" in shown
    assert "query: hard assignment" in shown and "result: hard assignment" in shown
    assert len(app.get("download_button")) == 1


def test_another_result_and_one_branch(app):
    open_page(app, "attribution")
    settle(app)
    app.select_slider(key="attribution_steps").set_value(8)
    app.selectbox(key="attribution_result").set_value(2)
    app.selectbox(key="attribution_branch").set_value("Branch 1").run()
    assert_ok(app)
    assert "Integrated Gradients (branch 1)" in captions(app)


def test_baseline(app):
    app.run()
    app.selectbox(key="checkpoint").set_value("demo-baseline.safetensors").run()
    app.switch_page("views/attribution.py").run()
    settle(app)
    assert_ok(app)
    assert "Grad-CAM (the whole embedding)" in captions(app)
    assert any("baseline" in i for i in texts(app.info))
