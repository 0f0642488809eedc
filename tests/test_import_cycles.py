"""No import cycle in `src/oloraplus`: every package can be read, tested and changed from the bottom up.

The graph is read from the source (ast), not from what an import happens to load, and it counts every
import: at the top of a module, inside a function (a lazy import is a dependency all the same) and under
TYPE_CHECKING. Run alone with `python -m pytest tests/test_import_cycles.py`.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "oloraplus"

Edges = dict[str, dict[str, int]]  # module -> {imported module: first line importing it}


def module_files(root: Path = SRC / PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package (a package is its __init__.py)."""
    files = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an import of `name` runs: itself, or the module that defines it (`pkg.mod.func` -> `pkg.mod`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> Edges:
    """Edges between the package's own modules, from every import statement anywhere in each file."""
    graph: Edges = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]  # `from pkg import mod`
            else:
                continue
            for name in names:
                target = _resolve(name, modules) if name.split(".")[0] == PACKAGE else None
                if target is not None and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def strongly_connected(graph: Edges) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit on deep graphs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def a_cycle(graph: Edges, component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module: start, ..., start."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in graph[node]:
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    return component


def describe(graph: Edges, modules: dict[str, Path], component: list[str], base: Path) -> str:
    """'a (a.py:12) -> b (b.py:30) -> a': each hop with the line of the import that makes it."""
    cycle = a_cycle(graph, component)
    hops = [f"{m} ({modules[m].relative_to(base).as_posix()}:{graph[m][n]})" for m, n in zip(cycle, cycle[1:])]
    return " -> ".join([*hops, cycle[-1]]) + f"  [component: {', '.join(component)}]"


def find_cycles(root: Path = SRC / PACKAGE) -> list[str]:
    modules = module_files(root)
    graph = import_graph(modules)
    return [describe(graph, modules, c, root.parent) for c in strongly_connected(graph) if len(c) > 1]


def test_no_import_cycle_in_the_package():
    cycles = find_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_finds_a_lazy_cycle_and_names_its_imports(tmp_path):
    """The check itself: a cycle closed by an import inside a function, three modules long, is found."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from oloraplus.sub import b\n")
    (package / "sub" / "b.py").write_text("import oloraplus.c as c\n")
    (package / "c.py").write_text("def f():\n    from oloraplus.a import thing\n")
    (package / "d.py").write_text("from oloraplus import a, c\n")  # depends on the cycle, not in it
    cycles = find_cycles(package)
    assert len(cycles) == 1
    assert cycles[0].startswith("oloraplus.a (oloraplus/a.py:1) -> oloraplus.sub.b (oloraplus/sub/b.py:1) -> "
                                "oloraplus.c (oloraplus/c.py:2) -> oloraplus.a")
    assert "oloraplus.d" not in cycles[0]


@pytest.mark.parametrize("source", ["from . import a\n", "from .a import thing\n"])
def test_relative_imports_count_too(tmp_path, source):
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from oloraplus import b\n")
    (package / "b.py").write_text(source)
    assert len(find_cycles(package)) == 1
