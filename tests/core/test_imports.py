"""No import cycle inside ``nonstop.core``.

Every module under ``nonstop/core`` is parsed with :mod:`ast`; every import
of another core module counts, wherever it is written: at module level, inside
a function (an import moved into a function to dodge a cycle is still a
cycle) or under ``TYPE_CHECKING``.  The graph must have no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "nonstop" / "core"
PACKAGE = "nonstop.core"


def core_imports(source: str) -> set[str]:
    """The core modules (``_config``, ``__init__``...) a module's source imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                module = node.module
            elif node.level == 0 and node.module is not None and (
                node.module == PACKAGE or node.module.startswith(PACKAGE + ".")
            ):
                module = node.module[len(PACKAGE) + 1:] or None
            else:
                continue
            if module is None:  # from . import _x / from nonstop.core import Name
                for alias in node.names:
                    found.add(alias.name if (CORE / f"{alias.name}.py").exists() else "__init__")
            else:
                found.add(module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name[len(PACKAGE) + 1:].split(".")[0])
                elif alias.name == PACKAGE:
                    found.add("__init__")
    return found


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of *graph* as a path that starts and ends on the same node."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, [*path, node])
            if cycle is not None:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle is not None:
            return cycle
    return None


def core_graph() -> dict[str, set[str]]:
    return {
        path.stem: core_imports(path.read_text(encoding="utf-8")) - {path.stem}
        for path in sorted(CORE.glob("*.py"))
    }


def test_the_graph_covers_the_core() -> None:
    graph = core_graph()
    assert {"__init__", "_core", "_config", "_guard", "_subscriptions"} <= set(graph)
    assert "_guard" in graph["_config"]  # the AlertPolicy option
    assert "_config" not in graph["_guard"]


def test_no_import_cycle_inside_the_core() -> None:
    cycle = find_cycle(core_graph())
    assert cycle is None, "import cycle in nonstop/core: " + " -> ".join(cycle or [])


def test_the_checker_sees_imports_inside_functions_and_absolute_ones() -> None:
    source = (
        "from ._a import x\n"
        "def f():\n    from ._b import y\n"
        "import nonstop.core._c\n"
        "from nonstop.core._d import z\n"
        "from nonstop.core import Config\n"
        "from . import _core\n"
        "import json\nfrom wsproto import WSConnection\n"
    )
    assert core_imports(source) == {"_a", "_b", "_c", "_d", "__init__", "_core"}


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"_a": {"_b"}, "_b": {"_c"}, "_c": {"_a"}}) == ["_a", "_b", "_c", "_a"]
    assert find_cycle({"_a": {"_b", "_c"}, "_b": {"_c"}, "_c": set()}) is None
