"""Controlled-decoding throughput on this machine: sentences per second for each task.

    python scripts/bench_control.py [sentences=20] [steps=200] [updates=3] [threads=0] [tasks=...]

Runs `diffusion-lm generate` on the first `sentences` shipped targets of
each task (one batch) with the shipped model and classifiers, and prints
sentences/s with the number of diffusion steps and K (Adagrad updates per
step). `none` is the same sampler with no control, the floor to compare with.
Writes runs/bench_control.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    from diffusion_lm.cli.main import run

    args = dict(a.split("=", 1) for a in argv)
    n, steps, updates = int(args.get("sentences", 20)), int(args.get("steps", 200)), int(args.get("updates", 3))
    if int(args.get("threads", 0)):
        torch.set_num_threads(int(args["threads"]))
    tasks = args.get("tasks", "none,length,pos,tree,spans,semantic,compose").split(",")
    out = Path("runs/bench_control")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in tasks:
        if task == "none":
            argv_ = ["sample", f"n={n}", f"batch_size={n}"]
        else:
            src = ["targets=shipped", f"limit={n}"] if task != "compose" else [
                'target={pos: "DT NNP VBZ DT JJ NN NN IN DT NN NN .", semantic: "food : Italian"}', f"n={n}"]
            argv_ = ["generate", f"task={task}", *src, f"batch_size={n}", f"guidance.updates={updates}",
                     f"output={out / (task + '.jsonl')}"]
        start = time.time()
        code = run([*argv_, f"sample.steps={steps}"])
        seconds = time.time() - start
        if code:
            sys.exit(code)
        rows.append({"task": task, "sentences": n, "steps": steps, "K": 0 if task in ("none", "length") else updates,
                     "seconds": round(seconds, 2), "sentences_per_s": round(n / seconds, 3),
                     "threads": torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)
    Path("runs/bench_control.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| task | steps | K | sentences/s |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['task']} | {r['steps']} | {r['K']} | {r['sentences_per_s']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
