"""The pixel oracle: what a captioned-shapes picture shows, read from its pixels alone.

No model judges. Each pixel takes the palette colour whose background-to-colour line passes
nearest to it, once it is MIN_ALPHA of the way along that line and close to it, else the
background (`segment`; a smear between two colours is far from both lines). Under a half, MIN_ALPHA
keeps the one-pixel tips of a blurred diamond or triangle (and barely grows a straight edge).
Same-colour pixels join into 8-connected components; components under MIN_AREA pixels are specks
and ignored. A region's shape is the one whose exact mask, drawn into the region's bounding box
(`shapes.shape_mask`; for diamond and triangle also with the tips a blur cuts off), overlaps it
best (intersection over union: fill ratio, symmetry and corners at once); below MIN_IOU the
region is no shape. Size is area against the geometric mean of the shape's small and large
areas; position the 3x3 cell of the bounding-box centre (the renderer keeps it 0.8 px or more
inside its cell); the relation of two objects the dominant axis of the offset between their
centres. Touching objects, or any number of objects but one or two, make the picture unreadable:
`read_scene` returns None and every stated attribute misses.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from .shapes import (BACKGROUND, COLOURS, PALETTE, POSITIONS, SHAPES, SIDE, Obj, Scene, cell_of,
                     parse_caption, shape_mask)

MIN_AREA = 8  # pixels; the smallest object (a small triangle or diamond) has 25
MIN_IOU = 0.6  # a region matching no shape's mask this well has no shape
MIN_ALPHA = 0.4  # share of the way from the background to a colour that makes a pixel that colour
MAX_RESIDUAL = 70.0  # RGB distance from every colour's line beyond which a pixel is background
ATTRIBUTES = ("shape", "colour", "size", "position")
_BG = np.array(BACKGROUND, np.float32)
_DIRS = np.array([PALETTE[c] for c in COLOURS], np.float32) - _BG  # (K, 3): background -> colour
_NORM2 = (_DIRS ** 2).sum(-1)
_AREA_SPLIT = {s: float(np.sqrt(shape_mask(s, SIDE["small"], SIDE["small"]).sum()
                                * shape_mask(s, SIDE["large"], SIDE["large"]).sum())) for s in SHAPES}


@dataclass(frozen=True)
class Region:
    """One object as read: its attributes and the geometry they came from."""
    obj: Obj
    cx: float
    cy: float
    area: int
    iou: float


def _as_batch(images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (H, W, 3) or (B, H, W, 3), got {x.shape}")
    if x.dtype != np.uint8:  # floats in [0, 1]
        x = np.clip(np.rint(np.asarray(x, np.float64) * 255), 0, 255)
    return x.astype(np.float32)


def segment(images) -> np.ndarray:
    """(B, H, W) int8: the palette index of each pixel's colour, -1 for background. A pixel takes
    the colour whose line from the background passes nearest to it, when it is at least MIN_ALPHA
    of the way along that line and no more than MAX_RESIDUAL off it."""
    d = _as_batch(images) - _BG
    out = np.full(d.shape[:-1], -1, np.int8)
    d2 = (d * d).sum(-1)
    near = d2 >= MIN_ALPHA ** 2 * _NORM2.min()  # alpha <= |d| / |colour - background|: the rest is background
    d, d2 = d[near], d2[near, None]
    dot = d @ _DIRS.T  # (pixels, K)
    alpha = dot / _NORM2  # how far along each colour's line
    t = np.maximum(alpha, 0)
    residual = d2 - 2 * t * dot + t * t * _NORM2  # squared distance to each line
    k = residual.argmin(-1)
    rows = np.arange(len(k))
    k[(alpha[rows, k] < MIN_ALPHA) | (residual[rows, k] > MAX_RESIDUAL ** 2)] = -1
    out[near] = k
    return out


_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifted(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """out[y, x] = a[y + dy, x + dx] (fill outside the image), over the last two axes."""
    out = np.full_like(a, fill)
    h, w = a.shape[-2:]
    out[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = \
        a[..., max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)]
    return out


def components(classes: np.ndarray) -> np.ndarray:
    """(B, H, W) int32 labels of the 8-connected same-colour components of `segment`'s output
    (0 for background). A component's label is 1 + the largest flat index of its pixels, found by
    max-label propagation with pointer jumping (label L came from pixel L - 1, so a pixel may take
    that pixel's label)."""
    b, h, w = classes.shape
    fg = classes >= 0
    labels = np.where(fg, np.arange(1, classes.size + 1, dtype=np.int32).reshape(classes.shape), 0)
    padded_classes = np.pad(classes, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    same = [fg & (padded_classes[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == classes) for dy, dx in _SHIFTS]
    padded = np.zeros((b, h + 2, w + 2), np.int32)
    while True:
        padded[:, 1:-1, 1:-1] = labels
        new = labels.copy()
        for (dy, dx), ok in zip(_SHIFTS, same):
            np.maximum(new, padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] * ok, out=new)
        flat = new.ravel()
        flat[fg.ravel()] = flat[flat[fg.ravel()] - 1]  # jump
        if np.array_equal(new, labels):
            return labels
        labels = new


def _ideals(shape: str, h: int, w: int) -> list[np.ndarray]:
    """The shape in an h x w box, and (for the shapes with one-pixel tips, which blur erases) the
    shape whose tips stick out of the box by a pixel: a diamond cut on all four sides, a triangle
    without its apex."""
    out = [shape_mask(shape, h, w)]
    if shape == "diamond":
        out.append(shape_mask(shape, h + 2, w + 2)[1:-1, 1:-1])
    elif shape == "triangle":
        out.append(shape_mask(shape, h + 1, w)[1:])
    return out


def _shape_of(mask: np.ndarray) -> tuple[str | None, float]:
    h, w = mask.shape
    best, best_iou = None, 0.0
    for s in SHAPES:
        for ideal in _ideals(s, h, w):
            iou = (mask & ideal).sum() / (mask | ideal).sum()
            if iou > best_iou:
                best, best_iou = s, float(iou)
    return (best if best_iou >= MIN_IOU else None), best_iou


def _region(classes: np.ndarray, labels: np.ndarray, label: int, box: tuple[int, int, int, int]) -> Region:
    y0, y1, x0, x1 = box
    mask = labels[y0:y1 + 1, x0:x1 + 1] == label
    shape, iou = _shape_of(mask)
    area = int(mask.sum())
    split = _AREA_SPLIT[shape] if shape else float(np.mean(list(_AREA_SPLIT.values())))
    cx, cy = (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2  # bounding-box centre
    ys, xs = np.nonzero(mask)
    obj = Obj(shape, COLOURS[classes[y0 + ys[0], x0 + xs[0]]], "large" if area > split else "small",
              POSITIONS[cell_of(cx, cy)])
    return Region(obj, cx, cy, area, iou)


def relation(a: Region, b: Region) -> str:
    """How a stands to b: the dominant axis of the offset between their bounding-box centres."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def read_regions(images) -> list[list[Region] | None]:
    """Per image (uint8 (H, W, 3), or floats in [0, 1]; one or a batch), its objects as Regions, or
    None when unreadable. Never raises for a well-shaped array."""
    classes = segment(images)
    labels = components(classes)
    b, h, w = labels.shape
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=b * h * w + 1)
    counts[0] = 0
    big = counts >= MIN_AREA  # per label: an object, not a speck
    # a component's label is its largest flat index + 1, so the label names the image it is in
    objects = np.nonzero(big)[0]  # ascending, so grouped by image
    image_of = (objects - 1) // (h * w)
    per_image = np.bincount(image_of, minlength=b)
    first = np.searchsorted(image_of, np.arange(b))
    # two objects touch when 8-neighbouring pixels carry two different object labels
    is_big = big[labels]
    touching = np.zeros(b, bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        other = _shifted(labels, dy, dx, 0)
        touching |= (is_big & big[other] & (other != labels)).any((1, 2))
    # bounding boxes of the objects
    pix = np.nonzero(is_big.ravel())[0]
    lab = flat[pix]
    yy, xx = (pix % (h * w)) // w, pix % w
    n = len(counts)
    lo_y, lo_x = np.full(n, h), np.full(n, w)
    hi_y, hi_x = np.full(n, -1), np.full(n, -1)
    np.minimum.at(lo_y, lab, yy)
    np.minimum.at(lo_x, lab, xx)
    np.maximum.at(hi_y, lab, yy)
    np.maximum.at(hi_x, lab, xx)
    out: list[list[Region] | None] = [None] * b
    for i in np.nonzero((per_image >= 1) & (per_image <= 2) & ~touching)[0]:
        mine = objects[first[i]:first[i] + per_image[i]]
        out[i] = [_region(classes[i], labels[i], int(L), (lo_y[L], hi_y[L], lo_x[L], hi_x[L])) for L in mine]
    return out


def _scene(regions: list[Region] | None) -> Scene | None:
    if regions is None:
        return None
    if len(regions) == 1:
        return Scene((regions[0].obj,))
    a, b = regions
    rel = relation(a, b)
    if rel in ("right of", "below"):  # read scenes put the left (or upper) object first
        a, b = b, a
        rel = relation(a, b)
    return Scene((a.obj, b.obj), rel)


def read_scene(image) -> Scene | None:
    """The Scene a picture shows (every attribute filled in; a region matching no shape has shape
    None), or None for an unreadable picture: no object, more than two, or two that touch."""
    return _scene(read_regions(image)[0])


def read_scenes(images) -> list[Scene | None]:
    return [_scene(r) for r in read_regions(images)]


def _hits(target: Scene, regions: list[Region] | None) -> dict:
    stated = {a: any(getattr(o, a) is not None for o in target.objects) for a in ATTRIBUTES}
    stated["relation"] = target.relation is not None
    regions = regions or []
    best, best_score = None, -1
    # every injective assignment of caption objects to read objects (None where too few were read)
    slots = list(range(len(regions))) + [None] * len(target.objects)
    for assign in dict.fromkeys(permutations(slots, len(target.objects))):
        h = {}
        for a in ATTRIBUTES:
            h[a] = all(getattr(o, a) is None or (j is not None and getattr(regions[j].obj, a) == getattr(o, a))
                       for o, j in zip(target.objects, assign))
        if target.relation is not None:
            i, j = assign
            h["relation"] = i is not None and j is not None and relation(regions[i], regions[j]) == target.relation
        score = sum(h[a] for a in h if stated[a])
        if score > best_score:
            best, best_score = h, score
    out = {a: (best[a] if stated[a] else None) for a in (*ATTRIBUTES, "relation")}
    out["count"] = len(regions) == len(target.objects)
    out["caption"] = out["count"] and all(v for v in out.values() if v is not None)
    return out


def matches(image, caption: str) -> dict:
    """Per-attribute hits of one picture against one caption: shape, colour, size, position and
    relation (True / False where the caption states them, None where not), count (as many objects
    as the caption names) and caption (the right count and every stated attribute right).
    UserError for a caption outside the grammar."""
    return _hits(parse_caption(caption), read_regions(image)[0])


def match_all(images, captions: list[str]) -> list[dict]:
    """`matches` over a batch, reading all the pictures at once."""
    targets = [parse_caption(c) for c in captions]
    regions = read_regions(images)
    if len(regions) != len(targets):
        raise ValueError(f"{len(regions)} images but {len(targets)} captions")
    return [_hits(t, r) for t, r in zip(targets, regions)]


def accuracy(images, captions: list[str]) -> dict:
    """Mean hit rate per key of `matches` over the pairs that state it, with n (the pairs)."""
    return summarise(match_all(images, captions))


def summarise(hits: list[dict]) -> dict:
    out = {"n": len(hits)}
    for k in (*ATTRIBUTES, "relation", "count", "caption"):
        vals = [h[k] for h in hits if h[k] is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def honesty_rows(images, captions: list[str], seed: int = 0) -> list[dict]:
    """The oracle's own check: pictures against their own captions (should be ~1) and against the
    same captions shuffled (chance)."""
    perm = np.random.default_rng(seed).permutation(len(captions))
    return [{"row": "own captions", **accuracy(images, captions)},
            {"row": "shuffled captions", **accuracy(images, [captions[i] for i in perm])}]
