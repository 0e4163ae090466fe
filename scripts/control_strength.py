"""Control success and fluency against the guidance strength λ, for one task.

    python scripts/control_strength.py task=pos limit=50 strengths=0,0.5,1,2,4,8 [generate overrides, e.g. sample.steps=50]

For each λ: the generate pipeline on the first `limit` shipped targets, then
the task's success metric and the teacher LM's perplexity of the sentences.
Writes runs/control_strength/<task>.json and docs/control_strength_<task>.png
(ctrl ↑ and lm ↓ against λ). λ = 0 is the frozen model with only the hard
constraints a target implies (length for pos and tree).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    from diffusion_lm.config import build, compose
    from diffusion_lm.io import write_jsonl
    from diffusion_lm.pipelines import DiffusionLMPipeline
    from diffusion_lm.pipelines.text import targets_from_file
    from diffusion_lm.eval.metrics import METRICS, target_text
    from diffusion_lm.lm import ARLM
    from diffusion_lm.assets import resolve_asset

    from diffusion_lm.scripting import fail, number

    bare = [a for a in argv if "=" not in a]
    if bare:
        fail(f"expected key=value arguments, got {bare[0]!r}")
    args = dict(a.split("=", 1) for a in argv)
    task = args.pop("task", "pos")
    if task not in METRICS:
        fail(f"unknown task {task!r}; choose {', '.join(METRICS)}")
    limit = number({"limit": args.pop("limit", "50")}, "limit", minimum=1)
    try:
        strengths = [float(s) for s in args.pop("strengths", "0,0.5,1,2,4,8").split(",")]
    except ValueError:
        fail("strengths must be numbers separated by commas, e.g. strengths=0,2,10,50")
    out_dir = Path(args.pop("out_dir", "runs/control_strength"))
    extra = [f"{k}={v}" for k, v in args.items()]
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = ARLM.load(resolve_asset("shipped", "teacher"))
    cfg = compose("generate", [f"task={task}", *extra])
    pipe = DiffusionLMPipeline.from_pretrained(cfg.checkpoint, dict(cfg.classifiers), device=cfg.device)
    targets = targets_from_file(task, "shipped", limit)
    points = []
    for s in strengths:
        path = out_dir / f"{task}_lambda{s:g}.jsonl"
        start = time.time()
        made = pipe.generate(task, targets=targets, n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size,
                             select=cfg.select, strength=s, guidance=build(cfg, "guidance"),
                             sample=build(cfg, "sample"), length_shape=cfg.length_shape)
        seconds = time.time() - start
        rows = [{"task": task, "target": g.target, "text": g.text, "system": cfg.system} for g in made]
        write_jsonl(path, rows)
        texts = [r["text"] for r in rows]
        ctrl = METRICS[task]().compute(predictions=texts, references=[target_text(task, r["target"]) for r in rows])
        lm = teacher.perplexity(texts)
        points.append({"strength": s, "ctrl": round(ctrl["success"], 2), "lm": round(statistics.fmean(lm), 2),
                       "lm_median": round(statistics.median(lm), 2), "n": len(rows),
                       "sentences_per_s": round(len(rows) / seconds, 3), "example": texts[0]})
        print(json.dumps(points[-1]), flush=True)
    result = {"task": task, "limit": limit, "overrides": extra, "points": points,
              "command": "python scripts/control_strength.py " + " ".join(argv)}
    (out_dir / f"{task}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, ROOT / "docs" / f"control_strength_{task}.png")


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    xs = [p["strength"] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [p["ctrl"] for p in pts], "o-", color="tab:blue")
    ax.set_xlabel("guidance strength λ")
    ax.set_ylabel(f"{result['task']} control success (%) ↑", color="tab:blue")
    ax.set_xscale("symlog", linthresh=0.5)
    ax2 = ax.twinx()
    ax2.plot(xs, [p["lm"] for p in pts], "s--", color="tab:red")
    ax2.set_ylabel("teacher LM perplexity (mean) ↓", color="tab:red")
    ax2.set_yscale("log")
    ax.set_title(f"{result['task']} control vs. λ ({result['limit']} targets, cpu preset)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"written {png}")


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
