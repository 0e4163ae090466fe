"""Edits of captioned scenes for inpainting: keep a region, redraw the rest under a new caption.

An edit takes a test scene, picks one of its objects and gives it another colour and shape (same size,
same place, so the relation between two objects still holds): "a small blue square at the top left" ->
"a small green triangle at the top left". The region to redraw is that object's bounding box grown
by `margin` pixels; everything else is kept. The new caption is what the oracle checks the result
against, and the kept pixels are what must come back unchanged.
"""
from __future__ import annotations

import random
from dataclasses import replace

import numpy as np

from .data import HELDOUT_PAIRS, _scene, is_heldout
from .shapes import COLOURS, SHAPES, Scene, caption, draw, place, strip_positions

EDIT_MARGIN = 1  # pixels the redrawn box reaches beyond the object (GAP = 2 keeps it off the other object)


def object_box(scene: Scene, placements, k: int, margin: int = EDIT_MARGIN, align: int = 1) -> np.ndarray:
    """Bool (32, 32): the bounding box of object k's pixels, grown by `margin` (clipped to the image) and then
    out to whole `align` × `align` cells (a latent UNet's cells: 4 for the shipped autoencoder)."""
    alone = draw(Scene((scene.objects[k],)), [placements[k]])
    background = draw(Scene(()), [])
    ys, xs = np.nonzero((alone != background).any(-1))
    y0, y1 = max(0, ys.min() - margin), min(alone.shape[0], ys.max() + margin + 1)
    x0, x1 = max(0, xs.min() - margin), min(alone.shape[1], xs.max() + margin + 1)
    y0, x0 = y0 // align * align, x0 // align * align
    y1, x1 = -(-y1 // align) * align, -(-x1 // align) * align
    box = np.zeros(alone.shape[:2], bool)
    box[y0:y1, x0:x1] = True
    return box


def make_edits(n: int, seed: int = 0, split: str = "test", align: int = 1) -> dict:
    """n edits of `split` scenes: uint8 images (n, 32, 32, 3), keep masks (n, 32, 32) (True: kept),
    the new captions, the original captions, and which object changed. `align` grows each redrawn box
    out to whole cells of that side (a latent UNet redraws whole latent cells)."""
    r = random.Random(f"captioned-shapes-edits/{split}/{int(seed)}")
    images, keeps, new, old, which = [], [], [], [], []
    while len(images) < n:
        scene = _scene(split, r)
        placements = place(scene, r)
        k = r.randrange(len(scene.objects))
        o = scene.objects[k]
        choices = [(c, s) for c in COLOURS for s in SHAPES
                   if c != o.colour and s != o.shape and (c, s) not in HELDOUT_PAIRS]
        colour, shape = r.choice(choices)
        objects = list(scene.objects)
        objects[k] = replace(o, colour=colour, shape=shape)
        edited = Scene(tuple(objects), scene.relation)
        if is_heldout(edited):  # an arrangement never trained on; draw another edit
            continue
        images.append(draw(scene, placements))
        keeps.append(~object_box(scene, placements, k, align=align))
        new.append(caption(strip_positions(edited)))
        old.append(caption(strip_positions(scene)))
        which.append(k)
    return {"images": np.stack(images) if images else np.zeros((0, 32, 32, 3), np.uint8),
            "keep": np.stack(keeps) if keeps else np.zeros((0, 32, 32), bool),
            "captions": new, "original_captions": old, "object": which}
