"""diablo.entry_statistics: arg-max shares and assignment entropy, against hand-worked attention maps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as nnf
from test_overlay import random_attention

from diablo import entry_statistics as statistics


def test_entry_statistics() -> None:
    n = 4
    one_hot = nnf.one_hot(torch.tensor([[0, 0, 1], [3, 3, 3]]), n).permute(2, 0, 1).float()  # (N, 2, 3)
    batch = one_hot[None, :, None].repeat(2, 1, 5, 1, 1)  # (B=2, N, c=5, 2, 3)
    stats = statistics.entry_statistics(batch)
    assert stats["share"] == pytest.approx([2 / 6, 1 / 6, 0.0, 3 / 6])
    assert stats["entropy"] == pytest.approx(0.0, abs=1e-9)
    assert stats["entropy_normalised"] == pytest.approx(0.0, abs=1e-9)
    uniform = statistics.entry_statistics(torch.full((2, n, 1, 3, 3), 1 / n))
    assert uniform["entropy"] == pytest.approx(math.log(n))
    assert uniform["entropy_normalised"] == pytest.approx(1.0)
    soft = statistics.entry_statistics(random_attention(entries=n)[None].repeat(3, 1, 1, 1, 1))
    assert soft["share"].sum() == pytest.approx(1.0)
    assert soft["mean_weight"].sum() == pytest.approx(1.0)
    assert 0.0 < soft["entropy"] < math.log(n)
