"""diablo.attention: Eq 5-7 and 10-11 recomputed independently, Eq 6 ties, merging, memory, alpha (and its
validation), empty batches."""

from __future__ import annotations

import math
import resource
from functools import cache
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import diablo
from diablo.attention import DimensionSelection, FeatureSelection, hard_assignment, merge, soft_assignment
from diablo.model import Inspection

VARIANTS = [("mobilenet_v2", a, s) for a in ("pre", "post") for s in ("feature", "dimension")] + [
    ("googlenet", a, "dimension") for a in ("pre", "post")
]
SIZE = 64  # F is 4 x 4 (pre) or 2 x 2 (post): enough places to compare, fast on two cores


@cache
def _model(backbone: str, attention: str, selection: str, learn_alpha: bool = False) -> diablo.DiabloNet:
    torch.manual_seed(0)
    cfg = diablo.ModelConfig(backbone=backbone, pretrained="none", attention=attention, selection=selection,
                             num_entries=4, embedding_dim=64, alpha=3.0, learn_alpha=learn_alpha)
    model = diablo.build_model(cfg).eval()
    for module in model.modules():  # torchvision's random init would shrink phi(F) to ~1e-9 (frozen BN)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


@cache
def _inspect(backbone: str, attention: str, selection: str, hard: bool) -> Inspection:
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return _model(backbone, attention, selection).inspect(x, hard=hard)


def _cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """<u; v> / (||u|| ||v||), written out (Eq 5 / 10)."""
    return float((u * v).sum() / (u.pow(2).sum().sqrt() * v.pow(2).sum().sqrt()))


def _similarity_by_loops(phi: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """Eq 5 (dictionary (N, m)) or Eq 10 (dictionary (N, c, m)) -> (B, N, 1 or c, h, w), in float64."""
    phi, d = phi.double(), dictionary.detach().double()
    if d.dim() == 2:
        d = d[:, None]  # feature-wise: one direction per entry, broadcast over the channels
    b_, _, h_, w_ = phi.shape
    n_, c_, _ = d.shape
    s = torch.empty(b_, n_, c_, h_, w_, dtype=torch.float64)
    for b in range(b_):
        for i in range(h_):
            for j in range(w_):
                f = phi[b, :, i, j]  # phi(f_ij) in R^m
                for n in range(n_):
                    dots = d[n] @ f  # <phi(f_ij); d_k^(n)> for every k
                    s[b, n, :, i, j] = dots / (f.norm() * d[n].norm(dim=-1))
    return s


def _softmax_by_formula(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq 7 / 11: e^(alpha s_n) / sum_l e^(alpha s_l)."""
    e = torch.exp(alpha * s)
    return e / e.sum(dim=1, keepdim=True)


@pytest.mark.parametrize(("backbone", "attention", "selection"), VARIANTS)
def test_soft_attention_is_eq_7_or_11(backbone: str, attention: str, selection: str) -> None:
    model = _model(backbone, attention, selection)
    out = _inspect(backbone, attention, selection, hard=False)
    assert model.dictionary.shape == ((4, out.phi.shape[1]) if selection == "feature"
                                      else (4, out.values.shape[1], out.phi.shape[1]))
    s = _similarity_by_loops(out.phi, model.dictionary)
    assert s.abs().max() <= 1 + 1e-9 and s.std() > 0
    expected = _softmax_by_formula(s, float(model.alpha))
    assert out.attention.shape == expected.shape
    torch.testing.assert_close(out.attention.double(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("backbone", "attention", "selection"), VARIANTS)
def test_soft_attention_sums_to_one_over_entries(backbone: str, attention: str, selection: str) -> None:
    a = _inspect(backbone, attention, selection, hard=False).attention
    assert (a > 0).all() and (a < 1).all()
    torch.testing.assert_close(a.sum(dim=1), torch.ones_like(a.sum(dim=1)))


@pytest.mark.parametrize(("backbone", "attention", "selection"), VARIANTS)
def test_hard_attention_is_the_arg_max_of_eq_5_or_10(backbone: str, attention: str, selection: str) -> None:
    model = _model(backbone, attention, selection)
    out = _inspect(backbone, attention, selection, hard=True)
    s = _similarity_by_loops(out.phi, model.dictionary)
    a = out.attention
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(a.sum(dim=1), torch.ones_like(a.sum(dim=1)))
    top2 = s.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-5  # places where float32 and float64 cannot disagree
    assert clear.float().mean() > 0.9
    winner = a.argmax(dim=1)
    assert torch.equal(winner[clear], s.argmax(dim=1)[clear])


def test_hard_assignment_ties_go_to_the_lowest_index() -> None:
    s = torch.tensor([0.2, 0.7, 0.1, 0.7, 0.7]).view(1, 5, 1, 1, 1)
    expected = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]).view(1, 5, 1, 1, 1)
    assert torch.equal(hard_assignment(s), expected)
    everywhere = torch.zeros(2, 6, 3, 4, 5)  # all entries tie: entry 0 wins every place and channel
    assert torch.equal(hard_assignment(everywhere)[:, 0], torch.ones(2, 3, 4, 5))
    assert hard_assignment(everywhere)[:, 1:].sum() == 0


@pytest.mark.parametrize("selection", ["feature", "dimension"])
def test_exact_cosine_tie_through_the_selection_block(selection: str) -> None:
    """Entries 1 and 3 point along e_0 and e_1, phi along e_0 + e_1: an exact tie of cosines."""
    m, c = 4, 3
    phi = torch.zeros(1, m, 2, 2)
    phi[:, 0], phi[:, 1] = 1.0, 1.0
    entries = torch.tensor([[-1.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 5.0, 0, 0]])
    if selection == "feature":
        block = FeatureSelection(4, m)
        dictionary = entries
    else:
        block = DimensionSelection(4, c, m)
        dictionary = entries[:, None].repeat(1, c, 1)
    with torch.no_grad():
        block.dictionary.copy_(dictionary)
        s = block.similarity(phi)
        a = block(phi, hard=True)
    assert torch.equal(s[:, 1], s[:, 3])  # the tie really is exact
    assert (a[:, 1] == 1).all() and a[:, [0, 2, 3]].sum() == 0


def test_soft_assignment_with_large_alpha_tends_to_eq_6() -> None:
    s = torch.rand(2, 5, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    torch.testing.assert_close(soft_assignment(s, 1e4), hard_assignment(s), atol=1e-4, rtol=0)
    torch.testing.assert_close(soft_assignment(s, 1e-6), torch.full_like(s, 0.2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_merge_is_eq_8_or_12(channels: int) -> None:
    """H^(n)_ijk = A^(n)_ijk F_ijk, with A^(n)_ijk independent of k for the feature-wise case."""
    g = torch.Generator().manual_seed(4)
    f = torch.randn(2, 3, 2, 3, generator=g)
    a = torch.rand(2, 5, channels, 2, 3, generator=g)
    h = merge(f, a)
    assert h.shape == (2, 5, 3, 2, 3)
    for b, n, k, i, j in torch.cartesian_prod(*(torch.arange(s) for s in h.shape)).tolist():
        assert h[b, n, k, i, j] == a[b, n, k if channels > 1 else 0, i, j] * f[b, k, i, j]


class _LargestStorage(TorchDispatchMode):
    """Record the largest storage (bytes) of any tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def _largest_intermediate(
    b: int, n: int, c: int, m: int, h: int, w: int
) -> tuple[DimensionSelection, torch.Tensor, torch.Tensor, int]:
    """Eq 10 on random phi: the block, phi, the similarities, and the bytes of the largest tensor
    any operator returned."""
    block = DimensionSelection(n, c, m)
    phi = torch.randn(b, m, h, w, generator=torch.Generator().manual_seed(5))
    mode = _LargestStorage()
    with torch.no_grad(), mode:
        s = block.similarity(phi)
    return block, phi, s, mode.largest


@pytest.mark.parametrize(("b", "n", "c", "m", "h", "w"), [(2, 4, 8, 16, 3, 5), (1, 8, 64, 96, 7, 7)])
def test_dimension_similarity_largest_intermediate_is_the_output(
    b: int, n: int, c: int, m: int, h: int, w: int
) -> None:
    """No operator of Eq 10 returns a tensor larger than (a copy of) the (B, N, c, h, w) output."""
    _, _, s, largest = _largest_intermediate(b, n, c, m, h, w)
    assert s.shape == (b, n, c, h, w)
    assert largest <= 4 * max(b * n * c * h * w, n * c * m, b * m * h * w)
    assert largest < 4 * b * n * c * m * h * w  # the 6-D tensor


def test_dimension_similarity_never_builds_the_6d_tensor() -> None:
    """(B, N, c, m, h, w) here would take 21 GB, about this machine's memory; the output takes 66 MB."""
    b, n, c, m, h, w = 4, 8, 1280, 320, 20, 20
    six_d_bytes = 4 * b * n * c * m * h * w
    output_bytes = 4 * b * n * c * h * w
    assert six_d_bytes > 20e9
    block, phi, s, largest = _largest_intermediate(b, n, c, m, h, w)
    assert s.shape == (b, n, c, h, w)
    assert largest <= output_bytes < six_d_bytes / 100
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    assert peak_bytes < six_d_bytes / 2
    for bi, ni, ki, i, j in [(0, 0, 0, 0, 0), (3, 7, 1279, 19, 19), (1, 4, 640, 3, 17)]:
        expected = _cosine(phi[bi, :, i, j].double(), block.dictionary[ni, ki].detach().double())
        assert math.isclose(float(s[bi, ni, ki, i, j]), expected, abs_tol=1e-5)


def test_feature_similarity_shape_and_range() -> None:
    block = FeatureSelection(6, 10)
    s = block.similarity(torch.randn(3, 10, 4, 5))
    assert s.shape == (3, 6, 1, 4, 5) and s.abs().max() <= 1 + 1e-6


def test_dictionary_is_a_parameter_of_the_model() -> None:
    model = _model("mobilenet_v2", "pre", "dimension")
    assert isinstance(model.dictionary, torch.nn.Parameter)
    assert any(p is model.dictionary for p in model.parameters())


def test_fixed_alpha_is_the_configured_float() -> None:
    model = _model("mobilenet_v2", "post", "feature")
    assert model.alpha == 3.0 and isinstance(model.alpha, float)
    assert not any("alpha" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("selection", ["feature", "dimension"])
def test_learned_alpha_gets_gradient_and_stays_positive(selection: str) -> None:
    torch.manual_seed(0)
    cfg = diablo.ModelConfig(backbone="mobilenet_v2", pretrained="none", attention="post", selection=selection,
                             num_entries=4, embedding_dim=64, alpha=3.0, learn_alpha=True)
    model = diablo.build_model(cfg)
    alpha = model.alpha
    assert isinstance(alpha, torch.Tensor) and alpha.requires_grad
    assert math.isclose(float(alpha.detach()), 3.0, rel_tol=1e-6)
    params = [p for name, p in model.named_parameters() if "alpha" in name]
    assert len(params) == 1
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    target = torch.randn(2, 64, generator=torch.Generator().manual_seed(7))
    (model(x) * target).sum().backward()
    assert params[0].grad is not None and params[0].grad.abs() > 0 and params[0].grad.isfinite()
    optimizer = torch.optim.SGD(params, lr=5.0)
    for _ in range(20):  # push alpha down as hard as possible: it must never cross zero
        optimizer.zero_grad()
        model.alpha.backward()  # d alpha / d log_alpha = alpha > 0
        optimizer.step()
        assert float(model.alpha.detach()) > 0
    assert float(model.alpha.detach()) < 1e-3


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.inf, math.nan, True, "10"], ids=repr)
@pytest.mark.parametrize("learn_alpha", [False, True])
def test_selection_refuses_an_alpha_that_is_not_a_finite_positive_number(alpha: object, learn_alpha: bool) -> None:
    makers = [lambda: FeatureSelection(4, 8, alpha, learn_alpha),
              lambda: DimensionSelection(4, 3, 8, alpha, learn_alpha)]
    for make in makers:
        with pytest.raises(ValueError, match="alpha") as info:
            make()
        assert "\n" not in str(info.value)


def test_selection_of_an_empty_batch() -> None:
    phi = torch.zeros(0, 8, 3, 5)
    assert FeatureSelection(4, 8)(phi).shape == (0, 4, 1, 3, 5)
    assert DimensionSelection(4, 6, 8)(phi, hard=True).shape == (0, 4, 6, 3, 5)
    assert merge(torch.zeros(0, 6, 3, 5), torch.zeros(0, 4, 6, 3, 5)).shape == (0, 4, 6, 3, 5)
