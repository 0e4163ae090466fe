"""Three ways to make an image match a caption, on the same test captions: classifier-free guidance (the
UNet's own conditioning), CLIP guidance (a noised CLIP's gradient through the core's step hook, on the
unconditional model) and attribute guidance (noisy colour / shape / size / position classifiers, summed,
on the unconditional model).

    python scripts/guidance_report.py clip_model=shipped attributes=shipped   (or train-image-classifier folders)
        [unet=shipped] [autoencoder=shipped] [clip=shipped] [captions=40] [n=4] [cfg=0,1,2,4]
        [strengths=0,1,3,10,30] [steps=50] [seed=0] [threads=2] [out_dir=runs/guidance]

Captions are one-object test captions (the attribute classifiers know one object). Every method draws
with DDPM (the step hook steers a stochastic step) at `steps` steps. For each method and setting:
whole-caption and per-attribute oracle accuracy, CLIP score, Fréchet distance to real test images
(CLIP image features) and images/s; report.json, report.md and strength.png (accuracy and Fréchet
against each method's knob).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_lm import scripting
from diffusion_lm.image.evaluate import image_features, real_reference, score
from diffusion_lm.image.shapes import parse_caption
from diffusion_lm.image.unet import tensor_to_images


def floats(args: dict, key: str) -> list[float]:
    try:
        values = [float(v) for v in args[key].split(",") if v.strip()]
    except ValueError:
        scripting.fail(f"{key} must be comma-separated numbers, got {args[key]!r}")
    if not values or any(not np.isfinite(v) or v < 0 for v in values):
        scripting.fail(f"{key} must be finite numbers >= 0, got {args[key]!r}")
    return values


def main(argv: list[str]) -> None:
    from diffusion_lm.assets import resolve_asset
    from diffusion_lm.core import Control, GuidanceConfig
    from diffusion_lm.image.data import load_shapes
    from diffusion_lm.image.noisy import NoisyImageModel
    from diffusion_lm.pipelines.image import ImagePipeline

    args = scripting.parse(argv, {"clip_model": "", "attributes": "", "unet": "shipped", "autoencoder": "shipped",
                                  "clip": "shipped", "captions": "40", "n": "4", "cfg": "0,1,2,4",
                                  "strengths": "0,1,3,10,30", "steps": "50", "seed": "0", "threads": "2",
                                  "out_dir": "runs/guidance"})
    k, n = scripting.number(args, "captions", minimum=1), scripting.number(args, "n", minimum=1)
    steps, seed = scripting.number(args, "steps", minimum=1), scripting.number(args, "seed")
    ws, strengths = floats(args, "cfg"), floats(args, "strengths")
    torch.set_num_threads(scripting.number(args, "threads", minimum=1))
    pipe = ImagePipeline.from_pretrained(args["unet"], args["autoencoder"], args["clip"], device="cpu")
    real = load_shapes("test", 1024, 0)
    real_images = np.asarray(real.with_format("numpy")["image"], dtype=np.uint8)
    real_captions = [str(c) for c in real["caption"]]
    captions = [c for c in dict.fromkeys(real_captions) if len(parse_caption(c).objects) == 1][:k]
    flat = [c for c in captions for _ in range(n)]
    reference = image_features(pipe.clip, real_images)
    rows = []

    def run(method: str, knob: float, **kw):
        started = time.perf_counter()
        raw = pipe.sample(captions, n, steps=steps, sampler="ddpm", seed=seed, **kw)
        rate = len(raw) / (time.perf_counter() - started)
        row = {"method": method, "knob": knob, **score(tensor_to_images(raw), flat, pipe.clip, reference, raw),
               "images_per_s": round(rate, 2)}
        rows.append(row)
        print(f"{method} {knob:g}: caption accuracy {row['accuracy']['caption']:.3f}, Fréchet {row['frechet']}, "
              f"{rate:.2f} images/s", flush=True)

    for w in ws:
        run("classifier-free (w)", w, guidance=w)
    if args["clip_model"]:
        noisy = NoisyImageModel.from_pretrained(resolve_asset(args["clip_model"], "model", "image-noisy-clip"))
        if noisy.config.kind != "clip":
            scripting.fail(f"clip_model={args['clip_model']} is a {noisy.config.kind} classifier, not a noised CLIP")
        targets = pipe.caption_embeddings(captions, n)
        for s in strengths:
            run("CLIP guidance (λ), w = 0", s, guidance=0.0, controls=[Control(noisy, targets)],
                control_config=GuidanceConfig(strength=s, updates=1, step_size=0.1, skip_last=1))
    if args["attributes"]:
        attrs = NoisyImageModel.from_pretrained(resolve_asset(args["attributes"], "model", "image-noisy-attributes"))
        if attrs.config.kind != "attributes":
            scripting.fail(f"attributes={args['attributes']} is a {attrs.config.kind} model, not an attribute classifier")
        wanted = []
        for c in captions:
            o = parse_caption(c).objects[0]
            wanted += [{"colour": o.colour, "shape": o.shape, "size": o.size, "position": o.position}] * n
        for s in strengths:
            run("attribute guidance (λ), w = 0", s, guidance=0.0, controls=[Control(attrs, wanted)],
                control_config=GuidanceConfig(strength=s, updates=1, step_size=0.1, skip_last=1))
    best = {}
    for r in rows:
        if r["method"] not in best or r["accuracy"]["caption"] > best[r["method"]]["accuracy"]["caption"]:
            best[r["method"]] = r
    report = {"captions": captions, "n": n, "steps": steps, "sampler": "ddpm", "seed": seed,
              "threads": torch.get_num_threads(), "real": real_reference(real_images, real_captions, pipe.clip),
              "rows": rows, "best": {m: {"knob": r["knob"], "caption": r["accuracy"]["caption"], "frechet": r["frechet"],
                                         "clip_score": r["clip_score"], "images_per_s": r["images_per_s"]}
                                     for m, r in best.items()}}
    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Guidance methods on {len(captions)} one-object test captions x {n} (DDPM {steps} steps)", "",
             "| method | knob | caption acc | colour | shape | size | position | CLIP score | Fréchet | images/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["accuracy"]
        lines.append(f"| {r['method']} | {r['knob']:g} | {100 * a['caption']:.1f}% | {100 * a['colour']:.1f}% | "
                     f"{100 * a['shape']:.1f}% | {100 * a['size']:.1f}% | {100 * a['position']:.1f}% | "
                     f"{r['clip_score']:.1f} | {r['frechet']:.4f} | {r['images_per_s']:.2f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "strength.png")
    print("\n".join(lines))


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        knobs = [r["knob"] for r in mine]
        axes[0].plot(knobs, [r["accuracy"]["caption"] for r in mine], marker="o", label=method)
        axes[1].plot(knobs, [r["frechet"] for r in mine], marker="o", label=method)
    axes[0].set_ylabel("whole-caption oracle accuracy")
    axes[1].set_ylabel("Fréchet distance (CLIP features)")
    for ax in axes:
        ax.set_xlabel("strength (w or λ)")
        ax.set_xscale("symlog", linthresh=1)
        ax.legend(fontsize=7)
    fig.suptitle("Control vs strength")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    scripting.run_script(main)
