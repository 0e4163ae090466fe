"""Controlled-decoding throughput on this machine: sentences per second for each system and task.

    python scripts/bench_control.py [sentences=10] [batches=10,64] [threads=0] [tasks=...]
                                    [systems=diffusion-lm,fudge,pplm] [out=runs/bench_control.json]
                                    [generate overrides for Diffusion-LM, e.g. sample=fast or sample.steps=50]

For each batch size B in `batches` it runs the pipelines behind `diffusion-lm generate` (Diffusion-LM,
with generate's defaults unless overridden) and `diffusion-lm baseline` (FUDGE, PPLM) on the first B
shipped targets of each task, in one batch, with the shipped models, and prints sentences/s (decoding
only: each system and task first runs once on one target, untimed, so models are loaded and one-time
indexes built before the clock starts) and, per task, the ratio of Diffusion-LM's rate
to FUDGE's, measured in the same run. `sentences=N` is the old spelling of `batches=N`. For
Diffusion-LM it shows the number of diffusion steps and K (Adagrad updates per step); `none` is the
same sampler with no control, the floor to compare with. PPLM runs only the task it has an attribute
model for (semantic). `diffusion-lm evaluate throughput=<out>` puts the first batch size's figures
into Table 2.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    from diffusion_lm.scripting import fail, number, parse

    plain = {"sentences": "", "batches": "10,64", "threads": "0", "out": "runs/bench_control.json",
             "tasks": "none,length,pos,tree,spans,semantic,compose", "systems": "diffusion-lm,fudge,pplm"}
    overrides = [a for a in argv if "=" in a and a.partition("=")[0] not in plain]  # generate's keys
    args = parse([a for a in argv if a not in overrides], plain)
    batches = args["sentences"] or args["batches"]
    try:
        sizes = [int(b) for b in batches.split(",")]
    except ValueError:
        fail(f"batches must be integers separated by commas, got {batches!r}")
    if not sizes or min(sizes) < 1:
        fail(f"batch sizes must be at least 1, got {batches!r}")
    if number(args, "threads", minimum=0):
        torch.set_num_threads(number(args, "threads"))
    tasks = args["tasks"].split(",")
    systems = args["systems"].split(",")
    from diffusion_lm.config import build, compose
    from diffusion_lm.eval.metrics import METRICS
    from diffusion_lm.io import write_jsonl
    from diffusion_lm.pipelines import BaselinePipeline, DiffusionLMPipeline
    from diffusion_lm.pipelines.text import targets_from_file

    if set(tasks) - {"none", *METRICS} or set(systems) - {"diffusion-lm", "fudge", "pplm"}:
        fail(f"unknown task or system in tasks={args['tasks']} systems={args['systems']}")
    cfg = compose("generate", overrides)  # generate's defaults, with the overrides (a bad one fails here)
    sample_cfg, guidance = build(cfg, "sample"), build(cfg, "guidance")
    out = Path("runs/bench_control")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for system in systems:
        pipe = (DiffusionLMPipeline.from_pretrained("shipped", dict(cfg.classifiers)) if system == "diffusion-lm"
                else BaselinePipeline.from_pretrained(system))
        for n in sizes:
            for task in tasks:
                if system == "pplm" and task != "semantic" or system != "diffusion-lm" and task == "none":
                    continue
                source = {"targets": targets_from_file(task, "shipped", n)} if task != "none" else {}
                if task != "none":  # warm-up on one target: classifiers loaded, one-time indexes built
                    one = {"targets": source["targets"][:1]}
                    if system == "diffusion-lm":
                        pipe.generate(task, **one, guidance=guidance, sample=replace(sample_cfg, steps=2), progress=False)
                    else:
                        pipe.generate(task, **one)
                start = time.time()
                if task == "none":
                    pipe.sample(n, batch_size=n, sample=sample_cfg, progress=False)
                    made = []
                elif system == "diffusion-lm":
                    made = pipe.generate(task, **source, batch_size=n, guidance=guidance, sample=sample_cfg,
                                         progress=False)
                else:
                    made = pipe.generate(task, **source, batch_size=n)
                seconds = time.time() - start
                if made:
                    write_jsonl(out / f"{system}-{task}-{n}.jsonl",
                                [{"task": task, "target": g.target, "text": g.text, "system": system} for g in made])
                diffusion = system == "diffusion-lm"
                rows.append({"system": system, "task": task, "sentences": n,
                             "steps": sample_cfg.steps if diffusion else None,
                             "K": (0 if task == "none" else guidance.updates) if diffusion else None,
                             "exit_patience": sample_cfg.exit_patience if diffusion else None,
                             "seconds": round(seconds, 2), "sentences_per_s": round(n / seconds, 3),
                             "threads": torch.get_num_threads()})
                print(json.dumps(rows[-1]), flush=True)
    path = Path(args["out"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| system | task | batch | diffusion steps | K | sentences/s |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['system']} | {r['task']} | {r['sentences']} | {r['steps'] or '–'} "
              f"| {r['K'] if r['K'] is not None else '–'} | {r['sentences_per_s']:.2f} |")
    rate = {(r["system"], r["task"], r["sentences"]): r["sentences_per_s"] for r in rows}
    pairs = [(t, n) for n in sizes for t in tasks if ("diffusion-lm", t, n) in rate and ("fudge", t, n) in rate]
    if pairs:
        print("\n| task | batch | Diffusion-LM / FUDGE |\n| --- | --- | --- |")
        for t, n in pairs:
            print(f"| {t} | {n} | {rate[('diffusion-lm', t, n)] / rate[('fudge', t, n)]:.2f} |")


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
