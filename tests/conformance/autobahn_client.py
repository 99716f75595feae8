#!/usr/bin/env python3
"""An Autobahn|Testsuite client for nonstop's drivers.

    ../shared/autobahn/run --strict -- python tests/conformance/autobahn_client.py asyncio
    (drivers: asyncio, uvloop, trio -- the anyio driver on each event loop -- and blocking)

Reads $AUTOBAHN_URL and $AUTOBAHN_AGENT (set by ``autobahn/run``), asks the
fuzzing server for the case count, then runs every case: connect, echo every
message back with its type (text as text, binary as binary) until the server
closes, and finally asks for the reports to be written.

Each case is one connection, so the feed is told to give up after the first
disconnect (``max_attempts=1``): that ends iteration with ``FeedGaveUp``,
after the close handshake has completed.  Keep-alive pings and the silence
watchdog are off so that only the protocol is under test.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import nonstop
from nonstop import FeedGaveUp, NotConnected

OPTIONS: dict[str, Any] = dict(
    max_attempts=1,
    ping_interval=None,
    silence_timeout=None,
    max_message_size=16 << 20,
    close_timeout=5.0,
    user_agent=None,
)


def case_count_async(base: str) -> Any:
    async def run() -> int:
        async with nonstop.connect(f"{base}/getCaseCount", **OPTIONS) as feed:
            try:
                async for message in feed:
                    return int(message)
            except FeedGaveUp:
                pass
        raise SystemExit("autobahn client: no case count received")

    return run


async def run_case_async(url: str) -> None:
    async with nonstop.connect(url, **OPTIONS) as feed:
        try:
            async for message in feed:
                try:
                    await feed.send(message)
                except NotConnected:
                    pass  # the server closed; the rest is drained and dropped
        except FeedGaveUp:
            pass


def main_async(backend: str, base: str, agent: str) -> None:
    import anyio

    async def main() -> None:
        count = await case_count_async(base)()
        for case in range(1, count + 1):
            await run_case_async(f"{base}/runCase?case={case}&agent={agent}")
        await run_case_async(f"{base}/updateReports?agent={agent}")

    if backend == "uvloop":
        anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    else:
        anyio.run(main, backend=backend)


def run_case_sync(url: str) -> list[str | bytes]:
    seen: list[str | bytes] = []
    with nonstop.sync.connect(url, **OPTIONS) as feed:
        try:
            for message in feed:
                seen.append(message)
                try:
                    feed.send(message)
                except NotConnected:
                    pass
        except FeedGaveUp:
            pass
    return seen


def main_sync(base: str, agent: str) -> None:
    first = run_case_sync(f"{base}/getCaseCount")
    if not first:
        raise SystemExit("autobahn client: no case count received")
    count = int(first[0])
    for case in range(1, count + 1):
        run_case_sync(f"{base}/runCase?case={case}&agent={agent}")
    run_case_sync(f"{base}/updateReports?agent={agent}")


def main() -> int:
    driver = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    base = os.environ["AUTOBAHN_URL"]
    agent = os.environ.get("AUTOBAHN_AGENT", f"nonstop-{driver}")
    if driver in ("asyncio", "uvloop", "trio"):
        main_async(driver, base, agent)
    elif driver == "blocking":
        main_sync(base, agent)
    else:
        print(f"unknown driver {driver!r}: use asyncio, uvloop, trio or blocking", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
