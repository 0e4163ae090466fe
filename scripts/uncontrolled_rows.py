"""The no-control row of Table 2: plain samples scored against every task's targets.

    python scripts/uncontrolled_rows.py [checkpoint=shipped] [n=200] [output=runs/gen/uncontrolled.jsonl]
        [lm_guidance=0] [lm_guidance_t=LO-HI] [select=1 lm_rerank=0] [system="diffusion-lm (no control)"]

Draws n unconditional sentences once (seed 0, the default sampler) and pairs
sentence k with target k of each shipped task, as JSONL rows for `evaluate`
under the system name "diffusion-lm (no control)". Its lm column is the
fluency that "lm ≤ 1.5× uncontrolled" is measured against; its ctrl column is
what the targets give by chance. lm_guidance > 0 lets the base LM steer the samples (over training
timesteps LO..HI); select=K with lm_rerank > 0 keeps, of K draws, the one the base LM scores best: either
gives the "Diffusion-LM + base LM" rows their own floor.
"""
from __future__ import annotations

import json
from pathlib import Path


def main(argv: list[str]) -> None:
    from diffusion_lm.assets import resolve_asset
    from diffusion_lm.eval.targets import load_targets
    from diffusion_lm.pipelines.text import DiffusionLMPipeline

    from diffusion_lm.scripting import fail, number, parse

    args = parse(argv, {"checkpoint": "shipped", "n": "200", "output": "runs/gen/uncontrolled.jsonl",
                        "lm_guidance": "0", "lm_guidance_t": "", "select": "1", "lm_rerank": "0",
                        "system": "diffusion-lm (no control)"})
    n = number(args, "n", minimum=1)
    weight = number(args, "lm_guidance", float, minimum=0)
    select = number(args, "select", minimum=1)
    rerank = number(args, "lm_rerank", float, minimum=0)
    out = Path(args["output"])
    window = args["lm_guidance_t"]
    try:
        t_range = [int(v) for v in window.split("-")] if window else None
    except ValueError:
        fail(f"lm_guidance_t must be LO-HI, got {window!r}")
    pipe = DiffusionLMPipeline.from_pretrained(args["checkpoint"], device="cpu")
    pipe.set_fluency("shipped", t_range)  # plain sampling (no weight, one draw) never loads the base LM
    texts = pipe.sample(n=n, seed=0, batch_size=50, lm_guidance=weight, select=select, lm_rerank=rerank)
    rows = []
    for task, recs in load_targets(resolve_asset("shipped", "targets")).items():
        rows += [{"task": task, "target": r["target"], "text": s, "system": args["system"]}
                 for r, s in zip(recs, texts)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"written {out}: {len(texts)} sentences × {len(rows) // len(texts)} tasks")


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
