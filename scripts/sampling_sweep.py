"""Compare sampling settings of one model by teacher-LM fluency and speed.

    python scripts/sampling_sweep.py [checkpoint=runs/cpu] [teacher=runs/teacher] [n=64]

Each row samples n sentences (seed 0) with one setting of the core sampler
(DDPM or DDIM, number of steps, clamping on or off, DDPM variance) and
reports the teacher's median and mean per-sentence perplexity, the share of
distinct sentences, and sentences per second on this machine. Writes
<checkpoint>/sampling_sweep.json and prints a markdown table.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from diffusion_lm.cli.common import resolve_checkpoint
from diffusion_lm.lm import ARLM
from diffusion_lm.text import SampleConfig, from_pretrained, generate

SETTINGS = [
    SampleConfig(steps=200, sampler="ddpm", clamp=True),
    SampleConfig(steps=200, sampler="ddpm", clamp=False),
    SampleConfig(steps=200, sampler="ddpm", clamp=True, variance="large"),
    SampleConfig(steps=200, sampler="ddim", eta=0.0, clamp=True),
    SampleConfig(steps=50, sampler="ddpm", clamp=True),
    SampleConfig(steps=1000, sampler="ddpm", clamp=True),
]


def main(argv: list[str]) -> None:
    args = {"checkpoint": "runs/cpu", "teacher": "runs/teacher", "n": "64"}
    for a in argv:
        k, _, v = a.partition("=")
        if k not in args:
            sys.exit(f"error: unknown argument {k!r}; expected {', '.join(args)}")
        args[k] = v
    ckpt = resolve_checkpoint(args["checkpoint"])
    model, tok = from_pretrained(ckpt)
    teacher = ARLM.load(args["teacher"])
    n = int(args["n"])
    rows = []
    for s in SETTINGS:
        t0 = time.perf_counter()
        sents = generate(model, tok, n, s, seed=0, progress=False)
        secs = time.perf_counter() - t0
        ppl = teacher.perplexity(sents)
        rows.append({"sampler": s.sampler, "steps": s.steps, "clamp": s.clamp, "variance": s.variance,
                     "eta": s.eta, "median_ppl": round(statistics.median(ppl), 2),
                     "mean_ppl": round(statistics.mean(ppl), 2), "distinct": round(len(set(sents)) / n, 3),
                     "sentences_per_s": round(n / secs, 2), "example": sents[0]})
        print(json.dumps(rows[-1]), flush=True)
    out = {"checkpoint": args["checkpoint"], "teacher": args["teacher"], "n": n, "threads": torch.get_num_threads(),
           "rows": rows}
    Path(ckpt, "sampling_sweep.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n| sampler | steps | clamp | variance | median ppl | mean ppl | distinct | sentences/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        var = r["variance"] if r["sampler"] == "ddpm" else f"η={r['eta']}"
        print(f"| {r['sampler']} | {r['steps']} | {r['clamp']} | {var} | {r['median_ppl']} | {r['mean_ppl']} | "
              f"{r['distinct']} | {r['sentences_per_s']} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main(sys.argv[1:])
