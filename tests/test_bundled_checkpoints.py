"""checkpoints/: the five bundled demo checkpoints are what their names and metadata say, and carry digests."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import diablo
from diablo.checkpoint import UnverifiedCheckpointWarning, read_checkpoint, read_metadata
from diablo.data import build_transform, k_list
from diablo.evaluation import embed, evaluate

FOLDER = Path(__file__).resolve().parents[1] / "checkpoints"
NAMES = ["baseline", "pre-feature", "post-feature", "pre-dimension", "post-dimension"]


@pytest.mark.parametrize("name", NAMES)
def test_demo_checkpoint_is_its_variant_with_its_test_figures(name):
    path = FOLDER / f"demo-{name}.safetensors"
    assert path.stat().st_size <= 15 * 2**20
    config, meta = read_metadata(path)
    assert config.variant == name and config.backbone == "mobilenet_v2"
    assert config.num_entries == 8 and config.embedding_dim == 512
    assert meta["train_config"]["dataset"] == "synthetic" and meta["evaluated_on"] == "test"
    assert meta["epoch"] == meta["train_config"]["epochs"]  # the last epoch: no selection on the test classes
    assert meta["command"].startswith("python -m diablo.train --preset demo")
    metrics = meta["test_metrics"]
    assert {f"recall@{k}" for k in k_list("synthetic")} | {"map@r", "nmi"} <= set(metrics)
    recalls = [metrics[f"recall@{k}"] for k in k_list("synthetic")]
    assert all(0 <= r <= 1 for r in recalls) and recalls == sorted(recalls)


def test_the_baseline_gives_its_recorded_recall():
    """The exported float16 weights reproduce the float32 figures recorded at training, within rounding."""
    model, config, meta = diablo.load_checkpoint(FOLDER / "demo-baseline.safetensors", device="cpu")
    size = meta["train_config"]["image_size"]
    data = diablo.load_dataset("synthetic", split="test", transform=build_transform(False, size))
    result = evaluate(*embed(model, data, batch_size=100, progress=False), (1,), with_nmi=False)
    assert result["recall@1"] == pytest.approx(meta["test_metrics"]["recall@1"], abs=0.01)
    assert result["map@r"] == pytest.approx(meta["test_metrics"]["map@r"], abs=0.005)


@pytest.mark.parametrize("name", NAMES)
def test_demo_checkpoint_carries_digests_that_verify(name):
    path = FOLDER / f"demo-{name}.safetensors"
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    assert {"config_sha256", "meta_sha256", "weights_sha256"} <= set(metadata)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedCheckpointWarning)
        tensors, config, _ = read_checkpoint(path)  # refuses a file that does not match its digests
    assert config.variant == name
    assert tensors["embedding.weight"].dtype == torch.float16  # exported as float16, digested as stored
