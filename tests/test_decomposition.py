"""Tests for diablo.decomposition: a match's cosine as an exact sum over entries and pairs of places.

Expected values are computed independently of the function: the cosine from model(q) and model(r),
each entry's share from the inspected branch embeddings, and one entry's pairs by explicit loops over
places from maps rebuilt out of `inspect` outputs (checked against what the model pools with a hook).
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torch.nn.functional as nnf
from torch import nn

from diablo import ModelConfig, build_model, explain
from diablo.decomposition import SimilarityDecomposition, similarity_decomposition
from diablo.model import DiabloNet

N = 4
VARIANTS = [("pre", "feature"), ("pre", "dimension"), ("post", "feature"), ("post", "dimension"), ("none", "feature")]
QUERY_SIZE, RESULT_SIZE = (64, 64), (96, 64)  # MobileNetV2's pooled grids: 2 x 2 and 3 x 2


def smooth_images(seed: int, n: int = 1, size: tuple[int, int] = QUERY_SIZE) -> torch.Tensor:
    """(n, 3, H, W) low-frequency random images, roughly unit variance."""
    g = torch.Generator().manual_seed(seed)
    return nnf.interpolate(torch.randn(n, 3, 4, 4, generator=g), size=size, mode="bicubic", align_corners=False)


@cache
def model_of(attention: str, selection: str, dtype: torch.dtype = torch.float64) -> DiabloNet:
    """An untrained MobileNetV2 DiabloNet whose BatchNorm statistics are those of smooth images, so that
    different images get different embeddings (torchvision's initial statistics map all to one)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="mobilenet_v2", pretrained="none", attention=attention, selection=selection,
        num_entries=N, embedding_dim=32, alpha=3.0,
    )  # fmt: skip
    model = build_model(cfg).to(dtype)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    with torch.no_grad():
        model.inspect(smooth_images(100, n=8).to(dtype))  # train mode: BatchNorm records the statistics
    return model.eval()


def images(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_images(1, size=QUERY_SIZE).to(dtype), smooth_images(2, size=RESULT_SIZE).to(dtype)


@cache
def decomposition_of(attention: str, selection: str) -> SimilarityDecomposition:
    return similarity_decomposition(model_of(attention, selection), *images())


@pytest.mark.parametrize("variant", VARIANTS)
def test_pairs_sum_to_the_cosine(variant: tuple[str, str]) -> None:
    model = model_of(*variant)
    q, r = images()
    d = decomposition_of(*variant)
    with torch.no_grad():
        expected = float((model(q) * model(r)).sum())
    entries = 1 if variant[0] == "none" else N
    assert d.pairs.shape == (entries, 2, 2, 3, 2)  # query 64 x 64 -> 2 x 2, result 96 x 64 -> 3 x 2
    assert d.pairs.dtype == torch.float64
    assert abs(float(d.pairs.sum()) - expected) < 1e-9
    assert abs(d.cosine - expected) < 1e-12
    # Not a degenerate case: the images differ for the model and the places contribute unequally.
    assert expected < 0.999
    assert float(d.pairs.std()) > 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_marginals_and_entry_shares(variant: tuple[str, str]) -> None:
    model = model_of(*variant)
    q, r = images()
    d = decomposition_of(*variant)
    with torch.no_grad():
        e_q, e_r = model.inspect(q).branch_embeddings[0], model.inspect(r).branch_embeddings[0]  # (N, D/N)
    entries = e_q.shape[0]
    branch_cosines = (e_q * e_r).sum(dim=1) / entries  # (N,): <z_q, z_r> = (1/N) sum_n cos(e_n(q), e_n(r))
    torch.testing.assert_close(d.entry_share, branch_cosines, rtol=0, atol=1e-10)
    torch.testing.assert_close(d.query_map.sum(axis=(1, 2)), d.entry_share, rtol=0, atol=1e-12)
    torch.testing.assert_close(d.result_map.sum(axis=(1, 2)), d.entry_share, rtol=0, atol=1e-12)
    assert d.query_map.shape == (entries, 2, 2) and d.result_map.shape == (entries, 3, 2)
    for n in range(entries):
        for i in range(2):
            for j in range(2):
                assert abs(float(d.query_map[n, i, j]) - sum(float(v) for v in d.pairs[n, i, j].flatten())) < 1e-12


def pooled_maps(model: DiabloNet, x: torch.Tensor) -> torch.Tensor:
    """H^n (N, C, h, w) rebuilt from `inspect` outputs, entry by entry, and checked against the (N, C)
    the model's embedding layer receives (a forward pre-hook)."""
    received: list[torch.Tensor] = []
    hook = model.embedding.register_forward_pre_hook(lambda module, args: received.append(args[0]))
    try:
        with torch.no_grad():
            out = model.inspect(x)
            if out.attention is None:  # the baseline pools the backbone's last map
                maps = [out.values[0]]
            else:
                maps = []
                for n in range(out.attention.shape[1]):
                    masked = out.attention[0, n] * out.values[0] * model.scale  # N A^n ⊙ values, Eq 8 / 12
                    maps.append(model.psi(masked[None])[0] if model.config.attention == "pre" else masked)
    finally:
        hook.remove()
    h = torch.stack(maps)  # (N, C, h, w)
    torch.testing.assert_close(h.mean(dim=(-2, -1)), received[0][0], rtol=0, atol=1e-12)
    return h


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_entry_by_explicit_loops(variant: tuple[str, str]) -> None:
    model = model_of(*variant)
    q, r = smooth_images(3, size=(64, 64)).double(), smooth_images(4, size=(64, 96)).double()  # 2 x 2, 2 x 3
    n = 0 if variant[0] == "none" else 2
    weight, bias = model.embedding.weight.detach()[n], model.embedding.bias.detach()[n]  # (D/N, C), (D/N,)
    h_q, h_r = pooled_maps(model, q)[n], pooled_maps(model, r)[n]  # (C, 2, 2), (C, 2, 3)
    u_q = {(i, j): weight @ h_q[:, i, j] + bias for i in range(2) for j in range(2)}
    u_r = {(k, m): weight @ h_r[:, k, m] + bias for k in range(2) for m in range(3)}
    norm_q = float(torch.stack(list(u_q.values())).mean(dim=0).norm())  # |ē_n(q)|
    norm_r = float(torch.stack(list(u_r.values())).mean(dim=0).norm())
    entries = model.config.branches
    d = similarity_decomposition(model, q, r)
    assert d.pairs.shape == (entries, 2, 2, 2, 3)
    for (i, j), uq in u_q.items():
        for (k, m), ur in u_r.items():
            expected = float(uq @ ur) / (entries * 4 * 6 * norm_q * norm_r)
            assert abs(float(d.pairs[n, i, j, k, m]) - expected) < 1e-12, (i, j, k, m)


def test_swapping_query_and_result_transposes_the_pairs() -> None:
    model = model_of("pre", "dimension")
    q, r = images()
    forward, backward = similarity_decomposition(model, q, r), similarity_decomposition(model, r, q)
    torch.testing.assert_close(backward.pairs, forward.pairs.permute(0, 3, 4, 1, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(backward.query_map, forward.result_map, rtol=0, atol=1e-12)


def test_strongest_links() -> None:
    d = decomposition_of("post", "feature")
    links = d.strongest_links(1, 3)
    assert len(links) == 3
    values = [value for _, _, value in links]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(float(d.pairs[1].max()), abs=1e-15)
    for (i, j), (k, m), value in links:
        assert value == pytest.approx(float(d.pairs[1, i, j, k, m]), abs=1e-15)
    third = sorted(d.pairs[1].flatten().tolist(), reverse=True)[2]
    assert values[2] == pytest.approx(third, abs=1e-15)
    (i, j), (k, m), value = d.strongest_links(None, 1)[0]  # all entries summed
    summed = d.pairs.sum(dim=0)  # (h, w, h', w')
    assert value == pytest.approx(float(summed.max()), abs=1e-15)
    assert value == pytest.approx(float(summed[i, j, k, m]), abs=1e-15)
    assert len(d.strongest_links(0, 1000)) == d.pairs[0].numel()  # k clamped to the number of pairs
    for entry, k in ((N, 1), (-N - 1, 1), (0, 0), (0, 1.5)):
        with pytest.raises(ValueError):
            d.strongest_links(entry, k)


@pytest.mark.parametrize(
    "bad", [torch.zeros(3, 64, 64), torch.zeros(2, 3, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 3, 0, 64)]
)
def test_refuses_anything_but_one_image(bad: torch.Tensor) -> None:
    model = model_of("post", "feature")
    q, _ = images()
    for args in ((bad, q), (q, bad)):
        with pytest.raises(ValueError, match=r"\(1, 3, H, W\)") as error:
            similarity_decomposition(model, *args)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="ndarray"):
        similarity_decomposition(model, q.numpy(), q)


def test_float32_under_inference_mode_restores_the_mode() -> None:
    model = model_of("pre", "feature", torch.float32)
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    q, r = images(torch.float64)  # cast to the model's dtype
    try:
        with torch.inference_mode():
            d = similarity_decomposition(model, q, r)
        assert model.training and bn.training  # each module's mode is restored
        model.eval()
        with torch.no_grad():
            expected = float((model(q.float()) * model(r.float())).sum())
    finally:
        model.eval()
    assert d.pairs.dtype == torch.float32
    assert abs(float(d.pairs.sum()) - expected) < 1e-5
    assert abs(d.cosine - expected) < 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_the_model_device() -> None:
    model = model_of("post", "dimension").to("cuda")
    try:
        q, r = images()
        d = similarity_decomposition(model, q, r)  # CPU inputs go to the model's device
        assert d.pairs.device.type == "cuda"
        with torch.no_grad():
            expected = float((model(q.cuda()) * model(r.cuda())).sum())
        assert abs(float(d.pairs.sum()) - expected) < 1e-9
    finally:
        model.to("cpu")


def test_refuses_a_readout_it_does_not_decompose(monkeypatch: pytest.MonkeyPatch) -> None:
    """Something between the pooling and the linear layer breaks the decomposition: it must say so."""
    model = model_of("post", "feature")
    original = model.embedding.forward
    monkeypatch.setattr(model.embedding, "forward", lambda pooled: original(torch.relu(pooled - pooled.mean())))
    with pytest.raises(RuntimeError, match="readout changed"):
        similarity_decomposition(model, *images())


def test_reexported_from_explain() -> None:
    assert explain.similarity_decomposition is similarity_decomposition
    assert explain.SimilarityDecomposition is SimilarityDecomposition
