"""Control targets for the five tasks, derived from E2E valid references by the oracles.

Each task draws its own `n` distinct references (seeded) with 10–40 tokens, so
every target is one a 48-token model can meet, and writes `<task>.jsonl`:

    {"task": "pos", "id": 0, "target": "DT NNP VBZ ...", "target_universal": "DET NOUN VERB ...",
     "reference": "The Eagle is ...", "mr": "name[The Eagle], ..."}

Targets: pos — the oracle's PTB tags of the reference (and the same in the
universal tagset); tree — the oracle's parse; spans — one labelled
constituent of that parse, `[i, j, label]` over word positions (punctuation
included, j inclusive), not the whole sentence; semantic — one `field : value`
of the reference's MR (familyFriendly left out: its yes/no is never written
as such); length — the reference's own length.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import DataConfig, load_e2e
from ..data.e2e import MR_FIELDS, UNSTATED_FIELDS, parse_mr
from ..errors import UserError
from ..io import atomic_write, read_jsonl
from ..tasks.trees import labelled_spans, tree_to_string
from .metrics import TASKS, semantic_score, target_text, validate_target
from .oracles import constituency_parser, pos_tagger

MIN_WORDS, MAX_WORDS = 10, 40
SEMANTIC_FIELDS = tuple(f for f in MR_FIELDS if f not in UNSTATED_FIELDS)


def valid_references(data: DataConfig | None = None) -> list[tuple[str, str]]:
    """(tokenised reference, mr) pairs of E2E valid with MIN_WORDS..MAX_WORDS tokens, distinct, in file order."""
    ds = load_e2e("valid", data)
    seen, out = set(), []
    for mr, text in zip(ds["mr"], ds["text"]):
        n = len(text.split())
        if MIN_WORDS <= n <= MAX_WORDS and text not in seen:
            seen.add(text)
            out.append((text, mr))
    return out


# ---- each task's target, from one reference (its words, MR and oracle parse) --------------------

def _semantic(words, ref, mr, tree, rng) -> dict:
    fields = [(f, v) for f, v in parse_mr(mr).items() if f in SEMANTIC_FIELDS]
    f, v = rng.choice(fields)
    return {"target": f"{f} : {v}"}


def _pos(words, ref, mr, tree, rng) -> dict:
    tags = pos_tagger().tag(words)
    return {"target": " ".join(tags), "target_universal": " ".join(pos_tagger().to_universal(tags))}


def _tree(words, ref, mr, tree, rng) -> dict:
    return {"target": tree_to_string(tree)}


def _spans(words, ref, mr, tree, rng) -> dict:
    spans = sorted(s for s in labelled_spans(tree, evalb=False) if s[1] - s[0] + 1 < len(words))
    return {"target": list(rng.choice(spans))}


def _length(words, ref, mr, tree, rng) -> dict:
    return {"target": len(words)}


def _compose(words, ref, mr, tree, rng) -> dict:
    return {"target": {"pos": " ".join(pos_tagger().tag(words)), "semantic": rng.choice(_stated(ref, mr))}}


@dataclass(frozen=True)
class _Recipe:
    derive: Callable  # (words, reference, mr, oracle tree or None, rng) -> the record's target fields
    parsed: bool = False  # needs the oracle's parse of the reference
    usable: Callable[[str, str], bool] | None = None  # which references can carry this task's target


RECIPES = {"semantic": _Recipe(_semantic), "pos": _Recipe(_pos), "tree": _Recipe(_tree, parsed=True),
           "spans": _Recipe(_spans, parsed=True), "length": _Recipe(_length),
           # references that state at least one value verbatim, so both parts can hold
           "compose": _Recipe(_compose, usable=lambda ref, mr: bool(_stated(ref, mr)))}


def build_targets(out_dir: str, n: int = 200, seed: int = 0, parser="shipped",
                  data: DataConfig | None = None) -> dict[str, int]:
    refs = valid_references(data)
    if len(refs) < n:
        raise UserError(f"only {len(refs)} usable E2E valid references, fewer than n={n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for k, task in enumerate(TASKS):
        recipe = RECIPES[task]
        rng = random.Random(seed * 1000 + k)
        pool = refs if recipe.usable is None else [(r, m) for r, m in refs if recipe.usable(r, m)]
        picked = rng.sample(pool, min(n, len(pool)))
        records = []
        oracle = constituency_parser(parser) if isinstance(parser, str) else parser
        trees = oracle.parse([r.split() for r, _ in picked]) if recipe.parsed else [None] * len(picked)
        for i, (ref, mr) in enumerate(picked):
            rec = {"task": task, "id": i, **recipe.derive(ref.split(), ref, mr, trees[i], rng)}
            rec.update(reference=ref, mr=mr)
            records.append(rec)
        atomic_write(out / f"{task}.jsonl", lambda p, rs=records: Path(p).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs), encoding="utf-8"))
        counts[task] = len(records)
    return counts


def _stated(ref: str, mr: str) -> list[str]:
    """The "field : value" targets of an MR whose value the reference states verbatim."""
    pairs = [f"{f} : {v}" for f, v in parse_mr(mr).items() if f in SEMANTIC_FIELDS]
    return [p for p in pairs if semantic_score(ref, p)]


def load_targets(targets_dir: str | Path) -> dict[str, list[dict]]:
    """The targets of every task found in targets_dir (pos.jsonl, tree.jsonl, ...)."""
    folder = Path(targets_dir)
    if not folder.is_dir():
        raise UserError(f"targets folder not found: {folder}")
    found = {t: read_jsonl(folder / f"{t}.jsonl", "targets") for t in TASKS if (folder / f"{t}.jsonl").is_file()}
    if not found:
        raise UserError(f"no target files (<task>.jsonl for {', '.join(TASKS)}) in {folder}")
    for task, recs in found.items():
        for n, rec in enumerate(recs, 1):
            if "target" not in rec or not str(rec.get("reference", "")).split():
                raise UserError(f"{folder / task}.jsonl row {n}: needs 'target' and a non-empty 'reference'")
            try:
                validate_target(task, target_text(task, rec["target"]), len(rec["reference"].split()))
            except UserError as e:
                raise UserError(f"{folder / task}.jsonl row {n}: {e}") from None
    return found


__all__ = ["build_targets", "load_targets", "valid_references", "parse_mr"]
