"""Controlled-decoding throughput on this machine: sentences per second for each system and task.

    python scripts/bench_control.py [sentences=20] [steps=200] [updates=3] [threads=0] [tasks=...]
                                    [systems=diffusion-lm,fudge,pplm] [out=runs/bench_control.json]

Runs the pipelines behind `diffusion-lm generate` (Diffusion-LM) and `diffusion-lm baseline`
(FUDGE, PPLM) on the first `sentences` shipped targets of each task (one
batch) with the shipped models, and prints sentences/s (decoding only: the models are loaded
before the clock starts). For Diffusion-LM it
shows the number of diffusion steps and K (Adagrad updates per step); `none`
is the same sampler with no control, the floor to compare with. PPLM runs
only the task it has an attribute model for (semantic). `diffusion-lm
evaluate throughput=<out>` puts these figures into Table 2.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    from diffusion_lm.scripting import fail, number, parse

    args = parse(argv, {"sentences": "20", "steps": "200", "updates": "3", "threads": "0", "out": "runs/bench_control.json",
                        "tasks": "none,length,pos,tree,spans,semantic,compose", "systems": "diffusion-lm,fudge,pplm"})
    n, steps, updates = number(args, "sentences", minimum=1), number(args, "steps", minimum=1), number(args, "updates", minimum=0)
    if number(args, "threads", minimum=0):
        torch.set_num_threads(number(args, "threads"))
    tasks = args["tasks"].split(",")
    systems = args["systems"].split(",")
    from dataclasses import replace

    from diffusion_lm.core.guidance import GuidanceConfig
    from diffusion_lm.eval.metrics import METRICS
    from diffusion_lm.io import write_jsonl
    from diffusion_lm.pipelines import BaselinePipeline, DiffusionLMPipeline
    from diffusion_lm.pipelines.text import targets_from_file
    from diffusion_lm.text import SampleConfig

    if set(tasks) - {"none", *METRICS} or set(systems) - {"diffusion-lm", "fudge", "pplm"}:
        fail(f"unknown task or system in tasks={args['tasks']} systems={args['systems']}")
    out = Path("runs/bench_control")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    sample_cfg, guidance = SampleConfig(steps=steps), GuidanceConfig(updates=updates)
    compose = {"pos": "DT NNP VBZ DT JJ NN NN IN DT NN NN .", "semantic": "food : Italian"}
    for system in systems:
        pipe = (DiffusionLMPipeline.from_pretrained("shipped") if system == "diffusion-lm"
                else BaselinePipeline.from_pretrained(system))
        for task in tasks:
            if system == "pplm" and task != "semantic" or system != "diffusion-lm" and task == "none":
                continue
            source = {"targets": targets_from_file(task, "shipped", n)} if task not in ("compose", "none") else (
                {"target": compose, "n": n} if task == "compose" else {})
            start = time.time()
            if task == "none":
                pipe.sample(n, batch_size=n, sample=replace(sample_cfg), progress=False)
                made = []
            elif system == "diffusion-lm":
                made = pipe.generate(task, **source, batch_size=n, guidance=guidance, sample=sample_cfg, progress=False)
            else:
                made = pipe.generate(task, **source, batch_size=n)
            seconds = time.time() - start
            if made:
                write_jsonl(out / f"{system}-{task}.jsonl",
                            [{"task": task, "target": g.target, "text": g.text, "system": system} for g in made])
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
    from diffusion_lm.scripting import run_script

    run_script(main)
