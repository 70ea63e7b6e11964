"""ClassBalancedSampler: P x K batches, seeding, epochs, DDP ranks, resuming."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from diablo.samplers import ClassBalancedSampler

LABELS = np.repeat(np.arange(20), 12)  # 20 classes x 12 images, shuffled below
LABELS = LABELS[np.random.default_rng(0).permutation(len(LABELS))]


def test_batches_are_p_classes_by_k_images() -> None:
    sampler = ClassBalancedSampler(LABELS, classes_per_batch=4, images_per_class=5, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(LABELS) // 20
    for batch in batches:
        assert len(batch) == 20 and all(isinstance(i, int) for i in batch)
        counts = Counter(LABELS[batch].tolist())
        assert len(counts) == 4 and set(counts.values()) == {5}
        assert len(set(batch)) == 20  # every class has >= K images: no repeats


def test_default_length_and_explicit_length() -> None:
    assert len(ClassBalancedSampler(LABELS)) == len(LABELS) // 80
    assert len(ClassBalancedSampler(LABELS, batches_per_epoch=7)) == 7
    assert len(ClassBalancedSampler(LABELS[:30], classes_per_batch=2, images_per_class=20)) == 1
    assert len(ClassBalancedSampler(LABELS, rank=0, world_size=3)) == len(LABELS) // 240


def test_seeded_reproducible_and_epochs_differ() -> None:
    a = ClassBalancedSampler(LABELS, 4, 5, seed=3)
    b = ClassBalancedSampler(LABELS, 4, 5, seed=3)
    first = list(a)
    assert first == list(b)
    assert first != list(ClassBalancedSampler(LABELS, 4, 5, seed=4))
    second = list(a)  # a full pass moves on to epoch 1
    assert a.epoch == 2 and second != first
    b.set_epoch(1)
    assert list(b) == second
    b.set_epoch(0)
    assert list(b) == first


def test_ranks_split_one_stream() -> None:
    single = list(ClassBalancedSampler(LABELS, 4, 5, batches_per_epoch=6, seed=2, rank=0, world_size=1))
    ranks = [
        list(ClassBalancedSampler(LABELS, 4, 5, batches_per_epoch=3, seed=2, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert ranks[0] != ranks[1]
    assert not {tuple(b) for b in ranks[0]} & {tuple(b) for b in ranks[1]}
    assert [b for pair in zip(*ranks, strict=True) for b in pair] == single  # rank r takes batches r, r + W, ...


def test_rank_from_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    sampler = ClassBalancedSampler(LABELS, 4, 5, batches_per_epoch=3, seed=2)
    assert (sampler.rank, sampler.world_size) == (1, 2)
    assert list(sampler) == list(ClassBalancedSampler(LABELS, 4, 5, batches_per_epoch=3, seed=2, rank=1, world_size=2))


def test_small_and_single_image_classes_are_filled_with_replacement() -> None:
    labels = np.array([0] + [1] * 3 + [2] * 10)  # class 0: one image, class 1: three
    sampler = ClassBalancedSampler(labels, classes_per_batch=3, images_per_class=5, batches_per_epoch=4)
    for batch in sampler:
        assert len(batch) == 15
        assert batch.count(0) == 5  # the single image, five times
        ones = [i for i in batch if labels[i] == 1]
        assert len(ones) == 5 and set(ones) == {1, 2, 3}  # all of them, then repeats


def test_too_few_classes_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fewer than classes_per_batch"):
        ClassBalancedSampler([0, 0, 1, 1], classes_per_batch=3)
    with pytest.raises(ValueError, match="rank"):
        ClassBalancedSampler(LABELS, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batches_per_epoch"):
        ClassBalancedSampler(LABELS, batches_per_epoch=0)


def test_state_round_trip_resumes_mid_epoch() -> None:
    reference = ClassBalancedSampler(LABELS, 4, 5, seed=5)
    reference.set_epoch(2)
    expected = list(reference)
    sampler = ClassBalancedSampler(LABELS, 4, 5, seed=5)
    sampler.set_epoch(2)
    stream = iter(sampler)
    head = [next(stream) for _ in range(4)]
    state = sampler.state_dict()
    assert state["epoch"] == 2 and state["position"] == 4
    resumed = ClassBalancedSampler(LABELS, 4, 5, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a training loop calling set_epoch for the same epoch keeps the position
    assert head + list(resumed) == expected
    assert resumed.state_dict() == {"epoch": 3, "position": 0, "seed": 5}
    with pytest.raises(ValueError, match="seed"):
        ClassBalancedSampler(LABELS, 4, 5, seed=6).load_state_dict(state)


def test_works_as_dataloader_batch_sampler() -> None:
    data = TensorDataset(torch.arange(len(LABELS)), torch.as_tensor(LABELS))
    sampler = ClassBalancedSampler(data.tensors[1].tolist(), 4, 5, batches_per_epoch=3)
    batches = list(DataLoader(data, batch_sampler=sampler))
    assert len(batches) == 3
    for idx, labels in batches:
        assert idx.shape == (20,) and torch.equal(labels, torch.as_tensor(LABELS)[idx])
