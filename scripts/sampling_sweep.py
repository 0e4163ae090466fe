"""Compare sampling settings of one model by teacher-LM fluency and speed.

    python scripts/sampling_sweep.py [checkpoint=shipped|runs/cpu] [teacher=shipped] [n=64] [settings=all|mbr] [out=...]

Each row samples n sentences (seed 0) with one setting of the core sampler
(DDPM or DDIM, number of steps, clamping on or off, DDPM variance, MBR over k
candidates a sentence) and reports the teacher's median and mean per-sentence perplexity, the share of
samples no less fluent than 90% of E2E valid references (`fluent_share`), the share of distinct sentences, and sentences per second on this machine. Writes
<checkpoint>/sampling_sweep.json (or sampling_sweep_mbr.json for settings=mbr,
the default sampler with k = 1, 5, 10) and prints a markdown table.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from diffusion_lm.assets import resolve_asset, resolve_checkpoint
from diffusion_lm.scripting import fail, number, parse, run_script
from diffusion_lm.eval.fluency import reference_sentences, summarise, threshold
from diffusion_lm.lm import ARLM
from diffusion_lm.text import SampleConfig, from_pretrained, generate

DEFAULT = SampleConfig(steps=200, sampler="ddpm", clamp=True)
SETTINGS = {  # (sampler settings, MBR candidates per sentence)
    "all": [
        (DEFAULT, 1),
        (SampleConfig(steps=200, sampler="ddpm", clamp=False), 1),
        (SampleConfig(steps=200, sampler="ddpm", clamp=True, variance="large"), 1),
        (SampleConfig(steps=200, sampler="ddim", eta=0.0, clamp=True), 1),
        (SampleConfig(steps=50, sampler="ddpm", clamp=True), 1),
        (SampleConfig(steps=1000, sampler="ddpm", clamp=True), 1),
        (DEFAULT, 5),
        (DEFAULT, 10),
    ],
    "mbr": [(DEFAULT, 1), (DEFAULT, 5), (DEFAULT, 10)],
}


def main(argv: list[str]) -> None:
    args = parse(argv, {"checkpoint": "shipped", "teacher": "shipped", "n": "64", "settings": "all", "out": ""})
    if args["settings"] not in SETTINGS:
        fail(f"unknown settings {args['settings']!r}; choose {', '.join(SETTINGS)}")
    ckpt = resolve_checkpoint(args["checkpoint"])
    model, tok, diffusion = from_pretrained(ckpt)
    teacher = ARLM.load(resolve_asset(args["teacher"], "teacher"))
    n = number(args, "n", minimum=1)
    ref_ppl = teacher.perplexity(reference_sentences(n))
    rows = []
    for s, mbr in SETTINGS[args["settings"]]:
        t0 = time.perf_counter()
        sents = generate(model, tok, diffusion, n, s, seed=0, progress=False, mbr=mbr)
        secs = time.perf_counter() - t0
        ppl = teacher.perplexity(sents)
        rows.append({"sampler": s.sampler, "steps": s.steps, "clamp": s.clamp, "variance": s.variance,
                     "eta": s.eta, "mbr": mbr, **summarise(ppl, ref_ppl), "distinct": round(len(set(sents)) / n, 3),
                     "sentences_per_s": round(n / secs, 2), "example": sents[0]})
        print(json.dumps(rows[-1]), flush=True)
    out = {"checkpoint": args["checkpoint"], "teacher": args["teacher"], "n": n, "threads": torch.get_num_threads(),
           "references": {"median_ppl": round(statistics.median(ref_ppl), 2), "p90_ppl": round(threshold(ref_ppl), 2)},
           "rows": rows}
    name = "sampling_sweep.json" if args["settings"] == "all" else f"sampling_sweep_{args['settings']}.json"
    # beside a trained run's model; for the shipped model (inside the package) under runs/shipped/
    path = Path(args["out"]) if args["out"] else Path("runs/shipped" if args["checkpoint"].startswith("shipped") else ckpt, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    print("\n| sampler | steps | clamp | variance | MBR k | median ppl | mean ppl | fluent share | distinct | sentences/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        var = r["variance"] if r["sampler"] == "ddpm" else f"η={r['eta']}"
        print(f"| {r['sampler']} | {r['steps']} | {r['clamp']} | {var} | {r['mbr']} | {r['median_ppl']} | {r['mean_ppl']} | "
              f"{r['fluent_share']} | {r['distinct']} | {r['sentences_per_s']} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    run_script(main)
