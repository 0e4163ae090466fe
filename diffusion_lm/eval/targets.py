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
from pathlib import Path

from ..errors import UserError
from ..text.data import DataConfig, load_e2e
from ..text.io import atomic_write
from .metrics import MR_PATTERN, TASKS, target_text, validate_target
from .trees import labelled_spans, tree_to_string

MIN_WORDS, MAX_WORDS = 10, 40
SEMANTIC_FIELDS = ("name", "eatType", "food", "priceRange", "customer rating", "area", "near")


def parse_mr(mr: str) -> dict[str, str]:
    fields = dict(MR_PATTERN.findall(mr))
    if not fields:
        raise UserError(f"malformed E2E meaning representation: {mr[:60]!r}")
    return fields


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


def build_targets(out_dir: str, n: int = 200, seed: int = 0, parser="shipped",
                  data: DataConfig | None = None) -> dict[str, int]:
    from .oracles import constituency_parser, pos_tagger

    refs = valid_references(data)
    if len(refs) < n:
        raise UserError(f"only {len(refs)} usable E2E valid references, fewer than n={n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for k, task in enumerate(TASKS):
        rng = random.Random(seed * 1000 + k)
        pool = refs
        if task == "compose":  # references that state at least one value verbatim, so both parts can hold
            pool = [(r, m) for r, m in refs if _stated(r, m)]
        picked = rng.sample(pool, min(n, len(pool)))
        records = []
        oracle = constituency_parser(parser) if isinstance(parser, str) else parser
        trees = oracle.parse([r.split() for r, _ in picked]) if task in ("tree", "spans") else None
        for i, (ref, mr) in enumerate(picked):
            rec = {"task": task, "id": i}
            words = ref.split()
            if task == "pos":
                tags = pos_tagger().tag(words)
                rec["target"] = " ".join(tags)
                rec["target_universal"] = " ".join(pos_tagger().to_universal(tags))
            elif task == "tree":
                rec["target"] = tree_to_string(trees[i])
            elif task == "spans":
                spans = sorted(s for s in labelled_spans(trees[i], evalb=False) if s[1] - s[0] + 1 < len(words))
                rec["target"] = list(rng.choice(spans))
            elif task == "semantic":
                fields = [(f, v) for f, v in parse_mr(mr).items() if f in SEMANTIC_FIELDS]
                f, v = rng.choice(fields)
                rec["target"] = f"{f} : {v}"
            elif task == "length":
                rec["target"] = len(words)
            elif task == "compose":
                rec["target"] = {"pos": " ".join(pos_tagger().tag(words)), "semantic": rng.choice(_stated(ref, mr))}
            rec.update(reference=ref, mr=mr)
            records.append(rec)
        atomic_write(out / f"{task}.jsonl", lambda p, rs=records: Path(p).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs), encoding="utf-8"))
        counts[task] = len(records)
    return counts


def _stated(ref: str, mr: str) -> list[str]:
    """The "field : value" targets of an MR whose value the reference states verbatim."""
    from .metrics import semantic_score

    pairs = [f"{f} : {v}" for f, v in parse_mr(mr).items() if f in SEMANTIC_FIELDS]
    return [p for p in pairs if semantic_score(ref, p)]


def read_jsonl(path: str | Path, what: str = "file") -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object")
        rows.append(row)
    return rows


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


__all__ = ["build_targets", "load_targets", "read_jsonl", "valid_references", "parse_mr"]
