"""diffusion-lm evaluate-image: oracle accuracy, CLIP score and Fréchet distance of the image UNet across w."""
from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from .. import distributed
from ..config import integer
from ..errors import UserError
from ..image.data import SPLITS, load_shapes
from ..image.evaluate import evaluate
from ..pipelines.image import THRESHOLDS, ImagePipeline, check_guidance, check_rerank_clip


def _list(value, key: str) -> list:
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    value = value if isinstance(value, list) else [value]
    if not value:
        raise UserError(f"{key} must not be empty")
    return value


def _real(split: str, real: int, data_seed: int):
    data = load_shapes(split, real, data_seed)
    return np.asarray(data.with_format("numpy")["image"], dtype=np.uint8), [str(c) for c in data["caption"]]


def main(cfg, command: str = "") -> int:
    n, limit, real, seed, steps, batch_size, data_seed, select = (
        integer(cfg, k, m) for k, m in (("n", 1), ("limit", 1), ("real", 4), ("seed", None), ("steps", 1),
                                        ("batch_size", 1), ("data_seed", None), ("select", 1)))
    guidances = [check_guidance(w, "w") for w in _list(cfg.w, "w")]
    compare_at = None if cfg.compare_at is None else [check_guidance(w, "compare_at") for w in _list(cfg.compare_at, "compare_at")]
    thresholds = None if cfg.thresholds is None else _list(cfg.thresholds, "thresholds")
    for t in thresholds or []:
        if t not in THRESHOLDS:
            raise UserError(f"unknown threshold {t!r}; choose dynamic, static or none")
    if cfg.captions is not None:
        splits = {"custom": ([str(c) for c in _list(cfg.captions, "captions")], *_real("test", real, data_seed))}
    else:
        splits = {}
        for name in _list(cfg.splits, "splits"):
            if name not in SPLITS:
                raise UserError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
            images, captions = _real(name, real, data_seed)
            splits[name] = (list(dict.fromkeys(captions))[:limit], images, captions)
    # under torchrun: the rank's batches (the pipeline refuses a stochastic sampler there, in one line)
    shard = distributed.world() if distributed.world()[1] > 1 else None
    select = select or 1  # null: no reranking (under torchrun the ranks draw the candidates, rank 0 picks)
    rerankers = check_rerank_clip(cfg, select)
    pipe = ImagePipeline.from_pretrained(cfg.unet, cfg.autoencoder, cfg.clip, device=cfg.device)
    pipe.set_reranker(rerankers)
    meta = {"command": command, "unet": cfg.unet, **({"rerank_clip": rerankers} if rerankers else {})}
    result = evaluate(pipe, splits, cfg.out_dir, n=n, guidances=guidances, thresholds=thresholds,
                      compare_at=compare_at, steps=steps, sampler=cfg.sampler, seed=seed, batch_size=batch_size,
                      meta=meta, progress=True, shard=shard, select=select)
    if result is None:  # another rank: rank 0 writes
        return 0
    out = cfg.out_dir
    print(open(f"{out}/report.md", encoding="utf-8").read())
    print(f"written: {out}/report.md, {out}/report.json, {out}/sweep.png and {len(result['rows'])} grids")
    return 0
