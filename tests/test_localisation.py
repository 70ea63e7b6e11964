"""diablo.localisation: attention mass shares recomputed by hand on small masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diablo.localisation import (
    MAX_SHARE,
    argmax_share,
    assignment_entropy,
    localise,
    object_fractions,
    ratio_to_chance,
    region_fractions,
    share_entropy,
    summarise,
    top_channel_mass,
    top_channels,
)


def test_region_fractions_average_pixels_per_cell():
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, :2, :2] = 1  # part 1 fills the top-left cell
    mask[0, 2, 2] = 2  # part 2 covers a quarter of the bottom-right cell
    frac = region_fractions(mask, num_parts=2, size=(2, 2))[0]
    assert torch.allclose(frac[0], torch.tensor([[1.0, 0.0], [0.0, 0.25]]))  # object
    assert torch.allclose(frac[1], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(frac[2], torch.tensor([[0.0, 0.0], [0.0, 0.25]]))


def test_entry_on_a_part_has_all_its_mass_there():
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, :4, :4] = 1
    mask[:, 4:, 4:] = 2
    a = torch.zeros(2, 3, 1, 2, 2)
    a[:, 0, 0, 0, 0] = 1  # entry 0 on part 1
    a[:, 1, 0, 1, 1] = 1  # entry 1 on part 2
    a[:, 2, 0] = 0.25  # entry 2 uniform: mass share = area share
    loc = localise(a, mask, ["head", "tail"])
    assert loc.regions == ["object", "head", "tail"]
    np.testing.assert_allclose(loc.mass[0], [1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(loc.mass[1], [1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(loc.mass[2], loc.area, atol=1e-6)
    np.testing.assert_allclose(loc.area, [0.5, 0.25, 0.25], atol=1e-6)


def test_dimension_wise_attention_is_averaged_over_channels():
    mask = torch.zeros(1, 2, 2, dtype=torch.long)
    mask[0, 0, 0] = 1
    a = torch.zeros(1, 1, 2, 2, 2)
    a[0, 0, 0, 0, 0] = 1  # channel 0 on the part
    a[0, 0, 1, 1, 1] = 1  # channel 1 on the background
    loc = localise(a, mask, ["body"])
    np.testing.assert_allclose(loc.mass[0], [0.5, 0.5], atol=1e-6)


# --- ratio to chance, per-channel score, arg-max share, entropy -----------------------------------------------------


def _quarter_mask(batch: int = 2) -> torch.Tensor:
    """(B, 8, 8): the object (part 1) fills the top-left 4 x 4 pixels, i.e. the top-left 2 x 2 cells of a 4 x 4 grid."""
    mask = torch.zeros(batch, 8, 8, dtype=torch.long)
    mask[:, :4, :4] = 1
    return mask


def _few_channel_entry() -> torch.Tensor:
    """(2, 2, 20, 4, 4): entry 0 puts all its weight on the object in channels 3 and 11 and is flat (0.5)
    in the other 18; entry 1 is its complement (the weights sum to 1 over the entries)."""
    a0 = torch.full((2, 20, 4, 4), 0.5)
    for k in (3, 11):
        a0[:, k] = 0.0
        a0[:, k, :2, :2] = 1.0  # the object's cells
    return torch.stack([a0, 1 - a0], dim=1)


def test_object_fractions_match_region_fractions():
    mask = torch.randint(0, 3, (3, 16, 16))
    np.testing.assert_allclose(object_fractions(mask, (4, 4)), region_fractions(mask, 2, (4, 4))[:, 0], atol=1e-6)


def test_uniform_attention_is_at_chance():
    a = torch.full((2, 4, 5, 4, 4), 0.25)
    np.testing.assert_allclose(ratio_to_chance(a, _quarter_mask()), np.ones(4), atol=1e-9)
    np.testing.assert_allclose(top_channel_mass(a, _quarter_mask()), np.full(4, 0.25), atol=1e-9)


def test_channel_mean_dilutes_few_selective_channels_and_the_per_channel_score_finds_them():
    a, mask = _few_channel_entry(), _quarter_mask()
    # by hand: channel mean of entry 0 = 0.45 + 0.1 on the 4 object cells of 16; area share = 1/4
    mass0 = 4 * 0.55 / (4 * 0.55 + 12 * 0.45)
    ratio = ratio_to_chance(a, mask)
    np.testing.assert_allclose(ratio[0], mass0 / 0.25, rtol=1e-9)  # 1.16: diluted, below the target of 2
    assert ratio[0] < 2
    assert sorted(top_channels(a, q=0.1)[0].tolist()) == [3, 11]  # ceil(0.1 * 20) = 2 channels
    top = top_channel_mass(a, mask, q=0.1)
    np.testing.assert_allclose(top, [1.0, 0.0], atol=1e-9)  # entry 0: all on the object there; entry 1: none
    np.testing.assert_allclose(summarise(a, mask, ["body"], q=0.1).top_ratio, [4.0, 0.0], atol=1e-9)
    # with every channel kept the score is the channel mean again
    np.testing.assert_allclose(top_channel_mass(a, mask, q=1.0)[0], mass0, rtol=1e-9)


def test_per_channel_score_stays_at_chance_for_selection_blind_to_the_object():
    # the object fills the left half of the cells; entry 0 varies along the rows only, strongly in channel 0
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[:, :, :4] = 2
    a0 = torch.full((1, 10, 4, 4), 0.5)
    a0[0, 0] = torch.tensor([0.9, 0.7, 0.3, 0.1])[:, None]  # high at the top, low at the bottom
    a = torch.stack([a0, 1 - a0], dim=1)  # (1, 2, 10, 4, 4)
    assert top_channels(a, q=0.1)[0].tolist() == [0]
    np.testing.assert_allclose(top_channel_mass(a, mask, q=0.1), [0.5, 0.5], atol=1e-9)
    np.testing.assert_allclose(ratio_to_chance(a, mask), [1.0, 1.0], atol=1e-9)


def test_top_channels_count_and_bad_q():
    a = torch.rand(1, 2, 64, 2, 2)
    assert top_channels(a, 0.1).shape == (2, 7)  # ceil(6.4)
    assert top_channels(torch.rand(1, 2, 1280, 2, 2), 0.1).shape == (2, 128)
    assert top_channels(torch.rand(1, 2, 1, 2, 2), 0.1).shape == (2, 1)
    for q in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="q must be"):
            top_channels(a, q)
    with pytest.raises(ValueError, match=r"\(B, N, c, h, w\)"):
        argmax_share(torch.rand(2, 3, 4, 4))


def _softmax_attention(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(*shape, generator=g), dim=1)


def test_every_figure_against_explicit_loops():
    b, n, c, h, w = 3, 4, 6, 4, 4
    a = _softmax_attention(0, (b, n, c, h, w))
    mask = torch.randint(0, 3, (b, 16, 16), generator=torch.Generator().manual_seed(1))
    A, M = a.double().numpy(), mask.numpy()
    frac = np.zeros((b, h, w))  # share of each 4 x 4 pixel block on the object
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                frac[bi, i, j] = (M[bi, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] > 0).mean()
    area = frac.mean()
    q, keep = 0.3, 2  # ceil(0.3 * 6)
    ratio, top, wins, ent = np.zeros(n), np.zeros(n), np.zeros(n), 0.0
    for e in range(n):
        num = den = 0.0
        for bi in range(b):
            for i in range(h):
                for j in range(w):
                    m = sum(A[bi, e, k, i, j] for k in range(c)) / c
                    num += m * frac[bi, i, j]
                    den += m
        ratio[e] = num / den / area
        var = [np.mean([np.var(A[bi, e, k]) for bi in range(b)]) for k in range(c)]
        chosen = sorted(range(c), key=lambda k: (-var[k], k))[:keep]
        num = den = 0.0
        for bi in range(b):
            for k in chosen:
                for i in range(h):
                    for j in range(w):
                        num += A[bi, e, k, i, j] * frac[bi, i, j]
                        den += A[bi, e, k, i, j]
        top[e] = num / den
    for bi in range(b):
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    p = A[bi, :, k, i, j]
                    wins[int(np.argmax(p))] += 1
                    ent += -sum(x * np.log(x) for x in p)
    wins /= b * c * h * w
    ent /= b * c * h * w * np.log(n)
    np.testing.assert_allclose(ratio_to_chance(a, mask), ratio, rtol=1e-6)
    np.testing.assert_allclose(top_channel_mass(a, mask, q), top, rtol=1e-6)
    np.testing.assert_allclose(argmax_share(a), wins, atol=1e-12)
    assert assignment_entropy(a) == pytest.approx(ent, rel=1e-6)
    s = summarise(a, mask, ["head", "tail"], q)
    np.testing.assert_allclose(s.ratio, ratio, rtol=1e-6)
    np.testing.assert_allclose(s.localisation.ratio[:, 0], ratio, rtol=1e-5)
    np.testing.assert_allclose(s.top_ratio, top / area, rtol=1e-6)
    assert s.share_entropy == pytest.approx(-sum(x * np.log(x) for x in wins if x > 0) / np.log(n))


def test_argmax_share_counts_places_for_feature_wise_and_places_and_channels_for_dimension_wise():
    a = torch.zeros(1, 3, 1, 2, 2)
    a[0, 0, 0, 0, :] = 1  # entry 0 wins the top row
    a[0, 2, 0, 1, 0] = 1  # entry 2 one place
    a[0, :, 0, 1, 1] = 1 / 3  # a tie: to the lowest index, entry 0
    np.testing.assert_allclose(argmax_share(a), [3 / 4, 0, 1 / 4])
    # dimension-wise: two channels; the channel mean would give entry 0 both places, per channel it is split
    d = torch.zeros(1, 2, 2, 1, 2)
    d[0, :, 0, 0, 0] = torch.tensor([0.9, 0.1])  # channel 0, place 0: entry 0
    d[0, :, 1, 0, 0] = torch.tensor([0.4, 0.6])  # channel 1, place 0: entry 1
    d[0, :, 0, 0, 1] = torch.tensor([0.8, 0.2])  # channel 0, place 1: entry 0
    d[0, :, 1, 0, 1] = torch.tensor([0.45, 0.55])  # channel 1, place 1: entry 1
    np.testing.assert_allclose(argmax_share(d), [0.5, 0.5])


def test_assignment_and_share_entropy_by_hand():
    a = torch.zeros(1, 2, 1, 1, 2)
    a[0, :, 0, 0, 0] = 0.5  # log 2
    a[0, 0, 0, 0, 1] = 1.0  # 0
    assert assignment_entropy(a) == pytest.approx(0.5)
    assert assignment_entropy(torch.full((2, 8, 3, 2, 2), 1 / 8)) == pytest.approx(1.0)
    assert assignment_entropy(torch.ones(1, 1, 1, 2, 2)) == 0.0
    assert share_entropy(np.array([0.5, 0.5, 0.0, 0.0])) == pytest.approx(0.5)
    assert share_entropy(np.array([1.0, 0, 0])) == 0.0
    assert share_entropy(np.full(8, 1 / 8)) == pytest.approx(1.0)


def _feature_wise(winners: list[int], n: int = 4) -> torch.Tensor:
    """(1, n, 1, 4, 4): one-hot attention, cell t (row-major) won by winners[t]."""
    a = torch.zeros(1, n, 1, 4, 4)
    for t, e in enumerate(winners):
        a[0, e, 0, t // 4, t % 4] = 1
    return a


def test_summary_targets():
    mask = _quarter_mask(1)  # object = cells 0, 1, 4, 5 (row-major): area 1/4
    # entries 0 and 1 each win two object cells and one background cell: ratio (2/3) / (1/4) = 8/3
    met = _feature_wise([0, 0, 2, 2, 1, 1, 3, 3, 0, 1, 2, 3, 2, 3, 2, 3])
    s = summarise(met, mask, ["body"])
    np.testing.assert_allclose(s.ratio, [8 / 3, 8 / 3, 0, 0], atol=1e-6)
    np.testing.assert_allclose(s.share, [3 / 16, 3 / 16, 5 / 16, 5 / 16])
    assert s.channels == 1 and np.allclose(s.top_ratio, s.ratio)  # one channel: the same score
    assert s.entries_over_ratio == 2 and s.ratio_target_met
    assert s.share.max() <= MAX_SHARE and s.share_target_met
    # one entry on the object only: ratio target missed
    one = _feature_wise([0, 0, 2, 2, 0, 0, 3, 3, 1, 1, 2, 3, 1, 3, 2, 1])
    s = summarise(one, mask, ["body"])
    assert s.entries_over_ratio == 1 and not s.ratio_target_met
    # collapse: entry 3 wins 7 of 16 places (44 % > 40 %)
    collapse = _feature_wise([0, 0, 2, 2, 1, 1, 3, 3, 3, 3, 3, 3, 3, 2, 2, 0])
    s = summarise(collapse, mask, ["body"])
    assert s.ratio_target_met and s.share.max() == pytest.approx(7 / 16) and not s.share_target_met
    # exactly 40 % is not above the target: 5 places, entries 0 and 1 win 2 each
    edge = torch.zeros(1, 3, 1, 1, 5)
    for t, e in enumerate([0, 1, 0, 1, 2]):
        edge[0, e, 0, 0, t] = 1
    s = summarise(edge, torch.ones(1, 1, 5, dtype=torch.long), ["body"])
    np.testing.assert_allclose(s.share, [0.4, 0.4, 0.2])
    assert s.share_target_met
