"""Which CLIP pair reranks best? One draw of candidates, reranked by each, all judged by the pixel oracle.

    python scripts/rerank_compare.py unet=runs/unet-neg clip=runs/image-clip-neg \
        rerankers=runs/image-clip-neg,runs/image-clip-neg2,runs/image-clip-neg+runs/image-clip-neg2 \
        [select=8] [at=2,4,8] [limit=50] [n=4] [w=2] [splits=test,heldout] \
        [candidates=runs/rerank/candidates.safetensors] [out=runs/rerank_compare.json]

For each split's first `limit` captions (those `diffusion-lm evaluate-image` draws) it samples `select`
candidates per image once (DDIM, 50 steps, seed 0: candidate 0 of every image is exactly evaluate-image's
select=1 image), then keeps, per reranker, the candidate that CLIP scores highest against the caption
(as `evaluate-image select= rerank_clip=` does, here on the images as saved, uint8); `a+b` names an ensemble that
ranks by the mean of its CLIPs' cosines (`rerank_clip=[a,b]`). It prints and writes the oracle's whole-caption and per-attribute
accuracy of the plain draw (candidate 0), of each reranker's picks among the first k candidates for every k
in `at` (the first k of a draw of `select` are exactly a select=k draw), and of an oracle-picked upper bound
(an image counts if any of its k candidates is right: the best any reranker could do; not a method). Same
candidates for every row, so the rows differ only by the judge that picks. `candidates=` keeps the draw (uint8
images, safetensors) and reuses it when the settings match, so another reranker costs no sampling.
"""
from __future__ import annotations

from pathlib import Path


def main(argv: list[str]) -> None:
    import numpy as np
    import torch

    from diffusion_lm.image import oracle
    from diffusion_lm.image.data import SPLITS, load_shapes
    from diffusion_lm.image.evaluate import oracle_accuracy
    from diffusion_lm.image.unet import images_to_tensor, tensor_to_images
    from diffusion_lm.io import save_json, save_tensors
    from diffusion_lm.pipelines.image import ImagePipeline, check_guidance
    from diffusion_lm.scripting import fail, number, parse

    args = parse(argv, {"unet": "shipped", "clip": "shipped", "autoencoder": "shipped", "rerankers": "shipped",
                        "select": "4", "at": "", "limit": "50", "n": "4", "w": "2", "splits": "test,heldout",
                        "seed": "0", "threads": "0", "candidates": "", "out": "runs/rerank_compare.json"})
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
    try:
        at = sorted({int(k) for k in args["at"].split(",") if k} | {select}) if args["at"] else [select]
    except ValueError:
        fail(f"at must be integers separated by commas, got {args['at']!r}")
    if min(at) < 2 or max(at) > select:
        fail(f"every k in at must be in [2, select={select}], got {args['at']!r}")
    pipe = ImagePipeline.from_pretrained(args["unet"], args["autoencoder"], args["clip"])
    judges = {}
    for r in rerankers:  # every reranker loads (or fails in one line) before anything is sampled
        members = []
        for part in (p for p in r.split("+") if p):
            pipe.set_reranker(part)
            members += pipe.reranker
        if not members:
            fail(f"empty reranker in {args['rerankers']!r}")
        judges[r] = members
    pipe.set_reranker(None)
    settings = {"unet": args["unet"], "clip": args["clip"], "select": select, "limit": limit, "n": n, "w": w,
                "seed": seed, "splits": ",".join(splits)}
    cache = Path(args["candidates"]) if args["candidates"] else None
    drawn = {}
    if cache is not None and cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as f:
            if f.metadata() == {k: str(v) for k, v in settings.items()}:
                drawn = {k: f.get_tensor(k) for k in f.keys()}
                print(f"candidates from {cache}")
    result = {"meta": {"command": "python scripts/rerank_compare.py " + " ".join(argv), **settings, "at": at},
              "splits": {}}
    for split in splits:
        data = load_shapes(split, 512, 0)
        captions = list(dict.fromkeys(str(c) for c in data["caption"]))[:limit]
        flat = [c for c in captions for _ in range(n)]
        if split not in drawn:
            states, mask = pipe.caption_states(captions)
            rows = torch.arange(len(captions)).repeat_interleave(n).repeat(select)
            drawn[split] = torch.from_numpy(tensor_to_images(pipe.draw(states, mask, rows, guidance=w, seed=seed,
                                                                       progress=True)))
        images = len(flat)
        cands = drawn[split].numpy()  # uint8 (select · images, 32, 32, 3), candidate k of image j at k · images + j
        blocks = [cands[k * images:(k + 1) * images] for k in range(select)]
        hits = np.stack([[h["caption"] for h in oracle.match_all(b, flat)] for b in blocks])  # (select, images)
        rows_out = {"plain (candidate 0)": oracle_accuracy(blocks[0], flat)}
        x = images_to_tensor(cands)
        for r, members in judges.items():
            pipe.reranker = members
            cos = pipe.rerank_scores(x, captions, n, select)  # what `select=` ranks by, here on the uint8 images
            for k in at:
                best = cos[:k].argmax(0).numpy()
                picked = cands[best * images + np.arange(images)]
                rows_out[f"rerank by {r}, best of {k}"] = oracle_accuracy(picked, flat)
        for k in at:
            rows_out[f"any of {k} right (oracle bound)"] = {"caption": round(float(hits[:k].any(0).mean()), 4)}
        result["splits"][split] = rows_out
        for name, acc in rows_out.items():
            print(f"{split:8s} {name:75s} caption {100 * acc['caption']:5.1f}%  "
                  + "  ".join(f"{k} {100 * v:.1f}" for k, v in acc.items() if k != "caption"), flush=True)
    if cache is not None:
        save_tensors(cache, drawn, {k: str(v) for k, v in settings.items()})
    save_json(Path(args["out"]), result)
    print(f"written: {args['out']}")


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
