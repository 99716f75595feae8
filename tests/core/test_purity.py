"""The core is sans-IO: no sockets, clocks, threads, event loops or global random.

Two independent checks:

* a static one: every module under ``nonstop/core`` is parsed with :mod:`ast`
  and must not import an I/O, clock or concurrency module, nor call the
  module-level functions of :mod:`random` (only ``random.Random``, the type of
  the injected generator, may be named);
* a dynamic one: ``import nonstop.core`` in a fresh interpreter must not load
  any event-loop or TLS machinery, whoever imports it (the core itself or a
  dependency).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "nonstop" / "core"
CORE_FILES = sorted(CORE.glob("*.py"))

#: Modules the core's own source must never import (nor any submodule of them).
FORBIDDEN_IMPORTS = frozenset(
    {"socket", "ssl", "time", "threading", "asyncio", "anyio", "selectors", "trio", "_thread"}
)
#: The one name of the random module the core may use: the injected generator's type.
ALLOWED_RANDOM_NAMES = frozenset({"Random"})


def _module_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module) for every absolute import and ``__import__``/
    ``importlib.import_module`` call with a literal name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else None)
            if name in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def _global_random_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Uses of the random module other than ``random.Random``.

    Covers ``import random [as r]`` followed by ``r.anything`` and
    ``from random import anything``.
    """
    aliases: set[str] = set()  # names bound to the random module
    uses: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "random":
                    aliases.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "random":
            uses += [(node.lineno, f"from random import {a.name}") for a in node.names
                     if a.name not in ALLOWED_RANDOM_NAMES]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr not in ALLOWED_RANDOM_NAMES):
            uses.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return uses


def test_core_sources_are_found() -> None:
    """Guard against the checks below passing vacuously on an empty glob."""
    names = {path.name for path in CORE_FILES}
    assert {"__init__.py", "_core.py", "_framing.py", "_backoff.py"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_module_imports_no_io_clock_or_thread_module(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [(line, name) for line, name in _module_names(tree) if name in FORBIDDEN_IMPORTS]
    assert bad == [], f"{path.name} imports forbidden modules (line, module): {bad}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_module_uses_no_module_level_random(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert _global_random_uses(tree) == [], (
        f"{path.name} uses the global random state; use the injected random.Random"
    )


def test_random_checker_flags_global_calls() -> None:
    """The AST checker itself: module-level calls are caught, ``random.Random`` is not."""
    tree = ast.parse(
        "import random\nimport random as r\nfrom random import choice, Random\n"
        "rng: random.Random = random.Random(1)\n"
        "x = random.random()\ny = r.uniform(0, 1)\nz = random.choice([1])\n"
    )
    assert _global_random_uses(tree) == [
        (3, "from random import choice"),
        (5, "random.random"),
        (6, "r.uniform"),
        (7, "random.choice"),
    ]


def test_import_checker_flags_dynamic_and_submodule_imports() -> None:
    tree = ast.parse(
        "import asyncio.events\nfrom ssl import SSLContext\nfrom . import _state\n"
        "import importlib\nimportlib.import_module('socket')\n__import__('time')\n"
    )
    assert [n for _, n in _module_names(tree) if n in FORBIDDEN_IMPORTS] == [
        "asyncio", "ssl", "socket", "time",
    ]


# The subprocess records, for each watched module loaded by `import nonstop.core`,
# the chain of importing modules (innermost last), so a failure names the culprit.
# `nonstop` itself is replaced by a bare package object so that only the core is
# imported: `nonstop/__init__.py` may legitimately import the drivers (anyio).
_PROBE = r"""
import importlib.abc, json, sys, types
WATCHED = set(json.loads(sys.argv[1]))
chains = {}
stack = []

class Tracer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in WATCHED and name not in sys.modules and name not in chains:
            chains[name] = [m for m in stack]
        return None

import builtins
_orig_import = builtins.__import__
def traced_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "?")
    stack.append(importer)
    try:
        return _orig_import(name, globals, locals, fromlist, level)
    finally:
        stack.pop()

pkg = types.ModuleType("nonstop")
pkg.__path__ = [sys.argv[2]]
sys.modules["nonstop"] = pkg
before = set(sys.modules)
sys.meta_path.insert(0, Tracer())
builtins.__import__ = traced_import
import nonstop.core
builtins.__import__ = _orig_import
new = set(sys.modules) - before
loaded = {m: chains.get(m, []) for m in new if m.split(".")[0] in WATCHED}
print(json.dumps(loaded))
"""

#: Never acceptable in the core's process, whoever pulls them in.
NEVER_LOADED = ("anyio", "asyncio", "trio", "ssl", "selectors")
#: Also reported; acceptable only if the dependency wsproto (h11) loads them
#: by itself, which it does not today (checked by the test below).
REPORTED = ("socket", "threading", "_thread")


def _loaded_by_import(module: str) -> dict[str, list[str]]:
    watched = sorted(set(NEVER_LOADED) | set(REPORTED))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = _PROBE.replace("import nonstop.core", f"import {module}")
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(watched), str(ROOT / "nonstop")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, list[str]] = json.loads(result.stdout)
    return loaded


def _describe(loaded: dict[str, list[str]]) -> str:
    return "; ".join(
        f"{name} <- " + " <- ".join(reversed(chain)) for name, chain in sorted(loaded.items())
    )


def test_importing_core_loads_no_event_loop_or_tls_module() -> None:
    loaded = _loaded_by_import("nonstop.core")
    bad = {name: chain for name, chain in loaded.items() if name.split(".")[0] in NEVER_LOADED}
    assert bad == {}, f"import nonstop.core loads: {_describe(bad)}"


def test_importing_core_loads_no_socket_or_thread_module_beyond_wsproto() -> None:
    """socket/threading may only appear if wsproto itself needs them (it does not)."""
    from_wsproto = set(_loaded_by_import("wsproto"))
    loaded = _loaded_by_import("nonstop.core")
    bad = {name: chain for name, chain in loaded.items()
           if name.split(".")[0] in REPORTED and name not in from_wsproto}
    assert bad == {}, f"import nonstop.core loads: {_describe(bad)}"


def test_probe_sees_transitive_imports() -> None:
    """The subprocess probe itself: ftplib pulls in socket, then selectors
    (on every Python from 3.10 on), and the chain names who imported what."""
    loaded = _loaded_by_import("ftplib")
    assert loaded["socket"][-1] == "ftplib"
    assert loaded["selectors"][-2:] == ["ftplib", "socket"]
