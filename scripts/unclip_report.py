"""unCLIP (prior + decoder) against the direct caption-conditioned UNet: oracle accuracy and diversity.

    python scripts/unclip_report.py prior=runs/image-prior decoder=runs/image-unclip-decoder [direct=shipped]
        [autoencoder=shipped] [clip=shipped] [captions=100] [n=8] [guidance=2] [decoder_guidance=2]
        [prior_guidance=1] [splits=test,heldout] [steps=50] [seed=0] [threads=2] [out_dir=runs/unclip]

For `captions` captions of each split, n images each from
  * direct:     the caption UNet at classifier-free scale `guidance`;
  * unCLIP:     the prior's image embedding (scale `prior_guidance` on the text embedding), one prior
                sample per image, then the decoder at scale `decoder_guidance` on the embedding;
  * variations: the decoder from the true test image's own CLIP embedding (what the decoder alone
                carries: the prior's share of the errors is unCLIP's accuracy minus this one);
and as a reference the renderer's own n scenes of each caption (unspecified attributes drawn at random).
Reports the oracle's per-attribute and whole-caption accuracy, and diversity: the mean pairwise distance
of one caption's n images, in the CLIP image embedding (unit vectors: 0 same, 2 opposite) and in pixels
(RMS over 0-255 values), averaged over captions; and images/s. Writes report.json, report.md and
grid.png (per caption: direct row, unCLIP row).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_lm import scripting
from diffusion_lm.image import oracle
from diffusion_lm.image.data import make_batch
from diffusion_lm.image.evaluate import save_grid
from diffusion_lm.image.shapes import render_caption
from diffusion_lm.image.unclip import image_embeddings
from diffusion_lm.image.unet import images_to_tensor, tensor_to_images

SPLITS = ("test", "heldout")


def diversity(clip, images: np.ndarray, n: int) -> dict:
    """Mean pairwise distances within each consecutive group of n images, averaged over the groups."""
    emb = image_embeddings(clip, images_to_tensor(images)).view(-1, n, clip.config.embed_dim)
    pix = torch.as_tensor(images).float().reshape(len(emb), n, -1)
    off = ~torch.eye(n, dtype=torch.bool)
    d_emb = torch.cdist(emb, emb)[:, off].mean()
    d_pix = (torch.cdist(pix, pix) / pix.shape[-1] ** 0.5)[:, off].mean()
    return {"clip_distance": round(float(d_emb), 4), "pixel_rms": round(float(d_pix), 2)}


def main(argv: list[str]) -> None:
    from diffusion_lm.pipelines.image import ImagePipeline, check_guidance
    from diffusion_lm.pipelines.unclip import UnCLIPPipeline

    args = scripting.parse(argv, {"prior": "", "decoder": "", "direct": "shipped", "autoencoder": "shipped",
                                  "clip": "shipped", "captions": "100", "n": "8", "guidance": "2",
                                  "decoder_guidance": "2", "prior_guidance": "1", "splits": "test,heldout",
                                  "steps": "50", "seed": "0", "threads": "2", "out_dir": "runs/unclip"})
    if not args["prior"] or not args["decoder"]:
        scripting.fail("prior=<folder from train-prior> and decoder=<folder from train-unet unet_preset=cpu_decoder> "
                       "are required")
    count, n, steps, seed = (scripting.number(args, k, minimum=m) for k, m in
                             (("captions", 1), ("n", 2), ("steps", 1), ("seed", None)))
    w, w_dec, w_prior = (check_guidance(scripting.number(args, k, float), k)
                         for k in ("guidance", "decoder_guidance", "prior_guidance"))
    splits = [s for s in args["splits"].split(",") if s]
    if not splits or any(s not in SPLITS for s in splits):
        scripting.fail(f"splits must be a comma-separated list of {', '.join(SPLITS)}, got {args['splits']!r}")
    torch.set_num_threads(scripting.number(args, "threads", minimum=1))
    direct = ImagePipeline.from_pretrained(args["direct"], args["autoencoder"], args["clip"], device="cpu")
    unclip = UnCLIPPipeline.from_pretrained(args["prior"], args["decoder"], args["autoencoder"], args["clip"],
                                            device="cpu")
    clip = direct.clip
    report = {"prior": args["prior"], "decoder": args["decoder"], "direct": args["direct"], "captions": count, "n": n,
              "guidance": w, "decoder_guidance": w_dec, "prior_guidance": w_prior, "steps": steps, "seed": seed,
              "threads": torch.get_num_threads(), "splits": {}}
    lines = [f"# unCLIP vs the direct caption UNet ({count} captions a split x {n} images, DDIM {steps} steps)", "",
             f"Direct at w = {w:g}; unCLIP: prior at w = {w_prior:g}, decoder at w = {w_dec:g}; variations: the decoder "
             f"at w = {w_dec:g} from the true image's embedding; renderer: the shapes renderer's own {n} scenes a caption.",
             "", "| split | system | whole-caption accuracy | shape | colour | position | relation | "
             "diversity (CLIP distance) | diversity (pixel RMS) | images/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    grid_rows = []
    for split in splits:
        images, captions = make_batch(split, count, seed)
        drawn = [c for c in captions for _ in range(n)]
        runs = {}
        for name, fn in (("direct", lambda: direct.sample(captions, n, guidance=w, steps=steps, seed=seed,
                                                          progress=True)),
                         ("unclip", lambda: unclip.sample(captions, n, guidance=w_dec, prior_guidance=w_prior,
                                                          steps=steps, seed=seed, progress=True)),
                         ("variations", lambda: unclip.variations(images, n, guidance=w_dec, steps=steps, seed=seed,
                                                                  progress=True))):
            started = time.perf_counter()
            out = tensor_to_images(fn())
            runs[name] = (out, len(out) / (time.perf_counter() - started))
        rendered = np.stack([render_caption(c, seed=seed * 1000 + k) for c in captions for k in range(n)])
        runs["renderer"] = (rendered, None)
        report["splits"][split] = {}
        for name, (out, rate) in runs.items():
            acc = oracle.accuracy(out, drawn)
            row = {"accuracy": acc, "diversity": diversity(clip, out, n),
                   "images_per_s": None if rate is None else round(rate, 2)}
            report["splits"][split][name] = row
            pct = lambda k: "" if acc.get(k) is None else f"{100 * acc[k]:.1f}%"  # noqa: E731
            lines.append(f"| {split} | {name} | {pct('caption')} | {pct('shape')} | {pct('colour')} | "
                         f"{pct('position')} | {pct('relation')} | {row['diversity']['clip_distance']:.3f} | "
                         f"{row['diversity']['pixel_rms']:.1f} | {'' if rate is None else f'{rate:.2f}'} |")
        for k in range(min(4, count)):
            grid_rows += [runs["direct"][0][k * n: (k + 1) * n], runs["unclip"][0][k * n: (k + 1) * n]]
    out_dir = Path(args["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_grid(np.concatenate(grid_rows), out_dir / "grid.png", ncol=n)
    lines += ["", "Grid: per caption (the first four of each split) a row of direct samples, then a row of unCLIP's."]
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    scripting.run_script(main)
