"""The captioned-shapes grammar and its renderer: one or two flat shapes on a plain background.

A scene is one object at a cell of a 3x3 grid ("a small red circle at the top left") or two
objects in a spatial relation ("a blue square left of a large yellow triangle"; positions are not
stated in a two-object caption and a size may be left out). An attribute a caption leaves out is
free: `complete` / `render` draw it at random.

Choices (all fixed, so the pixel oracle in `oracle.py` can read every attribute back exactly):
  image       32x32 RGB uint8, background BACKGROUND (dark grey), no anti-aliasing
  shapes      circle, square, triangle (apex up), diamond: masks drawn once with PIL
  colours     red, yellow, green, cyan, blue, purple: saturated primaries and secondaries, 38
              degrees or more apart as directions from the background, 155 or more apart in RGB
  sizes       small = 7 px, large = 11 px across (the bounding box is always side x side)
  positions   the cell of the 3x3 grid holding the object's bounding-box centre; the centre is
              kept 0.8 px or more inside its cell and the object 1 px or more inside the image
  relations   "left of" / "right of": both objects in the same grid row, in different columns;
              "above" / "below": the same column, different rows; 2 px or more of background
              between the two bounding boxes, and the cross-axis offset of the centres at most
              half the main-axis offset, so the relation is never in doubt

Scenes are drawn from a `random.Random` inside (fast); every public function also takes an int
seed or a `numpy.random.Generator`, and the same seed always gives the same pixels.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw

from diffusion_lm.errors import UserError

IMAGE_SIZE = 32
BACKGROUND = (24, 24, 24)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (235, 30, 30),
    "yellow": (230, 220, 30),
    "green": (30, 210, 40),
    "cyan": (30, 205, 220),
    "blue": (30, 40, 245),
    "purple": (200, 40, 225),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
SIDE = {"small": 7, "large": 11}
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
CELL = {p: divmod(i, 3) for i, p in enumerate(POSITIONS)}  # position -> (row, col)
RELATIONS = ("left of", "right of", "above", "below")
CONVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
MAX_OBJECTS = 2
MAX_WORDS = 18  # the longest drawable caption: two objects, each with size, colour, two-word position

VOCAB: list[str] = ["a", *SIZES, *COLOURS, *SHAPES, "at", "the", "top", "bottom", "left", "right",
                    "centre", "of", "above", "below"]

CELL_MARGIN = 0.5   # the centre stays this far inside its cell (half-pixel centres make it >= 0.83)
BORDER = 1          # background pixels kept at the image's edge
GAP = 2             # background pixels kept between two objects' bounding boxes


@dataclass(frozen=True)
class Obj:
    """One object; None means free (not stated)."""
    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class Scene:
    """One or two objects; with two, `relation` says where objects[0] is relative to objects[1]."""
    objects: tuple[Obj, ...]
    relation: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))

    @property
    def complete(self) -> bool:
        return all(None not in (o.shape, o.colour, o.size, o.position) for o in self.objects) and \
            (len(self.objects) == 1 or self.relation is not None)


# ---------------------------------------------------------------------------- captions

def _phrase(o: Obj, with_position: bool) -> str:
    words = ["a"] + [w for w in (o.size, o.colour) if w] + [o.shape or "shape"]
    if with_position and o.position:
        words += ["at", "the", o.position]
    return " ".join(words)


def caption(scene: Scene) -> str:
    """The scene's caption: every stated attribute; positions only for a one-object scene."""
    check(scene)
    if len(scene.objects) == 1:
        return _phrase(scene.objects[0], True)
    a, b = scene.objects
    return f"{_phrase(a, False)} {scene.relation} {_phrase(b, False)}"


def _fail(text: str, why: str):
    raise UserError(f"caption {text!r}: {why}")


def parse_caption(text: str) -> Scene:
    """Caption -> Scene (free attributes None). UserError names an unknown word, or says why the
    caption is empty, too long, ungrammatical or not drawable."""
    if not isinstance(text, str):
        raise UserError(f"a caption must be a string, got {type(text).__name__}")
    raw = text
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    words = text.split()
    if not words:
        raise UserError("empty caption: write e.g. 'a small red circle at the top left'")
    for w in words:
        if w not in _VOCAB_SET:
            _fail(raw, f"unknown word {w!r} (the vocabulary: {' '.join(VOCAB)})")
    if len(words) > MAX_WORDS:
        _fail(raw, f"{len(words)} words, more than the {MAX_WORDS} a caption may have")
    objects, relations, i = [], [], 0
    while True:
        obj, i = _parse_phrase(words, i, raw)
        objects.append(obj)
        if i == len(words):
            break
        rel, i = _parse_relation(words, i, raw)
        relations.append(rel)
    if len(objects) > MAX_OBJECTS:
        _fail(raw, f"cannot draw {len(objects)} objects (at most {MAX_OBJECTS})")
    scene = Scene(tuple(objects), relations[0] if relations else None)
    why = undrawable(scene)
    if why:
        _fail(raw, f"cannot draw it: {why}")
    return scene


def _parse_phrase(words: list[str], i: int, raw: str) -> tuple[Obj, int]:
    if i >= len(words) or words[i] != "a":
        _fail(raw, f"expected 'a' at word {i + 1}" + (f", got {words[i]!r}" if i < len(words) else ""))
    i += 1
    size = colour = None
    if i < len(words) and words[i] in SIZES:
        size, i = words[i], i + 1
    if i < len(words) and words[i] in PALETTE:
        colour, i = words[i], i + 1
    if i >= len(words) or words[i] not in SHAPES:
        got = f", got {words[i]!r}" if i < len(words) else ""
        _fail(raw, f"expected a shape ({', '.join(SHAPES)}) at word {i + 1}{got}")
    shape, i = words[i], i + 1
    position = None
    if i < len(words) and words[i] == "at":
        if words[i + 1:i + 2] != ["the"]:
            _fail(raw, f"expected 'at the' + a position at word {i + 1}")
        i += 2
        two = " ".join(words[i:i + 2])
        # "at the top left of a ..." reads as position "top" + relation "left of"
        if len(words[i:i + 2]) == 2 and two in CELL and words[i + 2:i + 3] != ["of"]:
            position, i = two, i + 2
        elif i < len(words) and words[i] in CELL:
            position, i = words[i], i + 1
        else:
            _fail(raw, f"expected a position ({', '.join(POSITIONS)}) at word {i + 1}")
    return Obj(shape, colour, size, position), i


def _parse_relation(words: list[str], i: int, raw: str) -> tuple[str, int]:
    two = " ".join(words[i:i + 2])
    if two in ("left of", "right of"):
        return two, i + 2
    if words[i] in ("above", "below"):
        return words[i], i + 1
    _fail(raw, f"expected a relation ({', '.join(RELATIONS)}) or the end at word {i + 1}, got {words[i]!r}")


_VOCAB_SET = frozenset(VOCAB)


# ---------------------------------------------------------------------------- validity

def check(scene: Scene) -> None:
    """UserError unless every word in the scene is known and the scene is drawable."""
    if not isinstance(scene, Scene) or not scene.objects:
        raise UserError("a scene needs one or two objects")
    for o in scene.objects:
        for value, allowed, what in ((o.shape, SHAPES, "shape"), (o.colour, COLOURS, "colour"),
                                     (o.size, SIZES, "size"), (o.position, POSITIONS, "position")):
            if value is not None and value not in allowed:
                raise UserError(f"unknown {what} {value!r} (one of: {', '.join(allowed)})")
    if scene.relation is not None and scene.relation not in RELATIONS:
        raise UserError(f"unknown relation {scene.relation!r} (one of: {', '.join(RELATIONS)})")
    why = undrawable(scene)
    if why:
        raise UserError(f"cannot draw the scene: {why}")


def undrawable(scene: Scene) -> str | None:
    """Why the renderer cannot draw `scene` (assumed well-formed), or None."""
    n = len(scene.objects)
    if n > MAX_OBJECTS:
        return f"{n} objects (at most {MAX_OBJECTS})"
    if n == 1:
        return "a relation needs two objects" if scene.relation else None
    if scene.relation is None:
        return "two objects need a relation"
    a, b = scene.objects
    rel = scene.relation
    horizontal = rel in ("left of", "right of")
    for o, first in ((a, True), (b, False)):
        if o.position and not (a.position and b.position):
            main = CELL[o.position][1 if horizontal else 0]
            # the object before (left of / above) cannot sit in the last cell, nor the one after in the first
            if main == (2 if first == (rel in ("left of", "above")) else 0):
                return f"nothing fits: an object at the {o.position} leaves no cell for {rel!r}"
    if a.position and b.position:
        (ra, ca), (rb, cb) = CELL[a.position], CELL[b.position]
        rel = scene.relation
        if rel in ("left of", "right of"):
            if ra != rb:
                return f"{rel!r} puts both objects in the same row, not at the {a.position} and the {b.position}"
            if (ca < cb) != (rel == "left of") or ca == cb:
                return f"the {a.position} is not {rel} the {b.position}"
        else:
            if ca != cb:
                return f"{rel!r} puts both objects in the same column, not at the {a.position} and the {b.position}"
            if (ra < rb) != (rel == "above") or ra == rb:
                return f"the {a.position} is not {rel} the {b.position}"
    return None


# ---------------------------------------------------------------------------- drawing

@lru_cache(maxsize=None)
def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    """The shape drawn with PIL to fill an h x w box: boolean (h, w), read-only. The renderer uses
    side x side boxes; the oracle draws the ideal shape into a region's bounding box."""
    cx, cy = (w - 1) / 2, (h - 1) / 2
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    if shape == "circle":
        d.ellipse([0, 0, w - 1, h - 1], fill=1)
    elif shape == "square":
        d.rectangle([0, 0, w - 1, h - 1], fill=1)
    elif shape == "triangle":
        d.polygon([(cx, 0), (w - 1, h - 1), (0, h - 1)], fill=1)
    elif shape == "diamond":
        d.polygon([(cx, 0), (w - 1, cy), (cx, h - 1), (0, cy)], fill=1)
    else:
        raise UserError(f"unknown shape {shape!r} (one of: {', '.join(SHAPES)})")
    m = np.asarray(im, dtype=bool).copy()
    m.setflags(write=False)
    return m


def mask(shape: str, size: str) -> np.ndarray:
    """The shape's boolean mask as rendered, side x side (read-only)."""
    return shape_mask(shape, SIDE[size], SIDE[size])


def cell_of(cx: float, cy: float) -> int:
    """Index in POSITIONS of the grid cell holding the point (cx, cy), in pixel units (the image
    spans [0, 32) on both axes; a pixel's centre is at index + 0.5)."""
    col = min(2, max(0, int(cx * 3 // IMAGE_SIZE)))
    row = min(2, max(0, int(cy * 3 // IMAGE_SIZE)))
    return 3 * row + col


def _bounds(cell: int, side: int) -> range:
    """Top-left coordinates (one axis) that keep an object of `side` px in grid cell `cell`."""
    lo_c, hi_c = cell * IMAGE_SIZE / 3 + CELL_MARGIN, (cell + 1) * IMAGE_SIZE / 3 - CELL_MARGIN
    lo = max(BORDER, int(np.ceil(lo_c - side / 2)))
    hi = min(IMAGE_SIZE - BORDER - side, int(np.floor(hi_c - side / 2)))
    return range(lo, hi + 1)


@lru_cache(maxsize=None)
def _pairs(cell_a: int, side_a: int, cell_b: int, side_b: int) -> tuple[tuple[int, int], ...]:
    """Main-axis top-left pairs (a before b) with GAP background pixels between them."""
    return tuple((x, y) for x in _bounds(cell_a, side_a) for y in _bounds(cell_b, side_b)
                 if y >= x + side_a + GAP)


def _as_random(rng) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if rng is None:
        rng = 0
    if isinstance(rng, (int, np.integer)):
        return random.Random(int(rng))
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(2 ** 63)))
    raise UserError(f"rng must be an int seed, a numpy Generator or a random.Random, got {type(rng).__name__}")


def complete(scene: Scene, rng=0) -> Scene:
    """Draw every free attribute (and, for two objects, positions that fit the relation)."""
    check(scene)
    r = _as_random(rng)
    return _complete(scene, r)


def _complete(scene: Scene, r: random.Random) -> Scene:
    objs = [Obj(o.shape or r.choice(SHAPES), o.colour or r.choice(COLOURS), o.size or r.choice(SIZES),
                o.position) for o in scene.objects]
    if len(objs) == 1:
        if objs[0].position is None:
            objs[0] = replace(objs[0], position=r.choice(POSITIONS))
        return Scene(tuple(objs), None)
    a, b = objs
    rel = scene.relation
    horizontal = rel in ("left of", "right of")
    first_ab = rel in ("left of", "above")  # a has the smaller main-axis cell index
    # the cross-axis line (row or column) and the two main-axis cells
    fixed = [CELL[o.position] if o.position else None for o in (a, b)]
    if fixed[0] and fixed[1]:
        pass
    else:
        known = fixed[0] or fixed[1]
        line = (known[0] if horizontal else known[1]) if known else r.randrange(3)
        main = [(f[1] if horizontal else f[0]) if f else None for f in fixed]
        if main[0] is None and main[1] is None:
            lo, hi = sorted(r.sample(range(3), 2))
            main = [lo, hi] if first_ab else [hi, lo]
        elif main[0] is None:
            choices = [c for c in range(3) if (c < main[1]) == first_ab and c != main[1]]
            main[0] = r.choice(choices)
        elif main[1] is None:
            choices = [c for c in range(3) if (main[0] < c) == first_ab and c != main[0]]
            main[1] = r.choice(choices)
        cells = [(line, m) if horizontal else (m, line) for m in main]
        a, b = (replace(o, position=POSITIONS[3 * row + col]) for o, (row, col) in zip((a, b), cells))
    return Scene((a, b), rel)


def place(scene: Scene, rng=0) -> tuple[tuple[int, int], ...]:
    """Top-left pixel (x, y) of each object of a complete scene, jittered within its cell."""
    if not scene.complete:
        raise UserError("place() needs a complete scene: call complete() first")
    return _place(scene, _as_random(rng))


def _place(scene: Scene, r: random.Random) -> tuple[tuple[int, int], ...]:
    if len(scene.objects) == 1:
        o = scene.objects[0]
        row, col = CELL[o.position]
        s = SIDE[o.size]
        return ((r.choice(_bounds(col, s)), r.choice(_bounds(row, s))),)
    a, b = scene.objects
    (ra, ca), (rb, cb) = CELL[a.position], CELL[b.position]
    sa, sb = SIDE[a.size], SIDE[b.size]
    horizontal = scene.relation in ("left of", "right of")
    main_a, main_b = (ca, cb) if horizontal else (ra, rb)
    cross_a, cross_b = (ra, rb) if horizontal else (ca, cb)
    swap = main_a > main_b
    pairs = _pairs(main_b, sb, main_a, sa) if swap else _pairs(main_a, sa, main_b, sb)
    if not pairs:  # every grid pair the grammar allows has room; guard anyway
        raise UserError(f"cannot draw the scene: no room for {caption(scene)!r}")
    ba, bb = _bounds(cross_a, sa), _bounds(cross_b, sb)
    for _ in range(1000):
        p, q = r.choice(pairs)
        xa, xb = (q, p) if swap else (p, q)
        ya, yb = r.choice(ba), r.choice(bb)
        d_main = abs((xa + sa / 2) - (xb + sb / 2))
        d_cross = abs((ya + sa / 2) - (yb + sb / 2))
        if 2 * d_cross <= d_main:
            return ((xa, ya), (xb, yb)) if horizontal else ((ya, xa), (yb, xb))
    raise UserError(f"cannot draw the scene: no room for {caption(scene)!r}")


def draw(scene: Scene, placements: Iterable[tuple[int, int]], out: np.ndarray | None = None) -> np.ndarray:
    """Pixels of a complete scene at the given top-left placements (uint8, 32x32x3)."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8) if out is None else out
    img[...] = BACKGROUND
    for o, (x, y) in zip(scene.objects, placements):
        m = mask(o.shape, o.size)
        s = m.shape[0]
        img[y:y + s, x:x + s][m] = PALETTE[o.colour]
    return img


def render(scene: Scene, rng=0) -> np.ndarray:
    """uint8 (32, 32, 3) pixels of `scene`; free attributes and the jitter come from `rng` (an int
    seed, a numpy Generator or a random.Random); the same seed gives the same pixels."""
    r = _as_random(rng)
    check(scene)
    full = _complete(scene, r)
    return draw(full, _place(full, r))


def render_caption(text: str, seed=0) -> np.ndarray:
    """Pixels for any caption the grammar allows (free attributes drawn from `seed`)."""
    return render(parse_caption(text), seed)


def random_scene(rng=0, allowed: Callable[[Scene], bool] | None = None, n_objects: int | None = None,
                 max_tries: int = 10_000) -> Scene:
    """A complete random scene: one or two objects (equally likely unless `n_objects`), every
    attribute uniform; `allowed(scene) -> bool` filters (rejection sampling)."""
    r = _as_random(rng)
    for _ in range(max_tries):
        s = _random_scene(r, n_objects)
        if allowed is None or allowed(s):
            return s
    raise UserError(f"random_scene: no allowed scene in {max_tries} draws")


def _random_scene(r: random.Random, n_objects: int | None = None) -> Scene:
    n = n_objects or (1 if r.random() < 0.5 else 2)
    if n not in (1, 2):
        raise UserError(f"n_objects must be 1 or 2, got {n}")
    objs = tuple(Obj(r.choice(SHAPES), r.choice(COLOURS), r.choice(SIZES)) for _ in range(n))
    return _complete(Scene(objs, r.choice(RELATIONS) if n == 2 else None), r)


def strip_positions(scene: Scene) -> Scene:
    """What a two-object caption states: the scene without positions (one object: unchanged)."""
    if len(scene.objects) == 1:
        return scene
    return Scene(tuple(replace(o, position=None) for o in scene.objects), scene.relation)
