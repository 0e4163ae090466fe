"""The Table-2 report: control success (↑) and teacher-LM fluency (↓) per task and system.

Generations come as JSONL rows `{"task", "target", "text", "system"}` from any
system. Two rows keep the harness honest and are always printed: the E2E valid
references scored against their own targets (near 100 on pos, tree, spans and
length by construction) and the same references shuffled across targets (near
chance).
"""
from __future__ import annotations

import json
import random
import statistics
from collections import defaultdict
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write, load_json
from .diversity import diversity
from .metrics import METRICS, TASKS, target_text, validate_target

PAPER = {  # Li et al. 2022, Table 2 (ctrl, lm)
    "Diffusion-LM (paper)": {"semantic": (81.2, 2.55), "pos": (90.0, 5.16), "tree": (86.0, 3.71),
                             "spans": (93.8, 2.53), "length": (99.9, 2.16)},
    "FUDGE (paper)": {"semantic": (69.9, 2.83), "pos": (27.0, 7.96), "tree": (17.9, 3.39),
                      "spans": (54.2, 4.03), "length": (46.9, 3.11)},
    "PPLM (paper)": {"semantic": (9.9, 5.32)},
}
REFERENCES, SHUFFLED = "references (own targets)", "references (shuffled)"


def check_generations(rows: list[dict], source: str = "generations") -> list[dict]:
    """Each row must name a known task, a target and non-empty text; the first bad row is the error."""
    out = []
    for n, row in enumerate(rows, 1):
        where = f"{source} row {n}"
        for key in ("task", "target", "text"):
            if key not in row:
                raise UserError(f"{where}: missing {key!r}")
        if row["task"] not in TASKS:
            raise UserError(f"{where}: unknown task {row['task']!r} (known: {', '.join(TASKS)})")
        if not isinstance(row["text"], str):
            raise UserError(f"{where}: text must be a string, got {row['text']!r:.60}")
        if not row["text"].split():
            raise UserError(f"{where}: empty generation")
        if not isinstance(row.get("system", ""), str):
            raise UserError(f"{where}: system must be a string, got {row['system']!r:.60}")
        target = target_text(row["task"], row["target"])
        try:
            validate_target(row["task"], target)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        out.append({"task": row["task"], "target": target,
                    "text": " ".join(row["text"].split()), "system": row.get("system", "unnamed")})
    return out


def honesty_rows(targets: dict[str, list[dict]], seed: int = 0) -> list[dict]:
    """References against their own targets, and the same references rotated onto other targets."""
    rows = []
    for task, recs in targets.items():
        order = list(range(len(recs)))
        random.Random(seed).shuffle(order)
        moved = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}  # no reference keeps its target
        for i, rec in enumerate(recs):
            t = target_text(task, rec["target"])
            rows.append({"task": task, "target": t, "text": rec["reference"], "system": REFERENCES})
            rows.append({"task": task, "target": t, "text": recs[moved[i]]["reference"], "system": SHUFFLED})
        if "target_universal" in recs[0]:  # pos targets also in the universal tagset
            for i, rec in enumerate(recs):
                rows.append({"task": task, "target": rec["target_universal"], "text": rec["reference"],
                             "system": REFERENCES + ", universal tags"})
    return rows


def _stats(xs: list[float]) -> dict:
    return {"n": len(xs), "mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0}


def score(rows: list[dict], teacher, parser: str = "shipped", progress: bool = True) -> dict:
    """{system: {task: {"ctrl": stats, "lm": stats, "diversity": distinct-1/2 and self-BLEU}}} over all rows
    (diversity where a group has at least two sentences)."""
    from tqdm import tqdm

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["system"], r["task"])].append(r)
    result: dict[str, dict] = defaultdict(dict)
    with tqdm(sorted(groups.items()), desc="evaluate", disable=not progress) as bar:  # closed before any error
        for (system, task), rs in bar:
            metric = METRICS[task](parser=parser)
            ctrl = metric.compute(predictions=[r["text"] for r in rs], references=[r["target"] for r in rs])["scores"]
            lm = teacher.perplexity([r["text"] for r in rs])
            result[system][task] = {"ctrl": _stats(ctrl), "lm": _stats(lm)}
            if len(rs) > 1 and system != SHUFFLED:  # the shuffled rows are the references' own sentences
                result[system][task]["diversity"] = diversity([r["text"] for r in rs])
    return dict(result)


def _cell(entry: dict | None, std: bool) -> str:
    if not entry:
        return "–"
    c, m = entry["ctrl"], entry["lm"]
    if std:
        return f"{c['mean']:.1f} ± {c['std']:.1f} / {m['mean']:.2f} ± {m['std']:.2f} (n={c['n']})"
    return f"{c['mean']:.1f} / {m['mean']:.2f}"


def _diversity_cell(entry: dict | None) -> str:
    d = (entry or {}).get("diversity")
    return f"{d['distinct1']:.1f} / {d['distinct2']:.1f} / {d['self_bleu']:.1f}" if d else "–"


def read_throughput(path: str) -> dict[str, dict[str, float]]:
    """{system: {task: sentences/s}} from scripts/bench_control.py's JSON rows (the first batch size's, where
    the bench ran several)."""
    rows = load_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"system", "task", "sentences_per_s"} <= set(r)
                                             for r in rows):
        raise UserError(f"{path}: expected bench_control.py rows with system, task and sentences_per_s")
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        out[r["system"]].setdefault(r["task"], float(r["sentences_per_s"]))
    return dict(out)


def _speed(per_task: dict[str, float] | None, tasks: list[str]) -> str:
    """Sentences/s over the shown tasks, as if each task decoded the same number of sentences."""
    rates = [per_task[t] for t in tasks if per_task and per_task.get(t)]
    return f"{len(rates) / sum(1 / r for r in rates):.2f}" if rates else "–"


def markdown(result: dict, meta: dict) -> str:
    tasks = [t for t in TASKS if any(t in r for r in result.values())]
    speed = meta.get("throughput") or {}
    head = "| system | " + " | ".join(f"{t} ctrl ↑ / lm ↓" for t in tasks) + " |"
    rule = "| --- " * (len(tasks) + 1) + "|"
    honesty = [s for s in result if s.startswith("references")]
    systems = [s for s in result if s not in honesty]
    lines = [f"# Table 2 on E2E ({meta.get('targets', '')})", "",
             f"ctrl: control success in % (↑); lm: perplexity under the teacher LM `{meta.get('teacher')}` (↓); "
             f"parser oracle `{meta.get('parser')}`."
             + (" sent/s: decoding throughput on this machine over the tasks a system ran (harmonic mean; "
                "per task below), from `scripts/bench_control.py`." if speed else ""), "",
             head[:-1] + ("| sent/s ↑ |" if speed else "|"), rule + (" --- |" if speed else "")]
    for s in systems + honesty:
        cells = " | ".join(_cell(result[s].get(t), False) for t in tasks)
        done = [t for t in tasks if t in result[s]]
        lines.append(f"| {s} | {cells} |" + (f" {_speed(speed.get(s), done)} |" if speed else ""))
    if speed:
        lines += ["", "Decoding throughput, sentences/s per task:", "",
                  "| system | " + " | ".join(tasks) + " |", "| --- " * (len(tasks) + 1) + "|"]
        for s in [s for s in systems if s in speed]:
            lines.append(f"| {s} | " + " | ".join(f"{speed[s][t]:.2f}" if t in speed[s] and t in result[s] else "–"
                                                  for t in tasks) + " |")
    lines += ["", "Paper (Li et al. 2022, Table 2; its own oracles and teacher, so compare shapes, not digits):",
              "", head, rule]
    for s, row in PAPER.items():
        lines.append(f"| {s} | " + " | ".join(f"{row[t][0]} / {row[t][1]}" if t in row else "–" for t in tasks) + " |")
    lines += ["", "Mean ± standard deviation over sentences:", "", head, rule]
    for s in systems + honesty:
        lines.append(f"| {s} | " + " | ".join(_cell(result[s].get(t), True) for t in tasks) + " |")
    shown = [s for s in systems + [REFERENCES] if any("diversity" in e for e in result.get(s, {}).values())]
    if shown:
        lines += ["", "Diversity of each system's sentences per task, distinct-1 ↑ / distinct-2 ↑ / self-BLEU ↓ in % "
                  "(compare with the references' row: the same number of sentences):", "",
                  "| system | " + " | ".join(tasks) + " |", "| --- " * (len(tasks) + 1) + "|"]
        for s in shown:
            lines.append(f"| {s} | " + " | ".join(_diversity_cell(result[s].get(t)) for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: dict, meta: dict, out_dir: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    md, js = out / "table2.md", out / "table2.json"
    text = markdown(result, meta)
    atomic_write(md, lambda p: Path(p).write_text(text, encoding="utf-8"))
    atomic_write(js, lambda p: Path(p).write_text(json.dumps({"meta": meta, "results": result}, indent=2) + "\n"))
    return md, js
