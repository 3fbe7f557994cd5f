"""A deterministic procedural image dataset: ten classes of objects built from shared parts.

Nothing is read from disk or downloaded: every image is drawn with Pillow's
``ImageDraw`` from a seed.  The dataset is made for the deconvnet pictures of
Zeiler & Fergus: the classes differ in *shape* and in *parts*, and several
classes share parts (wheels, discs, triangles, bars, stripes), so a network has
to learn edges and colour blobs low down and parts and their arrangement higher
up.  Colours are drawn at random for every image, independently of the class, so
the mean colour of an image says (almost) nothing about its class.

===  ==============  ==========================================================
 #   class           what it is (the parts it shares)
===  ==============  ==========================================================
 0   ``bicycle``     two wheels (rings with a hub) joined by a bar frame and a
                     seat post (wheels, bars)
 1   ``car``         a box body with a cabin on top and two wheels below
                     (wheels, rectangles)
 2   ``face``        a disc with two eye dots and a mouth arc (discs)
 3   ``house``       a square with a triangular roof and a door
                     (rectangles, triangles)
 4   ``star``        a five-pointed star (triangular points)
 5   ``cross``       a plus sign of two crossed bars (bars)
 6   ``ring``        a thick ring whose hole shows the background (rings)
 7   ``flag``        a striped rectangle on a pole (stripes, bars, rectangles)
 8   ``checkerboard`` a square patch of 3x3 to 5x5 two-coloured cells
                     (stripes, rectangles)
 9   ``arrow``       a bar shaft with a triangular head (bars, triangles)
===  ==============  ==========================================================

Every image varies in position, scale (the object spans about 45-90% of the
image), rotation (a small tilt for upright objects, any angle for the others),
mirror, aspect, colours, a background (a smooth colour gradient, smooth noise
blotches, low-contrast stripes or a flat colour), 0-6 small clutter shapes
(dots, dashes, small triangles and squares) and Gaussian pixel noise.  Shapes
are drawn at 4x the output size and reduced with a box filter, which is an
exact area average, so edges are anti-aliased.

Determinism: image ``i`` of a split is drawn from its own generator, seeded by
``np.random.SeedSequence(seed, spawn_key=(split, 1, i))``, and the labels come
in blocks of ten (one of each class, in an order drawn from
``spawn_key=(split, 0, block)``).  So image ``i`` and its label do not depend on
``n_per_class`` (a larger dataset extends a smaller one), every block of ten is
balanced, and the splits ``train``, ``val`` and ``test`` draw from disjoint
streams.

>>> from zfraw import synthetic
>>> images, labels = synthetic.make_dataset(2, seed=0)
>>> images.shape, images.dtype, labels.dtype
((20, 64, 64, 3), dtype('uint8'), dtype('int64'))
>>> sorted(labels[:10].tolist()) == list(range(10))
True
"""
from __future__ import annotations

import contextlib
import math
import operator
from typing import NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from zfraw._args import int_arg

__all__ = [
    "CLASSES", "DESCRIPTIONS", "SPLITS", "PARTS", "Part", "render", "make_dataset", "SyntheticDataset",
    "contact_sheet",
]

DESCRIPTIONS = {
    "bicycle": "two wheels (rings with a hub) joined by a bar frame with a seat post",
    "car": "a box body with a cabin on top and two wheels (disc with a hub) below",
    "face": "a disc with two eye dots and a mouth arc",
    "house": "a square with a triangular roof and a door",
    "star": "a five-pointed star",
    "cross": "a plus sign made of two crossed bars",
    "ring": "a thick ring whose hole shows the background",
    "flag": "a rectangle of horizontal stripes on a vertical pole",
    "checkerboard": "a square patch of 3x3 to 5x5 cells in two colours",
    "arrow": "a bar shaft ending in a triangular head",
}
#: class names in label order
CLASSES = list(DESCRIPTIONS)

#: the split names and the key each one adds to the seed
SPLITS = {"train": 0, "val": 1, "test": 2}

_SUPERSAMPLE = 4           # shapes are drawn at this many times the output size
_CIRCLE_VERTICES = 48      # polygon vertices of a full circle
_LABEL_STREAM, _IMAGE_STREAM = 0, 1


# --------------------------------------------------------------------------- colours
def _random_colour(rng):
    """A random RGB colour as a float array (3,) in [0, 255]."""
    return rng.uniform(0.0, 255.0, size=3)


def _contrasting(rng, refs, min_dist=110.0, tries=20):
    """A random colour at Euclidean RGB distance >= ``min_dist`` from every colour in ``refs``.

    Falls back to the farthest of ``tries`` candidates when none is far enough.
    """
    best, best_d = None, -1.0
    for _ in range(tries):
        c = _random_colour(rng)
        d = min(float(np.linalg.norm(c - r)) for r in refs)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _rgb(c):
    """A colour as the tuple of ints Pillow wants."""
    return tuple(int(round(v)) for v in np.clip(c, 0, 255))


# --------------------------------------------------------------------------- geometry
_UNIT_CIRCLE = np.stack(
    [np.cos(np.linspace(0, 2 * np.pi, _CIRCLE_VERTICES, endpoint=False)),
     np.sin(np.linspace(0, 2 * np.pi, _CIRCLE_VERTICES, endpoint=False))], axis=1)


class _Frame:
    """Maps object coordinates (the unit box [-1, 1]^2, y down) to canvas pixels.

    ``p_canvas = centre + radius * R(angle) @ (sx * x, sy * y)``, where ``sx``
    carries the mirror and the aspect jitter.
    """

    def __init__(self, centre, radius, angle, sx, sy):
        c, s = math.cos(angle), math.sin(angle)
        self.matrix = radius * np.array([[c, -s], [s, c]]) @ np.diag([sx, sy])
        self.centre = np.asarray(centre, dtype=np.float64)

    def __call__(self, pts):
        """Object points (n, 2) -> canvas points as a flat list for ImageDraw."""
        pts = np.asarray(pts, dtype=np.float64)
        return (pts @ self.matrix.T + self.centre).ravel().tolist()


def _circle(cx, cy, r):
    return _UNIT_CIRCLE * r + (cx, cy)


def _rect(x0, y0, x1, y1):
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)


def _bar(p0, p1, width):
    """A rectangle of the given width along the segment p0 -> p1."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-12) * (width / 2)
    return np.array([p0 + n, p1 + n, p1 - n, p0 - n])


def _arc_band(cx, cy, r, width, start, stop, n=16):
    """A band of the given width along the circle arc from angle ``start`` to ``stop``."""
    t = np.linspace(start, stop, n)
    outer = np.stack([cx + (r + width / 2) * np.cos(t), cy + (r + width / 2) * np.sin(t)], 1)
    inner = np.stack([cx + (r - width / 2) * np.cos(t), cy + (r - width / 2) * np.sin(t)], 1)
    return np.concatenate([outer, inner[::-1]])


def _star(n_points, r_out, r_in):
    t = -np.pi / 2 + np.arange(2 * n_points) * np.pi / n_points
    r = np.where(np.arange(2 * n_points) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


# --------------------------------------------------------------------------- painting
class _Painter:
    """Draws filled polygons in colour onto a supersampled RGB canvas.

    ``layer`` collects polygons into one mask (fill 255, holes 0) and pastes a
    colour through it, so a shape with a hole shows the background inside.
    """

    def __init__(self, canvas, record=False):
        self.canvas = canvas
        self.draw = ImageDraw.Draw(canvas)
        #: with ``record``: (part name, [flat polygons]) in drawing order, see :meth:`part`
        self.parts = [] if record else None
        self._current = None

    @contextlib.contextmanager
    def part(self, name):
        """Record the solid polygons drawn inside this block as one part called ``name``.

        Recording only keeps the polygons; it draws nothing and uses no randomness,
        so an image is the same whether its parts are recorded or not.
        """
        if self.parts is None:
            yield
            return
        self._current = []
        try:
            yield
        finally:
            self.parts.append((name, self._current))
            self._current = None

    def _record(self, polygons):
        if self._current is not None:
            self._current.extend(polygons)

    def fill(self, colour, *polygons):
        self._record(polygons)
        for p in polygons:
            self.draw.polygon(p, fill=_rgb(colour))

    def layer(self, colour, solid, holes=()):
        self._record(solid)
        mask = Image.new("L", self.canvas.size, 0)
        d = ImageDraw.Draw(mask)
        for p in solid:
            d.polygon(p, fill=255)
        for p in holes:
            d.polygon(p, fill=0)
        self.canvas.paste(_rgb(colour), (0, 0), mask)


# --------------------------------------------------------------------------- the classes
# Each draws one object in the frame ``f`` (object coordinates in [-1, 1]^2).
# ``fg`` contrasts with the background ``bg``; draw the rest from ``rng``.

def _wheel(f, paint, rng, colour, hub_colour, cx, cy, r, tyre):
    paint.layer(colour, [f(_circle(cx, cy, r))], [f(_circle(cx, cy, r - tyre))])
    paint.fill(hub_colour, f(_circle(cx, cy, r * rng.uniform(0.22, 0.35))))


def _draw_bicycle(f, paint, rng, fg, bg):
    frame = _contrasting(rng, [bg, fg], 80)
    r = rng.uniform(0.36, 0.45)
    gap = rng.uniform(0.5, 0.6)
    tyre = r * rng.uniform(0.22, 0.32)
    w = rng.uniform(0.08, 0.12)
    y = 0.35
    left, right = (-gap, y), (gap, y)
    seat = (-0.1 * rng.uniform(0.5, 1.5), y - rng.uniform(0.55, 0.7))
    top = (gap * 0.75, seat[1] + 0.05)
    for rx in (-gap, gap):
        with paint.part("wheel"):
            _wheel(f, paint, rng, fg, frame, rx, y, r, tyre)
    paint.fill(frame, f(_bar(left, right, w)), f(_bar(left, seat, w)), f(_bar(seat, right, w)),
               f(_bar(seat, top, w)), f(_bar(top, right, w)),
               f(_bar((seat[0] - 0.14, seat[1] - 0.02), (seat[0] + 0.14, seat[1] - 0.02), w * 1.4)))


def _draw_car(f, paint, rng, fg, bg):
    wheel = _contrasting(rng, [bg, fg], 80)
    hub = _contrasting(rng, [wheel], 80)
    h0, h1 = -rng.uniform(0.1, 0.2), rng.uniform(0.22, 0.32)
    cab_l, cab_r = -rng.uniform(0.35, 0.55), rng.uniform(0.25, 0.5)
    cab_top = h0 - rng.uniform(0.35, 0.5)
    slant = rng.uniform(0.05, 0.2)
    body = _rect(-0.95, h0, 0.95, h1)
    cabin = np.array([(cab_l, h0), (cab_l + slant, cab_top), (cab_r - slant, cab_top), (cab_r, h0)])
    paint.fill(fg, f(body))
    with paint.part("cabin"):
        paint.fill(fg, f(cabin))
    r = rng.uniform(0.22, 0.28)
    for wx in (-0.55, 0.55):
        with paint.part("wheel"):
            paint.fill(wheel, f(_circle(wx, h1, r)))
            paint.fill(hub, f(_circle(wx, h1, r * rng.uniform(0.3, 0.45))))


def _draw_face(f, paint, rng, fg, bg):
    feat = _contrasting(rng, [fg], 110)
    r = rng.uniform(0.75, 0.92)
    paint.fill(fg, f(_circle(0, 0, r)))
    ex, ey, er = rng.uniform(0.25, 0.38) * r, -rng.uniform(0.15, 0.3) * r, rng.uniform(0.1, 0.16) * r
    for x in (-ex, ex):
        with paint.part("eye"):
            paint.fill(feat, f(_circle(x, ey, er)))
    half = rng.uniform(0.45, 0.8)             # half the opening of the smile, in radians
    mr = rng.uniform(0.35, 0.5) * r
    with paint.part("mouth"):
        paint.fill(feat, f(_arc_band(0, 0.05 * r, mr, rng.uniform(0.08, 0.14) * r,
                                     np.pi / 2 - half, np.pi / 2 + half)))


def _draw_house(f, paint, rng, fg, bg):
    roof = _contrasting(rng, [bg], 80)
    door = _contrasting(rng, [fg], 90)
    w = rng.uniform(0.55, 0.7)
    eave = rng.uniform(-0.15, 0.05)
    peak = -rng.uniform(0.8, 0.95)
    over = rng.uniform(0.08, 0.2)
    paint.fill(fg, f(_rect(-w, eave, w, 0.9)))
    with paint.part("roof"):
        paint.fill(roof, f(np.array([(-w - over, eave), (0, peak), (w + over, eave)])))
    dx = rng.uniform(-0.5, 0.5) * w * 0.6
    dw = rng.uniform(0.15, 0.22)
    with paint.part("door"):
        paint.fill(door, f(_rect(dx - dw, 0.9 - rng.uniform(0.35, 0.5), dx + dw, 0.9)))


def _draw_star(f, paint, rng, fg, bg):
    paint.fill(fg, f(_star(5, rng.uniform(0.85, 1.0), rng.uniform(0.32, 0.45))))


def _draw_cross(f, paint, rng, fg, bg):
    w = rng.uniform(0.3, 0.45)
    a, b = rng.uniform(0.75, 0.95), rng.uniform(0.75, 0.95)
    paint.fill(fg, f(_bar((-a, 0), (a, 0), w)), f(_bar((0, -b), (0, b), w)))


def _draw_ring(f, paint, rng, fg, bg):
    r = rng.uniform(0.75, 0.95)
    paint.layer(fg, [f(_circle(0, 0, r))], [f(_circle(0, 0, r * rng.uniform(0.45, 0.65)))])


def _draw_flag(f, paint, rng, fg, bg):
    second = _contrasting(rng, [fg], 110)
    pole = _contrasting(rng, [bg], 80)
    n = int(rng.integers(3, 6))
    top, bottom = -0.9, rng.uniform(0.0, 0.3)
    x0, x1 = -0.7, rng.uniform(0.75, 0.95)
    step = (bottom - top) / n
    for k in range(n):
        paint.fill(fg if k % 2 == 0 else second, f(_rect(x0, top + k * step, x1, top + (k + 1) * step)))
    with paint.part("pole"):
        paint.fill(pole, f(_bar((x0, top - 0.08), (x0, 0.95), rng.uniform(0.08, 0.13))))


def _draw_checkerboard(f, paint, rng, fg, bg):
    second = _contrasting(rng, [fg], 110)
    n = int(rng.integers(3, 6))
    h = rng.uniform(0.7, 0.85)
    step = 2 * h / n
    for i in range(n):
        for j in range(n):
            x, y = -h + j * step, -h + i * step
            paint.fill(fg if (i + j) % 2 == 0 else second, f(_rect(x, y, x + step, y + step)))


def _draw_arrow(f, paint, rng, fg, bg):
    w = rng.uniform(0.22, 0.32)
    neck = rng.uniform(0.1, 0.35)
    half = rng.uniform(0.4, 0.55)
    paint.fill(fg, f(_bar((-0.95, 0), (neck + 0.05, 0), w)))
    with paint.part("head"):
        paint.fill(fg, f(np.array([(neck, -half), (0.95, 0), (neck, half)])))


_DRAW = {
    "bicycle": _draw_bicycle, "car": _draw_car, "face": _draw_face, "house": _draw_house,
    "star": _draw_star, "cross": _draw_cross, "ring": _draw_ring, "flag": _draw_flag,
    "checkerboard": _draw_checkerboard, "arrow": _draw_arrow,
}
#: classes with an up: these tilt by at most 25 degrees; the others turn freely
_UPRIGHT = {"bicycle", "car", "face", "house", "flag"}


# --------------------------------------------------------------------------- backgrounds
def _smooth(rng, size, cells):
    """Smooth random blotches: a (cells, cells, 3) random grid upsampled bicubically to size."""
    grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float64)


def _background(rng, size):
    """A float (size, size, 3) background in [0, 255] and the kind of stripes to draw on it.

    Kinds: a linear gradient between two colours, smooth noise blotches, a flat
    colour (each of these also gets low-contrast stripes with probability 1/4
    through the returned stripe spec), or stripes alone on a flat colour.
    """
    kind = rng.integers(4)
    if kind == 0:
        c0, c1 = _random_colour(rng), _random_colour(rng)
        theta = rng.uniform(0, 2 * np.pi)
        u = (np.arange(size) + 0.5) / size - 0.5
        t = np.clip(np.cos(theta) * u[None, :] + np.sin(theta) * u[:, None] + 0.5, 0, 1)
        bg = c0 + (c1 - c0) * t[..., None]
    elif kind == 1:
        base = _random_colour(rng)
        bg = base + (_smooth(rng, size, int(rng.integers(3, 8))) - 127.5) * rng.uniform(0.3, 0.7)
    else:
        bg = np.broadcast_to(_random_colour(rng), (size, size, 3)).astype(np.float64)
    stripes = kind == 3 or rng.random() < 0.25
    return np.clip(bg, 0, 255), stripes


def _draw_stripes(rng, paint, size, bg_mean):
    """Low-contrast straight stripes across the whole canvas at a random angle and period."""
    colour = bg_mean + (_random_colour(rng) - bg_mean) * rng.uniform(0.2, 0.45)
    period = rng.uniform(0.08, 0.2) * size
    theta = rng.uniform(0, np.pi)
    d, n = np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])
    c = np.array([size / 2, size / 2])
    half = size                                   # long enough to cross the canvas
    for k in np.arange(-size / period - 1, size / period + 1):
        o = c + n * (k * period)
        paint.fill(colour, _bar(o - d * half, o + d * half, period / 2).ravel().tolist())


def _draw_clutter(rng, paint, size, bg_mean):
    """0-6 small shapes (dots, dashes, small triangles and squares) of random colours."""
    for _ in range(int(rng.integers(0, 7))):
        colour = _contrasting(rng, [bg_mean], 60)
        r = rng.uniform(0.02, 0.06) * size
        c = rng.uniform(0, size, size=2)
        kind = rng.integers(4)
        f = _Frame(c, r, rng.uniform(0, 2 * np.pi), 1.0, rng.uniform(0.6, 1.0))
        if kind == 0:
            poly = _UNIT_CIRCLE
        elif kind == 1:
            poly = _bar((-1.5, 0), (1.5, 0), 0.6)
        elif kind == 2:
            poly = _star(3, 1.0, 0.5)[::2]
        else:
            poly = _rect(-0.8, -0.8, 0.8, 0.8)
        paint.fill(colour, f(poly))


# --------------------------------------------------------------------------- the API
def _label_index(label):
    if isinstance(label, str):
        if label not in DESCRIPTIONS:
            raise ValueError(f"label: expected one of {CLASSES}, got {label!r}")
        return CLASSES.index(label)
    try:
        k = operator.index(label)
    except TypeError:
        raise TypeError(f"label: expected an int or a class name, got {type(label).__name__}") from None
    if not 0 <= k < len(CLASSES):
        raise ValueError(f"label: expected 0 <= label < {len(CLASSES)}, got {k}")
    return k


def _check_size(size):
    try:
        size = operator.index(size)
    except TypeError:
        raise TypeError(f"size: expected an int, got {type(size).__name__}") from None
    if size < 16:
        raise ValueError(f"size: expected an image side of at least 16 pixels, got {size}")
    return size


class Part(NamedTuple):
    """Where the generator drew one object part in an image.

    ``box`` is (top, left, bottom, right) in output pixels, bottom/right exclusive
    (the convention of :func:`zfraw.deconvnet.patch_box`), computed from the part's
    polygon vertices and clipped to the image; it is None when the part lies wholly
    outside the image.  ``mask`` is bool (size, size): the pixels the part's filled
    polygons cover (partly or wholly), whether or not a later shape paints over them.
    """

    box: Optional[Tuple[int, int, int, int]]
    mask: np.ndarray


#: the parts :func:`render` reports per class (``return_parts=True``); "left" and
#: "right" are as seen in the image (by the part's centre column), whatever the mirror
PARTS = {
    "bicycle": ("left_wheel", "right_wheel"),
    "car": ("left_wheel", "right_wheel", "cabin"),
    "face": ("left_eye", "right_eye", "mouth"),
    "house": ("roof", "door"),
    "star": (), "cross": (), "ring": (),
    "flag": ("pole",),
    "checkerboard": (),
    "arrow": ("head",),
}


def _vertex_box(polygons, size):
    """The output-pixel box around canvas polygons (flat [x0, y0, x1, y1, ...] lists).

    A canvas pixel c lies in output pixel c // _SUPERSAMPLE; one canvas pixel of
    margin each side covers Pillow's rasterization of the edges.
    """
    pts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons])
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    top, left = math.floor((y0 - 1) / _SUPERSAMPLE), math.floor((x0 - 1) / _SUPERSAMPLE)
    bottom, right = math.floor((y1 + 1) / _SUPERSAMPLE) + 1, math.floor((x1 + 1) / _SUPERSAMPLE) + 1
    top, left, bottom, right = max(top, 0), max(left, 0), min(bottom, size), min(right, size)
    return (top, left, bottom, right) if bottom > top and right > left else None


def _coverage(polygons, big):
    """bool (big // _SUPERSAMPLE,) * 2: output pixels any of the canvas polygons touches."""
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for p in polygons:
        draw.polygon(p, fill=255)
    return np.asarray(mask.reduce(_SUPERSAMPLE)) > 0


def _name_parts(recorded, big):
    """(name, polygons) in drawing order -> {name: Part}; a name drawn twice becomes
    ``left_<name>`` and ``right_<name>`` by the centre column of each box."""
    size = big // _SUPERSAMPLE
    parts = [(name, Part(_vertex_box(polys, size), _coverage(polys, big))) for name, polys in recorded]
    out = {}
    for name in dict.fromkeys(n for n, _ in parts):
        same = [p for n, p in parts if n == name]
        if len(same) == 1:
            out[name] = same[0]
            continue
        centre = [np.flatnonzero(p.mask.any(axis=0)).mean() if p.mask.any() else np.inf for p in same]
        left, right = (same[k] for k in np.argsort(centre, kind="stable"))
        out["left_" + name], out["right_" + name] = left, right
    return out


def render(label, rng, size=64, return_parts=False):
    """Draw one image of a class.

    Parameters
    ----------
    label : int or str
        Class index into :data:`CLASSES` or the class name.
    rng : numpy.random.Generator
        The source of every random choice (the image is a pure function of its state).
    size : int
        Side of the square output image, >= 16.
    return_parts : bool
        Also return where each part of :data:`PARTS` was drawn.  The image is the
        same either way (recording draws nothing and draws no random numbers).

    Returns
    -------
    numpy.ndarray
        uint8 (size, size, 3), RGB.
    parts : dict, with ``return_parts``
        part name -> :class:`Part` (box and mask), for the names of ``PARTS[class]``, in that order.
    """
    name = CLASSES[_label_index(label)]
    size = _check_size(size)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    big = size * _SUPERSAMPLE

    bg, stripes = _background(rng, size)
    bg_mean = bg.mean(axis=(0, 1))
    canvas = Image.fromarray(bg.round().astype(np.uint8)).resize((big, big), Image.BILINEAR)
    paint = _Painter(canvas, record=bool(return_parts))
    if stripes:
        _draw_stripes(rng, paint, big, bg_mean)
    _draw_clutter(rng, paint, big, bg_mean)

    scale = rng.uniform(0.45, 0.9)                         # object diameter / image side
    radius = scale * big / 2
    reach = max(big / 2 - 0.85 * radius, 0.0)              # the object may touch the border
    centre = big / 2 + rng.uniform(-reach, reach, size=2)
    tilt = np.radians(25) if name in _UPRIGHT else np.pi
    angle = rng.uniform(-tilt, tilt)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    aspect = rng.uniform(0.85, 1.15)
    frame = _Frame(centre, radius, angle, mirror * aspect, 1.0 / aspect)
    fg = _contrasting(rng, [bg_mean], 110)
    _DRAW[name](frame, paint, rng, fg, bg_mean)

    img = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float64)   # box filter: area average
    sigma = rng.uniform(0.0, 10.0)
    img = img + rng.normal(0.0, sigma, size=img.shape)
    img = np.clip(img.round(), 0, 255).astype(np.uint8)
    if not return_parts:
        return img
    # clutter and stripes are drawn outside any part block, so only the object's parts are here
    parts = _name_parts(paint.parts, big)
    return img, {part: parts[part] for part in PARTS[name]}


def _split_key(split):
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _labels(n_blocks, seed, split_key):
    """Labels of the first n_blocks * len(CLASSES) images: each block is a permutation of the classes."""
    k = len(CLASSES)
    out = np.empty(n_blocks * k, dtype=np.int64)
    for b in range(n_blocks):
        ss = np.random.SeedSequence(seed, spawn_key=(split_key, _LABEL_STREAM, b))
        out[b * k:(b + 1) * k] = np.random.default_rng(ss).permutation(k)
    return out


def _image_rng(seed, split_key, i):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_key, _IMAGE_STREAM, i)))


class SyntheticDataset:
    """The procedural dataset as a lazy sequence: images are drawn when asked for.

    Parameters
    ----------
    n_per_class : int
        Images per class; ``len(dataset) == n_per_class * len(CLASSES)``.
    seed : int
        Non-negative base seed.
    size : int
        Image side (>= 16).
    split : {"train", "val", "test"}
        Which of the disjoint streams to draw from.

    ``dataset[i]`` is ``(image uint8 (size, size, 3), label int)``; it is the
    same for every ``n_per_class`` that contains ``i``.  ``labels`` holds all
    labels (int64 (N,)) without drawing any image; ``classes`` the class names.
    """

    def __init__(self, n_per_class, seed=0, size=64, split="train"):
        self.n_per_class = int_arg("n_per_class", n_per_class, 1)
        self.seed = int_arg("seed", seed, 0)
        self.size = _check_size(size)
        self.split = split
        self._key = _split_key(split)
        self.classes = list(CLASSES)
        self.labels = _labels(self.n_per_class, self.seed, self._key)

    def __len__(self):
        return len(self.labels)

    def _index(self, i):
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"index: expected an int, got {type(i).__name__}") from None
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return i

    def __getitem__(self, i):
        i = self._index(i)
        label = int(self.labels[i])
        return render(label, _image_rng(self.seed, self._key, i), self.size), label

    def parts(self, i):
        """Image ``i`` with its parts: ``(image, label, {part name: Part})`` (see :data:`PARTS`)."""
        i = self._index(i)
        label = int(self.labels[i])
        image, parts = render(label, _image_rng(self.seed, self._key, i), self.size, return_parts=True)
        return image, label, parts

    def part_boxes(self, label, part, n, start=0):
        """The first ``n`` images (from index ``start``) of class ``label`` whose ``part`` lies
        (at least partly) inside the image, with its box.

        Returns ``(indices int64 (m,), images uint8 (m, size, size, 3), boxes int64 (m, 4))``,
        m <= n (fewer when the dataset runs out), boxes as (top, left, bottom, right),
        bottom/right exclusive.
        """
        k = _label_index(label)
        name = CLASSES[k]
        if part not in PARTS[name]:
            raise ValueError(f"part: class {name!r} has the parts {list(PARTS[name])}, got {part!r}")
        n = int_arg("n", n, 1)
        indices, images, boxes = [], [], []
        for i in np.flatnonzero(self.labels == k):
            if i < start:
                continue
            image, _, parts = self.parts(int(i))
            if parts[part].box is None:
                continue
            indices.append(int(i))
            images.append(image)
            boxes.append(parts[part].box)
            if len(indices) == n:
                break
        shape = (0, self.size, self.size, 3)
        return (np.asarray(indices, dtype=np.int64), np.stack(images) if images else np.empty(shape, np.uint8),
                np.asarray(boxes, dtype=np.int64).reshape(-1, 4))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self):
        return (f"SyntheticDataset(n_per_class={self.n_per_class}, seed={self.seed}, "
                f"size={self.size}, split={self.split!r})")


def make_dataset(n_per_class, seed=0, size=64, split="train"):
    """Draw the whole dataset into memory.

    Parameters are those of :class:`SyntheticDataset`.

    Returns
    -------
    images : numpy.ndarray
        uint8 (N, size, size, 3) with ``N = n_per_class * len(CLASSES)``.
    labels : numpy.ndarray
        int64 (N,), each class exactly ``n_per_class`` times, in shuffled blocks of ten.
    """
    ds = SyntheticDataset(n_per_class, seed=seed, size=size, split=split)
    images = np.empty((len(ds), ds.size, ds.size, 3), dtype=np.uint8)
    for i in range(len(ds)):
        images[i] = ds[i][0]
    return images, ds.labels.copy()


def contact_sheet(images, labels=None, ncols=10, pad=2, classes=None):
    """Tile images into one picture, for looking at a dataset.

    Parameters
    ----------
    images : array_like
        uint8 (N, H, W, 3).
    labels : array_like of int, optional
        If given, one row per class (in class order) holding the first
        ``ncols`` images of that class, with the class name at the left.
    ncols : int
        Images per row.
    pad : int
        Pixels between tiles.
    classes : list of str, optional
        Names for the row captions; :data:`CLASSES` by default.

    Returns
    -------
    PIL.Image.Image
        An RGB picture.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    if labels is None:
        rows = [list(range(k, min(k + ncols, n))) for k in range(0, n, ncols)]
        captions, margin = None, 0
    else:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels: expected shape ({n},), got {labels.shape}")
        names = list(classes) if classes is not None else CLASSES
        present = sorted(set(labels.tolist()))
        rows = [np.flatnonzero(labels == c)[:ncols].tolist() for c in present]
        captions = [names[c] if 0 <= c < len(names) else str(c) for c in present]
        margin = 8 * max(len(c) for c in captions) + 2 * pad
    sheet = Image.new("RGB", (margin + pad + ncols * (w + pad), pad + len(rows) * (h + pad)), (255,) * 3)
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        y = pad + r * (h + pad)
        if captions is not None:
            draw.text((pad, y + h // 2 - 5), captions[r], fill=(0, 0, 0))
        for c, k in enumerate(row):
            sheet.paste(Image.fromarray(images[k]), (margin + pad + c * (w + pad), y))
    return sheet
