"""Does a CLIP pair bind attributes and relations, or read captions as bags of words?

    python scripts/clip_binding.py [clips=shipped,runs/image-clip-neg] [n=1000] [data_seed=0] [out=...json]

For every image of the first n test and held-out scenes and every hard negative of its caption
(`image.data.hard_negatives`: the converse relation, the two objects in the other order, an attribute swapped
between the objects, one attribute of a lone object changed), the share of images whose own caption the CLIP
scores above that negative. Chance is 0.5; a bag-of-words text tower cannot tell `order` (the same words)
from the truth. Prints one table per split, one column per CLIP, and writes the figures as JSON.
`train-clip` puts the same scores into its metrics.json ("binding").
"""
from __future__ import annotations

import json
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    from diffusion_lm.assets import resolve_asset
    from diffusion_lm.image.clip import ClipModel
    from diffusion_lm.image.train import _batched, binding_scores, held_images
    from diffusion_lm.image.unet import images_to_tensor
    from diffusion_lm.scripting import number, parse

    args = parse(argv, {"clips": "shipped", "n": "1000", "data_seed": "0", "out": "runs/clip_binding.json"})
    n, data_seed = number(args, "n", minimum=1), number(args, "data_seed")
    torch.manual_seed(0)
    names = [c for c in args["clips"].split(",") if c]
    clips = {c: ClipModel.from_pretrained(resolve_asset(c, "model", "image-clip")).eval() for c in names}
    result = {}
    for split in ("test", "heldout"):
        images, captions = held_images(split, n, data_seed)
        x = images_to_tensor(images)
        result[split] = {}
        for name, clip in clips.items():
            result[split][name] = binding_scores(clip, _batched(clip.encode_image, x, clip.device), captions)
        kinds = sorted({k for r in result[split].values() for k in r})
        print(f"\n{split} ({n} scenes): share of images whose caption beats the negative")
        print("| negative | n | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for k in kinds:
            count = next(r[k]["n"] for r in result[split].values() if k in r)
            print(f"| {k} | {count} | " + " | ".join(f"{result[split][c][k]['accuracy']:.3f}" if k in result[split][c]
                                                 else "-" for c in names) + " |")
    out = Path(args["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": n, "data_seed": data_seed, "clips": names, **result}, indent=2) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
