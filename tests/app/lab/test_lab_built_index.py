"""The gallery source "Built index (directory)": an index made by diablo.gallery_build.build_index opens
without embedding anything, Retrieval equals a direct search of it, a checkpoint of another model is
refused in one line, and the Embeddings page maps a seeded sample of a large index (and says so)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lab_testing import assert_ok, figure_titles, png, settle, texts
from tiny_gallery import tiny_checkpoint


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory) -> dict[str, Path]:
    from diablo.gallery_build import build_index

    root = tmp_path_factory.mktemp("built-index")
    checkpoint = tiny_checkpoint(root / "tiny.safetensors")
    other = tiny_checkpoint(root / "other.safetensors", seed=1)
    out = root / "index"
    build_index(checkpoint, "folder", out, root=folder, kind="flat", device="cpu", progress=False, command="test")
    return {"checkpoint": checkpoint, "other": other, "index": out}


def _select(app, checkpoint: Path, index: Path, page: str):
    app.run()
    app.text_input(key="checkpoint_path").set_value(str(checkpoint))
    app.radio(key="gallery_kind").set_value("Built index (directory)").run()
    app.text_input(key="gallery_index").set_value(str(index)).run()
    app.switch_page(f"views/{page}.py")
    app.run()
    return app


def test_retrieval_equals_a_direct_search_of_the_index(app, built, monkeypatch):
    from app.lab import passes
    from diablo.index import open_index

    def no_embedding(*args, **kwargs):
        raise AssertionError("a built index must not be embedded again")

    monkeypatch.setattr(passes, "_embedding_steps", no_embedding)
    _select(app, built["checkpoint"], built["index"], "retrieval")
    settle(app)
    assert_ok(app)
    assert not app.error, texts(app.error)
    assert any("24 images, 4 classes (built index of folder/test, flat)" in c for c in texts(app.sidebar.caption))
    index = open_index(built["index"])
    want = index.search(index.rows(np.array([0])), 8, exclude=np.array([0]))
    captions = [c for image in app.image for c in image.captions if c[:1] in "✓✗"]
    ids = [int(c.split(" · ")[0].split("#")[1]) for c in captions]
    sims = [float(c.split(" · ")[1]) for c in captions]
    assert ids == want.ids[0].tolist()
    assert sims == pytest.approx(want.similarities[0].tolist(), abs=6e-4)
    assert "Recall@1" in app.dataframe[-1].value.columns  # scored in the background, not embedded


def test_another_checkpoint_is_refused_in_one_line(app, built):
    _select(app, built["other"], built["index"], "retrieval")
    assert_ok(app)
    (error,) = texts(app.error)
    assert "another model" in error and "\n" not in error
    app.switch_page("views/training.py").run()  # other pages keep working
    assert_ok(app)


def test_embeddings_page_maps_a_seeded_sample(app, built, monkeypatch):
    from app.lab import projections

    monkeypatch.setattr(projections, "SAMPLE_LIMIT", 10)
    _select(app, built["checkpoint"], built["index"], "embeddings")
    assert_ok(app)
    assert not app.error, texts(app.error)
    assert any("random sample of 10" in c and "seed 0" in c for c in texts(app.caption)), texts(app.caption)
    assert any("a sample of 10 of 24 gallery images" in t for t in figure_titles(app)), figure_titles(app)


def test_attention_reads_a_gallery_image_from_its_recorded_path(app, built):
    from diablo.index import open_index

    _select(app, built["checkpoint"], built["index"], "attention")
    app.number_input(key="attention_item").set_value(3).run()
    settle(app)
    assert_ok(app)
    assert not app.error, texts(app.error)
    name = Path(open_index(built["index"]).paths[3]).name
    assert any(name in c for image in app.image for c in image.captions), [i.captions for i in app.image]


def test_compare_refuses_each_other_model_in_its_own_line(app, built):
    _select(app, built["checkpoint"], built["index"], "compare")  # the stand-ins embedded nothing of it
    assert_ok(app)
    (error,) = texts(app.error)  # the first checkpoint's; no gallery left to pick from: an upload
    assert "another model" in error
    app.file_uploader(key="compare_upload").set_value(("query.png", png((40, 40)), "image/png")).run()
    assert_ok(app)
    errors = texts(app.error)  # both checkpoints still show their attention; each refusal is one line
    assert len(errors) == 2 and all("another model" in e for e in errors), errors
    assert len({e.split(" with ")[0] for e in errors}) == 2
