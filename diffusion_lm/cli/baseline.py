"""diffusion-lm baseline: FUDGE or PPLM on the base AR LM, with generate's targets and JSONL rows."""
from __future__ import annotations

from omegaconf import OmegaConf

from ..config import build
from ..errors import UserError
from ..io import check_output_file, write_jsonl
from ..pipelines.baselines import METHODS, BaselinePipeline
from ..pipelines.text import targets_from_file


def main(cfg, command: str = "") -> int:
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    check_output_file(cfg.output, "output")  # before any work
    pipe = BaselinePipeline.from_pretrained(cfg.method, cfg.lm, cfg.attribute_model, build(cfg, cfg.method),
                                            device=cfg.device)
    target = OmegaConf.to_container(cfg.target) if OmegaConf.is_config(cfg.target) else cfg.target
    targets = targets_from_file(cfg.task, cfg.targets, cfg.limit) if cfg.targets is not None else None
    several = targets is not None and len(targets) > 1

    def show(batch):
        for g in batch:
            print(f"[{g.target}] {g.text}" if several else g.text)

    out = pipe.generate(cfg.task, target, targets=targets, n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size,
                        on_batch=show)
    if cfg.output:
        write_jsonl(cfg.output, [{"task": cfg.task, "target": g.target, "text": g.text,
                                  "system": cfg.system or cfg.method} for g in out])
    return 0
