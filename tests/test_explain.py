"""Tests for diablo.explain: attribution maps, IG completeness, model state, overlays, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from test_overlay import photo
from torch import nn

from diablo import ModelConfig, build_model, explain
from diablo.model import DiabloNet

SIZE = 64


def smooth_images(seed: int, n: int = 1, size: int = SIZE) -> torch.Tensor:
    """(n, 3, size, size) low-frequency random images, roughly unit variance."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, 4, 4, generator=g)
    return nnf.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def calibrate(model: DiabloNet, images: torch.Tensor) -> DiabloNet:
    """Give a randomly initialised backbone BatchNorm statistics of real activations.

    With torchvision's default running statistics (mean 0, var 1) a random MobileNetV2 maps every
    image to the same embedding, which would make every attribution vanish.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
        bn.train()
    with torch.no_grad():
        model.inspect(images)
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


def real_model(attention: str, selection: str = "dimension") -> DiabloNet:
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="mobilenet_v2", pretrained="none", attention=attention, selection=selection,
        num_entries=4, embedding_dim=32,
    )  # fmt: skip
    return calibrate(build_model(cfg), smooth_images(100, n=8))


def smooth_model() -> DiabloNet:
    """A pre-attention, dimension-wise DiabloNet whose F, phi and psi are small tanh conv nets.

    A random deep ReLU network is far too rough along IG's straight-line path for a 32-step
    integral to converge (its similarity jumps by 0.05 between neighbouring steps), so the
    completeness check runs on this smooth stand-in; the selection, merging, branch embeddings
    and readout are DIABLO's own.
    """
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="pre", num_entries=4, embedding_dim=32)
    model = build_model(cfg)
    model.features = nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.Tanh()
    )  # (B, 64, 16, 16) at 64 px
    model.phi = nn.Sequential(nn.Conv2d(64, 96, 1), nn.Tanh())  # (B, 96, 16, 16)
    model.psi = nn.Sequential(nn.Conv2d(64, 1280, 1), nn.Tanh())  # (B * N, 1280, 16, 16)
    return model.eval()


@pytest.fixture(scope="module")
def pre() -> DiabloNet:
    return real_model("pre", "dimension")


@pytest.fixture(scope="module")
def smooth() -> DiabloNet:
    return smooth_model()


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """A query (1, 3, 64, 64) and a result (1, 3, 64, 64)."""
    return smooth_images(1), smooth_images(2)


def check_map(heat: np.ndarray) -> None:
    assert heat.shape == (SIZE, SIZE)
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() == pytest.approx(1.0)
    assert heat.std() > 0.02, "attribution map is (nearly) constant"


# ---- attribution maps on a real MobileNetV2 DiabloNet ----------------------------------------


def test_integrated_gradients_map(pre: DiabloNet, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    query, result = images
    check_map(explain.similarity_attribution(pre, query, result, "integrated_gradients", steps=8))


@pytest.mark.parametrize("variant", [("pre", "dimension"), ("post", "feature"), ("none", "feature")])
def test_gradcam_map(variant: tuple[str, str], images: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = real_model(*variant)
    query, result = images
    with torch.no_grad():
        target = model(result)[0]  # (D,): a gallery row
    heat = explain.similarity_attribution(model, query, target, "gradcam")
    check_map(heat)
    expected = model.psi if variant[0] == "post" else model.features
    assert explain.gradcam_layer(model) is expected


def test_model_state_restored(images: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = real_model("pre", "dimension")
    model.train()
    model.selection.dictionary.requires_grad_(False)  # a caller's own freezing must survive
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    query, result = images
    explain.similarity_attribution(model, query, result, "integrated_gradients", steps=4, branch=1)
    explain.similarity_attribution(model, query, result, "gradcam")
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


# ---- the explained quantity and IG's completeness (smooth stand-in) -------------------------


def test_similarity_target_is_the_cosine(smooth: DiabloNet, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    query, result = images
    with torch.no_grad():
        q, r = smooth.inspect(query), smooth.inspect(result)
        whole = explain.SimilarityTarget(smooth, result)(query)
        from_row = explain.SimilarityTarget(smooth, r.embedding[0])(query)
        branch = explain.SimilarityTarget(smooth, result, branch=2)(query)
    assert whole.shape == (1,)
    assert whole.item() == pytest.approx(float(q.embedding[0] @ r.embedding[0]), abs=1e-5)
    assert from_row.item() == pytest.approx(whole.item(), abs=1e-5)
    expected = float(q.branch_embeddings[0, 2] @ r.branch_embeddings[0, 2])
    assert branch.item() == pytest.approx(expected, abs=1e-5)
    assert abs(branch.item() - whole.item()) > 1e-4


@pytest.mark.parametrize("branch", [None, 1])
def test_integrated_gradients_completeness(
    smooth: DiabloNet, images: tuple[torch.Tensor, torch.Tensor], branch: int | None
) -> None:
    """sum_i a_i = s(x) - s(0) (Sundararajan et al. 2017, Prop. 1) up to the quadrature error."""
    query, result = images
    attributions, delta = explain.integrated_gradients(smooth, query, result, branch=branch, steps=32)
    assert attributions.shape == query.shape
    with torch.no_grad():
        target = explain.SimilarityTarget(smooth, result, branch)
        change = float(target(query) - target(torch.zeros_like(query)))
    assert abs(change) > 1e-2, "test images too alike to check completeness"
    assert float(attributions.sum()) == pytest.approx(change, rel=0.02, abs=1e-4)
    assert abs(delta) < 0.02 * abs(change) + 1e-4


def test_branch_attribution_differs(smooth: DiabloNet, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    query, result = images
    for method in explain.METHODS:
        whole = explain.similarity_attribution(smooth, query, result, method, steps=16)
        parts = [explain.similarity_attribution(smooth, query, result, method, branch=n, steps=16) for n in (0, 1)]
        assert not np.allclose(whole, parts[0], atol=1e-2)
        assert not np.allclose(parts[0], parts[1], atol=1e-2)


def test_positive_sign_keeps_only_supporting_pixels(
    smooth: DiabloNet, images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    query, result = images
    attributions, _ = explain.integrated_gradients(smooth, query, result, steps=16)
    pixel = attributions[0].sum(0).numpy()  # (H, W)
    positive = explain.similarity_attribution(smooth, query, result, steps=16, sign="positive")
    assert (positive[pixel <= 0] == 0).all()
    assert (positive[pixel > 0] > 0).any()


def test_invalid_arguments(smooth: DiabloNet, images: tuple[torch.Tensor, torch.Tensor]) -> None:
    query, result = images
    with pytest.raises(ValueError, match="gradcam"):
        explain.similarity_attribution(smooth, query, result, method="saliency")
    with pytest.raises(ValueError, match="branch"):
        explain.similarity_attribution(smooth, query, result, branch=4)
    with pytest.raises(ValueError, match="query"):
        explain.similarity_attribution(smooth, torch.zeros(2, 3, SIZE, SIZE), result)
    with pytest.raises(ValueError, match="positive"):
        explain.similarity_attribution(smooth, query, result, sign="negative")


def test_entry_statistics_of_a_model(smooth: DiabloNet) -> None:
    with torch.no_grad():
        attention = smooth.inspect(smooth_images(3, n=2)).attention  # (2, 4, 64, 16, 16)
    stats = explain.entry_statistics(attention)
    assert stats["share"].shape == (4,) and stats["share"].sum() == pytest.approx(1.0)
    assert 0.0 < stats["entropy_normalised"] <= 1.0
    labels = explain.assignment_map(attention[0])
    assert labels.shape == (16, 16) and labels.max() < 4


# ---- one image: model_input and inspect_image -------------------------------------------------


def pil_photo(width: int = 50, height: int = 40):
    from PIL import Image

    return Image.fromarray(photo(height, width), "RGB")


def test_model_input_is_the_test_transform_on_the_model_device(smooth: DiabloNet) -> None:
    from diablo.data import build_transform

    image = pil_photo()
    x = explain.model_input(smooth, image, SIZE)
    assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert x.device == next(smooth.parameters()).device
    assert torch.equal(x[0], build_transform(False, SIZE)(image))


def test_inspect_image_matches_the_model(smooth: DiabloNet) -> None:
    image = pil_photo()
    smooth.train()  # the mode is restored afterwards
    seen = explain.inspect_image(smooth, image, SIZE)
    assert smooth.training
    smooth.eval()
    with torch.no_grad():
        out = smooth.inspect(explain.model_input(smooth, image, SIZE))
    entries, dim = smooth.config.num_entries, smooth.config.embedding_dim
    assert isinstance(seen.attention, np.ndarray) and seen.attention.dtype == np.float32
    assert seen.attention.shape == tuple(out.attention.shape[1:]) and seen.attention.shape[0] == entries
    assert np.allclose(seen.attention.sum(axis=0), 1.0, atol=1e-5)
    assert np.allclose(seen.attention, out.attention[0].numpy(), atol=1e-6)
    assert seen.embedding.shape == (dim,) and np.linalg.norm(seen.embedding) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(seen.embedding, out.embedding[0].numpy(), atol=1e-6)
    assert seen.branch_embeddings.shape == (entries, dim // entries)
    assert np.allclose(np.linalg.norm(seen.branch_embeddings, axis=1), 1.0, atol=1e-5)
    assert seen.input.shape == (1, 3, SIZE, SIZE) and not seen.input.requires_grad
    assert seen.display.shape == (SIZE, SIZE, 3) and seen.display.dtype == np.uint8
    from diablo.data import IMAGENET_MEAN, IMAGENET_STD

    unnormalised = seen.input[0].permute(1, 2, 0).numpy() * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
    assert np.abs(seen.display - 255 * unnormalised).max() <= 0.51  # the input as an image


def test_inspect_image_of_the_baseline() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="none", embedding_dim=32)
    seen = explain.inspect_image(build_model(cfg).eval(), pil_photo(), SIZE)
    assert seen.attention is None
    assert seen.embedding.shape == (32,) and seen.branch_embeddings.shape == (1, 32)
