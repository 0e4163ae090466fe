"""Controlled-decoding throughput on this machine: sentences per second for each system and task.

    python scripts/bench_control.py [sentences=20] [steps=200] [updates=3] [threads=0] [tasks=...]
                                    [systems=diffusion-lm,fudge,pplm] [out=runs/bench_control.json]

Runs `diffusion-lm generate` (Diffusion-LM) and `diffusion-lm baseline`
(FUDGE, PPLM) on the first `sentences` shipped targets of each task (one
batch) with the shipped models, and prints sentences/s. For Diffusion-LM it
shows the number of diffusion steps and K (Adagrad updates per step); `none`
is the same sampler with no control, the floor to compare with. PPLM runs
only the task it has an attribute model for (semantic). `diffusion-lm
evaluate throughput=<out>` puts these figures into Table 2.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    from diffusion_lm.cli.main import run

    from diffusion_lm.cli.script_args import fail, number, parse

    args = parse(argv, {"sentences": "20", "steps": "200", "updates": "3", "threads": "0", "out": "runs/bench_control.json",
                        "tasks": "none,length,pos,tree,spans,semantic,compose", "systems": "diffusion-lm,fudge,pplm"})
    n, steps, updates = number(args, "sentences", minimum=1), number(args, "steps", minimum=1), number(args, "updates", minimum=0)
    if number(args, "threads", minimum=0):
        torch.set_num_threads(number(args, "threads"))
    tasks = args["tasks"].split(",")
    systems = args["systems"].split(",")
    from diffusion_lm.eval.metrics import METRICS

    if set(tasks) - {"none", *METRICS} or set(systems) - {"diffusion-lm", "fudge", "pplm"}:
        fail(f"unknown task or system in tasks={args['tasks']} systems={args['systems']}")
    out = Path("runs/bench_control")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for system in systems:
        for task in tasks:
            if system == "pplm" and task != "semantic" or system != "diffusion-lm" and task == "none":
                continue
            src = ["targets=shipped", f"limit={n}"] if task != "compose" else [
                'target={pos: "DT NNP VBZ DT JJ NN NN IN DT NN NN .", semantic: "food : Italian"}', f"n={n}"]
            written = f"output={out / f'{system}-{task}.jsonl'}"
            if system == "diffusion-lm":
                argv_ = (["sample", f"n={n}", f"batch_size={n}"] if task == "none" else
                         ["generate", f"task={task}", *src, f"batch_size={n}", f"guidance.updates={updates}", written])
                argv_.append(f"sample.steps={steps}")
            else:
                argv_ = ["baseline", f"method={system}", f"task={task}", *src, f"batch_size={n}", written]
            start = time.time()
            code = run(argv_)
            seconds = time.time() - start
            if code:
                sys.exit(code)
            diffusion = system == "diffusion-lm"
            rows.append({"system": system, "task": task, "sentences": n, "steps": steps if diffusion else None,
                         "K": (0 if task == "none" else updates) if diffusion else None,  # length steers with the tagger too
                         "seconds": round(seconds, 2), "sentences_per_s": round(n / seconds, 3),
                         "threads": torch.get_num_threads()})
            print(json.dumps(rows[-1]), flush=True)
    path = Path(args["out"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| system | task | diffusion steps | K | sentences/s |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['system']} | {r['task']} | {r['steps'] or '–'} | {r['K'] if r['K'] is not None else '–'} "
              f"| {r['sentences_per_s']:.2f} |")


if __name__ == "__main__":
    from diffusion_lm.cli.script_args import run_script

    run_script(main)
