"""pefthub's import graph: no module-level import cycle anywhere, and none at all (imports
inside functions included) between the ``pefthub`` command (``pefthub.cli*``) and the grid
(``pefthub.grid*``): the command dispatches to the grid, so the grid must not need the command.

Imports are read from the source (``ast``), not executed."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pefthub"

Graph = dict[str, set[str]]


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements run when the module is imported (``module_level``), or all of them.
    ``if TYPE_CHECKING:`` blocks never run, so they are skipped either way."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue  # runs only when called
        stack.extend(ast.iter_child_nodes(node))
    return found


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The pefthub modules an import statement loads (the most specific existing module)."""

    def existing(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    if isinstance(node, ast.Import):
        return {m for alias in node.names if alias.name.split(".")[0] == "pefthub" and (m := existing(alias.name))}
    if node.level:
        base = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    if source.split(".")[0] != "pefthub":
        return set()
    return {m for alias in node.names if (m := existing(f"{source}.{alias.name}"))}


def import_graph(module_level: bool) -> Graph:
    """Module -> the pefthub modules it imports (at module level, or anywhere)."""
    modules = _module_names()
    graph: Graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set().union(*(_targets(n, name, is_package, modules) for n in _import_nodes(tree, module_level)))
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: Graph, nodes: set[str] | None = None) -> list[str] | None:
    """One cycle of ``graph`` restricted to ``nodes`` (all by default), as a path that returns to
    its start, or None (iterative depth-first search)."""
    nodes = set(graph) if nodes is None else nodes
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(nodes):
        if root in state:
            continue
        path, iterators = [root], [iter(sorted(graph[root] & nodes))]
        state[root] = 1
        while path:
            child = next(iterators[-1], None)
            if child is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                iterators.append(iter(sorted(graph[child] & nodes)))
    return None


def reachable(graph: Graph, start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for child in graph[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def test_the_graph_reader_and_cycle_finder_on_small_cases():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    tree = ast.parse(
        "from pefthub import y\nimport pefthub.x.z\nimport json\nif TYPE_CHECKING:\n    import pefthub.w\n"
        "def f():\n    from . import y\n"
    )
    modules = {name: PACKAGE for name in ("pefthub", "pefthub.w", "pefthub.x", "pefthub.y")}
    read = lambda level: sorted(sorted(_targets(n, "pefthub.x", False, modules)) for n in _import_nodes(tree, level))  # noqa: E731
    assert read(True) == [[], ["pefthub.x"], ["pefthub.y"]]
    assert read(False) == [[], ["pefthub.x"], ["pefthub.y"], ["pefthub.y"]]


def test_no_module_level_import_cycle():
    graph = import_graph(module_level=True)
    assert {"pefthub.cli", "pefthub.grid", "pefthub.adapters.hyper"} <= set(graph)
    assert "pefthub.adapters.hyper_shared" in graph["pefthub.adapters.hyper"]
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_the_command_and_the_grid_do_not_import_each_other_in_a_cycle():
    graph = import_graph(module_level=False)
    cli = {m for m in graph if m == "pefthub.cli" or m.startswith("pefthub.cli_")}
    grid = {m for m in graph if m == "pefthub.grid" or m.startswith("pefthub.grid_")}
    assert "pefthub.grid" in graph["pefthub.cli"] and "pefthub.cli_lightning" in reachable(graph, "pefthub.grid_spec")
    both_ways = sorted((c, g) for c in cli for g in grid & reachable(graph, c) if c in reachable(graph, g))
    assert not both_ways, f"cli and grid modules that import each other (imports in functions included): {both_ways}"
