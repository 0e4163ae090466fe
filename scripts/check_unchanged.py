"""Behaviour check for refactors: run the user-facing commands with fixed seeds and compare their
sentences and Table-2 figures with the outputs recorded in tests/golden/unchanged.json.

    python scripts/check_unchanged.py            # check (exit 1 and a diff on any change)
    python scripts/check_unchanged.py record     # re-record (only when a change is intended; say why in git)

The commands are the CLI's own (`python -m diffusion_lm ...` in a subprocess), so this checks what a
user sees. It takes a few minutes on a 2-core CPU: tree and spans control are the slow part.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "unchanged.json"
TASKS = ("pos", "tree", "spans", "semantic", "length", "compose")


def commands(work: Path) -> list[tuple[str, list[str], str | None]]:
    """(name, arguments, JSONL file the command writes or None)."""
    out = []
    for task in TASKS:
        f = str(work / f"{task}.jsonl")
        out.append((f"generate {task}", ["generate", f"task={task}", "targets=shipped", "limit=5", f"output={f}"], f))
    out.append(("generate infill", ["generate", "task=infill", "left=The Eagle is", "right=in the city centre .",
                                    "middle=6", "n=2"], None))
    out.append(("sample", ["sample", "n=5"], None))
    f = str(work / "fudge_pos.jsonl")
    out.append(("baseline fudge pos", ["baseline", "method=fudge", "task=pos", "targets=shipped", "limit=5",
                                       f"output={f}"], f))
    return out


def run(args: list[str]) -> str:
    env = dict(os.environ, TQDM_DISABLE="1")
    p = subprocess.run([sys.executable, "-m", "diffusion_lm", *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"`diffusion-lm {' '.join(args)}` failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout


def observe() -> dict:
    seen: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = []
        for name, args, jsonl in commands(work):
            print(f"running: diffusion-lm {' '.join(args)}", file=sys.stderr, flush=True)
            seen[name] = {"stdout": run(args).splitlines()}
            if jsonl:
                files.append(jsonl)
                seen[name]["rows"] = [json.loads(line) for line in Path(jsonl).read_text().splitlines()]
        print("running: diffusion-lm evaluate", file=sys.stderr, flush=True)
        run(["evaluate", f"generations=[{','.join(files)}]", f"out_dir={work / 'eval'}"])
        seen["evaluate"] = json.loads((work / "eval" / "table2.json").read_text())["results"]
    return seen


def diff(old, new, where="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if k not in old or k not in new:
                out.append(f"{where}/{k}: only {'before' if k in old else 'after'}")
            else:
                out += diff(old[k], new[k], f"{where}/{k}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in diff(a, b, f"{where}[{i}]")]
    if isinstance(old, float) and isinstance(new, float) and abs(old - new) <= 1e-6 * max(1.0, abs(old)):
        return []
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "check"
    if mode not in ("check", "record"):
        print("usage: python scripts/check_unchanged.py [check|record]", file=sys.stderr)
        return 2
    seen = observe()
    if mode == "record":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(seen, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"recorded {GOLDEN}")
        return 0
    changes = diff(json.loads(GOLDEN.read_text(encoding="utf-8")), seen)
    for line in changes[:50]:
        print(line)
    print("unchanged" if not changes else f"{len(changes)} differences")
    return 1 if changes else 0


if __name__ == "__main__":
    sys.exit(main())
