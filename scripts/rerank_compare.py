"""Which CLIP pair reranks best? One draw of candidates, reranked by each, all judged by the pixel oracle.

    python scripts/rerank_compare.py unet=runs/unet-neg clip=runs/image-clip-neg \
        rerankers=runs/image-clip-neg,runs/image-clip-neg2 [select=4] [limit=50] [n=4] [w=2] \
        [splits=test,heldout] [out=runs/rerank_compare.json]

For each split's first `limit` captions (those `diffusion-lm evaluate-image` draws) it samples `select`
candidates per image once (DDIM, 50 steps, seed 0: candidate 0 of every image is exactly evaluate-image's
select=1 image), then keeps, per reranker, the candidate that CLIP scores highest against the caption
(`ImagePipeline.rerank`, as `evaluate-image select= rerank_clip=` does). It prints and writes the oracle's
whole-caption and per-attribute accuracy of the plain draw (candidate 0), of each reranker's picks, and of
an oracle-picked upper bound (the best any reranker could do with these candidates; not a method). Same
candidates for every row, so the rows differ only by the judge that picks.
"""
from __future__ import annotations

from pathlib import Path


def main(argv: list[str]) -> None:
    import numpy as np
    import torch

    from diffusion_lm.image import oracle
    from diffusion_lm.image.data import SPLITS, load_shapes
    from diffusion_lm.image.evaluate import oracle_accuracy
    from diffusion_lm.image.unet import tensor_to_images
    from diffusion_lm.io import save_json
    from diffusion_lm.pipelines.image import ImagePipeline, check_guidance
    from diffusion_lm.scripting import fail, number, parse

    args = parse(argv, {"unet": "shipped", "clip": "shipped", "autoencoder": "shipped", "rerankers": "shipped",
                        "select": "4", "limit": "50", "n": "4", "w": "2", "splits": "test,heldout", "seed": "0",
                        "threads": "0", "out": "runs/rerank_compare.json"})
    select, limit, n = (number(args, k, minimum=m) for k, m in (("select", 2), ("limit", 1), ("n", 1)))
    seed = number(args, "seed", minimum=0)
    if number(args, "threads", minimum=0):
        torch.set_num_threads(number(args, "threads"))
    try:
        w = check_guidance(float(args["w"]), "w")
    except ValueError:
        fail(f"w must be a number, got {args['w']!r}")
    splits = [s for s in args["splits"].split(",") if s]
    if not splits or set(splits) - set(SPLITS):
        fail(f"splits must be some of {', '.join(SPLITS)}, got {args['splits']!r}")
    rerankers = [r for r in args["rerankers"].split(",") if r]
    if not rerankers:
        fail("rerankers is empty: give CLIP folders separated by commas")
    pipe = ImagePipeline.from_pretrained(args["unet"], args["autoencoder"], args["clip"])
    judges = {}
    for r in rerankers:  # every reranker loads (or fails in one line) before anything is sampled
        pipe.set_reranker(None if r == args["clip"] else r)
        judges[r] = pipe.reranker
    result = {"meta": {"command": "python scripts/rerank_compare.py " + " ".join(argv), "unet": args["unet"],
                       "clip": args["clip"], "select": select, "limit": limit, "n": n, "w": w, "seed": seed},
              "splits": {}}
    for split in splits:
        data = load_shapes(split, 512, 0)
        captions = list(dict.fromkeys(str(c) for c in data["caption"]))[:limit]
        flat = [c for c in captions for _ in range(n)]
        states, mask = pipe.caption_states(captions)
        rows = torch.arange(len(captions)).repeat_interleave(n).repeat(select)
        candidates = pipe.draw(states, mask, rows, guidance=w, seed=seed, progress=True)
        images = len(flat)
        rows_out = {"plain (candidate 0)": oracle_accuracy(tensor_to_images(candidates[:images]), flat)}
        for name, judge in judges.items():
            pipe.reranker = judge
            picked = pipe.rerank(candidates, captions, n, select)
            rows_out[f"rerank by {name}"] = oracle_accuracy(tensor_to_images(picked), flat)
        # the upper bound: an image counts if any of its candidates is read right
        right = np.stack([[h["caption"] for h in oracle.match_all(tensor_to_images(candidates[k * images:
                                                                                              (k + 1) * images]), flat)]
                          for k in range(select)])
        rows_out["any candidate right (oracle bound)"] = {"caption": round(float(right.any(0).mean()), 4)}
        result["splits"][split] = rows_out
        for name, acc in rows_out.items():
            print(f"{split:8s} {name:60s} caption {100 * acc['caption']:5.1f}%  "
                  + "  ".join(f"{k} {100 * v:.1f}" for k, v in acc.items() if k != "caption"), flush=True)
    save_json(Path(args["out"]), result)
    print(f"written: {args['out']}")


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
