"""The Attention page (the app's default page), the sidebar, and bad input handling."""

from __future__ import annotations

from lab_testing import assert_ok, png, settle, texts


def captions(app) -> list[str]:
    return [c for image in app.image for c in image.captions]


def test_page_renders_overlays_assignment_and_statistics(app):
    app.run()
    assert_ok(app)
    assert "Attention" in texts(app.header)
    assert app.selectbox(key="checkpoint").value == "demo-pre-dimension.safetensors"
    assert any("Device: **" in c for c in texts(app.sidebar.caption))
    assert any("pre-dimension" in m for m in texts(app.sidebar.markdown))  # the model card
    shown = captions(app)
    assert any(c.startswith("entry 0:") for c in shown)  # the entry in focus
    assert sum(c.startswith("entry ") and "·" in c for c in shown) == 4  # one overlay per entry (N = 4)
    assert any(c.startswith("Hard assignment") for c in shown)
    assert any("entry 3" in m for m in texts(app.markdown))  # the legend
    assert len(app.get("download_button")) == 2
    assert "Entries over the gallery" in texts(app.subheader)
    settle(app)  # the gallery's entry statistics run in the background
    assert_ok(app)
    assert len(app.get("plotly_chart")) == 2 and len(app.dataframe) == 1
    assert not app.get("progress")


def test_switch_entry_channel_colormap_and_image(app):
    app.run()
    app.selectbox(key="attention_entry").set_value(2).run()
    assert_ok(app)
    assert any(c.startswith("entry 2:") for c in captions(app))
    app.radio(key="attention_channel_mode").set_value("One channel").run()
    app.number_input(key="attention_channel").set_value(5).run()
    assert_ok(app)
    assert any("channel 5" in c for c in captions(app))
    app.selectbox(key="attention_colormap").set_value("viridis")
    app.slider(key="attention_opacity").set_value(0.8)
    app.toggle(key="attention_stretch").set_value(True).run()
    assert_ok(app)
    app.number_input(key="attention_item").set_value(7).run()
    assert_ok(app)
    assert any("#7" in c for c in captions(app))


def test_pick_from_the_gallery_grid(app):
    app.run()
    app.button(key="attention_pick_3").click().run()
    assert_ok(app)
    assert app.number_input(key="attention_item").value == 3


def test_switch_checkpoint_feature_wise_and_baseline(app):
    app.run()
    app.selectbox(key="checkpoint").set_value("demo-post-feature.safetensors").run()
    assert_ok(app)
    assert any("post-feature" in m for m in texts(app.sidebar.markdown))
    assert "attention_channel_mode" not in [r.key for r in app.radio]  # feature-wise: one weight per place
    assert sum(c.startswith("entry ") and "·" in c for c in captions(app)) == 4
    app.selectbox(key="checkpoint").set_value("demo-baseline.safetensors").run()
    assert_ok(app)
    assert any("baseline" in i for i in texts(app.info))


def test_broken_checkpoint_shows_an_error_and_other_pages_work(app, lab_env):
    app.run()
    app.text_input(key="checkpoint_path").set_value(str(lab_env["broken"])).run()
    assert_ok(app)
    assert any("broken.safetensors" in e for e in texts(app.sidebar.error))
    assert any("broken.safetensors" in e for e in texts(app.main.error))
    app.switch_page("views/compare.py").run()  # Compare picks its own checkpoints
    assert_ok(app)
    assert "Compare" in texts(app.header)
    settle(app)
    assert len(app.dataframe) == 1
    app.text_input(key="checkpoint_path").set_value("").run()
    app.switch_page("views/attention.py").run()
    assert_ok(app)
    assert not app.main.error


def test_missing_checkpoint_path(app, lab_env):
    app.run()
    app.text_input(key="checkpoint_path").set_value(str(lab_env["root"] / "nope.safetensors")).run()
    assert_ok(app)
    assert any("not found" in e for e in texts(app.sidebar.error))


def test_folder_without_images_says_so(app, lab_env):
    app.run()
    app.radio(key="gallery_kind").set_value("Image folder").run()
    assert_ok(app)
    app.text_input(key="gallery_folder").set_value(str(lab_env["empty"])).run()
    assert_ok(app)
    assert any("no images found" in e for e in texts(app.sidebar.error))
    assert "Attention" in texts(app.header)  # the page still works, with uploads only


def test_bad_uploads_are_refused_with_a_message(app):
    app.run()
    app.radio(key="attention_source").set_value("Upload").run()
    assert_ok(app)
    app.file_uploader(key="attention_upload").set_value(("notes.txt", b"hello, not an image", "text/plain")).run()
    assert_ok(app)
    assert any("not an image" in e for e in texts(app.error))
    app.file_uploader(key="attention_upload").set_value(("tiny.png", png((8, 8)), "image/png")).run()
    assert any("too small" in e for e in texts(app.error))
    app.file_uploader(key="attention_upload").set_value(("cut.png", png((64, 64))[:200], "image/png")).run()
    assert_ok(app)
    assert any("truncated" in e or "corrupt" in e for e in texts(app.error))


def test_converted_uploads_are_accepted(app):
    app.run()
    app.radio(key="attention_source").set_value("Upload").run()
    for name, data in [("cmyk.jpg", png((64, 48), "CMYK", "JPEG")), ("deep.png", png((64, 64), "I;16")),
                       ("alpha.png", png((40, 40), "RGBA")), ("grey.png", png((40, 40), "L"))]:
        app.file_uploader(key="attention_upload").set_value((name, data, "image/png")).run()
        assert_ok(app)
        assert not app.error, texts(app.error)
        assert any(c.startswith(name) for c in captions(app)), name
