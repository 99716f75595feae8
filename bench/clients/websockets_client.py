"""websockets' asyncio client (``websockets.asyncio.client.connect``).

Theory of operation
-------------------
The documented ``async for message in websocket`` loop, with keep-alive pings
and compression off and a 1 MiB size limit; everything else is the default
(including its receive queue and flow control).
"""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.client import ClientConnection, connect

MAX_MESSAGE = 1 << 20


def _connect(url: str) -> connect:
    return connect(url, ping_interval=None, compression=None, max_size=MAX_MESSAGE)


async def _receive(url: str, count: int, size: int) -> float:
    n = 0
    last: str | bytes = b""
    ws: ClientConnection
    async with _connect(url) as ws:
        t0 = time.perf_counter()
        await ws.send("go")
        async for message in ws:
            n += 1
            if n == count:
                last = message
                break
        t1 = time.perf_counter()
    if n != count or len(last) != size:
        raise RuntimeError(f"got {n} of {count} messages, last of {len(last)} bytes (want {size})")
    return t1 - t0


async def _echo(url: str, rounds: int, message: str) -> list[float]:
    times: list[float] = []
    async with _connect(url) as ws:
        for _ in range(rounds):
            t0 = time.perf_counter()
            await ws.send(message)
            reply = await ws.recv()
            times.append(time.perf_counter() - t0)
            if reply != message:
                raise RuntimeError(f"echo returned {reply!r}, sent {message!r}")
    return times


def receive(url: str, count: int, size: int) -> float:
    return asyncio.run(_receive(url, count, size))


def echo(url: str, rounds: int, message: str) -> list[float]:
    return asyncio.run(_echo(url, rounds, message))
