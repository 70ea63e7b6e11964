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


def write_run(folder, epochs: int, best: int | None = None) -> None:
    """DIR/run.json as diablo.train commits it (replaced atomically): epochs 0..epochs, epoch 0 untrained."""
    import json
    import os

    history = [{"epoch": e, "step": 5 * e, **({"loss": 2.0 / e} if e else {}), "recall@1": 0.1 + 0.1 * e,
                "recall@2": 0.2 + 0.1 * e, "map@r": 0.05 * (e + 1)} for e in range(epochs + 1)]
    data = {"format": 1, "epoch": epochs, "step": 5 * epochs, "best_epoch": epochs if best is None else best,
            "history": history}
    tmp = folder / ".run.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, folder / "run.json")


def test_follow_a_run_directory_still_training(app, tmp_path):
    run = tmp_path / "my-run"
    run.mkdir()
    open_page(app, "training")
    app.text_input(key="training_run").set_value(str(run)).run()
    assert_ok(app)
    assert any("holds no run.json yet" in i for i in texts(app.info))
    assert len(app.get("plotly_chart")) == 2  # the sidebar's finished checkpoint still shows

    write_run(run, 0)
    app.run()  # what the fragment's timer does in a browser
    assert_ok(app)
    assert any("Following **my-run** (live): epoch **0**, step 0, best epoch 0" in m for m in texts(app.markdown))
    loss, metrics = figures(app)
    live = [t for t in metrics.data if t.name.startswith("my-run (live)")]
    assert [list(t.x) for t in live] == [[0], [0], [0]]
    assert [t.name for t in loss.data] == ["demo-pre-dimension"]  # no loss at epoch 0

    write_run(run, 2, best=1)
    app.run()
    assert_ok(app)
    assert any("epoch **2**, step 10, best epoch 1" in m for m in texts(app.markdown))
    loss, metrics = figures(app)
    (live_loss,) = [t for t in loss.data if t.name == "my-run (live)"]
    assert list(live_loss.x) == [1, 2] and list(live_loss.y) == pytest.approx([2.0, 1.0])
    (live_r1,) = [t for t in metrics.data if t.name == "my-run (live) · Recall@1"]
    assert list(live_r1.x) == [0, 1, 2] and list(live_r1.y) == pytest.approx([10.0, 20.0, 30.0])
    assert any(t.name == "demo-pre-dimension · Recall@1" for t in metrics.data)  # beside the finished one

    (run / "run.json").write_text("{ damaged")
    app.run()
    assert_ok(app)
    assert any("damaged" in i for i in texts(app.info))
