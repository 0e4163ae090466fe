"""diffusion-lm generate: controlled generation with a frozen Diffusion-LM (DiffusionLMPipeline)."""
from __future__ import annotations

import sys

from omegaconf import OmegaConf

from ..config import build, container
from ..io import check_output_file, write_jsonl
from ..pipelines.text import DiffusionLMPipeline, targets_from_file
from ..sharding import gather_rows, parse_shard, tag_rows
from ..text.trajectory import TrajectoryRecorder, check_trajectory


def main(cfg, command: str = "") -> int:
    check_output_file(cfg.output, "output")  # every output path, before any work
    shard = parse_shard(cfg.shard)
    if cfg.trajectory:
        check_trajectory(cfg.trajectory)
    pipe = DiffusionLMPipeline.from_pretrained(cfg.checkpoint, dict(cfg.classifiers), device=cfg.device)
    pipe.set_fluency(cfg.fluency_lm, container(cfg.lm_guidance_t))
    target = OmegaConf.to_container(cfg.target) if OmegaConf.is_config(cfg.target) else cfg.target
    targets = None
    if cfg.targets is not None:
        targets = targets_from_file(cfg.task, cfg.targets, cfg.limit)
    recorder = TrajectoryRecorder(pipe.model, pipe.tokenizer) if cfg.trajectory else None
    several = targets is not None and len(targets) > 1

    def show(batch):
        for g in batch:
            print(f"[{g.target}] {g.text}" if several else g.text)

    out = pipe.generate(cfg.task, target, targets=targets, n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size,
                        select=cfg.select, guidance=build(cfg, "guidance"), sample=build(cfg, "sample"),
                        length_shape=cfg.length_shape, left=cfg.left, right=cfg.right, middle=cfg.middle,
                        lm_guidance=cfg.lm_guidance, lm_rerank=cfg.lm_rerank, callback=recorder, on_batch=show, shard=shard)
    rows = tag_rows([{"task": cfg.task, "target": g.target, "text": g.text, "system": cfg.system} for g in out],
                    [g.job for g in out], len(targets or [None]) * cfg.n, shard)
    rows = gather_rows(rows)  # under torchrun: every rank's rows, merged, on rank 0 (None elsewhere)
    if cfg.output and rows is not None:
        write_jsonl(cfg.output, rows)
    if recorder is not None:
        first = targets[0] if targets else (target if cfg.task != "infill" else f"{cfg.left} ___ {cfg.right}".strip())
        txt, png = recorder.write(cfg.trajectory, title=f"{cfg.task} target: {first}")
        print(f"trajectory of the first sample: {txt}, {png}", file=sys.stderr)
    return 0
