"""diablo.gallery_service: passes run a chunk at a time give what one whole-dataset call gives, and
every partial result is the prefix of the dataset in its order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import diablo
from diablo.evaluation import embed
from diablo.explain import dataset_entry_statistics
from diablo.gallery_service import embedding_pass, entry_statistics_pass, merge_entry_statistics


class _Images(TensorDataset):
    """Eleven random 64 px images with labels 0, 1, 2, ... (an int label per item)."""

    def __getitem__(self, index: int):
        x, y = super().__getitem__(index)
        return x, int(y)


@pytest.fixture(scope="module")
def images() -> _Images:
    torch.manual_seed(0)
    return _Images(torch.randn(11, 3, 64, 64), torch.arange(11) % 3)


def _model(attention: str, selection: str = "dimension") -> torch.nn.Module:
    torch.manual_seed(1)
    cfg = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention=attention, selection=selection,
                             num_entries=4, embedding_dim=32)
    return diablo.build_model(cfg).eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_embedding_pass_gives_embed_s_numbers_chunk_by_chunk(images, channels_last):
    model = _model("pre")
    whole, labels = embed(model, images, batch_size=4, progress=False)
    steps = [(e.copy(), y.copy()) for e, y in embedding_pass(model, images, chunk=4, channels_last=channels_last)]
    assert [len(e) for e, _ in steps] == [4, 8, 11]  # the last chunk is smaller
    for e, y in steps:  # every step is a prefix of the whole
        np.testing.assert_allclose(e, whole[: len(e)], rtol=1e-5, atol=1e-5)
        assert y.tolist() == labels[: len(y)].tolist()
    assert steps[-1][0].dtype == np.float32 and steps[-1][1].dtype == np.int64


def test_embedding_pass_restores_the_mode_and_refuses_empty_input(images):
    model = _model("none").train()
    passes = embedding_pass(model, images, chunk=5)
    next(passes)
    passes.close()  # stopped early
    assert model.training
    with pytest.raises(ValueError, match="empty"):
        next(embedding_pass(model, _Images(torch.zeros(0, 3, 8, 8), torch.zeros(0))))


@pytest.mark.parametrize(("attention", "selection"), [("pre", "dimension"), ("post", "feature")])
def test_entry_statistics_pass_equals_one_call(images, attention, selection):
    model = _model(attention, selection)
    whole = dataset_entry_statistics(model, images, batch_size=11)
    steps = list(entry_statistics_pass(model, images, chunk=3))
    assert [s["images"] for s in steps] == [3, 6, 9, 11]
    last = steps[-1]
    for name in ("share", "mean_weight", "entry_entropy"):
        np.testing.assert_allclose(last[name], whole[name], rtol=1e-9, atol=1e-12, equal_nan=True)
    assert last["entropy"] == pytest.approx(whole["entropy"], rel=1e-9)
    assert last["entropy_normalised"] == pytest.approx(whole["entropy_normalised"], rel=1e-9)
    first = dataset_entry_statistics(model, torch.utils.data.Subset(images, range(3)), batch_size=3)
    np.testing.assert_allclose(steps[0]["share"], first["share"])


def test_merge_keeps_an_entry_that_wins_nothing_as_nan():
    a = {"share": np.array([1.0, 0.0]), "mean_weight": np.array([0.7, 0.3]), "entropy": 0.2,
         "entropy_normalised": 0.2 / np.log(2), "entry_entropy": np.array([0.2, np.nan]), "images": 1}
    b = {"share": np.array([0.5, 0.5]), "mean_weight": np.array([0.5, 0.5]), "entropy": 0.6,
         "entropy_normalised": 0.6 / np.log(2), "entry_entropy": np.array([0.4, 0.8]), "images": 3}
    merged = merge_entry_statistics(merge_entry_statistics(None, a), b)
    np.testing.assert_allclose(merged["share"], [(1 + 1.5) / 4, 1.5 / 4])
    np.testing.assert_allclose(merged["entry_entropy"], [(0.2 * 1 + 0.4 * 1.5) / 2.5, 0.8])
    assert merged["entropy"] == pytest.approx((0.2 + 1.8) / 4) and merged["images"] == 4
    alone = merge_entry_statistics(None, a)
    assert np.isnan(alone["entry_entropy"][1]) and alone["share"] is not a["share"]
    with pytest.raises(ValueError, match="baseline"):
        next(entry_statistics_pass(_model("none"), TensorDataset(torch.zeros(2, 3, 64, 64), torch.zeros(2))))
