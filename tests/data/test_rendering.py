"""The synthetic set's drawing: masks that line up with the drawn parts, deterministic trigonometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diablo.data.rendering import COLOURS, PART_NAMES, Pose, render


@pytest.mark.parametrize(("angle", "flip"), [(0, False), (27, True), (-33, False)])
def test_mask_lines_up_with_the_drawn_parts(angle: int, flip: bool) -> None:
    colours = {"body": "red", "head": "yellow", "tail": "blue", "wing": "green"}
    shapes = {"body": "oval", "head": "star", "tail": "fork", "wing": "triangle"}
    attrs = {p: {"colour": colours[p], "pattern": "solid", "shape": shapes[p]} for p in PART_NAMES}
    pose = Pose(cx=4 * 64, cy=4 * 64, scale=4 * 100, angle=angle, flip=flip, shading=0)
    image, mask = render(attrs, pose, np.zeros((128, 128, 3), dtype=np.uint8))
    interior = np.ones_like(mask, dtype=bool)  # pixels whose 3 x 3 neighbourhood shares the label
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            interior &= np.roll(mask, (dy, dx), axis=(0, 1)) == mask
    assert np.all(image[interior & (mask == 0)] == 0)
    for k, part in enumerate(PART_NAMES, start=1):
        region = interior & (mask == k)
        assert region.sum() > 20, part
        pixels = image[region].astype(int)
        expected = np.array(COLOURS[colours[part]])
        allowed = [expected]
        if part == "head":  # the dark eye belongs to the head, anti-aliased against it
            eye = np.array((20, 20, 25))
            allowed = [(expected * (4 - n) + eye * n + 2) // 4 for n in range(5)]
        matches = np.any([np.all(pixels == a, axis=1) for a in allowed], axis=0)
        assert matches.mean() == 1.0, part


def test_trig_table_has_no_rounding_ties() -> None:
    # round(4096 cos d) must not depend on the last bits of the platform's libm
    for d in range(360):
        for value in (4096 * math.cos(math.radians(d)), 4096 * math.sin(math.radians(d))):
            assert abs(abs(value - math.floor(value)) - 0.5) > 1e-6 or value == math.floor(value)
