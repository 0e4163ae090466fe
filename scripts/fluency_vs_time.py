"""Fluency per CPU-minute: teacher-LM perplexity of samples from each snapshot of a run.

    python scripts/fluency_vs_time.py [run=runs/cpu] [teacher=shipped] [n=64] [steps=200]
    python scripts/fluency_vs_time.py compare=shipped,docs/fluency_cpu_h192.json out=docs/fluency_compare.png [x=minutes|step]

Reads <run>/snapshots/step*/ (written when run.snapshot_every is set) and the
final model in <run>, samples n sentences from each (seed 0), scores them with
the teacher LM, and writes <run>/fluency.json and <run>/fluency.png (median and
mean per-sentence perplexity against training minutes, with E2E valid
references as the line to reach; each point also keeps `fluent_share`, the share
of samples no less fluent than 90% of the references, and the samples' distinct-1/2 and self-BLEU,
whose references' values sit beside the references' perplexities). With compare=, it samples nothing: it draws
the median curves of runs already scored (run folders, or fluency JSON files
kept elsewhere, such as docs/, or `shipped`, whose manifest keeps its curve) on one PNG, each labelled by its denoiser's
shape and parameter count, against training minutes or, with x=step, training steps (the fair axis
for runs timed on machines of different speeds).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from diffusion_lm.assets import resolve_asset, resolve_checkpoint
from diffusion_lm.lm import ARLM
from diffusion_lm.text import SampleConfig, from_pretrained, generate
from diffusion_lm.scripting import fail, number, parse, run_script
from diffusion_lm.eval.diversity import diversity
from diffusion_lm.eval.fluency import reference_sentences, summarise, threshold


def main(argv: list[str]) -> None:
    args = parse(argv, {"run": "runs/cpu", "teacher": "shipped", "n": "64", "steps": "200", "compare": "", "out": "",
                        "x": "minutes"})
    if args["compare"]:
        if args["x"] not in ("minutes", "step"):
            fail(f"x must be minutes or step, not {args['x']!r}")
        _compare([Path(r) for r in args["compare"].split(",")], Path(args["out"] or "fluency_compare.png"), args["x"])
        return
    run, n, steps = Path(args["run"]), number(args, "n", minimum=1), number(args, "steps", minimum=1)
    if not (run / "config.json").is_file():
        fail(f"no trained run in {run} (config.json missing)")
    teacher = ARLM.load(resolve_asset(args["teacher"], "teacher"))
    refs = reference_sentences(n)
    ref_ppl = teacher.perplexity(refs)
    points = []
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    dirs = sorted((run / "snapshots").glob("step*")) + [run]
    for d in dirs:
        if d == run:
            minutes = summary.get("train_minutes")
            step = summary.get("steps")
        else:
            prog = json.loads((d / "progress.json").read_text())
            minutes, step = prog["elapsed_s"] / 60, prog["step"]
        model, tok, diffusion = from_pretrained(d)
        sents = generate(model, tok, diffusion, n, SampleConfig(steps=steps), seed=0, progress=False)
        ppl = teacher.perplexity(sents)
        points.append({"step": step, "minutes": round(minutes, 2) if minutes else None,
                       **summarise(ppl, ref_ppl), **_diversity(sents), "example": sents[0]})
        print(json.dumps(points[-1]), flush=True)
    model_cfg = json.loads((run / "config.json").read_text())
    result = {"run": str(run), "n": n, "sampling_steps": steps, "teacher": args["teacher"],
              "model": {k: model_cfg.get(k) for k in ("layers", "hidden", "emb_dim")},
              "t_sampling": _t_sampling(run),
              "parameters": summary.get("parameters"),
              "references": {"median_ppl": round(statistics.median(ref_ppl), 2),
                             "mean_ppl": round(statistics.mean(ref_ppl), 2),
                             "p90_ppl": round(threshold(ref_ppl), 2), **_diversity(refs)},
              "points": points}
    (run / "fluency.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, run / "fluency.png")
    print(json.dumps(result["references"]))


def _diversity(sents: list[str]) -> dict:
    return {k: round(v, 1) for k, v in diversity(sents).items()} if len(sents) > 1 else {}


def _t_sampling(run: Path) -> str:
    cfg = run / "train_config.json"
    return json.loads(cfg.read_text())["optim"].get("t_sampling", "uniform") if cfg.is_file() else "uniform"


def _plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in result["points"] if p["minutes"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["minutes"] for p in pts], [p["median_ppl"] for p in pts], "o-", label="samples, median")
    ax.plot([p["minutes"] for p in pts], [p["mean_ppl"] for p in pts], "s--", label="samples, mean", alpha=0.6)
    ax.axhline(result["references"]["median_ppl"], color="gray", ls=":", label="E2E valid references, median")
    ax.set_yscale("log")
    ax.set_xlabel("training time on this CPU (minutes)")
    ax.set_ylabel("teacher-LM perplexity (lower is more fluent)")
    ax.set_title(f"Fluency per CPU-minute ({result['n']} samples, {result['sampling_steps']} steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _scored(run: Path) -> dict:
    """The fluency curve of a run folder, a fluency JSON file, or a shipped model (its manifest keeps the
    curve), with the denoiser's shape and parameter count filled in from beside it where the curve lacks them."""
    if run.suffix == ".json":
        if not run.is_file():
            fail(f"{run} not found")
        return json.loads(run.read_text())
    folder = Path(resolve_checkpoint(str(run)))
    manifest = folder / "manifest.json"
    if manifest.is_file() and "fluency" in (m := json.loads(manifest.read_text())):
        result, summary, name = m["fluency"], m.get("summary") or {}, f"shipped {folder.name}"
    elif (folder / "fluency.json").is_file():
        result, name = json.loads((folder / "fluency.json").read_text()), str(folder)
        summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    else:
        fail(f"{folder}/fluency.json not found; score the run first with run={folder}")
    return {"run": name, "model": json.loads((folder / "config.json").read_text()),
            "parameters": summary.get("parameters"), **result}


def _compare(runs: list[Path], png: Path, x: str = "minutes") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ref = None
    for run in runs:
        result = _scored(run)
        model, params = result["model"], result.get("parameters")
        pts = [p for p in result["points"] if p[x] is not None]
        name = Path(result["run"]).name
        size = f", {params / 1e6:.1f}M" if params else ""
        warped = ", warped t" if result.get("t_sampling") == "warped" else ""
        label = f"{name}: {model['layers']} x {model['hidden']}{size}{warped} (final {pts[-1]['median_ppl']:.0f})"
        ax.plot([p[x] for p in pts], [p["median_ppl"] for p in pts], "o-", label=label)
        ref = result["references"]["median_ppl"]
    ax.axhline(ref, color="gray", ls=":", label="E2E valid references")
    ax.set_yscale("log")
    ax.set_xlabel("training time on this CPU (minutes)" if x == "minutes" else "training steps")
    ax.set_ylabel("teacher-LM perplexity of samples (median)")
    ax.set_title("Fluency per CPU-minute" if x == "minutes" else "Fluency per training step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    print(f"wrote {png}")


if __name__ == "__main__":
    torch.manual_seed(0)
    run_script(main)
