"""Captioned-shapes splits: train / valid / test from one distribution, and a held-out composition
split whose shape-colour pairs and spatial arrangements are never rendered in the other three.

Every split is a seeded stream: `make_batch(split, n, seed)` draws n scenes from the stream named
by (split, seed) and renders them with numpy (tens of thousands of images a second), so trainers
can draw a fresh batch per step; `load_shapes(split, n, seed)` wraps the same draw as a
`datasets.Dataset` (columns image: uint8 32x32x3 as Array3D, caption: str), and `as_arrays(ds)`
(or `images_of(ds)`) gives the arrays back. The same (split, n, seed) always gives the same
pictures and captions; streams of different splits or seeds differ.

Held out (never in train / valid / test, always in heldout):
  * HELDOUT_PAIRS: 4 of the 24 colour-shape pairs, one per shape and per colour used;
  * HELDOUT_ARRANGEMENTS: a circle directly above a square, a triangle directly left of a
    diamond (however the caption phrases it: "a square below a circle" is the same picture).
The heldout split is a third each of one held-out pair alone, a held-out pair beside any object,
and a held-out arrangement (its colours and sizes free, so held-out pairs may appear there too).
Every other attribute is uniform; the split's scenes are otherwise like train's.

Captions state every attribute, except that a two-object caption never states positions and
leaves out each object's size with probability DROP_SIZE (an unstated size is free).
"""
from __future__ import annotations

import random
from dataclasses import replace

import numpy as np

from diffusion_lm.errors import UserError

from .shapes import (COLOURS, CONVERSE, IMAGE_SIZE, POSITIONS, RELATIONS, SHAPES, SIZES, Obj, Scene, _complete,
                     _place, _random_scene, caption, draw, parse_caption)

SPLITS = ("train", "valid", "test", "heldout")
SPLIT_SIZES = {"train": 50_000, "valid": 2_000, "test": 2_000, "heldout": 2_000}  # n=None
HELDOUT_PAIRS = frozenset({("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "diamond")})
# (shape before, axis, shape after): "before" is left of (horizontal) or above (vertical)
HELDOUT_ARRANGEMENTS = frozenset({("circle", "vertical", "square"), ("triangle", "horizontal", "diamond")})
DROP_SIZE = 0.25


def arrangement(scene: Scene) -> tuple[str, str, str] | None:
    """(shape before, axis, shape after) of a two-object scene, whatever the caption's order."""
    if len(scene.objects) != 2 or scene.relation is None:
        return None
    a, b = scene.objects
    axis = "horizontal" if scene.relation in ("left of", "right of") else "vertical"
    first, second = (a, b) if scene.relation in ("left of", "above") else (b, a)
    return first.shape, axis, second.shape


def heldout_kind(scene: Scene) -> str | None:
    """'pair' when an object is a held-out colour-shape pair, 'arrangement' when the two objects
    make a held-out arrangement (a pair wins), None when the scene may appear in train."""
    if any((o.colour, o.shape) in HELDOUT_PAIRS for o in scene.objects):
        return "pair"
    if arrangement(scene) in HELDOUT_ARRANGEMENTS:
        return "arrangement"
    return None


def is_heldout(scene: Scene) -> bool:
    return heldout_kind(scene) is not None


def _stream(split: str, seed: int) -> random.Random:
    if split not in SPLITS:
        raise UserError(f"unknown shapes split {split!r} (one of: {', '.join(SPLITS)})")
    return random.Random(f"captioned-shapes/{split}/{int(seed)}")  # str seeds hash with sha512: stable


_PAIRS = sorted(HELDOUT_PAIRS)
_ARRANGEMENTS = sorted(HELDOUT_ARRANGEMENTS)


def _heldout_scene(r: random.Random) -> Scene:
    kind = r.randrange(3)
    if kind == 0:  # one held-out pair alone
        colour, shape = r.choice(_PAIRS)
        return _complete(Scene((Obj(shape, colour),)), r)
    if kind == 1:  # a held-out pair beside any object, either side of the relation
        colour, shape = r.choice(_PAIRS)
        objs = [Obj(shape, colour), Obj()]
        if r.random() < 0.5:
            objs.reverse()
        return _complete(Scene(tuple(objs), r.choice(RELATIONS)), r)
    first, axis, second = r.choice(_ARRANGEMENTS)
    rel = ("left of", "right of") if axis == "horizontal" else ("above", "below")
    if r.random() < 0.5:
        return _complete(Scene((Obj(first), Obj(second)), rel[0]), r)
    return _complete(Scene((Obj(second), Obj(first)), rel[1]), r)


def _scene(split: str, r: random.Random) -> Scene:
    if split == "heldout":
        return _heldout_scene(r)
    while True:
        s = _random_scene(r)
        if not is_heldout(s):
            return s


def _caption_scene(scene: Scene, r: random.Random) -> Scene:
    if len(scene.objects) == 1:
        return scene
    return Scene(tuple(replace(o, size=None) if r.random() < DROP_SIZE else o for o in scene.objects),
                 scene.relation)


def make_batch(split: str, n: int, seed: int = 0, return_scenes: bool = False):
    """(uint8 (n, 32, 32, 3), captions) from the (split, seed) stream; with return_scenes, also the
    complete scenes drawn (positions included), as a third item."""
    n = int(n)
    if n < 0:
        raise UserError(f"n must be >= 0, got {n}")
    r = _stream(split, seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    captions, scenes = [], []
    for i in range(n):
        s = _scene(split, r)
        draw(s, _place(s, r), out=images[i])
        captions.append(caption(_caption_scene(s, r)))
        scenes.append(s)
    return (images, captions, scenes) if return_scenes else (images, captions)


SWAPS = ("relation", "order", "colour", "size", "shape")  # the hard-negative kinds of a two-object caption
NEGATIVE_KINDS = SWAPS + ("one_shape", "one_colour", "one_size", "one_position")


def hard_negatives(text: str, allow_heldout: bool = False) -> dict[str, str]:
    """Captions made of (nearly) the same words that describe another scene, by kind, for training and
    probing CLIP's binding (as NegCLIP's swapped captions): for two objects, the converse relation with the
    objects kept in order ("a circle left of a square" -> "a circle right of a square"), the objects in
    the other order with the relation kept ("a square left of a circle": the same bag of words), and each
    attribute swapped between the objects where they differ (a size stated for one of them moves to the
    other); for one object, each stated attribute changed to the next value of its list. A negative that would name a held-out composition is left out unless
    `allow_heldout` (probing), so training on negatives never writes a held-out caption."""
    scene = parse_caption(text)
    out: dict[str, Scene] = {}
    if len(scene.objects) == 2:
        a, b = scene.objects
        out["relation"] = Scene((a, b), CONVERSE[scene.relation])
        if a != b:
            out["order"] = Scene((b, a), scene.relation)
        for attr in ("colour", "size", "shape"):
            va, vb = getattr(a, attr), getattr(b, attr)
            if va != vb:  # a size stated for one object only moves to the other
                out[attr] = Scene((replace(a, **{attr: vb}), replace(b, **{attr: va})), scene.relation)
    else:
        (o,) = scene.objects
        for attr, values in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES), ("position", POSITIONS)):
            v = getattr(o, attr)
            if v is not None:
                out[f"one_{attr}"] = Scene((replace(o, **{attr: values[(values.index(v) + 1) % len(values)]}),))
    return {k: caption(s) for k, s in out.items() if allow_heldout or not is_heldout(s)}


def hard_negative(text: str, r: random.Random, kinds=None) -> str | None:
    """One of `hard_negatives(text)` (of the given kinds; None: all) drawn with r (None when there is none)."""
    options = [c for k, c in hard_negatives(text).items() if kinds is None or k in kinds]
    return r.choice(options) if options else None


def features():
    import datasets
    return datasets.Features({"image": datasets.Array3D((IMAGE_SIZE, IMAGE_SIZE, 3), "uint8"),
                              "caption": datasets.Value("string")})


def to_dataset(images: np.ndarray, captions: list[str]):
    """(n, 32, 32, 3) uint8 + captions -> `datasets.Dataset` (image Array3D uint8, caption str),
    built straight from the buffer as Arrow lists (Dataset.from_dict goes through Python lists:
    about 4x slower)."""
    import datasets
    import pyarrow as pa
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or len(images) != len(captions):
        raise UserError(f"need (n, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) images and n captions, got {images.shape} "
                        f"and {len(captions)}")
    col = pa.array(images.reshape(-1))
    count = images.size
    for k in (3, IMAGE_SIZE, IMAGE_SIZE):
        count //= k
        col = pa.ListArray.from_arrays(pa.array(np.arange(0, count * k + 1, k, dtype=np.int32)), col)
    feats = features()
    col = pa.ExtensionArray.from_storage(_ext_type(), col)
    table = pa.table({"image": col, "caption": pa.array([str(c) for c in captions], pa.string())})
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=feats))


def _ext_type():
    from datasets.features.features import Array3DExtensionType
    return Array3DExtensionType((IMAGE_SIZE, IMAGE_SIZE, 3), "uint8")


def images_of(dataset) -> np.ndarray:
    """A shapes dataset's images as one uint8 (n, 32, 32, 3) array, fast. (`np.asarray(ds["image"])`
    works too but walks the rows, and `ds.with_format("numpy")` hands back int64.)"""
    return np.asarray(dataset.with_format("numpy", dtype=np.uint8)[:]["image"], dtype=np.uint8)


def as_arrays(dataset) -> tuple[np.ndarray, list[str]]:
    """A shapes dataset as (uint8 (n, 32, 32, 3) images, captions)."""
    return images_of(dataset), [str(c) for c in dataset["caption"]]


def load_shapes(split: str, n: int | None = None, seed: int = 0):
    """The split as a `datasets.Dataset` (image: uint8 32x32x3 Array3D, caption: str); n defaults
    to SPLIT_SIZES[split]. `as_arrays(ds)` gives (uint8 (n, 32, 32, 3), captions) back."""
    images, captions = make_batch(split, SPLIT_SIZES.get(split, 0) if n is None else n, seed)
    return to_dataset(images, captions)


__all__ = ["SPLITS", "SPLIT_SIZES", "HELDOUT_PAIRS", "HELDOUT_ARRANGEMENTS", "DROP_SIZE", "arrangement",
           "heldout_kind", "is_heldout", "hard_negatives", "hard_negative", "NEGATIVE_KINDS", "make_batch", "load_shapes", "as_arrays", "images_of", "to_dataset", "features", "COLOURS", "SHAPES",
           "SIZES"]
