"""nonstop's anyio driver (``nonstop.connect``) on asyncio or trio.

Theory of operation
-------------------
The feed is opened with keep-alive off (``ping_interval=None``,
``silence_timeout=None``), waits until connected, and is iterated with
``async for`` exactly as the usage guide shows (``mode="batches"``: through
``feed.batches()``, lists of the messages that are ready).  Leaving ``async with`` stops
the feed gracefully.  The same code runs on both back ends through
``anyio.run(..., backend=...)``.
"""

from __future__ import annotations

import time
from functools import partial

import anyio

import nonstop

QUEUE_SIZE = 4096
MAX_MESSAGE = 1 << 20


def _connect(url: str, legs: int = 1, seq: bool = False) -> nonstop.AsyncFeed:
    return nonstop.connect(
        url,
        ping_interval=None,
        silence_timeout=None,
        max_message_size=MAX_MESSAGE,
        queue_size=QUEUE_SIZE,
        **({"redundancy": legs} if legs > 1 else {}),  # (an older checkout has no such option)
        **({"sequence": number} if seq else {}),
    )


def number(message: str | bytes) -> int:
    """The numbered stream's number: the first ten characters."""
    return int(message[:10])


async def _receive(url: str, count: int, size: int, mode: str, legs: int = 1,
                   seq: bool = False) -> float:
    n = 0
    last: str | bytes = b""
    async with _connect(url, legs, seq) as feed:
        await feed.wait_connected(10)
        with anyio.fail_after(10):
            while legs > 1 and feed.metrics().legs_live < legs:
                await anyio.sleep(0.001)  # every leg open: each must get the "go"
        t0 = time.perf_counter()
        await feed.send("go")
        if mode == "batches":
            async for batch in feed.batches():
                n += len(batch)
                if n >= count:
                    last = batch[-1]
                    break
        else:
            async for message in feed:
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
    async with _connect(url) as feed:
        await feed.wait_connected(10)
        for _ in range(rounds):
            t0 = time.perf_counter()
            await feed.send(message)
            reply = await feed.__anext__()
            times.append(time.perf_counter() - t0)
            if reply != message:
                raise RuntimeError(f"echo returned {reply!r}, sent {message!r}")
    return times


def receive(url: str, count: int, size: int, backend: str = "asyncio", mode: str = "iterate",
            legs: str = "1", seq: str = "") -> float:
    return anyio.run(partial(_receive, url, count, size, mode, int(legs), bool(seq)),
                     backend=backend)


def echo(url: str, rounds: int, message: str, backend: str = "asyncio", mode: str = "iterate") -> list[float]:
    return anyio.run(partial(_echo, url, rounds, message), backend=backend)
