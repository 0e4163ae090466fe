"""Inpainting edits measured by the oracle: keep a region, redraw one object under a new caption.

    python scripts/inpaint_report.py [unet=shipped] [autoencoder=shipped] [clip=shipped] [edits=200]
        [guidance=4] [steps=50] [resample=1] [eta=0] [seed=0] [threads=2] [out_dir=runs/inpaint]

Each edit (diffusion_lm/image/editing.py) takes a test scene and gives one object another colour and
shape at the same place and size; its bounding box (grown by a pixel, and for a latent UNet out to
whole latent cells) is redrawn by
ImagePipeline.inpaint and the rest is kept through the core's masked replacement. Reported: the
oracle's whole-caption accuracy on the new captions (and on the old ones: how often the edit did not
take), the PSNR of the kept pixels against the original (as decoded, and after pasting the kept
pixels back), and images/s. Writes report.json, report.md and grid.png (rows of original | redrawn
region | result). `resample` > 1 takes each step that many times (RePaint's resampling); `eta` is DDIM's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_lm import scripting
from diffusion_lm.image import oracle
from diffusion_lm.image.editing import make_edits
from diffusion_lm.image.evaluate import save_grid
from diffusion_lm.image.unet import tensor_to_images


def kept_psnr(result: np.ndarray, original: np.ndarray, keep: np.ndarray) -> float:
    """PSNR (dB) over the kept pixels of every edit together; None when they are identical (exact)."""
    err = ((result.astype(np.float64) - original.astype(np.float64)) ** 2)[keep].mean()
    return None if err == 0 else round(float(10 * np.log10(255.0 ** 2 / err)), 2)


def main(argv: list[str]) -> None:
    from diffusion_lm.pipelines.image import ImagePipeline, check_guidance

    args = scripting.parse(argv, {"unet": "shipped", "autoencoder": "shipped", "clip": "shipped", "edits": "200",
                                  "guidance": "4", "steps": "50", "resample": "1", "eta": "0", "seed": "0", "threads": "2",
                                  "out_dir": "runs/inpaint"})
    n = scripting.number(args, "edits", minimum=1)
    steps, seed = scripting.number(args, "steps", minimum=1), scripting.number(args, "seed")
    resample, eta = scripting.number(args, "resample", minimum=1), scripting.number(args, "eta", float, minimum=0)
    w = check_guidance(scripting.number(args, "guidance", float), "guidance")
    torch.set_num_threads(scripting.number(args, "threads", minimum=1))
    pipe = ImagePipeline.from_pretrained(args["unet"], args["autoencoder"], args["clip"], device="cpu")
    # a latent UNet redraws whole latent cells: the boxes are grown to them, so the kept pixels are whole cells
    align = 32 // pipe.unet.config.image_size if pipe.space == "latent" else 1
    edits = make_edits(n, seed, align=align)
    started = time.perf_counter()
    raw = pipe.inpaint(edits["images"], edits["keep"], edits["captions"], guidance=w, steps=steps, seed=seed,
                       resample=resample, eta=eta, progress=True)
    rate = n / (time.perf_counter() - started)
    result = tensor_to_images(raw)
    pasted = np.where(edits["keep"][..., None], edits["images"], result)
    new, old = oracle.accuracy(pasted, edits["captions"]), oracle.accuracy(pasted, edits["original_captions"])
    report = {"unet": args["unet"], "space": pipe.space, "edits": n, "box_aligned_to": align, "guidance": w, "steps": steps,
              "resample": resample, "eta": eta, "seed": seed,
              "threads": torch.get_num_threads(), "images_per_s": round(rate, 2),
              "kept_share": round(float(edits["keep"].mean()), 4),
              "kept_psnr_decoded": kept_psnr(result, edits["images"], edits["keep"]),  # None: exact
              "kept_exact_decoded": float((result == edits["images"])[edits["keep"]].mean()),
              "new_caption_accuracy": new, "old_caption_accuracy": old,
              "new_caption_accuracy_decoded": oracle.accuracy(result, edits["captions"])["caption"],
              "bars": {"kept region >= 30 dB as decoded": None, "new caption >= 80%": new["caption"] >= 0.8}}
    report["bars"]["kept region >= 30 dB as decoded"] = report["kept_psnr_decoded"] is None or report["kept_psnr_decoded"] >= 30
    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    k = min(n, 16)
    shown = edits["images"][:k].copy()
    region = shown.copy()
    region[edits["keep"][:k]] = region[edits["keep"][:k]] // 4  # the kept part dimmed: the box is what is redrawn
    rows = np.stack([shown, region, pasted[:k]], 1).reshape(-1, *shown.shape[1:])
    save_grid(rows, out / "grid.png", ncol=6)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Inpainting edits ({pipe.space} UNet, {n} edits, w = {w:g}, DDIM {steps} steps, eta {eta:g}, "
             f"resample {resample})", "",
             "| new caption (oracle) | old caption (oracle) | kept PSNR as decoded | kept pixels exact as decoded | "
             "images/s |", "|---|---|---|---|---|",
             f"| {100 * new['caption']:.1f}% | {100 * old['caption']:.1f}% | "
             f"{'exact' if report['kept_psnr_decoded'] is None else str(report['kept_psnr_decoded']) + ' dB'} | "
             f"{100 * report['kept_exact_decoded']:.1f}% | {rate:.2f} |", "",
             "The oracle reads the result with the kept pixels pasted back (exact by construction); the "
             f"redrawn box is {100 * (1 - report['kept_share']):.1f}% of the pixels. Grid: original | redrawn box "
             "(kept part dimmed) | result, two edits a row."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(report))


if __name__ == "__main__":
    scripting.run_script(main)
