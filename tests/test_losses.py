"""Tests for diablo.losses: hand-computed values, pytorch-metric-learning as an oracle, edge cases."""

from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from diablo.losses import LOSSES, build_loss

LABELS = [0, 0, 1, 1, 2, 2]


def unit_batch(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)


def pairs(labels: list[int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    idx = range(len(labels))
    pos = [(i, j) for i, j in itertools.product(idx, idx) if i != j and labels[i] == labels[j]]
    neg = [(i, j) for i, j in itertools.product(idx, idx) if labels[i] != labels[j]]
    return pos, neg


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# ---- reference values with plain python loops -------------------------------------------


def contrastive_ref(z: list[list[float]], labels: list[int], beta: float = 0.5) -> float:
    pos, neg = pairs(labels)
    return mean([1 - dot(z[i], z[j]) for i, j in pos]) + mean(
        [max(0.0, dot(z[i], z[j]) - beta) for i, j in neg]
    )


def triplet_ref(z: list[list[float]], labels: list[int], margin: float = 0.1) -> float:
    n = len(labels)
    losses = [
        max(0.0, dot(z[a], z[q]) - dot(z[a], z[p]) + margin)
        for a, p, q in itertools.product(range(n), repeat=3)
        if a != p and labels[a] == labels[p] and labels[q] != labels[a]
    ]
    return mean(losses)


def binomial_ref(
    z: list[list[float]], labels: list[int], a: float = 2.0, beta: float = 0.5, c: float = 25.0
) -> float:
    pos, neg = pairs(labels)
    total = 0.0
    for i, j in pos:
        total += math.log(1 + math.exp(-a * (dot(z[i], z[j]) - beta))) / len(pos)
    for i, j in neg:
        total += math.log(1 + math.exp(-a * (dot(z[i], z[j]) - beta) * -c)) / len(neg)
    return total


REFERENCES = {"contrastive": contrastive_ref, "triplet": triplet_ref, "binomial": binomial_ref}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_hand_computed(name: str, seed: int) -> None:
    z = unit_batch(6, 4, seed)
    got = build_loss(name)(z, torch.tensor(LABELS))
    assert got.shape == ()
    assert got.item() == pytest.approx(REFERENCES[name](z.tolist(), LABELS), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(
    ("name", "params", "ref_params"),
    [
        ("contrastive", {"beta": 0.2}, {"beta": 0.2}),
        ("triplet", {"margin": 0.3}, {"margin": 0.3}),
        ("binomial", {"a": 1.5, "beta": 0.3, "C": 10.0}, {"a": 1.5, "beta": 0.3, "c": 10.0}),
    ],
)
def test_params_are_used(name: str, params: dict, ref_params: dict) -> None:
    z = unit_batch(6, 4, 3)
    got = build_loss(name, **params)(z, torch.tensor(LABELS)).item()
    assert got == pytest.approx(REFERENCES[name](z.tolist(), LABELS, **ref_params), rel=1e-10)
    assert got != pytest.approx(REFERENCES[name](z.tolist(), LABELS), rel=1e-3)


def test_exact_values_on_separated_classes() -> None:
    # one-hot embeddings per class: s = 1 for positives, 0 for negatives
    z = F.one_hot(torch.tensor(LABELS), 3).double()
    labels = torch.tensor(LABELS)
    assert build_loss("contrastive")(z, labels).item() == 0.0
    assert build_loss("triplet")(z, labels).item() == 0.0
    expected = math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-25.0))
    assert build_loss("binomial")(z, labels).item() == pytest.approx(expected, rel=1e-12)


def test_defaults_are_the_papers() -> None:
    assert LOSSES == ("contrastive", "triplet", "binomial")
    assert build_loss("contrastive").beta == 0.5
    assert build_loss("triplet").margin == 0.1
    binomial = build_loss("binomial")
    assert (binomial.a, binomial.beta, binomial.C) == (2.0, 0.5, 25.0)


# ---- pytorch-metric-learning as an outside oracle -----------------------------------------
# PML with CosineSimilarity computes, over all ordered pairs i != j (get_all_pairs_indices):
#   ContrastiveLoss: pos term relu(pos_margin - s), neg term relu(s - neg_margin), each reduced
#   separately and summed. With pos_margin=1, relu(1 - s) == 1 - s for unit vectors (s <= 1).
#   TripletMarginLoss: relu(s_an - s_ap + margin) over all triplets (triplets_per_anchor="all").
# MeanReducer averages over every pair / triplet, zero-loss ones included, which is our
# formula; PML's default AvgNonZeroReducer would average only the non-zero ones.
# PML has no binomial deviance, so that one is checked against the hand-computed value only.


def test_contrastive_matches_pytorch_metric_learning() -> None:
    pml_losses = importlib.import_module("pytorch_metric_learning.losses")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.reducers import MeanReducer

    oracle = pml_losses.ContrastiveLoss(
        pos_margin=1, neg_margin=0.5, distance=CosineSimilarity(), reducer=MeanReducer()
    )
    for seed in range(3):
        z = unit_batch(16, 8, seed)
        labels = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(seed))
        ours = build_loss("contrastive")(z, labels)
        assert ours.item() == pytest.approx(oracle(z, labels).item(), rel=1e-9, abs=1e-12)


def test_triplet_matches_pytorch_metric_learning() -> None:
    pml_losses = importlib.import_module("pytorch_metric_learning.losses")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.reducers import MeanReducer

    oracle = pml_losses.TripletMarginLoss(
        margin=0.1, distance=CosineSimilarity(), triplets_per_anchor="all", reducer=MeanReducer()
    )
    for seed in range(3):
        z = unit_batch(16, 8, seed)
        labels = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(seed))
        ours = build_loss("triplet")(z, labels)
        assert ours.item() == pytest.approx(oracle(z, labels).item(), rel=1e-9, abs=1e-12)


# ---- degenerate batches and gradients -------------------------------------------------------


def _loss_and_grad(name: str, z: torch.Tensor, labels: list[int]) -> tuple[float, torch.Tensor]:
    z = z.clone().requires_grad_(True)
    loss = build_loss(name)(z, torch.tensor(labels))
    loss.backward()
    assert z.grad is not None
    return loss.item(), z.grad


@pytest.mark.parametrize("name", LOSSES)
def test_no_positive_pairs_is_finite(name: str) -> None:
    z = unit_batch(4, 3, 0)
    labels = [0, 1, 2, 3]  # every pair negative
    value, grad = _loss_and_grad(name, z, labels)
    assert math.isfinite(value)
    assert torch.isfinite(grad).all()
    _, neg = pairs(labels)
    s = [dot(z.tolist()[i], z.tolist()[j]) for i, j in neg]
    expected = {
        "contrastive": mean([max(0.0, x - 0.5) for x in s]),
        "triplet": 0.0,  # no valid triplet
        "binomial": mean([math.log1p(math.exp(50.0 * (x - 0.5))) for x in s]),
    }[name]
    assert value == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_no_negative_pairs_is_finite(name: str) -> None:
    z = unit_batch(4, 3, 1)
    labels = [7, 7, 7, 7]  # every pair positive
    value, grad = _loss_and_grad(name, z, labels)
    assert math.isfinite(value)
    assert torch.isfinite(grad).all()
    pos, _ = pairs(labels)
    s = [dot(z.tolist()[i], z.tolist()[j]) for i, j in pos]
    expected = {
        "contrastive": mean([1 - x for x in s]),
        "triplet": 0.0,
        "binomial": mean([math.log1p(math.exp(-2.0 * (x - 0.5))) for x in s]),
    }[name]
    assert value == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_single_sample_is_zero_and_finite(name: str) -> None:
    value, grad = _loss_and_grad(name, unit_batch(1, 3, 0), [0])
    assert value == 0.0
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_flow_to_embeddings(name: str) -> None:
    z = unit_batch(6, 4, 5).float()
    value, grad = _loss_and_grad(name, z, LABELS)
    assert value > 0
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_step_lowers_loss(name: str) -> None:
    z = unit_batch(6, 4, 6).requires_grad_(True)
    loss_fn = build_loss(name)
    labels = torch.tensor(LABELS)
    before = loss_fn(z, labels)
    before.backward()
    with torch.no_grad():
        after = loss_fn(F.normalize(z - 0.01 * z.grad, dim=1), labels)
    assert after < before


@pytest.mark.parametrize("name", LOSSES)
def test_float32_input_gives_float32_scalar(name: str) -> None:
    loss = build_loss(name)(unit_batch(6, 4, 0).float(), torch.tensor(LABELS))
    assert loss.dtype == torch.float32
    assert loss.shape == ()


# ---- build_loss and argument errors ---------------------------------------------------------


def test_unknown_loss_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match="contrastive.*triplet.*binomial"):
        build_loss("arcface")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("triplet", {"margin": -0.1}),
        ("triplet", {"margin": float("nan")}),
        ("contrastive", {"beta": float("inf")}),
        ("binomial", {"a": 0.0}),
        ("binomial", {"C": -1.0}),
    ],
)
def test_bad_parameter_values(name: str, params: dict) -> None:
    key = next(iter(params))
    with pytest.raises(ValueError, match=key):
        build_loss(name, **params)


@pytest.mark.parametrize(("name", "key"), [("triplet", "beta"), ("contrastive", "margin")])
def test_unknown_parameter_names(name: str, key: str) -> None:
    with pytest.raises(TypeError, match=key):
        build_loss(name, **{key: 0.5})


@pytest.mark.parametrize("name", LOSSES)
def test_shape_mismatch_is_rejected(name: str) -> None:
    loss_fn = build_loss(name)
    with pytest.raises(ValueError, match="shape"):
        loss_fn(unit_batch(6, 4, 0), torch.tensor(LABELS[:5]))
    with pytest.raises(ValueError, match="shape"):
        loss_fn(unit_batch(6, 4, 0)[0], torch.tensor(LABELS))
