"""ControlNet measured by the oracle: do the objects land where the control map says, and is the caption still met?

    python scripts/controlnet_report.py controlnet=runs/image-controlnet [unet=shipped] [autoencoder=shipped]
        [clip=shipped] [maps=200] [guidance=4] [strength=1] [steps=50] [seed=0] [threads=2] [out_dir=runs/controlnet]

Takes `maps` test scenes; each one's object mask (where its objects are) is the control map and its
caption the prompt. Draws one image per map with the ControlNet and one without it (the base UNet, the
same noise), and reports the IoU of the oracle's object pixels with the control map (mean, and the
share of maps at IoU >= 0.5), the oracle's whole-caption accuracy of both, and images/s. Writes
report.json, report.md and grid.png (rows of control map | with ControlNet | without).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_lm import scripting
from diffusion_lm.image import oracle
from diffusion_lm.image.controlnet import mask_iou, object_mask
from diffusion_lm.image.data import make_batch
from diffusion_lm.image.evaluate import save_grid
from diffusion_lm.image.unet import tensor_to_images


def main(argv: list[str]) -> None:
    from diffusion_lm.pipelines.image import ImagePipeline, check_guidance

    args = scripting.parse(argv, {"controlnet": "", "unet": "shipped", "autoencoder": "shipped", "clip": "shipped",
                                  "maps": "200", "guidance": "4", "strength": "1", "steps": "50", "seed": "0",
                                  "threads": "2", "out_dir": "runs/controlnet"})
    if not args["controlnet"]:
        scripting.fail("controlnet=<folder from train-controlnet> is required")
    n, steps, seed = (scripting.number(args, k, minimum=m) for k, m in (("maps", 1), ("steps", 1), ("seed", None)))
    w = check_guidance(scripting.number(args, "guidance", float), "guidance")
    strength = scripting.number(args, "strength", float, minimum=0)
    torch.set_num_threads(scripting.number(args, "threads", minimum=1))
    pipe = ImagePipeline.from_pretrained(args["unet"], args["autoencoder"], args["clip"], device="cpu",
                                         controlnet_dir=args["controlnet"])
    images, captions = make_batch("test", n, seed)
    hints = torch.from_numpy(object_mask(images))
    kw = dict(guidance=w, steps=steps, seed=seed, progress=True)
    started = time.perf_counter()
    steered = tensor_to_images(pipe.sample(captions, 1, control=hints, control_scale=strength, **kw))
    rate = n / (time.perf_counter() - started)
    plain = tensor_to_images(pipe.sample(captions, 1, **kw))
    iou, iou_plain = mask_iou(steered, hints.numpy()), mask_iou(plain, hints.numpy())
    acc, acc_plain = oracle.accuracy(steered, captions), oracle.accuracy(plain, captions)
    report = {"controlnet": args["controlnet"], "unet": args["unet"], "maps": n, "guidance": w, "strength": strength,
              "steps": steps, "seed": seed, "threads": torch.get_num_threads(), "images_per_s": round(rate, 2),
              "iou_mean": round(float(iou.mean()), 4), "iou_at_least_0.5": round(float((iou >= 0.5).mean()), 4),
              "iou_mean_without": round(float(iou_plain.mean()), 4), "accuracy": acc, "accuracy_without": acc_plain,
              "bars": {"mean IoU >= 0.8": bool(iou.mean() >= 0.8),
                       "caption accuracy no lower than without": bool(acc["caption"] >= acc_plain["caption"])}}
    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    k = min(n, 16)
    maps = np.repeat((hints[:k, 0].numpy() * 255).astype(np.uint8)[..., None], 3, -1)
    save_grid(np.stack([maps, steered[:k], plain[:k]], 1).reshape(-1, 32, 32, 3), out / "grid.png", ncol=6)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# ControlNet ({pipe.space} UNet, {n} test maps, w = {w:g}, strength {strength:g}, DDIM {steps} steps)", "",
             "| | mean IoU with the map | IoU >= 0.5 | whole-caption accuracy | images/s |", "|---|---|---|---|---|",
             f"| with ControlNet | {iou.mean():.3f} | {100 * (iou >= 0.5).mean():.1f}% | {100 * acc['caption']:.1f}% | "
             f"{rate:.2f} |",
             f"| without (base UNet, same noise) | {iou_plain.mean():.3f} | {100 * (iou_plain >= 0.5).mean():.1f}% | "
             f"{100 * acc_plain['caption']:.1f}% | |", "",
             "IoU: the oracle's object pixels (any palette colour) against the control map. Grid: map | with | "
             "without, two maps a row."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(report))


if __name__ == "__main__":
    scripting.run_script(main)
