"""diffusion-lm sample: print sentences from a trained Diffusion-LM."""
from __future__ import annotations

import sys

from ..config import build, container
from ..io import check_output_file, write_jsonl
from ..pipelines.text import DiffusionLMPipeline
from ..text.trajectory import TrajectoryRecorder, check_trajectory


def main(cfg, command: str = "") -> int:
    check_output_file(cfg.output, "output")  # every output path, before any work
    if cfg.trajectory:
        check_trajectory(cfg.trajectory)
    sample_cfg = build(cfg, "sample")
    pipe = DiffusionLMPipeline.from_pretrained(cfg.checkpoint, device=cfg.device)
    pipe.set_fluency(cfg.fluency_lm, container(cfg.lm_guidance_t))
    recorder = TrajectoryRecorder(pipe.model, pipe.tokenizer) if cfg.trajectory else None
    sentences = pipe.sample(cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, mbr=cfg.mbr, select=cfg.select,
                            lm_guidance=cfg.lm_guidance, lm_rerank=cfg.lm_rerank, guidance=build(cfg, "guidance"),
                            sample=sample_cfg, callback=recorder)
    for s in sentences:
        print(s)
    if cfg.output:
        write_jsonl(cfg.output, [{"system": "diffusion-lm", "text": s} for s in sentences])
    if recorder is not None:
        txt, png = recorder.write(cfg.trajectory)
        print(f"trajectory of the first sample: {txt}, {png}", file=sys.stderr)
    return 0
