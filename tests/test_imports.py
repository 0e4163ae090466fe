"""The package import graph, read from the source with ast (function-local imports included).

Nodes: each subpackage of diffusion_lm (core, text, eval, ...), the top-level
classifiers package, and `floor` for diffusion_lm's top-level modules (io,
assets, config, errors, training, ...). `python -m diffusion_lm` (__main__)
is the CLI's entry point and counts as cli.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("diffusion_lm", "classifiers")
FLOOR = {"floor", "data", "tasks"}  # what every package may import


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
            if "assets" not in p.relative_to(ROOT).parts}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module of ours that `path` (module `name`) imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        out |= {t for t in targets if t.split(".")[0] in PACKAGES}
    return out


def node_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "classifiers":
        return "classifiers"
    if len(parts) == 1:
        return "floor"
    if parts[1] == "__main__":
        return "cli"
    return parts[1] if (ROOT / "diffusion_lm" / parts[1] / "__init__.py").is_file() else "floor"


def package_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    """{node: nodes it imports} and, per edge, the `module -> module` imports behind it."""
    modules = our_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, path in modules.items():
        a = node_of(name)
        graph[a]
        for target in imports_of(path, name, set(modules)):
            b = node_of(target)
            if a != b:
                graph[a].add(b)
                why[(a, b)].append(f"{name} -> {target}")
    return dict(graph), dict(why)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_cycles_between_packages():
    graph, why = package_graph()
    found = cycles(graph)
    detail = [f"{a} -> {b}: {why[(a, b)][:3]}" for comp in found for a in comp for b in sorted(graph[a]) if b in comp]
    assert not found, f"import cycles between packages {found}:\n" + "\n".join(detail)


def test_no_cycles_between_modules():
    """Not even inside a package (fudge <-> pplm and oracles <-> parser were hidden in function bodies)."""
    modules = our_modules()
    graph = {n: {m for m in imports_of(p, n, set(modules)) if m in modules and m != n} for n, p in modules.items()}
    assert not cycles(graph), cycles(graph)


def test_nothing_imports_the_cli():
    _, why = package_graph()
    into_cli = {edge: lines for edge, lines in why.items() if edge[1] == "cli"}
    assert not into_cli, into_cli


def test_layers():
    """docs/architecture.md's import rules, package by package."""
    graph, why = package_graph()
    rules = {"core": set(), **{n: {"core"} | FLOOR for n in FLOOR}, "text": {"core"} | FLOOR,
             "eval": FLOOR | {"lm"}, "classifiers": {"core", "text", "eval"} | FLOOR,
             "baselines": FLOOR | {"lm", "eval"}, "pipelines": set(graph) - {"cli"}}
    for node, allowed in rules.items():
        extra = graph.get(node, set()) - allowed - {node}
        assert not extra, {(node, b): why[(node, b)] for b in extra}
    # classifiers use eval for its oracles alone (the labels they train on)
    to_eval = [line for line in why.get(("classifiers", "eval"), []) if not line.endswith(" -> diffusion_lm.eval.oracles")]
    assert not to_eval, to_eval


def test_scripts_do_not_import_the_cli():
    offenders = set()
    known = set(our_modules())
    for path in sorted((ROOT / "scripts").glob("*.py")):
        if any(m == "diffusion_lm.cli" or m.startswith("diffusion_lm.cli.")
               for m in imports_of(path, f"scripts.{path.stem}", known)):
            offenders.add(path.name)
    assert not offenders, sorted(offenders)


def test_the_graph_reader_sees_function_local_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from ..tasks import get_task\n\ndef g():\n    from .oracles import pos_tagger\n    import classifiers.io\n")
    assert imports_of(f, "diffusion_lm.eval.m", {"diffusion_lm.eval.oracles"}) == {
        "diffusion_lm.tasks", "diffusion_lm.eval.oracles", "classifiers.io"}
    assert [node_of(m) for m in ("diffusion_lm.io", "diffusion_lm.tasks.text", "classifiers.pos",
                                 "diffusion_lm.__main__")] == ["floor", "tasks", "classifiers", "cli"]
