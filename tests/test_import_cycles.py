"""No import cycles inside the credo package: a static import graph built with `ast` over src/credo.

An edge A -> B means module A imports module B (`import credo.x`, `from credo.x import y`, relative
forms; `from pkg import name` also counts pkg.name when that is a submodule). Importing a submodule
also runs its parent packages' __init__, but that is the normal package pattern, not a cycle, so
parents are not edges. The first test takes module-level imports only (including those under a
module-level if / try); the second also counts imports inside functions, because a lazy import that
closes a cycle only hides it (credo.catalog imported the method packages lazily while every method
module imported its `Entry`: the cycle this test was written for).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import credo

ROOT = Path(credo.__file__).parent


def modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _module_level(stmts):
    for node in stmts:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)):
            for block in (node.body, node.orelse, getattr(node, "finalbody", [])):
                yield from _module_level(block)
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)


def import_graph(*, lazy: bool) -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] if lazy \
            else list(_module_level(tree.body))
        package = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in mods}
                continue
            base = node.module or ""
            if node.level:  # relative: level 1 is this package, 2 its parent, ...
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base in mods:
                edges.add(base)
            edges |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods}
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS, nodes and edges in sorted order)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_the_package():
    graph = import_graph(lazy=False)
    assert {"credo.catalog", "credo.entry", "credo.credit.gae", "credo.train.rl"} <= set(graph)
    assert "credo.entry" in graph["credo.credit.gae"]  # from credo.entry import Entry
    assert "credo.credit.base" in graph["credo.credit.gae"]
    assert graph["credo.entry"] == set()  # the leaf


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("lazy", [False, True], ids=["module_level", "with_function_level"])
def test_no_import_cycles(lazy):
    cycle = find_cycle(import_graph(lazy=lazy))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
