"""diablo.dictionary: spherical k-means centres, and the dictionary set from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from torch.utils.data import TensorDataset

import diablo
from diablo.config import ModelConfig
from diablo.dictionary import initialise_dictionary, kmeans_centres, local_features, share_across_channels


def test_centres_are_the_clusters_directions():
    rng = np.random.default_rng(0)
    directions = np.eye(16, dtype=np.float32)[:4] * 3  # four well-separated clusters
    points = np.concatenate([d + rng.normal(0, 0.1, (200, 16)) for d in directions]).astype(np.float32)
    centres = kmeans_centres(points, 4, seed=0)
    assert centres.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1, atol=1e-5)  # spherical
    best = (centres @ np.eye(16, dtype=np.float32)[:4].T).max(axis=0)  # each true direction has a centre
    assert best.min() > 0.98


def test_too_few_features_is_an_error():
    with pytest.raises(ValueError, match="at least 8"):
        kmeans_centres(np.ones((5, 3), np.float32), 8)


def model(selection: str) -> diablo.DiabloNet:
    torch.manual_seed(0)  # the same backbone for both selections (the dictionary is drawn last)
    return diablo.build_model(ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="pre",
                                          selection=selection, num_entries=4, embedding_dim=16)).eval()


@pytest.fixture(scope="module")
def images() -> TensorDataset:
    torch.manual_seed(1)
    return TensorDataset(torch.randn(6, 3, 64, 64), torch.arange(6))


def test_feature_wise_entries_are_the_centres(images):
    net = model("feature")
    centres = initialise_dictionary(net, images, max_images=4, progress=False)
    assert centres.shape == (4, net.dictionary.shape[1])
    torch.testing.assert_close(net.dictionary.detach(), torch.from_numpy(centres))
    phi = local_features(net, images, progress=False)
    assert phi.shape == (6 * 4 * 4, centres.shape[1])  # 64 px at stride 16: 4 x 4 places
    np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1, atol=1e-5)


def test_dimension_wise_starts_as_the_feature_wise_attention(images):
    """Eq 10 with d_k^(n) = d^(n) for every channel k is Eq 5 broadcast over the channels."""
    feature, dimension = model("feature"), model("dimension")
    initialise_dictionary(feature, images, progress=False)
    initialise_dictionary(dimension, images, progress=False)
    x = images.tensors[0][:3]
    with torch.no_grad():
        a_feature, a_dimension = feature.inspect(x).attention, dimension.inspect(x).attention  # (B, N, 1 / c, h, w)
    assert a_dimension.shape[2] == dimension.dictionary.shape[1] > 1
    torch.testing.assert_close(a_dimension, a_feature.expand_as(a_dimension))
    uniform = torch.full_like(a_feature, 1 / 4)
    assert (a_feature - uniform).abs().max() > 0.05  # the centres select, unlike random directions


def test_the_baseline_has_no_dictionary(images):
    baseline = diablo.build_model(ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="none"))
    with pytest.raises(ValueError, match="baseline"):
        initialise_dictionary(baseline, images, progress=False)


def test_kmeans_centres_beat_random_entries_at_fitting_phi(images):
    """The k-means dictionary is closer to the local features than the N(0, 1) one."""
    net = model("feature")
    phi = torch.from_numpy(local_features(net, images, progress=False))
    random_fit = (phi @ nnf.normalize(net.dictionary.detach(), dim=1).T).max(dim=1).values.mean()
    initialise_dictionary(net, images, progress=False)
    kmeans_fit = (phi @ net.dictionary.detach().T).max(dim=1).values.mean()
    assert kmeans_fit > random_fit


def test_shared_random_entries_start_as_feature_wise(images):
    net = model("dimension")
    share_across_channels(net)
    d = net.dictionary.detach()
    torch.testing.assert_close(d, d[:, :1].expand_as(d))
    with torch.no_grad():
        a = net.inspect(images.tensors[0][:2]).attention  # (B, N, c, h, w)
    torch.testing.assert_close(a, a[:, :, :1].expand_as(a))  # one weight per place, as Eq 5 gives
    with pytest.raises(ValueError, match="dimension-wise"):
        share_across_channels(model("feature"))
