"""The synthetic parts dataset: determinism, masks, class design, caching."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from diablo.data import synthetic
from diablo.data.rendering import load_backgrounds
from diablo.data.synthetic import (
    PART_NAMES,
    SyntheticParts,
    class_attributes,
    generate_synthetic,
    load_further_groups,
    load_synthetic,
    synthetic_dir,
)

SMALL = {"num_classes": 6, "images_per_class": 3, "resolution": 64, "seed": 0, "group_size": 3}
PINNED_DIGEST = "ffddf95f0d38ab42d555d11bf726d43df515e47482acb254688806ead5dfdd48"  # pixels of SMALL


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic-cache")
    load_synthetic(root=root, split="all", **SMALL)
    return root


def test_generation_is_byte_identical(small_cache: Path, tmp_path: Path) -> None:
    first = synthetic_dir(synthetic._params(**SMALL), small_cache)
    second = generate_synthetic(tmp_path / "again", synthetic._params(**SMALL))
    files = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert len(files) == 2 * 6 * 3
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.png"))
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    assert (first / "index.json").read_bytes() == (second / "index.json").read_bytes()
    other_seed = generate_synthetic(tmp_path / "seed1", synthetic._params(**{**SMALL, "seed": 1}))
    assert (other_seed / files[0]).read_bytes() != (first / files[0]).read_bytes()


def test_pixels_match_the_recorded_digest(small_cache: Path) -> None:
    # The digest of this small set is pinned: a change means the data changed on this
    # machine or library versions, and VERSION must be bumped if that is intended.
    index = json.loads((synthetic_dir(synthetic._params(**SMALL), small_cache) / "index.json").read_text())
    assert index["pixel_sha256"] == PINNED_DIGEST


def test_splits_are_class_disjoint(small_cache: Path) -> None:
    train = load_synthetic(root=small_cache, split="train", **SMALL)
    test = load_synthetic(root=small_cache, split="test", **SMALL)
    every = load_synthetic(root=small_cache, split="all", **SMALL)
    assert isinstance(train, SyntheticParts)
    assert len(train) == len(test) == 9 and len(every) == 18
    assert train.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2] and test.labels == train.labels
    assert set(train.classes).isdisjoint(test.classes)
    assert every.classes == train.classes + test.classes
    assert set(train.paths).isdisjoint(test.paths)
    assert "body:" in test.describe(0)
    with pytest.raises(ValueError, match="train, test, all"):
        load_synthetic(root=small_cache, split="val", **SMALL)


def test_items_and_masks(small_cache: Path) -> None:
    ds = load_synthetic(root=small_cache, split="test", **SMALL)
    assert ds.num_parts == 4 and ds.part_names == PART_NAMES
    x, y = ds[4]
    assert x.shape == (3, 64, 64) and y == 1
    for i in range(len(ds)):
        mask = ds.mask(i)
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 4}
        assert (mask == 1).sum() > 50  # the body is always visible
        assert 0.05 < (mask > 0).mean() < 0.6
    # the stored mask is the one of the drawn object: recompute it from the recipe
    image, mask = synthetic._sample(
        load_backgrounds(), ds.class_attributes[1], 64, 0, ds.labels[4] + 3, 4 % 3
    )
    assert np.array_equal(mask, ds.mask(4))
    assert np.array_equal(image, np.asarray(ds.image(4)))


def test_classes_are_fine_grained_variants() -> None:
    classes = class_attributes(60, seed=0, group_size=6)
    keys = [json.dumps(c, sort_keys=True) for c in classes]
    assert len(set(keys)) == 60
    for g in range(10):
        proto, *variants = classes[6 * g : 6 * g + 6]
        for variant in variants:
            parts = [p for p in PART_NAMES if variant[p] != proto[p]]
            assert len(parts) == 1
            changed = [a for a in ("colour", "pattern", "shape") if variant[parts[0]][a] != proto[parts[0]][a]]
            assert 1 <= len(changed) <= 2
    assert class_attributes(60, seed=0) == classes and class_attributes(60, seed=1) != classes


def test_cache_location_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = synthetic._params(**SMALL)
    monkeypatch.setenv("DIABLO_CACHE", str(tmp_path / "env-cache"))
    folder = synthetic_dir(params)
    assert folder.parent == tmp_path / "env-cache" and folder.name.startswith(f"synthetic-{synthetic.VERSION}-")
    assert synthetic_dir(params, tmp_path / "explicit").parent == tmp_path / "explicit"
    assert synthetic_dir({**params, "seed": 5}) != folder
    monkeypatch.delenv("DIABLO_CACHE")
    assert synthetic_dir(params).parent == Path("~/.cache/diablo").expanduser()


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic._sample
    calls = []

    def failing(*args: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(synthetic, "_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        load_synthetic(root=tmp_path, **SMALL)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(synthetic, "_sample", real)
    ds = load_synthetic(root=tmp_path, **SMALL)
    assert len(ds) == 9 and [p.name for p in tmp_path.iterdir()] == [ds.root.name]
    before = (ds.root / "index.json").stat().st_mtime_ns
    load_synthetic(root=tmp_path, split="test", **SMALL)  # reused, not regenerated
    assert (ds.root / "index.json").stat().st_mtime_ns == before


def test_stale_temporary_folders_are_removed(tmp_path: Path) -> None:
    params = synthetic._params(**SMALL)
    dest = synthetic_dir(params, tmp_path)
    stale, fresh = tmp_path / f".{dest.name}.tmp-old", tmp_path / f".{dest.name}.tmp-new"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (0, 0))
    generate_synthetic(dest, params)
    assert not stale.exists() and fresh.exists() and (dest / "index.json").is_file()


def test_an_unreadable_image_is_dropped_with_its_mask(small_cache: Path, tmp_path: Path) -> None:
    import shutil

    from .conftest import write_corrupt

    shutil.copytree(small_cache, tmp_path / "cache")  # the shared set stays intact
    full = load_synthetic(root=tmp_path / "cache", split="test", **SMALL)
    victim = Path(full.paths[4])
    write_corrupt(victim, "truncated-png")
    with pytest.warns(RuntimeWarning, match=victim.name):
        ds = load_synthetic(root=tmp_path / "cache", split="test", **SMALL)
    assert ds.skipped == [str(victim)] and len(ds) == len(full) - 1
    assert ds.labels == full.labels[:4] + full.labels[5:] and ds.classes == full.classes
    assert [Path(m).name for m in ds.mask_paths] == [Path(p).name for p in ds.paths]  # still aligned
    assert np.array_equal(ds.mask(4), full.mask(5))


def test_further_groups_continue_the_set_without_touching_it(small_cache: Path, tmp_path: Path) -> None:
    further = load_further_groups(2, root=tmp_path, **SMALL)  # 6 classes + 2 groups of 3
    n, size = SMALL["num_classes"], SMALL["group_size"]
    assert sorted(set(further.labels)) == list(range(n, n + 2 * size))
    assert len(further) == 2 * size * SMALL["images_per_class"]
    # The larger set's first classes are the set's own: same attributes, same pixels, same masks.
    own = load_synthetic(root=small_cache, split="all", **SMALL)
    larger = further.dataset
    assert class_attributes(n + 2 * size, SMALL["seed"], size)[:n] == class_attributes(n, SMALL["seed"], size)
    for i in range(len(own)):
        assert larger.labels[i] == own.labels[i]
        assert np.array_equal(np.asarray(larger.image(i)), np.asarray(own.image(i)))
        assert np.array_equal(larger.mask(i), own.mask(i))
    # ... and the further classes are none of them.
    keys = [json.dumps(a, sort_keys=True) for a in class_attributes(n + 2 * size, SMALL["seed"], size)]
    assert len(set(keys)) == len(keys)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        load_further_groups(0, root=tmp_path, **SMALL)
    with pytest.raises(ValueError, match="whole number of groups"):
        load_further_groups(1, root=tmp_path, **{**SMALL, "num_classes": 5})
