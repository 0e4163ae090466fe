"""Control, fluency and speed of guided decoding against its settings (steps, K, guidance schedule, ...).

    python scripts/decoding_sweep.py tasks=pos,tree limit=50 \
        configs="sample.steps=200 guidance.updates=3; sample.steps=50; sample.steps=20" \
        [x=sample.steps] [out=runs/decoding_sweep/sweep.json] [png=runs/decoding_sweep/sweep.png]
    python scripts/decoding_sweep.py merge=runs/a/sweep.json,runs/b/sweep.json x=speed out=docs/merged.json

Each config (separated by `;`) is a list of `diffusion-lm generate` overrides. For every task and config
it runs the generate pipeline on the first `limit` shipped targets in one batch (or in batches of `batch`;
the models loaded before the clock starts), then scores the sentences with the task's oracle metric (ctrl ↑) and
the teacher LM (lm ↓, mean per-sentence perplexity), as `diffusion-lm evaluate` does. Writes the points
as JSON and a PNG of ctrl, lm and sentences/s against the override named by `x`, one line per setting
of the other overrides, a panel row per task. `x=speed` plots ctrl and lm against sentences/s instead, one
labelled point per setting (the trade-off). `merge=` runs nothing: it joins sweeps already written (runs
side by side, say) into one JSON and PNG.
"""
from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from pathlib import Path


def _overrides(config: str) -> list[str]:
    return [w for w in config.split() if w]


def main(argv: list[str]) -> None:
    import torch

    from diffusion_lm.assets import resolve_asset
    from diffusion_lm.config import build, compose
    from diffusion_lm.eval.metrics import METRICS, target_text
    from diffusion_lm.io import write_jsonl
    from diffusion_lm.lm import ARLM
    from diffusion_lm.pipelines import DiffusionLMPipeline
    from diffusion_lm.pipelines.text import targets_from_file
    from diffusion_lm.scripting import fail, number, parse

    args = parse(argv, {"tasks": "pos,tree", "limit": "50", "x": "sample.steps", "threads": "0",
                        "configs": "sample.steps=200; sample.steps=50; sample.steps=20",
                        "out": "runs/decoding_sweep/sweep.json", "png": "", "merge": "", "batch": "0"})
    if args["merge"]:
        _merge([Path(f) for f in args["merge"].split(",") if f], args["x"], Path(args["out"]), args["png"])
        return
    limit = number(args, "limit", minimum=1)
    batch = number(args, "batch", minimum=0) or limit  # sentences per batch; 0 = all `limit` in one
    if number(args, "threads", minimum=0):
        torch.set_num_threads(number(args, "threads"))
    tasks = [t for t in args["tasks"].split(",") if t]
    if not tasks or set(tasks) - set(METRICS):
        fail(f"tasks must be some of {', '.join(METRICS)}, got {args['tasks']!r}")
    configs = [_overrides(c) for c in args["configs"].split(";") if c.strip()]
    if not configs:
        fail("configs is empty: give generate overrides separated by ';'")
    for c in configs:
        bad = next((w for w in c if "=" not in w), None)
        if bad:
            fail(f"config word {bad!r} is not a key=value override")
        compose("generate", c)  # a bad override fails here, before anything runs
    out = Path(args["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    teacher = ARLM.load(resolve_asset("shipped", "teacher"))
    pipe = DiffusionLMPipeline.from_pretrained("shipped")
    points = []
    for task in tasks:
        targets = targets_from_file(task, "shipped", limit)
        for c in configs:
            cfg = compose("generate", [f"task={task}", *c])
            if dict(cfg.classifiers) != pipe.classifier_paths:  # classifiers.pos=<folder>: another tagger, say
                pipe = DiffusionLMPipeline(pipe.model, pipe.tokenizer, pipe.diffusion, dict(cfg.classifiers),
                                           pipe.device)
            pipe.classifiers_for(task, cfg.length_shape)  # loaded before the clock starts
            start = time.time()
            made = pipe.generate(task, targets=targets, seed=cfg.seed, batch_size=batch, select=cfg.select,
                                 guidance=build(cfg, "guidance"), sample=build(cfg, "sample"),
                                 length_shape=cfg.length_shape, progress=False)
            seconds = time.time() - start
            texts = [g.text for g in made]
            ctrl = METRICS[task]().compute(predictions=texts, references=[target_text(task, g.target) for g in made])["scores"]
            lm = teacher.perplexity(texts)
            name = " ".join(c)
            write_jsonl(out.parent / f"{task}-{name.replace(' ', '_').replace('/', '-')}.jsonl",
                        [{"task": task, "target": g.target, "text": g.text, "system": name} for g in made])
            points.append({"task": task, "config": c, "ctrl": round(statistics.fmean(ctrl), 2),
                           "lm": round(statistics.fmean(lm), 2), "lm_median": round(statistics.median(lm), 2),
                           "sentences": len(texts), "batch": batch, "seconds": round(seconds, 2),
                           "sentences_per_s": round(len(texts) / seconds, 3), "threads": torch.get_num_threads()})
            print(json.dumps(points[-1]), flush=True)
    out.write_text(json.dumps(points, indent=2) + "\n")
    png = Path(args["png"] or out.with_suffix(".png"))
    plot(points, args["x"], png)
    print(f"written: {out}, {png}")


def _merge(files: list[Path], x_key: str, out: Path, png: str) -> None:
    from diffusion_lm.scripting import fail

    points = []
    for f in files:
        try:
            got = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            fail(f"merge: cannot read sweep {f}: {e}")
        if not isinstance(got, list) or not all(isinstance(p, dict) and {"task", "config", "ctrl", "lm",
                                                                         "sentences_per_s"} <= p.keys() for p in got):
            fail(f"merge: {f} is not a decoding_sweep.py output (a list of points)")
        points += got
    if not points:
        fail("merge: no sweep files given")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(points, indent=2) + "\n")
    png_path = Path(png or out.with_suffix(".png"))
    plot(points, x_key, png_path)
    print(f"written: {out}, {png_path}")


def _plot_speed(points: list[dict], png: Path) -> None:
    """ctrl and lm against sentences/s, one labelled point per task and setting."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    tasks = list(dict.fromkeys(p["task"] for p in points))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(13, 4.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        pts = [p for p in points if p["task"] == task]
        for ax, key, title in zip(row, ("ctrl", "lm"), ("ctrl ↑ (%)", "lm ↓ (teacher ppl)")):
            ax.scatter([p["sentences_per_s"] for p in pts], [p[key] for p in pts])
            for p in pts:  # the overrides, shortened: sample.steps=50 -> steps=50
                label = " ".join(w.split(".", 1)[-1] if "=" in w.split(".", 1)[-1] else w for w in p["config"])
                ax.annotate(label or "defaults", (p["sentences_per_s"], p[key]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
            ax.set_title(f"{task}: {title} against sentences/s")
            speeds = [p["sentences_per_s"] for p in pts]
            if max(speeds) > 3 * min(speeds):  # a log axis where the speeds span a wide range
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("sentences/s ↑" + (" (log)" if ax.get_xscale() == "log" else ""))
            ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def plot(points: list[dict], x_key: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x_key == "speed":
        return _plot_speed(points, png)
    tasks = list(dict.fromkeys(p["task"] for p in points))
    fig, axes = plt.subplots(len(tasks), 3, figsize=(13, 3.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        lines = defaultdict(list)
        for p in points:
            if p["task"] != task:
                continue
            kv = dict(w.split("=", 1) for w in p["config"])
            x = kv.pop(x_key, None)
            try:
                x = float(x)
            except (TypeError, ValueError):
                x = float("nan")
            lines[" ".join(f"{k.split('.')[-1]}={v}" for k, v in kv.items()) or f"{x_key} only"].append((x, p))
        for label, pts in lines.items():
            pts.sort(key=lambda q: q[0])
            xs = [q[0] for q in pts]
            for ax, key in zip(row, ("ctrl", "lm", "sentences_per_s")):
                ax.plot(xs, [q[1][key] for q in pts], marker="o", label=label)
        for ax, key in zip(row, ("ctrl ↑ (%)", "lm ↓ (teacher ppl)", "sentences/s ↑")):
            ax.set_title(f"{task}: {key}")
            ax.set_xlabel(x_key)
            ax.set_xscale("log")
            ticks = sorted({float(dict(w.split("=", 1) for w in p["config"]).get(x_key, "nan")) for p in points})
            ax.set_xticks([v for v in ticks if v == v], [f"{v:g}" for v in ticks if v == v])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
