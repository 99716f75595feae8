"""Long driver runs of the uninterrupted features: ``python bench/soak.py MODE DRIVER SECONDS``.

Theory of operation
-------------------
A testing server (:class:`nonstop.testing.FeedServer`) broadcasts
``{"n": N}`` to every open connection every 2 ms, the same numbers on each,
as an exchange's public feed does; a fault task breaks connections while a
client collects ``records()``:

* ``redundant``: ``redundancy=2`` merged by number; the older leg is reset
  every 0.5 s;
* ``rotate``: one connection with ``max_lifetime=1.5``; the server closes
  every connection with 1001 at 2 s of age (``server_cut`` counts the ones
  it had to);
* ``single``: one connection, reset every 0.5 s.

It prints the messages delivered, the numbers missing and delivered twice,
the gap records, and the missing numbers no gap record accounts for
(``unreported_missing``: must be 0).  DRIVER is ``asyncio``, ``trio`` or
``blocking``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio

import nonstop
import nonstop.sync
from nonstop import Backoff, Gap
from nonstop.testing import Fault, FeedServer

CLIENT: dict[str, Any] = dict(backoff=Backoff(initial=0.05, cap=0.2), stable_after=0.2,
                              ping_interval=None, silence_timeout=None)
MODES = {
    "redundant": dict(redundancy=2),
    "rotate": dict(max_lifetime=1.5, connect_timeout=0.2, handshake_timeout=0.2),
    "single": {},
}


def number(message: str | bytes) -> int:
    value: int = json.loads(message)["n"]
    return value


async def soak(mode: str, driver: str, seconds: float) -> str:
    items: list[int | Gap] = []
    cut: list[int] = []
    server = FeedServer(interval=None)
    options = dict(CLIENT, sequence=number, **MODES[mode])

    async def broadcast() -> None:
        sent = 0
        while True:
            sent += 1
            server.broadcast(json.dumps({"n": sent}))
            await anyio.sleep(0.002)

    async def faults() -> None:
        born: dict[int, float] = {}
        while True:
            now = time.monotonic()
            opened = sorted(c.number for c in server.history if c.phase == "open" and c.number)
            if mode != "rotate" and len(opened) >= (2 if mode == "redundant" else 1):
                server.inject(Fault.RESET, connection=opened[0])
                await anyio.sleep(0.5)
                continue
            for conn in opened if mode == "rotate" else ():
                if now - born.setdefault(conn, now) >= 2.0 and conn not in cut:
                    cut.append(conn)
                    server.inject(Fault.CLOSE_CODE, code=1001, connection=conn)
            await anyio.sleep(0.01)

    def keep(record: Any) -> None:
        items.append(record if isinstance(record, Gap) else number(record.data))

    async with server, anyio.create_task_group() as tg:
        tg.start_soon(broadcast)
        if driver == "blocking":
            sync_feed = nonstop.sync.connect(server.url, **options)
            await anyio.to_thread.run_sync(sync_feed.start)

            def consume() -> None:
                for record in sync_feed.records():
                    keep(record)

            tg.start_soon(anyio.to_thread.run_sync, consume)
            await anyio.sleep(1)
            tg.start_soon(faults)
            await anyio.sleep(seconds)
            metrics = sync_feed.metrics()
            await anyio.to_thread.run_sync(sync_feed.stop)
        else:
            async with nonstop.connect(server.url, **options) as feed:
                async def consume_async() -> None:
                    async for record in feed.records():
                        keep(record)

                tg.start_soon(consume_async)
                await anyio.sleep(1)
                tg.start_soon(faults)
                await anyio.sleep(seconds)
                metrics = feed.metrics()
        tg.cancel_scope.cancel()
    numbers = [item for item in items if not isinstance(item, Gap)]
    missing = set(range(numbers[0], numbers[-1] + 1)) - set(numbers)
    unreported, last, gap_seen = 0, None, False
    for item in items:
        if isinstance(item, Gap):
            gap_seen = True
            continue
        if last is not None and item > last + 1 and not gap_seen:
            unreported += item - last - 1
        last, gap_seen = item, False
    legs = metrics.leg_metrics or (metrics,)
    return (f"{mode} {driver} {seconds:g}s: delivered={len(numbers)} missing={len(missing)} "
            f"twice={len(numbers) - len(set(numbers))} gaps={sum(isinstance(i, Gap) for i in items)} "
            f"unreported_missing={unreported} reconnects={sum(m.reconnects for m in legs)} "
            f"rotations={metrics.rotations} server_cut={len(cut)}")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in MODES or argv[1] not in ("asyncio", "trio", "blocking"):
        print(__doc__.split("\n")[0], file=sys.stderr)
        return 2
    mode, driver, seconds = argv[0], argv[1], float(argv[2])
    print(anyio.run(soak, mode, driver, seconds, backend="trio" if driver == "trio" else "asyncio"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
