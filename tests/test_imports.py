"""Imports inside minilocal go one way: no module reaches, directly or around a loop, back
to a module that imports it.

The graph is read statically from the AST of every module under ``minilocal/``, so it sees
imports that only run inside a function (``def f(): from .x import y``) as well as
top-level ones, and needs none of the optional packages. Edges (importer -> imported):

* ``import minilocal.a.b`` and ``from minilocal.a import b`` / ``from .a import b``: to
  ``minilocal.a.b`` when that is a module of the package, otherwise (``b`` is a name
  defined in ``minilocal/a/__init__.py``) to the package ``minilocal.a``.
* Importing ``minilocal.a.b`` also runs ``minilocal/a/__init__.py``: an edge to every
  package above the target that is not also above the importer (the importer's own parent
  packages are already being imported when it runs; a name taken from one of them, such
  as ``from . import __version__``, is an edge like any other).
* ``importlib.import_module("minilocal.x")`` with a literal string, and the names the
  package's lazy ``__getattr__`` resolves (``minilocal._LAZY``), count as imports too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import minilocal

ROOT = Path(minilocal.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve_from(importer: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(unresolved: list[str] | None = None) -> dict[str, set[str]]:
    """``{module: {modules it imports}}`` for every module of minilocal (see the docstring).

    Args:
        unresolved: If given, gets ``"importer: target"`` for every import of a minilocal
            module that does not exist (a relative import with one dot too few, a moved
            module).
    """
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    unresolved = [] if unresolved is None else unresolved

    def add(importer: str, target: str) -> None:
        if target not in modules:
            unresolved.append(f"{importer}: {target}")
            return
        if target == importer:
            return
        loading = {importer, *_ancestors(importer)}  # already being imported
        graph[importer].add(target)
        for pkg in _ancestors(target):
            if pkg in modules and pkg not in loading:
                graph[importer].add(pkg)

    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "minilocal" or alias.name.startswith("minilocal."):
                        add(name, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(name, is_package, node)
                if base is None or not (base == "minilocal" or base.startswith("minilocal.")):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    add(name, sub if sub in modules else base)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and node.args[0].value.startswith("minilocal.")
            ):
                add(name, node.args[0].value)
    for target in minilocal._LAZY.values():
        add("minilocal", target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, as one cycle each.

    Returns:
        For each knot, one closed path through it (``[a, b, ..., a]``), sorted.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:  # a shortest loop from the component's first module back to it
        members, start = set(comp), comp[0]
        paths = {start: [start]}
        frontier = [start]
        loop = None
        while frontier and loop is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        loop = paths[v] + [start]
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if loop:
                    break
            frontier = nxt
        cycles.append(loop)
    return sorted(cycles)


def test_no_import_cycle_inside_minilocal():
    graph = import_graph()
    cycles = find_cycles(graph)
    lines = []
    for c in cycles:
        knot = set(c)
        edges = sorted(f"{a} -> {b}" for a in knot for b in graph[a] & knot)
        lines.append(" -> ".join(c) + "  (all imports in this knot: " + "; ".join(edges) + ")")
    assert not cycles, "import cycles (make the lower module stop importing the upper one):\n" + \
        "\n".join(lines)


def test_every_import_of_minilocal_resolves():
    unresolved: list[str] = []
    import_graph(unresolved)
    assert not unresolved, "imports of minilocal modules that do not exist:\n" + "\n".join(
        sorted(set(unresolved)))


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # minilocal.setup() imports book_setup inside the function; the lazy names are edges too
    assert "minilocal.exercises" in graph["minilocal"]
    assert "minilocal.pipeline" in graph["minilocal"]
    # load_dataset imports the shapes world inside the function
    assert "minilocal.toy.world" in graph["minilocal.data"]


def test_the_cycle_finder_finds_planted_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
