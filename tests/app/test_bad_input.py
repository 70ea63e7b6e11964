"""The lab under bad input: every page's upload and the gallery-folder path fed the bad-image corpus
(tests/app/bad_images.py). Each file gives one clear message (an error or a warning), never an
exception, and the other pages keep working."""

from __future__ import annotations

import re

import pytest
from bad_images import CORPUS, Case, image_folder
from lab_testing import assert_ok, open_page, settle, texts

UPLOAD_PAGES = ("attention", "compare", "retrieval", "attribution")  # the pages with an image picker
GALLERY_PAGES = ("attention", "compare", "embeddings", "retrieval", "attribution", "training")
SKIPPED = re.compile(r"^(\d+) images, 2 classes \(folder/all\)(; (\d+) unreadable files? skipped)?$")


def messages(app) -> list[tuple[str, str]]:
    """The main area's errors and warnings, as (kind, text)."""
    return [("error", t) for t in texts(app.main.error)] + [("warning", t) for t in texts(app.main.warning)]


def gallery_caption(app) -> re.Match[str]:
    found = [m for c in texts(app.sidebar.caption) if (m := SKIPPED.match(c))]
    assert len(found) == 1, texts(app.sidebar.caption)
    return found[0]


@pytest.mark.parametrize("page", UPLOAD_PAGES)
def test_every_upload_gives_one_clear_message(app, page):
    open_page(app, page)
    app.radio(key=f"{page}_source").set_value("Upload").run()
    for case in CORPUS:
        app.file_uploader(key=f"{page}_upload").set_value((case.name, case.data, "application/octet-stream")).run()
        assert_ok(app)
        shown = messages(app)
        assert len(shown) == 1, (case.name, shown)
        kind, text = shown[0]
        assert kind == case.upload and case.name in text and case.says in text, (case.name, shown)
        if case.upload == "warning":  # converted and used: the page goes on with it
            assert any(case.name in c for image in app.image for c in image.captions), case.name
    other = "training" if page != "training" else "attention"
    app.switch_page(f"views/{other}.py").run()
    assert_ok(app)
    assert not app.main.error


def _use_folder(app, folder) -> None:
    app.run()
    app.radio(key="gallery_kind").set_value("Image folder").run()
    app.text_input(key="gallery_folder").set_value(str(folder)).run()


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_gallery_folder_with_one_bad_file(app, tmp_path, case: Case):
    folder = image_folder(tmp_path / "gallery", [case])
    _use_folder(app, folder)
    assert_ok(app)
    app.switch_page("views/retrieval.py").run()  # embeds the gallery (in the background): every file is read
    assert_ok(app)
    settle(app)
    assert_ok(app)
    shown, skipped = int(gallery_caption(app)[1]), int(gallery_caption(app)[3] or 0)
    if case.readable:
        assert (shown, skipped) == (7, 0)
    else:  # skipped while embedding (and still listed) or dropped when the folder is read
        assert skipped == 1 and shown in (6, 7)
        assert any(c.startswith(f"{shown} images searched leave-one-out") and "1 unreadable file skipped" in c
                   for c in texts(app.main.caption)), texts(app.main.caption)
    assert not app.main.error and len(texts(app.image)) >= 1
    app.number_input(key="retrieval_item").set_value(shown - 1).run()  # the last file: the bad one if listed
    assert_ok(app)
    errors = texts(app.main.error)
    if case.readable or shown == 6:
        assert not errors, errors
    else:
        assert len(errors) == 1 and errors[0].startswith(f"Cannot read gallery image #{shown - 1}") \
            and case.name in errors[0], errors


def test_gallery_folder_of_the_whole_corpus_and_a_symlink_loop(app, tmp_path):
    folder = image_folder(tmp_path / "gallery", CORPUS, loop=True)
    readable = 6 + sum(c.readable for c in CORPUS)
    _use_folder(app, folder)
    for page in GALLERY_PAGES:
        app.switch_page(f"views/{page}.py").run()
        assert_ok(app)
        assert not app.main.error, (page, texts(app.main.error))
    app.run()
    shown, skipped = int(gallery_caption(app)[1]), int(gallery_caption(app)[3] or 0)
    unreadable = sum(not c.readable for c in CORPUS)
    assert skipped in (unreadable, unreadable + 1)  # the self-pointing symlink is never listed, or skipped
    assert shown in (readable, readable + unreadable)


def test_gallery_folder_of_unreadable_files_only(app, tmp_path):
    folder = tmp_path / "gallery"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for case in CORPUS:
            if not case.readable:
                (folder / label / case.name).write_bytes(case.data)
    _use_folder(app, folder)
    for page in GALLERY_PAGES:
        app.switch_page(f"views/{page}.py").run()
        assert_ok(app)
        shown = messages(app)
        if page in ("compare", "training"):  # they pick their own checkpoints; the gallery is optional
            assert len([m for m in shown if "gallery" in m[1]]) <= 1, (page, shown)
        else:
            assert len(shown) == 1 and "gallery" in shown[0][1], (page, shown)
