"""diablo.localisation: attention mass shares recomputed by hand on small masks."""

from __future__ import annotations

import numpy as np
import torch

from diablo.localisation import localise, region_fractions


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
