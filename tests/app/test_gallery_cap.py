"""The gallery size cap keeps the dataset's own items (Fashion-MNIST's in-memory images, the synthetic
set's masks), and a page script runs on its own (no app/main.py, so no page config)."""

from __future__ import annotations

import json

import numpy as np
from conftest import GALLERY, REPO
from lab_testing import assert_ok, texts

from app import lab

CAP = 12


def test_capped_fashion_mnist_gallery_keeps_its_images(lab_env):
    gallery = lab.load_gallery(lab.GallerySpec("fashion-mnist", "test", None, (), CAP), 64)
    assert len(gallery) == CAP and len(gallery.labels) == CAP
    assert gallery.classes[0] == "Sandal" and set(gallery.labels) <= set(range(5))
    assert len(set(gallery.labels)) > 1  # spread over the split, not its first class only
    assert "#" in gallery.path(0)  # a pseudo-path: there is no file to open
    x, label = gallery.dataset[CAP - 1]
    assert tuple(x.shape) == (3, 64, 64) and label == gallery.labels[CAP - 1]
    image = gallery.image(3)
    assert image.mode == "RGB" and image.size == (28, 28)
    tile = lab.thumbnail(gallery, 3)
    assert tile.shape == (28, 28, 3) and tile.dtype == np.uint8
    assert np.array_equal(tile, np.asarray(image))  # the picture itself, not a grey "unreadable" tile
    assert np.array_equal(tile[..., 0], tile[..., 1])  # grey pixels as RGB
    assert lab.gallery_item(gallery, 3).label == gallery.labels[3]


def test_capped_synthetic_gallery_keeps_its_masks(lab_env):
    options = tuple(sorted(json.loads(GALLERY).items()))
    full = lab.load_gallery(lab.GallerySpec("synthetic", "test", None, options), 64)
    capped = lab.load_gallery(lab.GallerySpec("synthetic", "test", None, options, 5), 64)
    assert len(capped) == 5 < len(full)
    ids = capped.dataset.indices
    assert ids[0] == 0 and ids[-1] == len(full) - 1
    assert np.array_equal(capped.dataset.mask(4), full.dataset.mask(ids[4]))
    assert capped.labels == [full.labels[i] for i in ids]
    assert np.array_equal(lab.thumbnail(capped, 2), lab.thumbnail(full, ids[2]))


def test_sidebar_fashion_mnist_gallery_with_a_cap(app):
    app.run()
    app.radio(key="gallery_kind").set_value("Dataset").run()
    app.selectbox(key="gallery_dataset").set_value("fashion-mnist")
    app.number_input(key="gallery_limit").set_value(CAP).run()
    assert_ok(app)
    assert any(f"{CAP} images, 5 classes" in c for c in texts(app.sidebar.caption))
    assert not app.error, texts(app.error)
    # the picker fell back to "Upload" while the sidebar briefly had no gallery (the default dataset, cub,
    # has no root); it stays there until switched back
    app.radio(key="attention_source").set_value("Gallery").run()
    app.number_input(key="attention_item").set_value(CAP - 1).run()
    assert_ok(app)
    assert any(f"#{CAP - 1}" in c for image in app.image for c in image.captions)


def test_a_page_runs_on_its_own(lab_env):
    from streamlit.testing.v1 import AppTest

    page = AppTest.from_file(str(REPO / "app" / "pages" / "training.py"), default_timeout=240)
    page.run()
    assert_ok(page)
    assert "Training" in texts(page.header)
