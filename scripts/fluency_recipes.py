"""Sampling-time fluency recipes side by side: the base LM as a guidance potential and as a reranker.

    python scripts/fluency_recipes.py [checkpoint=shipped] [n=64] [recipes=plain,guide:1,guide:1:1500-1999,rerank:4]
        [task=] [targets=shipped] [teacher=shipped] [out=runs/fluency_recipes]

Each recipe samples the same n sentences (seed 0, default sampling settings) in one run, one after
the other, and is scored by the teacher (median and mean per-sentence perplexity, fluent share against
as many E2E valid references), by distinct-1/2 and self-BLEU beside the references', and by its
sentences/s on this machine. With task=<pos|semantic|...>, each recipe is that task's guided
generation on the first n shipped targets, and control success is scored too.

Recipes: `plain`; `guide:W[:LO-HI]` (lm_guidance=W, over training timesteps LO..HI); `rerank:K[:B]`
(select=K draws kept by lm_rerank=B, default 1); `guide:W[:LO-HI]+rerank:K[:B]` both.
Writes <out>/recipes.json and <out>/recipes.png (mean teacher perplexity against sentences/s).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from diffusion_lm.assets import resolve_asset
from diffusion_lm.eval.diversity import diversity
from diffusion_lm.eval.fluency import reference_sentences, summarise, threshold
from diffusion_lm.lm import ARLM
from diffusion_lm.pipelines.text import DiffusionLMPipeline
from diffusion_lm.tasks import get_task
from diffusion_lm.scripting import fail, number, parse, run_script


def parse_recipe(spec: str) -> dict:
    out = {"name": spec, "lm_guidance": 0.0, "t_range": None, "select": 1, "lm_rerank": 0.0}
    for part in spec.split("+"):
        kind, *vals = part.split(":")
        try:
            if kind == "plain" and not vals:
                continue
            if kind == "guide" and 1 <= len(vals) <= 2:
                out["lm_guidance"] = float(vals[0])
                if len(vals) == 2:
                    lo, hi = vals[1].split("-")
                    out["t_range"] = [int(lo), int(hi)]
                continue
            if kind == "rerank" and 1 <= len(vals) <= 2:
                out["select"], out["lm_rerank"] = int(vals[0]), float(vals[1]) if len(vals) == 2 else 1.0
                continue
        except ValueError:
            pass
        fail(f"bad recipe {part!r}; expected plain, guide:W[:LO-HI] or rerank:K[:B]")
    return out


def main(argv: list[str]) -> None:
    args = parse(argv, {"checkpoint": "shipped", "n": "64", "recipes": "plain,guide:1,guide:1:1500-1999,rerank:4",
                        "task": "", "targets": "shipped", "teacher": "shipped", "out": "runs/fluency_recipes"})
    n = number(args, "n", minimum=2)
    recipes = [parse_recipe(r) for r in args["recipes"].split(",")]
    pipe = DiffusionLMPipeline.from_pretrained(args["checkpoint"], device="cpu")
    teacher = ARLM.load(resolve_asset(args["teacher"], "teacher"))
    task = args["task"] or None
    targets, refs = _targets_and_references(task, args["targets"], n) if task else (None, reference_sentences(n))
    ref_ppl = teacher.perplexity(refs)
    rows = []
    for r in recipes:
        pipe.set_fluency("shipped", r["t_range"])
        t0 = time.perf_counter()
        kw = dict(select=r["select"], lm_guidance=r["lm_guidance"], lm_rerank=r["lm_rerank"], progress=False)
        if task:
            gens = pipe.generate(task, targets=targets, n=1, batch_size=min(n, 50), **kw)
            texts = [g.text for g in gens]
        else:
            texts = pipe.sample(n=n, seed=0, batch_size=min(n, 64), **kw)
        seconds = time.perf_counter() - t0
        ppl = teacher.perplexity(texts)
        row = {**r, "sentences_per_s": round(len(texts) / seconds, 3), **summarise(ppl, ref_ppl),
               **{k: round(v, 1) for k, v in diversity(texts).items()}, "example": texts[0]}
        if task:
            from diffusion_lm.eval.metrics import METRICS, target_text

            ctrl = METRICS[task]().compute(predictions=texts, references=[target_text(task, t) for t in targets])
            row["ctrl"] = round(ctrl["success"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"checkpoint": args["checkpoint"], "task": task or "uncontrolled", "n": n, "teacher": args["teacher"],
              "references": {"median_ppl": round(statistics.median(ref_ppl), 2),
                             "mean_ppl": round(statistics.mean(ref_ppl), 2), "p90_ppl": round(threshold(ref_ppl), 2),
                             **{k: round(v, 1) for k, v in diversity(refs).items()}},
              "recipes": rows}
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipes.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out / "recipes.png")
    print(json.dumps(result["references"]))


def _targets_and_references(task: str, path: str, n: int) -> tuple[list, list[str]]:
    """The first n targets of a targets file (`shipped`: the package's <task>.jsonl) and their references."""
    from diffusion_lm.io import read_jsonl

    get_task(task)  # an unknown task fails in one line
    if path == "shipped":
        path = f"{resolve_asset('shipped', 'targets')}/{task}.jsonl"
    rows = read_jsonl(path, "targets file", allow_empty=False)[:n]
    for k, r in enumerate(rows, 1):
        if not isinstance(r, dict) or "target" not in r or not isinstance(r.get("reference"), str):
            fail(f"{path} row {k}: needs a target and its reference sentence")
    return [r["target"] for r in rows], [r["reference"] for r in rows]


def _plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in result["recipes"]:
        ax.plot(r["sentences_per_s"], r["mean_ppl"], "o")
        ax.annotate(r["name"], (r["sentences_per_s"], r["mean_ppl"]), fontsize=8, xytext=(4, 3),
                    textcoords="offset points")
    ax.axhline(result["references"]["mean_ppl"], color="gray", ls=":", label="E2E references, mean")
    ax.axhline(1.2 * result["references"]["mean_ppl"], color="gray", ls="--", lw=0.8, label="1.2 × references")
    ax.set_xscale("log")
    ax.set_xlabel("sentences/s on this CPU (log)")
    ax.set_ylabel("mean teacher perplexity (↓)")
    ax.set_title(f"Sampling-time fluency recipes ({result['task']}, n={result['n']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_script(main)
