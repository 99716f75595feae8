"""websocket-client (``websocket.create_connection``): blocking ``recv()`` calls.

Theory of operation
-------------------
The documented synchronous API: ``recv()`` returns the next message as
``str`` or ``bytes``.  ``skip_utf8_validation=True`` skips only its
pure-Python validator; text is still decoded with ``bytes.decode("utf-8")``,
which rejects invalid UTF-8, so this is its fastest correct setting.
"""

from __future__ import annotations

import time

import websocket


def _connect(url: str) -> websocket.WebSocket:
    return websocket.create_connection(url, skip_utf8_validation=True, timeout=30)


def receive(url: str, count: int, size: int) -> float:
    n = 0
    last: str | bytes = b""
    ws = _connect(url)
    try:
        t0 = time.perf_counter()
        ws.send("go")
        recv = ws.recv
        while n < count:
            last = recv()
            n += 1
        t1 = time.perf_counter()
    finally:
        ws.close()
    if n != count or len(last) != size:
        raise RuntimeError(f"got {n} of {count} messages, last of {len(last)} bytes (want {size})")
    return t1 - t0


def echo(url: str, rounds: int, message: str) -> list[float]:
    times: list[float] = []
    ws = _connect(url)
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            ws.send(message)
            reply = ws.recv()
            times.append(time.perf_counter() - t0)
            if reply != message:
                raise RuntimeError(f"echo returned {reply!r}, sent {message!r}")
    finally:
        ws.close()
    return times
