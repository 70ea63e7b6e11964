"""diablo.protocol: the §4.2 protocol on a tiny folder dataset (2 splits of 1 epoch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_run import flags

import diablo
from diablo import protocol
from diablo import train as training
from diablo.config import TrainConfig


def test_two_splits_selected_on_validation_and_measured_on_test(folder, tmp_path, capsys):
    out = tmp_path / "protocol"
    argv = ["--splits", "2", *flags(folder, out, "--epochs", "1")]
    assert protocol.main(argv) == 0
    result = json.loads((out / "protocol.json").read_text())
    assert [row["seed"] for row in result["splits"]] == [0, 1]
    held = []
    for row in result["splits"]:
        model, _, meta = diablo.load_checkpoint(out / f"split-{row['seed']}" / "best.safetensors", device="cpu")
        assert meta["evaluated_on"] == "validation"
        config = TrainConfig(**meta["train_config"])
        held.append(set(training.evaluation_sets(config)[0].labels))
        test = training.evaluation_sets(config.replace(val_fraction=0.0))[0]
        assert row == {"seed": row["seed"], **training.measure(model, test, None, config, "cpu")}
    assert held[0] != held[1]  # two different random splits
    for metric, stats in result["summary"].items():
        values = [row[metric] for row in result["splits"]]
        assert stats["mean"] == pytest.approx(np.mean(values)) and stats["std"] == pytest.approx(np.std(values))
    assert "recall@1" in capsys.readouterr().out


def test_a_finished_split_is_not_trained_again(folder, tmp_path, monkeypatch):
    out = tmp_path / "protocol"
    argv = ["--splits", "1", *flags(folder, out, "--epochs", "1")]
    assert protocol.main(argv) == 0
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained a finished split again"))
    assert protocol.main(argv) == 0


@pytest.mark.parametrize("argv", [["--splits", "0"], ["--split-fraction", "1"], ["--resume", "x"],
                                  ["--val-fraction", "0.3"], ["--epochs", "-1"]])
def test_bad_flags(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        protocol.main([*argv, "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err
