"""The captioned-shapes oracle's honesty rows, its timing, and a grid of examples.

    python scripts/shapes_report.py [n=2000] [seed=0] [out=docs/image/shapes_examples.png]

Reads n test pictures against their own captions (the oracle should be right about all of them)
and against the same captions shuffled (chance), then the same pictures with Gaussian noise
(sigma 0.05 of the [0, 1] range) and with a 3x3 binomial blur, and the heldout split against its
own captions; prints one row each (per attribute and whole caption), the render and read speeds,
and writes a grid of test pictures with their captions.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from diffusion_lm import scripting
from diffusion_lm.image import data, oracle

KEYS = ("shape", "colour", "size", "position", "relation", "count", "caption")


def blur(images: np.ndarray) -> np.ndarray:
    """A 3x3 binomial blur (sigma ~ 0.7 px) of uint8 pictures, as floats in [0, 1]."""
    k = np.array([1, 2, 1]) / 4
    pad = np.pad(images / 255.0, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    rows = sum(k[i] * pad[:, i:i + images.shape[1]] for i in range(3))
    return sum(k[j] * rows[:, :, j:j + images.shape[2]] for j in range(3))


def grid(images: np.ndarray, captions: list[str], path: Path, cols: int = 6) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap

    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * 2.5))
    for ax, img, cap in zip(axes.ravel(), images, captions):
        ax.imshow(img, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(cap, 24)), fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    args = scripting.parse(argv, {"n": "2000", "seed": "0", "out": "docs/image/shapes_examples.png"})
    n, seed = scripting.number(args, "n", minimum=1), scripting.number(args, "seed")
    t = time.perf_counter()
    images, captions = data.make_batch("test", n, seed)
    render_rate = n / (time.perf_counter() - t)
    t = time.perf_counter()
    oracle.read_scenes(images)
    read_rate = n / (time.perf_counter() - t)
    noisy = np.clip(images / 255.0 + np.random.default_rng(seed).normal(0, 0.05, images.shape), 0, 1)
    held_images, held_captions = data.make_batch("heldout", n, seed)
    rows = oracle.honesty_rows(images, captions, seed) + [
        {"row": "noise sigma=0.05, own captions", **oracle.accuracy(noisy, captions)},
        {"row": "3x3 blur, own captions", **oracle.accuracy(blur(images), captions)},
        {"row": "heldout split, own captions", **oracle.accuracy(held_images, held_captions)},
    ]
    print(f"{'test pictures (n=%d)' % n:<32}" + "".join(f"{k:>10}" for k in KEYS))
    for r in rows:
        print(f"{r['row']:<32}" + "".join(f"{r[k]:>10.4f}" if r[k] is not None else f"{'-':>10}" for k in KEYS))
    print(f"rendered {render_rate:,.0f} pictures/s (with captions); oracle read {read_rate:,.0f} pictures/s")
    out = Path(args["out"])
    grid(images[:24], captions[:24], out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    scripting.run_script(main)
