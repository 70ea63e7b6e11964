"""The Embeddings page: PCA at once, UMAP from the background job, selections as image grids."""

from __future__ import annotations

import numpy as np
import pytest
from lab_testing import assert_ok, open_page, texts

from app import lab


class _NeverDone:
    """Stands in for diablo.projection.ProjectionJob: a UMAP fit that is still running."""

    def __init__(self, *args, **kwargs):
        pass

    def done(self):
        return False


@pytest.fixture
def fresh_jobs():
    lab.forget_projection_jobs()
    yield
    lab.forget_projection_jobs()


def test_pca_scatter_of_full_embedding_and_branch(app):
    open_page(app, "embeddings")
    assert_ok(app)
    assert "Embeddings" in texts(app.header)
    assert len(app.get("plotly_chart")) == 1
    assert any("Draw a box or a lasso" in i for i in texts(app.info))
    app.selectbox(key="embeddings_branch").set_value("Branch 2").run()
    assert_ok(app)
    assert len(app.get("plotly_chart")) == 1


def test_umap_runs_in_the_background_and_pca_shows_meanwhile(app, fresh_jobs, monkeypatch):
    import diablo.projection

    monkeypatch.setattr(diablo.projection, "ProjectionJob", _NeverDone)
    open_page(app, "embeddings")
    app.radio(key="embeddings_method").set_value("UMAP").run()
    assert_ok(app)
    assert len(app.get("plotly_chart")) == 1  # the PCA stays on screen
    assert any("Computing UMAP" in p.proto.text for p in app.get("progress"))
    assert app.button(key="embeddings_refresh")


def test_umap_from_the_disk_cache(app, fresh_jobs, monkeypatch):
    import diablo.projection

    open_page(app, "embeddings")
    # write the UMAP result where lab.projection looks for it, then no job is started
    model = lab.load_model(lab.checkpoint_ref(lab.list_checkpoints()["demo-pre-dimension.safetensors"]))
    gallery = lab.load_gallery(lab.default_gallery(), model.image_size)
    index = lab.gallery_index(model, gallery)
    path = diablo.projection.cache_path(lab.cache_dir() / "projections", index.key, "umap", None,
                                        index.num_branches, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(0).normal(size=(len(gallery), 2)).astype(np.float32))
    monkeypatch.setattr(diablo.projection, "ProjectionJob", None)  # would fail if a job were started
    app.radio(key="embeddings_method").set_value("UMAP").run()
    assert_ok(app)
    assert not app.get("progress")
    assert len(app.get("plotly_chart")) == 1


def test_selected_gallery_ids():
    event = {"selection": {"points": [{"customdata": 4}, {"customdata": [2]}, {"customdata": 4}, {"x": 1}],
                           "point_indices": [0, 1, 2]}}
    assert lab.selected_gallery_ids(event) == [4, 2]
    assert lab.selected_gallery_ids(None) == []
    assert lab.selected_gallery_ids({"selection": {"points": []}}) == []
