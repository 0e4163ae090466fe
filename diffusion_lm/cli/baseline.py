"""diffusion-lm baseline: FUDGE or PPLM on the base AR LM, with generate's targets and JSONL rows."""
from __future__ import annotations

from omegaconf import OmegaConf

from ..config import build
from ..errors import UserError
from ..io import check_output_file, write_jsonl
from ..pipelines.baselines import METHODS, BaselinePipeline
from ..pipelines.text import targets_from_file
from ..sharding import gather_rows, parse_shard, tag_rows


def main(cfg, command: str = "") -> int:
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    check_output_file(cfg.output, "output")  # before any work
    shard = parse_shard(cfg.shard)
    pipe = BaselinePipeline.from_pretrained(cfg.method, cfg.lm, cfg.attribute_model, build(cfg, cfg.method),
                                            device=cfg.device)
    target = OmegaConf.to_container(cfg.target) if OmegaConf.is_config(cfg.target) else cfg.target
    targets = targets_from_file(cfg.task, cfg.targets, cfg.limit) if cfg.targets is not None else None
    several = targets is not None and len(targets) > 1

    def show(batch):
        for g in batch:
            print(f"[{g.target}] {g.text}" if several else g.text)

    out = pipe.generate(cfg.task, target, targets=targets, n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size,
                        on_batch=show, shard=shard)
    rows = tag_rows([{"task": cfg.task, "target": g.target, "text": g.text, "system": cfg.system or cfg.method}
                     for g in out], [g.job for g in out], len(targets or [None]) * cfg.n, shard)
    rows = gather_rows(rows)  # under torchrun: every rank's rows, merged, on rank 0 (None elsewhere)
    if cfg.output and rows is not None:
        write_jsonl(cfg.output, rows)
    return 0
