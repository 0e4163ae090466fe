"""diffusion-lm evaluate: score generations from any system into the paper's Table 2."""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

from ..errors import UserError
from ..eval.report import check_generations, honesty_rows, read_throughput, score, write_report
from ..eval.parser import check_parser
from ..eval.targets import load_targets
from ..io import check_output_dir, read_jsonl
from ..lm import ARLM
from ..sharding import merge_parts
from ..assets import resolve_asset


def main(cfg, command: str = "") -> int:
    given = OmegaConf.to_container(cfg.generations) if OmegaConf.is_config(cfg.generations) else cfg.generations
    paths = [given] if isinstance(given, str) else given if isinstance(given, list) else None
    if paths is None or not all(isinstance(p, str) and p.strip() for p in paths):
        raise UserError(f"generations must be a JSONL file or a list of them, e.g. generations=[runs/gen/pos.jsonl], "
                        f"got {given!r}")
    if not paths and not cfg.honesty_rows:
        raise UserError("nothing to evaluate: give generations=[file.jsonl,...] or honesty_rows=true")
    check_output_dir(cfg.out_dir, "out_dir")  # before any work
    rows = []
    # the files of a sharded run (generate shard=i/N) merge back into one process's rows, in its order
    for p, part in merge_parts([(str(p), read_jsonl(p, "generations file", allow_empty=False)) for p in paths]):
        rows += check_generations(part, source=p)
    speed = read_throughput(cfg.throughput) if cfg.throughput else None
    targets_dir = resolve_asset(cfg.targets, "targets")
    if cfg.honesty_rows:
        rows += honesty_rows(load_targets(targets_dir))
    teacher_dir, parser = resolve_asset(cfg.teacher, "teacher"), resolve_asset(cfg.parser, "parser")
    check_parser(parser)  # a folder of ours or a benepar name, before any scoring
    teacher = ARLM.load(teacher_dir)
    start = time.time()
    result = score(rows, teacher, parser=parser)
    shown = {k: f"shipped ({Path(v).name})" if cfg[k] == "shipped" else v
             for k, v in (("targets", targets_dir), ("teacher", teacher_dir), ("parser", parser))}
    meta = {"generations": paths, **shown,
            "seconds": round(time.time() - start, 1), **({"throughput": speed} if speed else {})}
    md, js = write_report(result, meta, cfg.out_dir)
    print(md.read_text(encoding="utf-8"))
    print(f"written: {md}, {js}")
    return 0
