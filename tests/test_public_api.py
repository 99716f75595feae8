"""The public API: no import cycle, every public type exported, twin feeds.

* **Import cycles.**  Every module of ``nonstop/`` is parsed with :mod:`ast`
  and every import counts, wherever it is written: at module level, inside a
  function (an import moved into a function to dodge a cycle is still a
  cycle) or under ``TYPE_CHECKING``.  Relative imports are resolved.
  ``from package import name`` is an edge to ``package.name`` when that is a
  module, else to ``package``; importing ``a.b.c`` also imports the packages
  ``a.b`` and ``a`` -- those count too, except the importer's own enclosing
  packages, which Python has already started importing by then.
* **Exports.**  Every name in ``nonstop.__all__`` exists; every public class
  of the modules that define events, errors, feeds and option types, and
  every class the public API accepts or returns, is reachable from
  ``nonstop``, ``nonstop.core`` or ``nonstop.testing``.
* **Twin feeds.**  ``nonstop.AsyncFeed`` and ``nonstop.SyncFeed`` offer the
  same public names and, for each, the same parameters and return type once
  ``await`` and async iteration are accounted for.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import nonstop
import nonstop.core
import nonstop.errors
import nonstop.sync
import nonstop.testing

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "nonstop"

# ----------------------------------------------------------------------
# (a) import cycles


def module_names(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (``__init__.py`` for packages)."""
    found: dict[str, Path] = {}
    base = package_dir.parent
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _enclosing(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(module: str, source: str, known: Iterable[str], *, is_package: bool) -> set[str]:
    """The modules of *known* that *module* (whose source is *source*) imports."""
    modules = set(known)
    package = module if is_package else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                targets.add(submodule if submodule in modules else origin)
    own = set(_enclosing(module)) | {module}
    edges: set[str] = set()
    for target in targets:
        for name in [*_enclosing(target), target]:
            if name in modules and name not in own:
                edges.add(name)
    return edges


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    modules = module_names(package_dir)
    return {
        name: imports_of(name, path.read_text(encoding="utf-8"), modules,
                         is_package=path.name == "__init__.py")
        for name, path in modules.items()
    }


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle (a path that ends where it starts) per strongly connected
    component of *graph* that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                strongconnect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)

    found = []
    for component in components:
        start = min(component)
        # breadth-first search for the shortest way back to start, inside the component
        paths = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for target in sorted(graph.get(node, ())):
                if target == start:
                    found.append([*paths[node], start])
                    queue = []
                    break
                if target in component and target not in paths:
                    paths[target] = [*paths[node], target]
                    queue.append(target)
    return sorted(found)


def test_the_graph_covers_every_module() -> None:
    graph = import_graph()
    assert {"nonstop", "nonstop.cli", "nonstop._demo", "nonstop.core", "nonstop.core._core",
            "nonstop.transports", "nonstop.transports._anyio", "nonstop.testing",
            "nonstop.errors", "nonstop.__main__"} <= set(graph)
    assert "nonstop.transports._anyio" in graph["nonstop"]
    assert "nonstop.transports" in graph["nonstop"]  # the package of _anyio, imported first
    assert "nonstop.core" in graph["nonstop.transports._anyio"]
    assert "nonstop" not in graph["nonstop.transports._anyio"]  # its own enclosing package


def test_no_import_cycle_in_nonstop() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in nonstop/:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_checker_sees_every_kind_of_import() -> None:
    known = {"p", "p.a", "p.b", "p.c", "p.d", "p.e", "p.sub", "p.sub.x", "p.f"}
    source = (
        "from . import a\n"
        "from .b import name\n"
        "import json\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from p.c import C\n"
        "def f():\n    import p.d\n"
        "class K:\n    def m(self):\n        from .sub.x import y\n"
        "from . import something_else\n"
    )
    assert imports_of("p.e", source, known, is_package=False) == {
        "p.a", "p.b", "p.c", "p.d", "p.sub", "p.sub.x",
    }
    assert imports_of("p.sub.x", "from .. import f\nfrom ..sub import x\n", known,
                      is_package=False) == {"p.f"}
    assert imports_of("p.sub", "from . import x\nfrom .. import a\n", known,
                      is_package=True) == {"p.sub.x", "p.a"}


def test_the_checker_names_every_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d", "f"}, "f": set()}
    assert cycles(graph) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert cycles({"a": {"a"}}) == [["a", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


# ----------------------------------------------------------------------
# (b) exports

#: Private modules that define what an application names: events, errors,
#: feeds and option types.  Every public class they define must be reachable.
#: (Exceptions are looked for in every private module.)
TYPE_MODULES = [
    "nonstop._options",
    "nonstop.core._config",
    "nonstop.core._errors",
    "nonstop.core._events",
    "nonstop.core._guard",
    "nonstop.core._metrics",
    "nonstop.core._state",
    "nonstop.transports._anyio",
    "nonstop.transports._anyio_fast",
    "nonstop.transports._anyio_loop",
    "nonstop.transports._blocking",
    "nonstop.transports._blocking_fast",
    "nonstop.transports._blocking_loop",
    "nonstop.transports._common",
    "nonstop.testing._records",
    "nonstop.testing._clock",
    "nonstop.testing._faults",
    "nonstop.testing._server",
    "nonstop.testing._thread",
]

#: Public classes of those modules that belong to the machinery, not the API
#: (by name, so that a class may move between private modules).
INTERNAL = {
    "DriverOptions": "the drivers' half of the options; built by connect()",
    "Options": "the checked options connect() builds and hands to a driver",
    "Verdict": "the guard's classification, consumed by the core",
    "AlertChange": "the alert tracker's output, consumed by the core",
    "AlertTracker": "the alert state the core keeps",
    "AckMatcherFailed": "raised inside the core when an ACK matcher raises; never leaves it",
    "HandshakeError": "raised by the handshake parser inside the framing layer; never leaves it",
    "InflateFailed": "raised by the decompressor inside the framing layer; never leaves it",
    "Stream": "the byte-stream protocol between the anyio loop and its streams",
    "AnyioStream": "the plain loop's stream over anyio",
    "AnyioLoop": "the anyio driver's loop, AsyncFeed's base class",
    "BlockingLoop": "the blocking driver's loop, SyncFeed's base class",
    "FastAsyncFeed": "AsyncFeed with speed-ups; connect() may return it, code names AsyncFeed",
    "FastSyncFeed": "SyncFeed with speed-ups; sync.connect() may return it, code names SyncFeed",
    "ReadSize": "the drivers' read sizing",
    "MessageBuffer": "the drivers' bounded queue",
    "Observer": "the drivers' logging and on_event fan-out",
    "Reject": "how a FeedServer holds a rejection it was told to inject",
    "Pending": "how a FeedServer holds a fault it was told to inject",
    "FaultTarget": "the protocol a fault is played on",
    "FeedServerLike": "the protocol ThreadedFeedServer drives",
    "Record": "the mutable state behind ConnectionInfo",
    "UsageError": "the command line's bad-usage signal, turned into exit status 2",
}

PUBLIC_MODULES = (nonstop, nonstop.core, nonstop.testing)
PUBLIC_NAMES = "nonstop, nonstop.core or nonstop.testing"


def reachable() -> set[type]:
    """The classes exported by the public modules."""
    values = (getattr(module, name) for module in PUBLIC_MODULES for name in module.__all__)
    return {value for value in values if isinstance(value, type)}


def test_every_name_in_all_exists() -> None:
    for module in (*PUBLIC_MODULES, nonstop.errors, nonstop.sync):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{module.__name__}.__all__ names what it lacks: {missing}"
        assert len(set(module.__all__)) == len(module.__all__), f"{module.__name__}: duplicates"


def test_the_errors_module_holds_every_error() -> None:
    errors = {name: getattr(nonstop.errors, name) for name in nonstop.errors.__all__}
    assert all(isinstance(e, type) and issubclass(e, Exception) for e in errors.values())
    for name, error in errors.items():
        assert getattr(nonstop, name) is error, name
    core_errors = importlib.import_module("nonstop.core._errors")
    assert set(core_errors.__all__) <= set(errors)
    assert issubclass(nonstop.FeedGaveUp, nonstop.NonstopError)
    assert issubclass(nonstop.WriteStalled, OSError)


def public_classes(module_name: str) -> Iterator[type]:
    module = importlib.import_module(module_name)
    for name, value in vars(module).items():
        if (isinstance(value, type) and not name.startswith("_")
                and value.__module__ == module_name):
            yield value


def private_modules() -> list[str]:
    return [name for name in module_names()
            if any(part.startswith("_") and part != "__main__" for part in name.split("."))]


def test_every_public_type_is_reachable() -> None:
    exported = reachable()
    candidates = {cls for name in TYPE_MODULES for cls in public_classes(name)}
    candidates |= {
        cls for name in private_modules() for cls in public_classes(name)
        if issubclass(cls, BaseException)
    }
    missing = sorted(
        f"{cls.__module__}.{cls.__qualname__}" for cls in candidates
        if cls not in exported and cls.__qualname__ not in INTERNAL
    )
    assert not missing, f"public classes exported from none of {PUBLIC_NAMES}: {missing}"


def _classes_in(hint: object) -> Iterator[type]:
    """The classes named anywhere in a type hint."""
    if isinstance(hint, typing.TypeVar):
        if hint.__bound__ is not None:
            yield from _classes_in(hint.__bound__)
        for constraint in hint.__constraints__:
            yield from _classes_in(constraint)
        return
    origin = typing.get_origin(hint)
    if origin is not None:
        if isinstance(origin, type):
            yield origin
        for arg in typing.get_args(hint):
            yield from _classes_in(arg)
    elif isinstance(hint, type):
        yield hint
    elif isinstance(hint, (list, tuple)):  # Callable's parameter list
        for arg in hint:
            yield from _classes_in(arg)


def _hints(obj: Callable[..., Any]) -> dict[str, Any]:
    target = obj.fget if isinstance(obj, property) else obj
    return typing.get_type_hints(target)


def public_api() -> Iterator[tuple[str, Callable[..., Any]]]:
    """Every function and method an application calls, by name."""
    yield "nonstop.connect", nonstop.connect
    yield "nonstop.sync.connect", nonstop.sync.connect
    for feed in (nonstop.AsyncFeed, nonstop.SyncFeed):
        for name, member in public_members(feed).items():
            if callable(member) or isinstance(member, property):
                yield f"{feed.__name__}.{name}", member


def test_every_type_the_api_takes_or_returns_is_exported() -> None:
    exported = reachable()
    missing = set()
    for where, function in public_api():
        for hint in _hints(function).values():
            for cls in _classes_in(hint):
                if cls.__module__.startswith("nonstop") and cls not in exported:
                    missing.add(f"{cls.__module__}.{cls.__qualname__} (in {where})")
    assert not missing, f"the public API uses types nobody can import: {sorted(missing)}"


def test_what_connect_returns_and_accepts() -> None:
    hints = typing.get_type_hints(nonstop.connect)
    assert hints["return"] is nonstop.AsyncFeed
    assert typing.get_type_hints(nonstop.sync.connect)["return"] is nonstop.SyncFeed
    accepted = set(_classes_in(hints["overflow"])) | set(_classes_in(hints["on_event"]))
    assert {nonstop.Overflow, nonstop.Alert, nonstop.Stopped} <= accepted
    assert typing.get_args(nonstop.AppEvent) == typing.get_args(nonstop.core.AppEvent)


# ----------------------------------------------------------------------
# (c) the async and the blocking feed have the same surface

#: Names each feed has that the other pairs differently or lacks by design.
ASYNC_ONLY = {"__aiter__", "__anext__", "__aenter__", "__aexit__", "aclose"}
#: ``start()`` starts the I/O thread for code that cannot use ``with``; an
#: async feed needs a task group, which only ``async with`` gives it.
SYNC_ONLY = {"__iter__", "__next__", "__enter__", "__exit__", "start"}
#: Shared names whose return annotations may differ, and why: an async
#: context manager may swallow the cancellation its own task group caused
#: (anyio's ``__aexit__`` returns ``bool | None``), a thread swallows nothing.
RETURNS_MAY_DIFFER = {"__aexit__"}
PAIRS = {"__aenter__": "__enter__", "__aexit__": "__exit__", "__anext__": "__next__"}


def public_members(cls: type) -> dict[str, Any]:
    """Public names of *cls* and its bases (up to object), with the
    special methods it defines, found without calling descriptors."""
    members: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[:-1]):
        for name, value in vars(klass).items():
            special = name.startswith("__") and name.endswith("__")
            if (not name.startswith("_") or (special and callable(value))) and name not in (
                "__init__", "__init_subclass__", "__class_getitem__", "__subclasshook__",
            ):
                members[name] = value
    return members


class _Normalize(ast.NodeTransformer):
    """Rewrites an annotation so the async and the blocking spelling agree:
    ``Awaitable[X]`` is ``X``, ``AsyncIterator`` is ``Iterator``, and the
    feed's own class (in *own*) is ``Self``."""

    RENAMES: typing.ClassVar[dict[str, str]] = {"AsyncIterator": "Iterator", "AsyncIterable": "Iterable",
                                                "AsyncGenerator": "Generator"}

    def __init__(self, own: Iterable[str]) -> None:
        self.renames = {**self.RENAMES, **dict.fromkeys(own, "Self")}

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(ast.Name(self.renames.get(node.id, node.id), node.ctx), node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:  # typing.X, collections.abc.X
        return ast.copy_location(ast.Name(self.renames.get(node.attr, node.attr), ast.Load()), node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        value = node.value
        name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", "")
        inner: ast.AST
        if name == "Awaitable":
            inner = self.visit(node.slice)
            return inner
        if name == "Coroutine" and isinstance(node.slice, ast.Tuple):
            inner = self.visit(node.slice.elts[-1])
            return inner
        self.generic_visit(node)
        return node


class _Shown:
    """An annotation shown as written (``inspect`` would quote a string)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def normalized(annotation: object, own: Iterable[str] = ()) -> object:
    """An annotation (a string: the modules use postponed evaluation) in one spelling."""
    if annotation is inspect.Parameter.empty:
        return annotation
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return _Shown(ast.unparse(_Normalize(own).visit(ast.parse(text, mode="eval"))))


def _function(member: Any) -> Any:
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    return member


def kind_of(member: Any) -> str:
    """What calling the member gives, async and blocking spellings made equal."""
    if isinstance(member, property):
        return "property"
    function = _function(member)
    if inspect.isasyncgenfunction(function) or inspect.isgeneratorfunction(function):
        return "iterator"
    if inspect.iscoroutinefunction(function) or inspect.isfunction(function):
        return "call"
    return type(member).__name__


def signature_of(member: Any, own: Iterable[str] = (), *, drop: Iterable[str] = ()) -> str:
    """The member's parameters (names, kinds, defaults, annotations) and
    return annotation, normalized, as text: ``(self, timeout: float | None = None) -> None``."""
    own = tuple(own)
    if isinstance(member, property):
        member = member.fget
    signature = inspect.signature(_function(member))
    parameters = [
        p.replace(annotation=normalized(p.annotation, own))
        for p in signature.parameters.values() if p.name not in drop
    ]
    return str(signature.replace(
        parameters=parameters, return_annotation=normalized(signature.return_annotation, own)
    ))


def surface_differences(async_cls: type, sync_cls: type) -> tuple[list[str], list[str]]:
    """(names only one feed has, shared names whose signatures differ)."""
    a, s = public_members(async_cls), public_members(sync_cls)
    own = {async_cls.__name__, sync_cls.__name__}
    names = [f"only {async_cls.__name__} has {n}" for n in sorted(set(a) - set(s) - ASYNC_ONLY)]
    names += [f"only {sync_cls.__name__} has {n}" for n in sorted(set(s) - set(a) - SYNC_ONLY)]
    names += [f"{async_cls.__name__} lacks {n}" for n in sorted(ASYNC_ONLY - set(a))]
    names += [f"{sync_cls.__name__} lacks {n}" for n in sorted(SYNC_ONLY - set(s))]
    shared = [(n, n) for n in sorted(set(a) & set(s))]
    shared += [(an, sn) for an, sn in PAIRS.items() if an in a and sn in s]
    signatures = []
    for an, sn in shared:
        am, sm = a[an], s[sn]
        name = an if an == sn else f"{an}/{sn}"
        if kind_of(am) != kind_of(sm):
            signatures.append(f"{name}: a {kind_of(am)} vs a {kind_of(sm)}")
            continue
        left = signature_of(am, own)
        right = signature_of(sm, own, drop={"timeout"} if sn == "stop" else ())
        if an in RETURNS_MAY_DIFFER:
            left, right = left.split(" -> ")[0], right.split(" -> ")[0]
        if left != right:
            signatures.append(f"{name}: {left} vs {right}")
    return names, signatures


def test_the_surface_checker_sees_differences() -> None:
    class A:
        async def get(self, timeout: float | None = None) -> int:
            return 0
        async def items(self) -> typing.AsyncIterator[str]:
            yield ""
        def stop(self) -> None: ...
        async def __aenter__(self) -> A:
            return self
        async def __aexit__(self, *exc: object) -> None: ...
        def only(self) -> None: ...

    class S:
        def get(self, timeout: float = 1.0) -> int:
            return 0
        def items(self) -> typing.Iterator[str]:
            yield ""
        def stop(self, timeout: float | None = None) -> None: ...
        def __enter__(self) -> S:
            return self

        def __exit__(self, *exc: object, extra: int = 0) -> str | None:
            return None

    names, signatures = surface_differences(A, S)
    assert "only A has only" in names
    assert "A lacks aclose" in names
    assert [d.split(":")[0] for d in signatures] == ["get", "__aexit__/__exit__"]
    assert "stop" not in " ".join(signatures)  # only the blocking one's timeout differs


def test_the_async_and_sync_feeds_have_the_same_names() -> None:
    names, _ = surface_differences(nonstop.AsyncFeed, nonstop.SyncFeed)
    assert names == [], names


def test_the_async_and_sync_feeds_have_the_same_signatures() -> None:
    _, signatures = surface_differences(nonstop.AsyncFeed, nonstop.SyncFeed)
    assert signatures == [], signatures


def test_the_fast_feeds_add_no_public_name() -> None:
    from nonstop.transports._anyio_fast import FastAsyncFeed
    from nonstop.transports._blocking_fast import FastSyncFeed

    for fast, plain in ((FastAsyncFeed, nonstop.AsyncFeed), (FastSyncFeed, nonstop.SyncFeed)):
        assert set(public_members(fast)) == set(public_members(plain))
        for name, member in public_members(fast).items():
            assert signature_of(member) == signature_of(public_members(plain)[name]), name


def test_no_module_of_the_package_is_left_out() -> None:
    for name in module_names():
        if name.endswith("__main__"):
            continue
        importlib.import_module(name)
        assert isinstance(sys.modules[name], types.ModuleType)


# ----------------------------------------------------------------------
# the map of the modules (docs/architecture.md) and the README's layout

ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _named_files(text: str) -> set[str]:
    """The ``.py`` files a page names: ``nonstop/x.py``, ``core/x.py``, ``x.py``."""
    return set(re.findall(r"(?<![\w/.])((?:nonstop/)?(?:core/|transports/|testing/)?\w+\.py)\b", text))


def _resolve(name: str) -> list[Path]:
    if "/" in name:
        path = name if name.startswith("nonstop/") else f"nonstop/{name}"
        return [ROOT / path] if (ROOT / path).exists() else []
    return sorted(PACKAGE_DIR.rglob(name))


def test_the_architecture_page_names_files_that_exist() -> None:
    missing = sorted(name for name in _named_files(ARCHITECTURE.read_text(encoding="utf-8"))
                     if not _resolve(name))
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_the_architecture_page_names_every_module() -> None:
    named = {path for name in _named_files(ARCHITECTURE.read_text(encoding="utf-8"))
             for path in _resolve(name)}
    modules = [
        path for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if path.parent.name != "testing" and not (path.name == "__init__.py" and path.parent != PACKAGE_DIR)
    ]
    unnamed = [str(path.relative_to(ROOT)) for path in modules if path not in named]
    assert not unnamed, f"docs/architecture.md does not say where these fit: {unnamed}"


def test_the_readme_links_the_architecture_page_and_its_layout_exists() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/architecture.md)" in readme
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    entries = [line.split()[0] for line in layout.splitlines() if line.strip() and not line[0].isspace()]
    assert "nonstop/core/" in entries
    for entry in entries:  # the path at the start of each line
        assert (ROOT / entry).exists(), f"README layout: {entry} does not exist"
    missing = sorted(name for name in _named_files(layout) if not _resolve(name))
    assert not missing, f"README layout names files that do not exist: {missing}"
