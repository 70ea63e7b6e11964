"""The Embeddings page: PCA at once, UMAP from the background job, selections as image grids."""

from __future__ import annotations

import numpy as np
import pytest
from lab_testing import assert_ok, figure_titles, open_page, settle, texts

from app.lab import galleries, models, passes, projections, settings


class _NeverDone:
    """Stands in for diablo.projection.ProjectionJob: a UMAP fit that is still running."""

    def __init__(self, *args, **kwargs):
        pass

    def done(self):
        return False


@pytest.fixture
def fresh_jobs():
    projections.forget_projection_jobs()
    yield
    projections.forget_projection_jobs()


def test_pca_scatter_of_full_embedding_and_branch(app):
    open_page(app, "embeddings")
    settle(app)
    assert_ok(app)
    assert "Embeddings" in texts(app.header)
    assert figure_titles(app) == ["PCA of the whole embedding of 12 gallery images (demo-pre-dimension)"]
    assert any("Draw a box or a lasso" in i for i in texts(app.info))
    app.selectbox(key="embeddings_branch").set_value("Branch 2").run()
    assert_ok(app)
    assert figure_titles(app) == ["PCA of branch 2 of 12 gallery images (demo-pre-dimension)"]


def test_umap_runs_in_the_background_and_pca_shows_meanwhile(app, fresh_jobs, monkeypatch):
    import diablo.projection

    monkeypatch.setattr(diablo.projection, "ProjectionJob", _NeverDone)
    open_page(app, "embeddings")
    settle(app)
    app.radio(key="embeddings_method").set_value("UMAP").run()
    assert_ok(app)
    assert len(app.get("plotly_chart")) == 1  # the PCA stays on screen
    assert any("Computing UMAP" in p.proto.text for p in app.get("progress"))
    assert app.button(key="embeddings_refresh")


def test_umap_from_the_disk_cache(app, fresh_jobs, monkeypatch):
    import diablo.projection

    open_page(app, "embeddings")
    settle(app)
    # write the UMAP result where projections.projection looks for it, then no job is started
    model = models.load_model(models.checkpoint_ref(models.list_checkpoints()["demo-pre-dimension.safetensors"]))
    gallery = galleries.load_gallery(galleries.default_gallery(), model.image_size)
    index = passes.searchable(model, gallery).index
    path = diablo.projection.cache_path(settings.cache_dir() / "projections", index.key, "umap", None,
                                        index.num_branches, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(0).normal(size=(len(gallery), 2)).astype(np.float32))
    monkeypatch.setattr(diablo.projection, "ProjectionJob", None)  # would fail if a job were started
    app.radio(key="embeddings_method").set_value("UMAP").run()
    assert_ok(app)
    assert not app.get("progress")
    assert len(app.get("plotly_chart")) == 1
