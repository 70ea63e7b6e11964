"""app.lab.figures: the charts pages draw (training curves with an epoch-0 row) and plot selections."""

from __future__ import annotations

import pytest

from app.lab.figures import selected_gallery_ids, training_figures

HISTORY = [
    {"epoch": 0, "recall@1": 0.1, "recall@2": 0.2, "map@r": 0.05},  # the untrained model: no loss
    {"epoch": 1, "loss": 1.5, "recall@1": 0.3, "recall@2": 0.4, "map@r": 0.1},
    {"epoch": 2, "loss": 1.0},  # not evaluated (--eval-every 2)
    {"epoch": 3, "loss": 0.75, "recall@1": 0.5, "recall@2": 0.6, "map@r": 0.2},
]


def test_epoch_zero_is_plotted_and_the_loss_skips_it():
    loss, metrics = training_figures({"run": HISTORY})
    assert len(loss.data) == 1
    assert list(loss.data[0].x) == [1, 2, 3] and list(loss.data[0].y) == [1.5, 1.0, 0.75]
    assert [t.name for t in metrics.data] == ["run · Recall@1", "run · Recall@2", "run · MAP@R"]
    recall = metrics.data[0]
    assert list(recall.x) == [0, 1, 3] and list(recall.y) == pytest.approx([10.0, 30.0, 50.0])
    for fig in (loss, metrics):  # one x axis from epoch 0, whole-epoch ticks
        assert fig.layout.xaxis.tick0 == 0 and fig.layout.xaxis.dtick == 1
        assert fig.layout.xaxis.range[0] < 0 < fig.layout.xaxis.range[1] and fig.layout.xaxis.range[1] > 3


def test_histories_without_epoch_zero_start_at_one_and_bad_values_are_skipped():
    rows = [{"epoch": 1, "loss": 2.0, "recall@1": 0.2}, {"epoch": 2, "loss": float("nan"), "recall@1": True},
            {"epoch": 3, "loss": None, "recall@1": 0.4}]
    loss, metrics = training_figures({"a": rows, "b": [{"loss": 1.0}, {"loss": 0.5}]})  # b: no epoch keys
    assert [list(t.x) for t in loss.data] == [[1], [1, 2]]
    assert [list(t.x) for t in metrics.data] == [[1, 3]]
    assert loss.layout.xaxis.tick0 == 1 and loss.layout.xaxis.range[0] > 0


def test_no_history_gives_empty_charts():
    loss, metrics = training_figures({})
    assert not loss.data and not metrics.data


def test_selected_gallery_ids():
    event = {"selection": {"points": [{"customdata": 4}, {"customdata": [2]}, {"customdata": 4}, {"x": 1}],
                           "point_indices": [0, 1, 2]}}
    assert selected_gallery_ids(event) == [4, 2]
    assert selected_gallery_ids(None) == []
    assert selected_gallery_ids({"selection": {"points": []}}) == []
