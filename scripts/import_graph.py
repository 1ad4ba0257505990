"""ferkit's import graph from the source (nothing is imported): circles, imports that run up a layer, imports inside
functions, and each package's line count. The layers are the architecture of docs/architecture.md; tests/
test_architecture.py holds the code to them.

    python scripts/import_graph.py [--src src/ferkit] [--json]
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own layer or a lower one; `ferkit` (the package facade) and the CLI sit on
# top. Inside a layer, packages are siblings and must not import each other in a circle.
LAYERS: list[tuple[str, ...]] = [
    ("ferkit.errors", "ferkit.utils"),
    ("ferkit.images", "ferkit.metadata", "ferkit.views", "ferkit.runs", "ferkit.scoring"),
    ("ferkit.data",),
    ("ferkit.models", "ferkit.inference"),
    ("ferkit.training", "ferkit.integrations"),
    ("ferkit.evaluation", "ferkit.service"),
    ("ferkit.cli", "ferkit.__main__", "ferkit"),
]
# Optional libraries imported inside functions on purpose (heavy, or absent from the inference install).
HEAVY = ("torch", "sklearn", "matplotlib", "fastapi", "uvicorn", "onnx", "onnxruntime", "optuna", "ray", "pyspark",
         "safetensors", "scipy", "pandas", "starlette", "pydantic", "pydantic_settings", "httpx", "onnxscript")


def layer_of(module: str) -> int:
    best = (-1, len(LAYERS) - 1)
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best[0]:
                best = (len(n), i)
    return best[1]


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def read_imports(src: Path) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """module -> [{target, line, inside_function, type_only}], and module -> line count."""
    known = {module_name(p, src): p for p in src.rglob("*.py")}
    edges: dict[str, list[dict]] = defaultdict(list)
    lines = {}
    for mod, path in known.items():
        text = path.read_text(encoding="utf-8")
        lines[mod] = text.count("\n")
        tree = ast.parse(text)
        is_pkg = path.name == "__init__.py"

        def visit(node: ast.AST, in_func: bool, type_only: bool, mod: str = mod, is_pkg: bool = is_pkg) -> None:
            for child in ast.iter_child_nodes(node):
                f = in_func or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                t = type_only or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = _resolve(child, mod, is_pkg)
                    # `from ferkit.data import audit` imports the module ferkit.data.audit
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
                for t_ in targets:
                    edges[mod].append({"target": t_, "line": child.lineno, "inside_function": f, "type_only": t})
                visit(child, f, t)

        visit(tree, False, False)
    return edges, lines


def ferkit_target(target: str, known: set[str]) -> str | None:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
            strong(v)
    return out


def report(src: Path) -> dict:
    edges, lines = read_imports(src)
    known = set(lines)
    graph: dict[str, set[str]] = defaultdict(set)
    upward, hidden = [], []
    for mod, items in edges.items():
        for e in items:
            tgt = ferkit_target(e["target"], known) if e["target"].startswith("ferkit") else None
            if tgt is None or tgt == mod or mod.startswith(tgt + "."):
                continue  # outside ferkit, or a module's own package
            if not e["type_only"]:
                graph[mod].add(tgt)
            if layer_of(tgt) > layer_of(mod):
                upward.append(f"{mod}:{e['line']} -> {tgt}")
            if e["inside_function"]:
                hidden.append(f"{mod}:{e['line']} -> {tgt}")
    packages: dict[str, int] = defaultdict(int)
    for mod, n in lines.items():
        parts = mod.split(".")
        packages[".".join(parts[:2]) if len(parts) >= 2 and (src / parts[1]).is_dir() else mod] += n
    return {"modules": len(known), "lines": sum(lines.values()), "packages": dict(sorted(packages.items())),
            "cycles": cycles(graph), "upward": sorted(upward), "inside_functions": sorted(hidden)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT / "src" / "ferkit"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = report(Path(args.src))
    if args.json:
        print(json.dumps(r, indent=1))
        return
    print(f"{r['modules']} modules, {r['lines']} lines")
    for p, n in r["packages"].items():
        print(f"  {p:32s} {n:6d}")
    print(f"circles: {len(r['cycles'])}")
    for c in r["cycles"]:
        print("  " + " <-> ".join(c))
    print(f"imports that run up a layer: {len(r['upward'])}")
    for u in r["upward"]:
        print("  " + u)
    print(f"ferkit imports inside functions: {len(r['inside_functions'])}")


if __name__ == "__main__":
    main()
