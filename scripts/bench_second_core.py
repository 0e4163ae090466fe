"""Two ways to use the second core for guided decoding at a small batch, against torch's own threads.

    python scripts/bench_second_core.py [tasks=semantic,compose,spans,tree] [n=10] [compile=false]
                                        [generate overrides, default: sample=fast classifiers=small]

For each task, on its first n shipped targets (models warm, one untimed target first), sentences/s of
  * `2threads`: one batch of n with two intra-op threads (what bench_control.py measures);
  * `2workers`: two Python threads, each generating half the targets as its own batch with one intra-op thread
    (each batch is seeded on its own, so this is exactly two batches of n/2),
alternated twice. With compile=true it instead times one thread before and after `torch.compile` (inductor,
dynamic shapes) of the denoiser and each classifier's encoder, printing the compilation time. Figures in
docs/experiments/fast_decoding.md ("Using the second core at batch 10").
"""
from __future__ import annotations

import time


def main(argv: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from diffusion_lm.config import build, compose
    from diffusion_lm.eval.metrics import METRICS
    from diffusion_lm.pipelines import DiffusionLMPipeline
    from diffusion_lm.pipelines.text import targets_from_file
    from diffusion_lm.scripting import fail, number, parse

    plain = {"tasks": "semantic,compose,spans,tree", "n": "10", "compile": "false"}
    overrides = [a for a in argv if "=" in a and a.partition("=")[0] not in plain] or ["sample=fast", "classifiers=small"]
    args = parse([a for a in argv if a.partition("=")[0] in plain], plain)
    n = number(args, "n", minimum=2)
    tasks = [t for t in args["tasks"].split(",") if t]
    if not tasks or set(tasks) - set(METRICS):
        fail(f"tasks must be some of {', '.join(METRICS)}, got {args['tasks']!r}")
    if args["compile"] not in ("true", "false"):
        fail(f"compile must be true or false, got {args['compile']!r}")
    cfg = compose("generate", overrides)
    sample, guidance = build(cfg, "sample"), build(cfg, "guidance")
    pipe = DiffusionLMPipeline.from_pretrained("shipped", dict(cfg.classifiers))

    def gen(task, targets, seed=0):
        return pipe.generate(task, targets=targets, batch_size=len(targets), seed=seed, guidance=guidance,
                             sample=sample, progress=False)

    def timed(f) -> float:
        start = time.perf_counter()
        f()
        return n / (time.perf_counter() - start)

    for task in tasks:
        targets = targets_from_file(task, "shipped", n)
        torch.set_num_threads(2)
        gen(task, targets[:1])  # warm-up: classifiers loaded, one-time indexes built
        if args["compile"] == "true":
            torch.set_num_threads(1)
            print(f"{task} eager 1 thread: {timed(lambda: gen(task, targets)):.2f} sentences/s", flush=True)
            pipe.model.forward = torch.compile(pipe.model.forward, dynamic=True)
            for clf in pipe._classifiers.values():
                clf.encoder.forward = torch.compile(clf.encoder.forward, dynamic=True)
            start = time.perf_counter()
            gen(task, targets)
            print(f"{task} compilation + first call: {time.perf_counter() - start:.1f} s", flush=True)
            for _ in range(2):
                print(f"{task} compiled 1 thread: {timed(lambda: gen(task, targets)):.2f} sentences/s", flush=True)
            return
        half = n // 2
        for mode in ("2workers", "2threads", "2workers", "2threads"):
            if mode == "2threads":
                torch.set_num_threads(2)
                rate = timed(lambda: gen(task, targets))
            else:
                torch.set_num_threads(1)
                with ThreadPoolExecutor(2) as ex:
                    rate = timed(lambda: [f.result() for f in (ex.submit(gen, task, targets[:half]),
                                                               ex.submit(gen, task, targets[half:], 1000))])
            print(f"{task} {mode}: {rate:.2f} sentences/s", flush=True)


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
