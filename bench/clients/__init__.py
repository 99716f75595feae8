"""The benchmark's clients: one adapter per library, one interface.

Theory of operation
-------------------
Every adapter module exports two functions and nothing else the runner uses:

``receive(url, count, size) -> float``
    connect to the load server's ``/stream`` URL, send one message ("go"),
    then receive *count* messages, each materialised as the ``str`` (text) or
    ``bytes`` (binary) the application would get; return the seconds from just
    before "go" to the *count*-th message.  The handshake is not timed.  The
    adapter checks it got *count* messages and that the last one has *size*
    bytes, and raises otherwise.
``echo(url, rounds, message) -> list[float]``
    send *message* (text) to the ``/echo`` URL and wait for it to come back,
    *rounds* times; return every round trip in seconds.

Each adapter uses its library the way its documentation shows, with
keep-alive pings off (nonstop's are off too) and size limits of at least
1 MiB.  :data:`CLIENTS` maps the names shown in the tables to
``(module, packages it needs, keyword arguments)``; a client whose packages
are missing is skipped with a note.  The ``-batches`` variants consume
nonstop through ``feed.batches()`` (lists of ready messages) instead of
plain iteration; they are shown for information, the targets use plain
iteration.
"""

from __future__ import annotations

__all__ = ["CLIENTS", "RECEIVE_ONLY", "BASELINE", "MERGED"]

CLIENTS: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "nonstop-asyncio": ("nonstop_anyio", ("nonstop", "anyio"), {"backend": "asyncio"}),
    "nonstop-trio": ("nonstop_anyio", ("nonstop", "anyio", "trio"), {"backend": "trio"}),
    "nonstop-blocking": ("nonstop_blocking", ("nonstop",), {}),
    "nonstop-asyncio-batches": (
        "nonstop_anyio", ("nonstop", "anyio"), {"backend": "asyncio", "mode": "batches"}
    ),
    "nonstop-blocking-batches": ("nonstop_blocking", ("nonstop",), {"mode": "batches"}),
    "nonstop-asyncio-plain": ("nonstop_anyio", ("nonstop", "anyio"), {"backend": "asyncio", "fast": "0"}),
    "nonstop-trio-plain": ("nonstop_anyio", ("nonstop", "anyio", "trio"), {"backend": "trio", "fast": "0"}),
    "nonstop-blocking-plain": ("nonstop_blocking", ("nonstop",), {"fast": "0"}),
    "nonstop-asyncio-uvloop": ("nonstop_anyio", ("nonstop", "anyio", "uvloop"),
                               {"backend": "asyncio", "loop": "uvloop"}),
    "nonstop-asyncio-uvloop-batches": ("nonstop_anyio", ("nonstop", "anyio", "uvloop"),
                                       {"backend": "asyncio", "loop": "uvloop", "mode": "batches"}),
    "picows": ("picows_client", ("picows",), {}),
    "picows-uvloop": ("picows_client", ("picows", "uvloop"), {"loop": "uvloop"}),
    "aiohttp": ("aiohttp_client", ("aiohttp",), {}),
    "aiohttp-uvloop": ("aiohttp_client", ("aiohttp", "uvloop"), {"loop": "uvloop"}),
    "websockets": ("websockets_client", ("websockets",), {}),
    "websockets-uvloop": ("websockets_client", ("websockets", "uvloop"), {"loop": "uvloop"}),
    "websocket-client": ("websocket_client", ("websocket",), {}),
    "wsproto": ("wsproto_loop", ("wsproto",), {}),
    "raw-socket": ("raw_socket", (), {}),
    "trio-socket": ("trio_socket", ("trio",), {}),
}

#: Clients without an echo round trip: the raw byte-stream reader, and the
#: batch consumers (their echo is the plain iteration's).
RECEIVE_ONLY = frozenset({"raw-socket", "nonstop-asyncio-batches", "nonstop-blocking-batches",
                          "nonstop-asyncio-uvloop-batches"})

#: Redundant feeds (``redundancy=2``; ``-seq``: merged by sequence number,
#: else by the payload itself; ``nonstop-*-seq``: one connection through the
#: merge), for ``bench/merge.py`` and its numbered stream only: on
#: ``run.py``'s identical messages the merge keeps one.
MERGED: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    f"nonstop-{driver}{legs}{seq}": (module, needs, dict(base, **({"legs": "2"} if legs else {}),
                                                           **({"seq": "1"} if seq else {})))
    for driver, module, needs, base in (
        ("asyncio", "nonstop_anyio", ("nonstop", "anyio"), {"backend": "asyncio"}),
        ("trio", "nonstop_anyio", ("nonstop", "anyio", "trio"), {"backend": "trio"}),
        ("blocking", "nonstop_blocking", ("nonstop",), {}),
    )
    for legs in ("", "-2legs")
    for seq in ("", "-seq")
    if legs or seq
}
RECEIVE_ONLY |= frozenset(MERGED)

#: The separator of a client run from another checkout (``run.py --baseline``).
BASELINE = "@baseline"
