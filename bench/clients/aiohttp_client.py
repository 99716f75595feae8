"""aiohttp's client WebSocket (``ClientSession.ws_connect``).

Theory of operation
-------------------
The documented ``async for msg in ws`` loop over ``WSMessage`` objects
(``msg.data`` is the ``str``/``bytes``), with heartbeat and compression off
and a 1 MiB size limit.  aiohttp's frame reader is compiled (Cython) when its
wheel ships it, as here.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

MAX_MESSAGE = 1 << 20
DATA = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)


async def _receive(url: str, count: int, size: int) -> float:
    n = 0
    last: str | bytes = b""
    async with aiohttp.ClientSession() as session, session.ws_connect(
        url, heartbeat=None, compress=0, max_msg_size=MAX_MESSAGE
    ) as ws:
        t0 = time.perf_counter()
        await ws.send_str("go")
        async for msg in ws:
            if msg.type in DATA:
                n += 1
                if n == count:
                    last = msg.data
                    break
            else:
                break
        t1 = time.perf_counter()
    if n != count or len(last) != size:
        raise RuntimeError(f"got {n} of {count} messages, last of {len(last)} bytes (want {size})")
    return t1 - t0


async def _echo(url: str, rounds: int, message: str) -> list[float]:
    times: list[float] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(
        url, heartbeat=None, compress=0, max_msg_size=MAX_MESSAGE
    ) as ws:
        for _ in range(rounds):
            t0 = time.perf_counter()
            await ws.send_str(message)
            reply = await ws.receive_str()
            times.append(time.perf_counter() - t0)
            if reply != message:
                raise RuntimeError(f"echo returned {reply!r}, sent {message!r}")
    return times


def receive(url: str, count: int, size: int) -> float:
    return asyncio.run(_receive(url, count, size))


def echo(url: str, rounds: int, message: str) -> list[float]:
    return asyncio.run(_echo(url, rounds, message))
