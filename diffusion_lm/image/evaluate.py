"""How good a caption-to-image model is, measured from pixels alone, and how that moves with guidance w.

For captions of the test split (train's distribution) and of the heldout split (shape-colour pairs and
arrangements never rendered in train), n samples each, at every guidance scale w of a sweep (and, for
a pixel UNet, every threshold: dynamic, static, none):

* oracle accuracy: `oracle.accuracy` (`matches` over a batch) reads the scene back from the pixels;
  the share of samples right on each attribute and on the whole caption;
* CLIP score: 100 · max(cos, 0) between the CLIP image embedding of a sample and its caption's text
  embedding (`clip.clip_score`, the CLIP pair trained here), averaged;
* Fréchet distance between generated and real images of the split in the CLIP image tower's feature space
  (`image_features`, before the projection; the FID recipe with our CLIP in place of Inception): with
  μ, Σ the features' means and covariances, FD = |μ_g − μ_r|² + Tr(Σ_g + Σ_r − 2 (Σ_r^½ Σ_g Σ_r^½)^½),
  the square root by eigendecomposition;
* saturation: the share of uint8 channel values at 0 or 255, beside the real images' share, and the
  share of sample values outside [−1, 1] before clipping (what thresholding is for).

`evaluate` takes the sampler as an object with `sample(captions, n, guidance=, threshold=, ...)`,
`clip` and `space` (the ImagePipeline), so this module needs nothing above `image/`.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..io import save_json
from ..sharding import gather_batches
from . import oracle
from .clip import clip_score
from .unet import images_to_tensor, tensor_to_images


# ---- grids -------------------------------------------------------------------------------------
def save_grid(images, path: str | Path, ncol: int = 8, scale: int = 3, labels: Optional[Sequence[str]] = None) -> Path:
    """uint8 images (N, H, W, 3) as one PNG, `ncol` a row, each enlarged `scale` times (nearest), with an
    optional label under each."""
    from PIL import Image, ImageDraw  # heavy-ish: only where a PNG is written

    images = np.asarray(images)
    n, h, w, _ = images.shape
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    pad, text = 2, (12 if labels else 0)
    H, W = h * scale + pad + text, w * scale + pad
    canvas = Image.new("RGB", (ncol * W + pad, nrow * H + pad), (128, 128, 128))
    draw = ImageDraw.Draw(canvas)
    for k in range(n):
        r, c = divmod(k, ncol)
        tile = Image.fromarray(images[k]).resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, (pad + c * W, pad + r * H))
        if labels:
            draw.text((pad + c * W + 1, pad + r * H + h * scale), str(labels[k]), fill=(255, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


# ---- metrics -----------------------------------------------------------------------------------
def sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigen-decomposition)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows a (N, D) and b (M, D), in float64.

    Tr((Σ_a Σ_b)^½) is computed as Tr((Σ_b^½ Σ_a Σ_b^½)^½), which has the same eigenvalues and is symmetric."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = torch.cov(a.T) if len(a) > 1 else torch.zeros(a.shape[1], a.shape[1], dtype=a.dtype)
    cov_b = torch.cov(b.T) if len(b) > 1 else torch.zeros(b.shape[1], b.shape[1], dtype=b.dtype)
    cov_a, cov_b = cov_a.reshape(a.shape[1], -1), cov_b.reshape(b.shape[1], -1)
    root_b = sqrtm_psd(cov_b)
    cross = torch.linalg.eigvalsh(root_b @ cov_a @ root_b).clamp_min(0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def _device(module) -> torch.device:
    p = next(iter(module.parameters()), None) if isinstance(module, torch.nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def image_features(clip, images, batch_size: int = 256) -> torch.Tensor:
    """The CLIP image tower's features (N, F) of uint8 images (N, H, W, 3): what the Fréchet distance compares."""
    dev, out = _device(clip), []
    for lo in range(0, len(images), batch_size):
        out.append(clip.image_features(images_to_tensor(images[lo: lo + batch_size]).to(dev)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def clip_scores(clip, images, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """`clip.clip_score` of each (uint8 image, caption) pair: 100 · max(cos, 0); (N,)."""
    dev, out = _device(clip), []
    for lo in range(0, len(images), batch_size):
        x = images_to_tensor(images[lo: lo + batch_size]).to(dev)
        out.append(clip_score(clip, x, list(captions[lo: lo + batch_size])).float().cpu())
    return torch.cat(out)


def oracle_accuracy(images, captions: Sequence[str]) -> dict[str, float]:
    """The share of images the pixel oracle reads right, per attribute the captions state, plus count
    (as many objects as named) and caption (all of it right)."""
    acc = oracle.accuracy(np.asarray(images), list(captions))
    return {k: round(v, 4) for k, v in acc.items() if k != "n" and v is not None}


def saturated(images) -> float:
    """The share of uint8 channel values at 0 or 255."""
    images = np.asarray(images)
    return float(((images == 0) | (images == 255)).mean())


def score(images, captions: Sequence[str], clip, real_features: torch.Tensor,
          raw: Optional[torch.Tensor] = None) -> dict:
    """Every metric of one set of samples: uint8 `images`, their `captions`, `raw` (the samples in
    [−1, 1] before clipping, for the out-of-range share)."""
    out = {"accuracy": oracle_accuracy(images, captions),
           "clip_score": round(float(clip_scores(clip, images, captions).mean()), 3),
           "frechet": round(frechet_distance(image_features(clip, images), real_features), 4),
           "saturated": round(saturated(images), 4)}
    if raw is not None:
        out["out_of_range"] = round(float((raw.abs() > 1).float().mean()), 4)
    return out


# ---- the sweep ---------------------------------------------------------------------------------
def real_reference(images, captions: Sequence[str], clip) -> dict:
    """The same metrics for real images of a split against their own captions: the oracle's and CLIP's
    ceiling, and for the Fréchet distance its floor at this sample size (one half of the real images
    against the other)."""
    images = np.asarray(images)
    half = len(images) // 2
    feats = image_features(clip, images)
    return {"images": len(images), "accuracy": oracle_accuracy(images, captions),
            "clip_score": round(float(clip_scores(clip, images, captions).mean()), 3),
            "frechet": round(frechet_distance(feats[:half], feats[half:]), 4) if half > 1 else None,
            "saturated": round(saturated(images), 4)}


def evaluate(pipe, splits: dict, out_dir: str | Path, *, n: int = 8,
             guidances: Sequence[float] = (0, 1, 2, 4, 8), thresholds: Optional[Sequence[str]] = None,
             compare_at: Optional[Sequence[float]] = None, steps: int = 50, sampler: str = "ddim", seed: int = 0, batch_size: int = 64,
             meta: Optional[dict] = None, progress: bool = False, shard: Optional[tuple[int, int]] = None,
             select: int = 1) -> Optional[dict]:
    """Sample n images per caption at every w (and threshold), score them split by split, and write
    report.md, report.json, a grid per setting and sweep.png (accuracy and Fréchet distance against w).

    `splits` maps a name (test, heldout) to (captions to draw, real images, the real images' captions);
    each split's samples are compared with its own real images. The first threshold is swept over
    every w; the others run at the w's of `compare_at` (None: every w), since they differ at high w.

    With `shard=(rank, N)` under torchrun each rank draws its share of every setting's batches and rank 0
    gathers, scores and writes (the other ranks return None); DDIM's images are one process's exactly.

    `select=K > 1` keeps, for every image, the best of K candidates by the pipeline's CLIP (the sampler's
    `select`; not at w = 0, which stays the unconditional model); the CLIP score is then no longer an
    independent judge (the oracle still is). Every such setting gives two rows from one draw: the best of K
    (`select: K`) and its first candidate alone (`select: 1`, exactly the select=1 run's images), so the
    gain of reranking is measured on the same x_T. Under shard the ranks draw the candidates and rank 0
    gathers and picks."""
    if isinstance(select, bool) or not isinstance(select, int) or select < 1:
        raise ValueError(f"select must be an integer >= 1, got {select!r}")
    out = Path(out_dir)
    main = shard is None or shard[0] == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if thresholds is None:  # thresholding is what a pixel model needs at high w; latents are not in [−1, 1]
        thresholds = ["dynamic", "static", "none"] if pipe.space == "pixel" else ["none"]
    real = real_features = {}
    if main:
        real = {name: real_reference(images, real_captions, pipe.clip) for name, (_, images, real_captions) in splits.items()}
        real_features = {name: image_features(pipe.clip, images) for name, (_, images, _) in splits.items()}
    captions = [c for caps, _, _ in splits.values() for c in caps]  # every split in one sampling call
    spans, lo = {}, 0
    for name, (caps, _, _) in splits.items():
        spans[name] = (lo * n, (lo + len(caps)) * n)
        lo += len(caps)
    rows = []
    for k, threshold in enumerate(thresholds):
        for w in guidances if k == 0 or compare_at is None else [w for w in guidances if w in compare_at]:
            started = time.perf_counter()
            picks = select if select > 1 and w > 0 else 1  # w = 0 is the unconditional model: never reranked
            raw = pipe.sample(captions, n, guidance=w, threshold=threshold, steps=steps, sampler=sampler,
                              seed=seed, batch_size=batch_size, progress=progress and main, shard=shard,
                              **({"select": picks, "rerank": False} if picks > 1 else {}))
            raw = gather_batches(raw, len(captions) * n * picks, batch_size, shard)  # rank 0: every rank's, in order
            if raw is None:  # another rank: rank 0 scores
                continue
            # with select: block 0 of the candidates is exactly the select=1 draw, scored as its own row
            drawn = [(1, raw[: len(captions) * n])] + ([(picks, pipe.rerank(raw, captions, n, picks))] if picks > 1 else [])
            rate = len(captions) * n / (time.perf_counter() - started)  # images delivered, decoding included
            for best_of, raw in drawn:
                images = tensor_to_images(raw)
                for name, (a, b) in spans.items():
                    flat = [c for c in splits[name][0] for _ in range(n)]
                    row = {"split": name, "threshold": threshold, "guidance": float(w), "select": best_of,
                           **score(images[a:b], flat, pipe.clip, real_features[name], raw[a:b])}
                    if best_of == picks:  # the draw's measured rate; the plain row of a select draw has none of its own
                        row["images_per_s"] = round(rate, 2)
                    shown = min(len(splits[name][0]), 8) * n
                    tag = "_plain" if best_of < picks else ""
                    row["grid"] = save_grid(images[a:a + shown], out / f"grid_{name}_{threshold}_w{w:g}{tag}.png",
                                            ncol=n).name
                    rows.append(row)
                    if progress:
                        print(f"{name} threshold={threshold} w={w:g}{f' best of {best_of}' if picks > 1 else ''}: caption accuracy "
                              f"{row['accuracy'].get('caption')}, Fréchet {row['frechet']}, CLIP score {row['clip_score']}",
                              flush=True)
    result = {"meta": {**(meta or {}), "captions": {k: list(v[0]) for k, v in splits.items()}, "n": n,
                       "steps": steps, "sampler": sampler, "seed": seed, "space": pipe.space, "select": select,
                       "threads": torch.get_num_threads(), "device": str(pipe.device)},
              "real": real, "rows": rows}
    if not main:
        return None
    if shard is not None:
        result["meta"]["processes"] = shard[1]
    save_json(out / "report.json", result)
    (out / "report.md").write_text(markdown(result), encoding="utf-8")
    plot_sweep(rows, out / "sweep.png")
    return result


def markdown(result: dict) -> str:
    rows, real, meta = result["rows"], result["real"], result["meta"]
    keys = sorted({k for r in [*rows, *real.values()] for k in r["accuracy"]} - {"caption"})
    picked = meta.get("select", 1) > 1
    head = ["split", "threshold", "w", *(["best of"] if picked else []), "caption acc", *keys, "CLIP score", "Fréchet (CLIP)", "saturated",
            "out of [-1,1]", "images/s"]
    sizes = ", ".join(f"{len(c)} {k}" for k, c in meta["captions"].items())
    lines = [f"# Caption-to-image evaluation ({meta['space']} UNet)", "",
             f"Captions: {sizes}; {meta['n']} samples each, {meta['sampler']} {meta['steps']} steps, seed "
             f"{meta['seed']} ({meta.get('threads', '?')} threads on {meta.get('device', '?')}; images/s is the "
             f"setting's whole sampling call, decoding included, both splits together). Fréchet distance in the CLIP image tower's features, against the split's real "
             f"images; the `real` rows score those images against their own captions (their Fréchet "
             f"distance is one half against the other: the floor at this sample size).", "",
             *([f"`best of {meta['select']}`: each sample is the best of {meta['select']} candidates by CLIP "
                f"score (reranking{' by ' + ', '.join(meta['rerank_clip']) if meta.get('rerank_clip') else ''}), "
                f"so the CLIP score column is not an independent judge there; the oracle's columns are. `best of "
                f"1` is the first candidate of the same draw: the select=1 images (w = 0 is not reranked: it "
                f"stays the unconditional model).", ""] if picked else []),
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def line(split, threshold, w, r):
        acc = r["accuracy"]
        frechet = "-" if r["frechet"] is None else f"{r['frechet']:.4f}"
        cells = [split, threshold, w, *([str(r.get("select", "-"))] if picked else []), _pct(acc.get("caption")), *[_pct(acc.get(k)) for k in keys],
                 f"{r['clip_score']:.1f}", frechet, _pct(r["saturated"]), _pct(r.get("out_of_range")),
                 f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-"]
        return "| " + " | ".join(cells) + " |"

    for name, r in real.items():
        lines.append(line(name, "real", "-", r))
    for r in rows:
        lines.append(line(r["split"], r["threshold"], f"{r['guidance']:g}", r))
    return "\n".join(lines) + "\n"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def plot_sweep(rows: list[dict], png: Path) -> Path:
    """Whole-caption accuracy and Fréchet distance against w, one line per split and threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    key = lambda r: (r["split"], r["threshold"], r.get("select", 1))  # noqa: E731
    picked = len({r.get("select", 1) for r in rows}) > 1
    for split, threshold, best_of in dict.fromkeys(map(key, rows)):
        mine = [r for r in rows if key(r) == (split, threshold, best_of)]
        ws, label = [r["guidance"] for r in mine], f"{split}, {threshold}" + (f", best of {best_of}" if picked else "")
        axes[0].plot(ws, [r["accuracy"].get("caption", math.nan) for r in mine], marker="o", label=label)
        axes[1].plot(ws, [r["frechet"] for r in mine], marker="o", label=label)
    axes[0].set_ylabel("whole-caption oracle accuracy")
    axes[1].set_ylabel("Fréchet distance (CLIP features)")
    for ax in axes:
        ax.set_xlabel("guidance scale w")
        ax.legend(title="split, threshold", fontsize=7)
    fig.suptitle("Classifier-free guidance sweep")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
