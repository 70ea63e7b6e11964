"""The Training page: loss and Recall@K / MAP@R curves from checkpoints' metrics history."""

from __future__ import annotations

import pytest
from lab_testing import assert_ok, figures, open_page, texts


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


def _run_with_epoch_zero(path) -> None:
    """A checkpoint whose history starts with the untrained model's evaluation (epoch 0, no loss)."""
    import torch

    import diablo

    torch.manual_seed(0)
    cfg = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="pre", selection="feature",
                             num_entries=4, embedding_dim=64)
    history = [{"epoch": 0, "step": 0, "recall@1": 0.1, "recall@2": 0.2, "map@r": 0.05}]
    history += [{"epoch": e, "step": 10 * e, "loss": 1.0 / e, "recall@1": 0.1 + 0.2 * e, "recall@2": 0.2 + 0.2 * e,
                 "map@r": 0.05 + 0.1 * e} for e in (1, 2)]
    meta = {"train_config": {"dataset": "synthetic", "image_size": 64, "epochs": 2}, "history": history}
    diablo.save_checkpoint(path, diablo.build_model(cfg), cfg, meta=meta)


def test_a_history_with_epoch_zero(app, tmp_path):
    path = tmp_path / "epoch-zero.safetensors"
    _run_with_epoch_zero(path)
    app.run()
    app.text_input(key="checkpoint_path").set_value(str(path)).run()
    app.switch_page("views/training.py").run()
    assert_ok(app)
    assert app.multiselect(key="training_checkpoints").value == ["epoch-zero"]
    loss, metrics = figures(app)
    assert [list(t.x) for t in loss.data] == [[1, 2]]  # no loss at epoch 0: no point, no gap
    assert [t.name for t in metrics.data] == ["epoch-zero · Recall@1", "epoch-zero · Recall@2", "epoch-zero · MAP@R"]
    assert all(list(t.x) == [0, 1, 2] for t in metrics.data)
    assert list(metrics.data[0].y) == pytest.approx([10.0, 30.0, 50.0])
    for fig in (loss, metrics):  # both x axes from epoch 0
        assert fig.layout.xaxis.tick0 == 0 and fig.layout.xaxis.range[0] < 0
    table = app.dataframe[0].value
    assert list(table["epoch"]) == [0, 1, 2] and table["loss"].isna().tolist() == [True, False, False]

    # beside a run without the epoch-0 row: one x axis from 0, each run's own points
    app.multiselect(key="training_checkpoints").set_value(["epoch-zero", "demo-pre-dimension.safetensors"]).run()
    assert_ok(app)
    loss, metrics = figures(app)
    assert [list(t.x) for t in loss.data] == [[1, 2], [1, 2, 3]]
    assert list(metrics.data[3].x) == [1, 2, 3] and metrics.data[3].name == "demo-pre-dimension · Recall@1"
    assert loss.layout.xaxis.tick0 == 0 and loss.layout.xaxis.range[1] > 3
