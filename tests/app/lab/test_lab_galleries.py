"""app.lab.galleries: the size cap keeps the dataset's own items (Fashion-MNIST's in-memory images, the
synthetic set's masks); the sidebar's caption counts images shown and files skipped as unreadable."""

from __future__ import annotations

import json

import numpy as np
from conftest import GALLERY
from lab_testing import assert_ok, texts

from app.lab.galleries import Gallery, GallerySpec, load_gallery, thumbnail
from app.lab.inspection import gallery_item

CAP = 12


def test_capped_fashion_mnist_gallery_keeps_its_images(lab_env):
    gallery = load_gallery(GallerySpec("fashion-mnist", "test", None, (), CAP), 64)
    assert len(gallery) == CAP and len(gallery.labels) == CAP
    assert gallery.classes[0] == "Sandal" and set(gallery.labels) <= set(range(5))
    assert len(set(gallery.labels)) > 1  # spread over the split, not its first class only
    assert "#" in gallery.path(0)  # a pseudo-path: there is no file to open
    x, label = gallery.dataset[CAP - 1]
    assert tuple(x.shape) == (3, 64, 64) and label == gallery.labels[CAP - 1]
    image = gallery.image(3)
    assert image.mode == "RGB" and image.size == (28, 28)
    tile = thumbnail(gallery, 3)
    assert tile.shape == (28, 28, 3) and tile.dtype == np.uint8
    assert np.array_equal(tile, np.asarray(image))  # the picture itself, not a grey "unreadable" tile
    assert np.array_equal(tile[..., 0], tile[..., 1])  # grey pixels as RGB
    assert gallery_item(gallery, 3).label == gallery.labels[3]


def test_capped_synthetic_gallery_keeps_its_masks(lab_env):
    options = tuple(sorted(json.loads(GALLERY).items()))
    full = load_gallery(GallerySpec("synthetic", "test", None, options), 64)
    capped = load_gallery(GallerySpec("synthetic", "test", None, options, 5), 64)
    assert len(capped) == 5 < len(full)
    ids = capped.dataset.indices
    assert ids[0] == 0 and ids[-1] == len(full) - 1
    assert np.array_equal(capped.dataset.mask(4), full.dataset.mask(ids[4]))
    assert capped.labels == [full.labels[i] for i in ids]
    assert np.array_equal(thumbnail(capped, 2), thumbnail(full, ids[2]))


def test_sidebar_fashion_mnist_gallery_with_a_cap(app):
    app.run()
    app.radio(key="gallery_kind").set_value("Dataset").run()
    app.selectbox(key="gallery_dataset").set_value("fashion-mnist")
    app.number_input(key="gallery_limit").set_value(CAP).run()
    assert_ok(app)
    assert any(f"{CAP} images, 5 classes (fashion-mnist/test), evenly spread over " in c
               for c in texts(app.sidebar.caption)), texts(app.sidebar.caption)
    assert not app.error, texts(app.error)
    # the sidebar briefly had no gallery (the default dataset, cub, has no root): the picker offered the
    # upload only, and is back on the gallery now
    assert app.radio(key="attention_source").value == "Gallery"
    app.number_input(key="attention_item").set_value(CAP - 1).run()
    assert_ok(app)
    assert any(f"#{CAP - 1}" in c for image in app.image for c in image.captions)


class _Files:
    """A stand-in dataset: paths, labels, classes and, when given, the files it skipped as unreadable."""

    def __init__(self, n: int, skipped: list[str] | None = None) -> None:
        self.paths = [f"/g/c{i % 2}/{i}.png" for i in range(n)]
        self.labels = [i % 2 for i in range(n)]
        self.classes = ["c0", "c1"]
        if skipped is not None:
            self.skipped = skipped

    def __len__(self) -> int:
        return len(self.paths)


def test_summary_counts_shown_capped_and_skipped_images():
    from diablo.data.subset import IndexSubset

    spec = GallerySpec("folder", "all", "/g")
    plain = Gallery(spec, 64, _Files(10))
    assert plain.skipped == [] and plain.total == 10
    assert plain.summary() == "10 images, 2 classes (folder/all)"
    one = Gallery(spec, 64, _Files(10, ["/g/c0/bad.png"]))
    assert one.summary() == "10 images, 2 classes (folder/all); 1 unreadable file skipped"
    capped = Gallery(spec, 64, IndexSubset(_Files(10, ["/g/a.png", "/g/b.png"]), [0, 5, 9]))
    assert capped.skipped == ["/g/a.png", "/g/b.png"] and capped.total == 10
    assert capped.summary() == "3 images, 2 classes (folder/all), evenly spread over 10; 2 unreadable files skipped"
