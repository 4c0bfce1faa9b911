"""Measure the import structure of the project's packages, reading the source only (``ast``; nothing is imported).

Prints the project imports that run up the layers, the import cycles between project modules, the imports inside
functions (project ones by module, and all of them), and the largest class and function::

    python tools/import_layers.py            # the figures
    python tools/import_layers.py --list     # and every upward import and in-function import, one a line

The layers, lowest first (a module imports only from lower layers and its own group; groups of one layer do not
import each other):

0. ``utils.core``: errors, atomic file I/O, the run lock, hooks, runtime, metrics, hashing, the name lists
1. ``datasets`` and ``models``
2. ``kd_methods``
3. ``utils`` (the run: cli, engine, run directory, checkpoints, resume, provenance)
4. ``utils.sweep`` and ``utils.mfh_experiments`` (the applications)
5. the entry points: ``utils/__init__.py`` (``utils.main``), the scripts, ``tools/``

``tests/test_layers.py`` asserts these rules with the same functions.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "datasets", "models", "kd_methods")

#: (group, layer, module prefixes); the first group whose prefix matches a module name is its group
GROUPS = (
    ("entry", 5, ("utils",)),  # the package itself (utils/__init__.py): exact match only, see group_of
    ("core", 0, ("utils.core",)),
    ("sweep", 4, ("utils.sweep",)),
    ("mfh", 4, ("utils.mfh_experiments",)),
    ("run", 3, ("utils",)),
    ("methods", 2, ("kd_methods",)),
    ("models", 1, ("models",)),
    ("data", 1, ("datasets",)),
)
#: the foundation's modules where they lay before utils/core/ existed (main at effa2f2), so the tool measures a
#: checkout of either layout the same way
FOUNDATION_BEFORE = ("utils.errors", "utils.atomic", "utils.hooks", "utils.runtime", "utils.metrics", "utils.names",
                     "utils.data_digest", "utils.script", "utils.health")
LAYER = {name: layer for name, layer, _ in GROUPS}


def group_of(module: str) -> str | None:
    """The layer group of a project module (``None`` outside the packages)."""
    if module == "utils":
        return "entry"
    if module in FOUNDATION_BEFORE:
        return "core"
    for name, _layer, prefixes in GROUPS[1:]:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    return None


@dataclass(frozen=True)
class Import:
    source: str  #: the importing module
    target: str  #: the imported project module (or a third-party/stdlib top name)
    line: int
    in_function: bool
    project: bool
    name: str = ""  #: the module named in the statement, in full (``torch.utils.tensorboard``)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict) -> str | None:
    """The longest project module that ``name`` (dotted) is or lies inside."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[Import] = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    target = _resolve(alias.name, modules)
                    out.append(Import(module, target or alias.name.split(".")[0], child.lineno, in_function,
                                      target is not None, alias.name))
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against the package
                    base = module.split(".")
                    package = base if path.name == "__init__.py" else base[:-1]
                    package = package[:len(package) - child.level + 1]
                    name = ".".join(package + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                for alias in child.names:
                    target = _resolve(f"{name}.{alias.name}", modules) or _resolve(name, modules)
                    out.append(Import(module, target or name.split(".")[0], child.lineno, in_function,
                                      target is not None, name))
            visit(child, nested)

    visit(tree, False)
    return out


def all_imports(root: Path = ROOT) -> list[Import]:
    modules = project_modules(root)
    return [imp for module, path in modules.items() for imp in imports_of(module, path, modules)]


def upward(imports: list[Import]) -> list[Import]:
    """Project imports from a group into a group of the same or a higher layer."""
    out = []
    for imp in imports:
        if not imp.project:
            continue
        source, target = group_of(imp.source), group_of(imp.target)
        if source == target or source == "entry":
            continue
        if LAYER[target] >= LAYER[source]:
            out.append(imp)
    return out


def statements(imports: list[Import]) -> list[Import]:
    """One entry per import statement (``from m import a, b`` is one)."""
    seen, out = set(), []
    for imp in imports:
        if (imp.source, imp.line) not in seen:
            seen.add((imp.source, imp.line))
            out.append(imp)
    return out


def cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module in the graph of project imports (Tarjan)."""
    graph: dict[str, set] = {}
    for imp in imports:
        if imp.project and imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def strong(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                strong(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            strong(node)
    return sorted(out)


def largest(root: Path = ROOT) -> tuple[tuple, tuple]:
    """``((lines, methods, "module.Class"), (lines, "module.function"))`` of the largest class and function."""
    best_class, best_function = (0, 0, ""), (0, "")
    for module, path in project_modules(root).items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef):
                methods = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in node.body)
                best_class = max(best_class, (lines, methods, f"{module}.{node.name}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                best_function = max(best_function, (lines, f"{module}.{node.name}"))
    return best_class, best_function


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="list every upward and in-function import")
    args = parser.parse_args(argv)
    imports = all_imports()
    up = statements(upward(imports))
    circles = cycles(imports)
    inside = statements([imp for imp in imports if imp.in_function])
    inside_project = [imp for imp in inside if imp.project]
    print(f"modules: {len(project_modules())}")
    print(f"upward project imports (statements): {len(up)}")
    print(f"import cycles: {len(circles)}" + "".join(f"\n  {' <-> '.join(c)}" for c in circles))
    print(f"import statements inside functions: {len(inside)} ({len(inside_project)} of project modules)")
    by_module: dict[str, int] = {}
    for imp in inside_project:
        by_module[imp.source] = by_module.get(imp.source, 0) + 1
    for module, count in sorted(by_module.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {count:3d}  {module}")
    (class_lines, methods, class_name), (function_lines, function_name) = largest()
    print(f"largest class: {class_name}, {class_lines} lines, {methods} methods")
    print(f"largest function: {function_name}, {function_lines} lines")
    if args.list:
        for imp in up:
            print(f"up: {imp.source}:{imp.line} -> {imp.target} ({group_of(imp.source)} -> {group_of(imp.target)})")
        for imp in inside:
            print(f"in function: {imp.source}:{imp.line} -> {imp.target}")


if __name__ == "__main__":
    main()
