"""How one image of the synthetic set is drawn: a "creature" of four parts over a real photo.

The object has four parts, body, head, tail and wing (`PART_NAMES`), each with a colour
(`COLOURS`), a pattern (`PATTERNS`: solid, stripes, dots, checks) and a shape (`SHAPES`); a `Pose`
gives its position, scale, rotation, mirror, small shape and colour jitter, pattern phase,
shading and lighting. `render` draws it over a background crop (`background_crop` of one of
scikit-image's bundled photos and textures, `BACKGROUNDS`; the grey ones tinted) and returns the
image with a per-pixel part mask (0 background, 1..4 = `PART_NAMES`).

Determinism: all geometry is integer arithmetic (a fixed-point rotation table, point-in-shape
tests on a 2 x 2 supersampled grid, integer anti-aliasing); backgrounds are decoded from PNG
files and resized with OpenCV's bit-exact `INTER_LINEAR_EXACT`. Which classes exist and how
images are sampled, generated and cached: `diablo.data.synthetic`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "PART_NAMES",
    "PATTERNS",
    "SHAPES",
    "Attributes",
    "Pose",
    "background_crop",
    "load_backgrounds",
    "render",
]

PART_NAMES: tuple[str, ...] = ("body", "head", "tail", "wing")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "orange": (240, 135, 25),
    "yellow": (235, 210, 40),
    "green": (45, 155, 60),
    "teal": (25, 160, 160),
    "blue": (40, 75, 210),
    "purple": (135, 55, 175),
    "pink": (240, 125, 180),
    "white": (240, 240, 235),
    "black": (35, 35, 40),
}
PATTERNS: tuple[str, ...] = ("solid", "stripes", "dots", "checks")
SHAPES: dict[str, tuple[str, ...]] = {
    "body": ("oval", "round", "diamond"),
    "head": ("circle", "triangle", "star"),
    "tail": ("fan", "fork", "spike"),
    "wing": ("leaf", "triangle", "round"),
}
_DRAW_ORDER = ("tail", "body", "wing", "head")  # later parts cover earlier ones
BACKGROUNDS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "immunohistochemistry", "stereo_motorcycle",
    "grass", "gravel", "brick", "camera", "coins",
)  # fmt: skip

# Fixed-point trigonometry: round(4096 cos d), round(4096 sin d) for whole degrees.
_ONE = 4096
_COS = tuple(round(_ONE * math.cos(math.radians(d))) for d in range(360))
_SIN = tuple(round(_ONE * math.sin(math.radians(d))) for d in range(360))

Attributes = dict[str, dict[str, str]]


# ----------------------------------------------------------------------------- shapes
class _Shape:
    def contains(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def bbox(self) -> tuple[int, int, int, int]:
        """(umin, umax, vmin, vmax) enclosing the shape."""
        raise NotImplementedError


@dataclass(frozen=True)
class _Ellipse(_Shape):
    cx: int
    cy: int
    a: int
    b: int

    def contains(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        du, dv = u - self.cx, v - self.cy
        return du * du * (self.b * self.b) + dv * dv * (self.a * self.a) <= (self.a * self.a) * (self.b * self.b)

    def bbox(self) -> tuple[int, int, int, int]:
        return self.cx - self.a, self.cx + self.a, self.cy - self.b, self.cy + self.b


@dataclass(frozen=True)
class _Polygon(_Shape):
    """A convex polygon (either vertex orientation)."""

    points: tuple[tuple[int, int], ...]

    def contains(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        pts = self.points
        area2 = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True))
        sign = 1 if area2 >= 0 else -1
        inside = np.ones(u.shape, dtype=bool)
        for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
            inside &= sign * ((x2 - x1) * (v - y1) - (y2 - y1) * (u - x1)) >= 0
        return inside

    def bbox(self) -> tuple[int, int, int, int]:
        us, vs = [p[0] for p in self.points], [p[1] for p in self.points]
        return min(us), max(us), min(vs), max(vs)


@dataclass(frozen=True)
class _Union(_Shape):
    shapes: tuple[_Shape, ...]

    def contains(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = np.zeros(u.shape, dtype=bool)
        for s in self.shapes:
            out |= s.contains(u, v)
        return out

    def bbox(self) -> tuple[int, int, int, int]:
        boxes = [s.bbox() for s in self.shapes]
        return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))


@dataclass(frozen=True)
class _Difference(_Shape):
    keep: _Shape
    cut: _Shape

    def contains(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.keep.contains(u, v) & ~self.cut.contains(u, v)

    def bbox(self) -> tuple[int, int, int, int]:
        return self.keep.bbox()


def _polar(cx: int, cy: int, r: int, degrees: int) -> tuple[int, int]:
    d = degrees % 360
    return cx + ((r * _COS[d] + _ONE // 2) >> 12), cy + ((r * _SIN[d] + _ONE // 2) >> 12)


def _star(cx: int, cy: int, outer: int, inner: int, points: int = 5) -> _Shape:
    step = 360 // points
    tips = [_polar(cx, cy, outer, k * step) for k in range(points)]
    dents = [_polar(cx, cy, inner, k * step + step // 2) for k in range(points)]
    spikes = [_Polygon((tips[k], dents[k], dents[k - 1])) for k in range(points)]
    return _Union((_Polygon(tuple(dents)), *spikes))


def _part_shapes(attrs: Attributes, body_a: int, body_b: int) -> dict[str, _Shape]:
    """Part outlines in object units (body centred at 0, head towards +u, wing towards -v)."""
    body = attrs["body"]["shape"]
    a, b = body_a, body_b
    if body == "round":
        a, b = a * 4 // 5, b * 5 // 4
    if body == "diamond":
        body_shape: _Shape = _Polygon(((a + 20, 0), (0, b + 20), (-a - 20, 0), (0, -b - 20)))
    else:
        body_shape = _Ellipse(0, 0, a, b)
    hx, hy = a, -40
    head = attrs["head"]["shape"]
    if head == "circle":
        head_shape: _Shape = _Ellipse(hx, hy, 105, 105)
    elif head == "triangle":
        head_shape = _Polygon(((hx - 95, hy - 115), (hx + 150, hy), (hx - 95, hy + 115)))
    else:
        head_shape = _star(hx, hy, 145, 70)
    tx = -a + 40
    tail = attrs["tail"]["shape"]
    if tail == "fan":
        tail_shape: _Shape = _Polygon(((tx, 0), (tx - 250, -170), (tx - 250, 170)))
    elif tail == "fork":
        tail_shape = _Difference(
            _Polygon(((tx, 0), (tx - 270, -190), (tx - 270, 190))),
            _Polygon(((tx - 90, 0), (tx - 280, -100), (tx - 280, 100))),
        )
    else:
        tail_shape = _Polygon(((tx, -55), (tx - 330, 0), (tx, 55)))
    wing = attrs["wing"]["shape"]
    if wing == "leaf":
        wing_shape: _Shape = _Ellipse(-40, -b // 3, 170, 70)
    elif wing == "triangle":
        wing_shape = _Polygon(((90, -b // 3), (-200, -b // 3 - 150), (-150, -b // 3 + 60)))
    else:
        wing_shape = _Ellipse(-30, -b // 3, 100, 100)
    return {"body": body_shape, "head": head_shape, "tail": tail_shape, "wing": wing_shape}


_EYE = _Ellipse(-75, -45, 24, 24)  # relative to the front of the head's bounding box


def _pattern(name: str, u: np.ndarray, v: np.ndarray, period: int, phase: int) -> np.ndarray:
    """True where the pattern's accent colour shows (object units)."""
    if name == "solid":
        return np.zeros(u.shape, dtype=bool)
    pu, pv = u + phase, v + phase
    if name == "stripes":
        return (pu // period) % 2 == 1
    if name == "checks":
        return ((pu // period) + (pv // period)) % 2 == 1
    # dots: one disc per cell of side `period`
    du = pu % period - period // 2
    dv = pv % period - period // 2
    r = period // 3
    return du * du + dv * dv <= r * r


def _accent(colour: Sequence[int]) -> tuple[int, int, int]:
    r, g, b = colour
    luma = (299 * r + 587 * g + 114 * b) // 1000
    if luma > 100:
        return (r * 2 // 5, g * 2 // 5, b * 2 // 5)
    return (r + (255 - r) * 3 // 5, g + (255 - g) * 3 // 5, b + (255 - b) * 3 // 5)


@dataclass(frozen=True)
class Pose:
    """Where and how the object is drawn (all integers).

    cx, cy: body centre in quarter pixels; scale: quarter pixels per 1000 object units;
    angle: degrees; flip: mirror (head to the left); body_a, body_b: body half-axes in object
    units; shading: light-to-dark strength across the object in per mille per 1000 units;
    jitter: (4, 3) colour offsets per part (PART_NAMES order); periods, phases: pattern cell
    size and offset per part in object units.
    """

    cx: int
    cy: int
    scale: int
    angle: int = 0
    flip: bool = False
    body_a: int = 300
    body_b: int = 150
    shading: int = 400
    jitter: tuple[tuple[int, int, int], ...] = ((0, 0, 0),) * 4
    periods: tuple[int, ...] = (80, 80, 80, 80)
    phases: tuple[int, ...] = (0, 0, 0, 0)


def _local(xs: np.ndarray, ys: np.ndarray, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Quarter-pixel image coordinates to object units (exact integer arithmetic)."""
    dx, dy = xs - pose.cx, ys - pose.cy
    c, s = _COS[pose.angle % 360], _SIN[pose.angle % 360]
    den = _ONE * pose.scale
    u = ((c * dx + s * dy) * 1000) // den
    v = ((c * dy - s * dx) * 1000) // den
    return (-u if pose.flip else u), v


def _rasterise(
    xs: np.ndarray, ys: np.ndarray, attrs: Attributes, pose: Pose, colour: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Part id (0 = background) and, if asked, RGB (int32) at the given sample points."""
    grid = xs.shape
    u, v = _local(xs.ravel(), ys.ravel(), pose)
    shapes = _part_shapes(attrs, pose.body_a, pose.body_b)
    pid = np.zeros(u.shape, dtype=np.uint8)
    rgb = np.zeros((u.size, 3), dtype=np.int32) if colour else None
    for name in _DRAW_ORDER:
        k = PART_NAMES.index(name)
        outline = shapes[name]
        umin, umax, vmin, vmax = outline.bbox()
        near = np.flatnonzero((u >= umin) & (u <= umax) & (v >= vmin) & (v <= vmax))
        inside = near[outline.contains(u[near], v[near])]
        pid[inside] = k + 1
        if rgb is None or inside.size == 0:
            continue
        base = np.array(COLOURS[attrs[name]["colour"]], dtype=np.int32)
        col = np.clip(base + np.array(pose.jitter[k], dtype=np.int32), 0, 255)
        acc = np.array(_accent(col.tolist()), dtype=np.int32)
        ui, vi = u[inside], v[inside]
        accent = _pattern(attrs[name]["pattern"], ui, vi, pose.periods[k], pose.phases[k])
        rgb[inside] = np.where(accent[:, None], acc, col)
        if name == "head":  # an eye: dark on light heads, light on dark ones
            eye = inside[_EYE.contains(u[inside] - shapes["head"].bbox()[1], v[inside])]
            dark = (299 * col[0] + 587 * col[1] + 114 * col[2]) // 1000 < 80
            rgb[eye] = (230, 230, 225) if dark else (20, 20, 25)
    if rgb is not None:
        light = np.clip(1000 - (v * pose.shading) // 1000, 600, 1400).astype(np.int32)
        rgb = np.clip(rgb * light[:, None] // 1000, 0, 255).reshape(*grid, 3)
    return pid.reshape(grid), rgb


def _pixel_box(attrs: Attributes, pose: Pose, w: int, h: int) -> tuple[int, int, int, int]:
    """Pixel range [x0, x1) x [y0, y1) that holds the whole object (with a 2-pixel margin)."""
    boxes = [s.bbox() for s in _part_shapes(attrs, pose.body_a, pose.body_b).values()]
    umin, umax = min(b[0] for b in boxes), max(b[1] for b in boxes)
    vmin, vmax = min(b[2] for b in boxes), max(b[3] for b in boxes)
    if pose.flip:
        umin, umax = -umax, -umin
    c, s = _COS[pose.angle % 360], _SIN[pose.angle % 360]
    xs, ys = [], []
    for u in (umin, umax):
        for v in (vmin, vmax):  # inverse of _local, in quarter pixels
            xs.append(pose.cx + (c * u - s * v) * pose.scale // (_ONE * 1000))
            ys.append(pose.cy + (s * u + c * v) * pose.scale // (_ONE * 1000))
    x0, x1 = max(0, min(xs) // 4 - 2), min(w, max(xs) // 4 + 3)
    y0, y1 = max(0, min(ys) // 4 - 2), min(h, max(ys) // 4 + 3)
    return x0, x1, y0, y1


def render(attrs: Attributes, pose: Pose, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw the object over `background` (H, W, 3) uint8; returns (image uint8, mask uint8).

    The image is anti-aliased from a 2 x 2 supersampled grid; the mask samples pixel centres.
    """
    h, w = background.shape[:2]
    x0, x1, y0, y1 = _pixel_box(attrs, pose, w, h)
    image = background.copy()
    mask = np.zeros((h, w), dtype=np.uint8)
    if x0 >= x1 or y0 >= y1:
        return image, mask
    px, py = np.arange(x0, x1, dtype=np.int64), np.arange(y0, y1, dtype=np.int64)
    # pixel centres for the mask
    cy, cx = np.meshgrid(4 * py + 2, 4 * px + 2, indexing="ij")
    mask[y0:y1, x0:x1], _ = _rasterise(cx, cy, attrs, pose, colour=False)
    # 2 x 2 subsamples per pixel for the image
    sub = np.array([1, 3], dtype=np.int64)
    sx = (4 * px[:, None] + sub[None, :]).ravel()
    sy = (4 * py[:, None] + sub[None, :]).ravel()
    gy, gx = np.meshgrid(sy, sx, indexing="ij")
    pid, rgb = _rasterise(gx, gy, attrs, pose, colour=True)
    assert rgb is not None
    hit = (pid > 0).astype(np.int32)
    covered = hit[0::2, 0::2] + hit[0::2, 1::2] + hit[1::2, 0::2] + hit[1::2, 1::2]
    colour_sum = rgb[0::2, 0::2] + rgb[0::2, 1::2] + rgb[1::2, 0::2] + rgb[1::2, 1::2]
    bg = image[y0:y1, x0:x1].astype(np.int32)
    image[y0:y1, x0:x1] = ((bg * (4 - covered)[..., None] + colour_sum + 2) // 4).astype(np.uint8)
    return image, mask


# ------------------------------------------------------------------------ backgrounds
def load_backgrounds() -> list[np.ndarray]:
    """The bundled scikit-image photos (RGB) and textures (grey), as uint8 arrays."""
    import skimage.data

    out = []
    for name in BACKGROUNDS:
        try:
            img = getattr(skimage.data, name)()
        except Exception as err:  # a missing optional file would change every image
            raise RuntimeError(
                f"scikit-image's bundled image {name!r} is not available ({err}); the synthetic "
                "dataset needs it to be identical on every machine"
            ) from err
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise RuntimeError(f"scikit-image's {name!r} has dtype {img.dtype}, expected uint8")
        out.append(np.ascontiguousarray(img[..., :3] if img.ndim == 3 else img))
    return out


def _resize_exact(img: np.ndarray, size: int) -> np.ndarray:
    """Square crop to size x size: integer box averaging, then OpenCV's bit-exact bilinear."""
    import cv2

    side = img.shape[0]
    factor = side // (2 * size)
    if factor >= 2:
        cut = side - side % factor
        img = img[:cut, :cut]
        shape = (cut // factor, factor, cut // factor, factor, *img.shape[2:])
        total = img.reshape(shape).astype(np.int32).sum(axis=(1, 3))
        img = ((total + factor * factor // 2) // (factor * factor)).astype(np.uint8)
    if img.shape[0] != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR_EXACT)
    return np.ascontiguousarray(img)


def background_crop(sources: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    src = sources[int(rng.integers(len(sources)))]
    h, w = src.shape[:2]
    short = min(h, w)
    side = int(rng.integers(min(size, short), min(short, 3 * size) + 1))
    y = int(rng.integers(h - side + 1))
    x = int(rng.integers(w - side + 1))
    crop = src[y : y + side, x : x + side]
    if rng.integers(2):
        crop = crop[:, ::-1]
    if crop.ndim == 2:  # a grey texture: any rotation, then a random tint
        crop = np.rot90(crop, int(rng.integers(4)))
        small = _resize_exact(np.ascontiguousarray(crop), size).astype(np.int32)
        tint = rng.integers(120, 256, size=3).astype(np.int32)
        return (small[..., None] * tint // 255).astype(np.uint8)
    return _resize_exact(np.ascontiguousarray(crop), size)
