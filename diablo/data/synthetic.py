"""The embedded default dataset: fine-grained "creatures" made of parts, over real photos.

Every image shows one object made of four parts, body, head, tail and wing, each with a
colour, a pattern (solid, stripes, dots, checks) and a shape. The twelve attributes together
define the class. Classes come in groups of `group_size`: a random prototype and variants
that each differ from it in one or two attributes of a single part (e.g. the same creature
with a dotted instead of a striped wing), so telling classes apart needs a look at the
parts, which is what DIABLO's attention is meant to find. Per image the object gets a random
position, scale, rotation, mirror, small shape and colour jitter, pattern phase, shading and
lighting, and lies over a random crop of one of scikit-image's bundled photos and textures
(astronaut, chelsea, coffee, immunohistochemistry, motorcycle; grass, gravel, brick, camera,
coins, the grey ones tinted). A per-pixel part mask (0 background, 1..4 = `PART_NAMES`)
comes with every image.

The first half of the classes is the train split and the second half the test split
(disjoint classes, the metric-learning protocol).

How one image is drawn: `diablo.data.rendering`. Determinism: the images depend only on the
parameters: the drawing is integer arithmetic, randomness comes from
`numpy.random.default_rng([seed, class, image])`. The index records a SHA-256 of all pixels to
compare machines.

The set is generated on first use into `<cache>/synthetic-<VERSION>-<hash of params>/`
(cache: `root=`, else `$DIABLO_CACHE`, else `~/.cache/diablo`) as PNG images, PNG masks and
`index.json`, written in a temporary folder then renamed, so an interrupted generation
never leaves a partial set behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diablo.data.base import ImageDataset, Transform
from diablo.data.cache import cache_root
from diablo.data.rendering import (
    BACKGROUNDS,
    COLOURS,
    PART_NAMES,
    PATTERNS,
    SHAPES,
    Attributes,
    Pose,
    background_crop,
    load_backgrounds,
    render,
)
from diablo.data.subset import ClassSubset

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "GROUP_SIZE",
    "NUM_CLASSES",
    "PART_NAMES",
    "PATTERNS",
    "SHAPES",
    "VERSION",
    "Pose",
    "SyntheticParts",
    "class_attributes",
    "generate_synthetic",
    "load_further_groups",
    "load_synthetic",
    "render",
    "synthetic_dir",
]

VERSION = "v1"
NUM_CLASSES = 60  # the embedded set: 10 groups of 6, the first 5 groups train, the last 5 test
GROUP_SIZE = 6
_COLOUR_NAMES = tuple(COLOURS)

# --------------------------------------------------------------------------- classes
def class_attributes(num_classes: int, seed: int = 0, group_size: int = GROUP_SIZE) -> list[Attributes]:
    """The attributes of every class: groups of one random prototype and its variants.

    Each variant changes one or two attributes (colour, pattern, shape) of one part of the
    group's prototype. All classes are distinct.
    """
    if num_classes < 2 or group_size < 1:
        raise ValueError(f"need num_classes >= 2 and group_size >= 1, got {num_classes}, {group_size}")
    rng = np.random.default_rng([seed, 0xC1A55])
    choices = {"colour": _COLOUR_NAMES, "pattern": PATTERNS}

    def options(part: str, attr: str) -> tuple[str, ...]:
        return SHAPES[part] if attr == "shape" else choices[attr]

    def key(a: Attributes) -> tuple[str, ...]:
        return tuple(a[p][k] for p in PART_NAMES for k in ("colour", "pattern", "shape"))

    seen: set[tuple[str, ...]] = set()
    classes: list[Attributes] = []
    while len(classes) < num_classes:
        while True:
            proto = {
                p: {k: options(p, k)[int(rng.integers(len(options(p, k))))] for k in ("colour", "pattern", "shape")}
                for p in PART_NAMES
            }
            if key(proto) not in seen:
                break
        group = [proto]
        seen.add(key(proto))
        tries = 0
        while len(group) < group_size and tries < 1000:
            tries += 1
            part = PART_NAMES[int(rng.integers(len(PART_NAMES)))]
            changed = rng.permutation(3)[: 1 + int(rng.integers(2))]
            variant = {p: dict(v) for p, v in proto.items()}
            for j in sorted(int(c) for c in changed):
                attr = ("colour", "pattern", "shape")[j]
                opts = [o for o in options(part, attr) if o != proto[part][attr]]
                variant[part][attr] = opts[int(rng.integers(len(opts)))]
            if key(variant) not in seen:
                seen.add(key(variant))
                group.append(variant)
        classes.extend(group)
    return classes[:num_classes]


def _describe(attrs: Attributes) -> str:
    return ", ".join(f"{p}: {attrs[p]['colour']} {attrs[p]['pattern']} {attrs[p]['shape']}" for p in PART_NAMES)


# ------------------------------------------------------------------------ generation
def _pose(rng: np.random.Generator, size: int) -> Pose:
    q = 4 * size
    return Pose(
        cx=q * int(rng.integers(380, 621)) // 1000,
        cy=q * int(rng.integers(380, 621)) // 1000,
        scale=q * int(rng.integers(520, 821)) // 1000,
        angle=int(rng.integers(-35, 36)),
        flip=bool(rng.integers(2)),
        body_a=300 * int(rng.integers(920, 1081)) // 1000,
        body_b=150 * int(rng.integers(920, 1081)) // 1000,
        shading=int(rng.integers(250, 551)),
        jitter=tuple(tuple(int(x) for x in row) for row in rng.integers(-12, 13, size=(4, 3))),
        periods=tuple(int(p) for p in rng.integers(80, 111, size=4)),
        phases=tuple(int(p) for p in rng.integers(0, 111, size=4)),
    )


def _sample(
    sources: list[np.ndarray], attrs: Attributes, size: int, seed: int, label: int, index: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, label, index])
    background = background_crop(sources, size, rng)
    pose = _pose(rng, size)
    image, mask = render(attrs, pose, background)
    brightness = int(rng.integers(850, 1101))
    noise = rng.integers(-3, 4, size=image.shape, dtype=np.int32)
    image = np.clip(image.astype(np.int32) * brightness // 1000 + noise, 0, 255).astype(np.uint8)
    return image, mask


def _params(num_classes: int, images_per_class: int, resolution: int, seed: int, group_size: int) -> dict[str, int]:
    return {
        "num_classes": int(num_classes),
        "images_per_class": int(images_per_class),
        "resolution": int(resolution),
        "seed": int(seed),
        "group_size": int(group_size),
    }


def synthetic_dir(params: dict[str, int], root: str | os.PathLike | None = None) -> Path:
    """`<cache>/synthetic-<VERSION>-<hash>`; cache = root, $DIABLO_CACHE or ~/.cache/diablo."""
    cache = Path(root) if root is not None else cache_root()
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return cache.expanduser() / f"synthetic-{VERSION}-{digest}"


_STALE_SECONDS = 3600


def _remove_stale(dest: Path) -> None:
    """Delete temporary folders of killed generations (untouched for an hour)."""
    now = time.time()
    for tmp in dest.parent.glob(f".{dest.name}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def generate_synthetic(
    dest: str | os.PathLike,
    params: dict[str, int],
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the dataset of `params` to `dest` atomically (temp folder, then rename).

    Returns `dest`. If `dest` already holds a complete set (its index.json), nothing is done.
    """
    dest = Path(dest)
    if (dest / "index.json").is_file():
        return dest
    size, per_class = params["resolution"], params["images_per_class"]
    if size < 32 or per_class < 1:
        raise ValueError(f"need resolution >= 32 and images_per_class >= 1, got {size}, {per_class}")
    classes = class_attributes(params["num_classes"], params["seed"], params["group_size"])
    sources = load_backgrounds()
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        digest = hashlib.sha256()
        items = []
        total = len(classes) * per_class
        for label, attrs in enumerate(classes):
            for i in range(per_class):
                image, mask = _sample(sources, attrs, size, params["seed"], label, i)
                stem = f"c{label:03d}_{i:03d}.png"
                Image.fromarray(image, mode="RGB").save(tmp / "images" / stem, compress_level=1)
                Image.fromarray(mask, mode="L").save(tmp / "masks" / stem, compress_level=1)
                digest.update(image.tobytes())
                digest.update(mask.tobytes())
                items.append({"image": f"images/{stem}", "mask": f"masks/{stem}", "label": label})
                if progress is not None:
                    progress(len(items), total)
        index = {
            "version": VERSION,
            "params": params,
            "part_names": list(PART_NAMES),
            "backgrounds": list(BACKGROUNDS),
            "classes": [
                {"name": f"c{k:03d}-g{k // params['group_size']:02d}", "group": k // params["group_size"],
                 "attributes": attrs, "description": _describe(attrs)}
                for k, attrs in enumerate(classes)
            ],
            "items": items,
            "pixel_sha256": digest.hexdigest(),
        }  # fmt: skip
        with open(tmp / "index.json", "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1, sort_keys=True)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "index.json").is_file():  # not a concurrent writer that finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# --------------------------------------------------------------------------- dataset
class SyntheticParts(ImageDataset):
    """The synthetic parts dataset of one split, with part masks.

    Extra attributes: `mask_paths`, `num_parts`, `part_names`, `class_attributes` (one dict
    per class of the split), `root` (the generated folder), `index` (the parsed index.json).
    Unreadable images are dropped as `ImageDataset` drops them, with their masks.
    """

    def __init__(
        self,
        root: Path,
        index: dict[str, Any],
        split: str,
        transform: Transform | None = None,
    ) -> None:
        n = len(index["classes"])
        n_train = n // 2
        if split == "train":
            keep = range(0, n_train)
        elif split == "test":
            keep = range(n_train, n)
        else:
            keep = range(0, n)
        first = keep[0]
        items = [it for it in index["items"] if it["label"] in keep]
        super().__init__(
            [root / it["image"] for it in items],
            [it["label"] - first for it in items],
            [index["classes"][k]["name"] for k in keep],
            transform,
            name=f"synthetic/{split}",
        )
        self.root = root
        self.index = index
        kept = set(self.paths)  # the images that passed the scan
        self.mask_paths: list[str] = [
            os.fspath(root / it["mask"]) for it in items if os.fspath(root / it["image"]) in kept
        ]
        self.part_names: tuple[str, ...] = tuple(index["part_names"])
        self.num_parts: int = len(self.part_names)
        self.class_attributes: list[Attributes] = [index["classes"][k]["attributes"] for k in keep]

    def mask(self, index: int) -> np.ndarray:
        """Part mask of item `index`: (H, W) uint8, 0 = background, k = part_names[k - 1]."""
        with Image.open(self.mask_paths[index]) as m:
            return np.asarray(m.convert("L")).copy()

    def describe(self, label: int) -> str:
        """A readable description of class `label` (its part attributes)."""
        return _describe(self.class_attributes[label])


def load_synthetic(
    root: str | os.PathLike | None = None,
    split: str = "train",
    transform: Transform | None = None,
    num_classes: int = NUM_CLASSES,
    images_per_class: int = 40,
    resolution: int = 128,
    seed: int = 0,
    group_size: int = GROUP_SIZE,
) -> SyntheticParts:
    """The synthetic parts dataset, generated on first use (see the module docstring).

    `root` is the cache folder under which the generated set lives. Splits: "train" (first
    half of the classes), "test" (second half), "all".
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r} for 'synthetic'; allowed: train, test, all")
    params = _params(num_classes, images_per_class, resolution, seed, group_size)
    folder = generate_synthetic(synthetic_dir(params, root), params)
    with open(folder / "index.json", encoding="utf-8") as f:
        index = json.load(f)
    if index.get("params") != params or index.get("version") != VERSION:
        raise ValueError(f"{folder / 'index.json'} does not match the requested parameters {params}")
    return SyntheticParts(folder, index, split, transform)


def load_further_groups(groups: int, root: str | os.PathLike | None = None, transform: Transform | None = None,
                        *, num_classes: int = NUM_CLASSES, group_size: int = GROUP_SIZE, **params: int) -> ClassSubset:
    """`groups` groups of classes beyond a set's `num_classes` (the embedded set's by default): the
    generator continued, so neither its train nor its test classes. Rendered as part of a larger
    set whose first `num_classes` classes are the set's own pixel for pixel (class attributes are
    drawn group by group, each image from its own (seed, class, image) generator); `params` are
    load_synthetic's other parameters. A validation set for runs that train on every training class."""
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if num_classes % group_size:
        raise ValueError(f"num_classes ({num_classes}) is not a whole number of groups of {group_size}")
    extra = groups * group_size
    data = load_synthetic(root, "all", transform, num_classes=num_classes + extra, group_size=group_size, **params)
    return ClassSubset(data, range(num_classes, num_classes + extra))
