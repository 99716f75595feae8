"""The compressed workload: a JSON feed sent with permessage-deflate, and the same feed plain.

``python bench/deflate.py [--count N] [--size BYTES] [--repeat R] [--clients a,b] [--quick]``

Theory of operation
-------------------
The load server (``bench/server.py``, its own process, pinned to one core)
streams ``count`` distinct JSON messages of ``size`` bytes (an order book's
levels on price and size ticks: about 4x smaller compressed), compressed
with permessage-deflate and its context kept between messages (as most
feed servers do) when the client offers it, else plain.  The messages are
compressed once, in blocks of 1,000, so the server costs a ``sendall`` per
block and the client's inflating is what is measured.

Each client (:data:`CLIENTS`) runs in a process of its own on the other
core, its documented receive loop, with compression on (``deflate``) and off
(``plain``), and reports messages per second from the moment it asked for
the stream (sent once the connection is up) to the last message.  Every client runs
``repeat`` times in both modes, interleaved; the table gives medians (and
the spread), the ratio of deflate to plain per client, and nonstop's lead
over websockets and aiohttp in each mode: the question is whether nonstop
leads by the same margins with compression as without.  Timing never fails
the run; the exit status is 1 only if a client failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from run import child_env, pin_cpus, start_server, stop_server  # noqa: E402

CLIENTS = ["nonstop-asyncio", "nonstop-trio", "nonstop-blocking", "websockets", "aiohttp"]
#: The packages each client needs beyond nonstop (the ``bench`` extra has them).
NEEDS = {"nonstop-trio": ["trio"], "websockets": ["websockets"], "aiohttp": ["aiohttp"]}
MAX_MESSAGE = 1 << 20


# -- the clients (run in a worker process each) ----------------------------------

def _check(n: int, count: int, last: str | bytes, size: int) -> None:
    if n != count or len(last) != size:
        raise RuntimeError(f"got {n} of {count} messages, last of {len(last)} bytes (want {size})")


def run_nonstop(url: str, count: int, size: int, deflate: bool, backend: str) -> float:
    import nonstop

    options: dict[str, Any] = dict(ping_interval=None, silence_timeout=None,
                                   compression="deflate" if deflate else None,
                                   max_message_size=MAX_MESSAGE, max_attempts=1)
    n, last = 0, ""
    if backend == "blocking":
        with nonstop.sync.connect(url, **options) as feed:
            feed.wait_connected(timeout=10)
            t0 = time.perf_counter()
            feed.send("go")
            for message in feed:
                n += 1
                if n == count:
                    last = message
                    break
            t1 = time.perf_counter()
        _check(n, count, last, size)
        return t1 - t0

    import anyio

    async def main() -> float:
        nonlocal n, last
        async with nonstop.connect(url, **options) as feed:
            await feed.wait_connected(timeout=10)
            t0 = time.perf_counter()
            await feed.send("go")
            async for message in feed:
                n += 1
                if n == count:
                    last = message
                    break
            return time.perf_counter() - t0

    seconds = anyio.run(main, backend=backend)
    _check(n, count, last, size)
    return seconds


def run_websockets(url: str, count: int, size: int, deflate: bool) -> float:
    import asyncio

    from websockets.asyncio.client import connect

    async def main() -> float:
        n, last = 0, ""
        async with connect(url, ping_interval=None, compression="deflate" if deflate else None,
                           max_size=MAX_MESSAGE) as ws:
            t0 = time.perf_counter()
            await ws.send("go")
            async for message in ws:
                n += 1
                if n == count:
                    last = message
                    break
            seconds = time.perf_counter() - t0
        _check(n, count, last, size)
        return seconds

    return asyncio.run(main())


def run_aiohttp(url: str, count: int, size: int, deflate: bool) -> float:
    import asyncio

    import aiohttp

    async def main() -> float:
        n, last = 0, ""
        async with aiohttp.ClientSession() as session, session.ws_connect(
                url, heartbeat=None, compress=15 if deflate else 0, max_msg_size=MAX_MESSAGE) as ws:
            t0 = time.perf_counter()
            await ws.send_str("go")
            async for msg in ws:
                n += 1
                if n == count:
                    last = msg.data
                    break
            seconds = time.perf_counter() - t0
        _check(n, count, last, size)
        return seconds

    return asyncio.run(main())


def worker(name: str, url: str, count: int, size: int, deflate: bool) -> None:
    if name.startswith("nonstop-"):
        seconds = run_nonstop(url, count, size, deflate, name.removeprefix("nonstop-"))
    elif name == "websockets":
        seconds = run_websockets(url, count, size, deflate)
    elif name == "aiohttp":
        seconds = run_aiohttp(url, count, size, deflate)
    else:
        raise SystemExit(f"unknown client {name!r}")
    print(json.dumps({"rate": count / seconds}))


# -- the runner --------------------------------------------------------------------

def measure(name: str, port: int, count: int, size: int, deflate: bool) -> float | None:
    url = f"ws://127.0.0.1:{port}/stream?kind=json&size={size}&count={count}&deflate={int(deflate)}"
    done = subprocess.run([sys.executable, __file__, "--worker", name, url, str(count), str(size),
                           "1" if deflate else "0"], capture_output=True, text=True, timeout=600,
                          env=child_env())
    if done.returncode != 0:
        print(f"{name} ({'deflate' if deflate else 'plain'}) failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    rate: float = json.loads(done.stdout.strip().splitlines()[-1])["rate"]
    return rate


def fmt(rate: float | None) -> str:
    if rate is None:
        return "n/a"
    return f"{rate / 1e3:.1f} k" if rate < 1e6 else f"{rate / 1e6:.2f} M"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the compressed JSON workload")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--quick", action="store_true", help="1 run of 2,000 messages: a smoke test")
    parser.add_argument("--worker", nargs=5, metavar=("CLIENT", "URL", "COUNT", "SIZE", "DEFLATE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        name, url, count, size, deflate = args.worker
        worker(name, url, int(count), int(size), deflate == "1")
        return 0
    if args.quick:
        args.count, args.repeat = 2000, 1
    clients = []
    for name in (c for c in args.clients.split(",") if c):
        missing = [pkg for pkg in NEEDS.get(name, []) if importlib.util.find_spec(pkg) is None]
        if missing:
            print(f"note: {name} skipped: {', '.join(missing)} not installed (pip install -e '.[bench]')")
        else:
            clients.append(name)
    server, port = start_server()
    failed = False
    rates: dict[tuple[str, bool], list[float]] = {}
    try:
        pinned = pin_cpus(server)
        for run in range(args.repeat):
            for name in clients:
                for deflate in (False, True):
                    rate = measure(name, port, args.count, args.size, deflate)
                    mode = "deflate" if deflate else "plain"
                    print(f"[{run + 1}/{args.repeat}] {name} {mode}: {fmt(rate)}",
                          file=sys.stderr, flush=True)
                    if rate is None:
                        failed = True
                    else:
                        rates.setdefault((name, deflate), []).append(rate)
    finally:
        stop_server(server)

    def med(name: str, deflate: bool) -> float | None:
        got = rates.get((name, deflate))
        return statistics.median(got) if got else None

    def cell(name: str, deflate: bool) -> str:
        got = rates.get((name, deflate))
        if not got:
            return "n/a"
        return f"{fmt(statistics.median(got))} ({fmt(min(got))}-{fmt(max(got))})"

    print(f"{args.count} JSON messages of {args.size} B, {args.repeat} runs each, medians (min-max), "
          f"msgs/s; {pinned}; load {os.getloadavg()[0]:.2f}\n")
    print("| client | plain | deflate | deflate / plain |")
    print("|---|---|---|---|")
    for name in clients:
        plain, packed = med(name, False), med(name, True)
        ratio = f"{packed / plain:.2f}" if plain and packed else "n/a"
        print(f"| {name} | {cell(name, False)} | {cell(name, True)} | {ratio} |")
    print()
    print("| nonstop's lead | plain | deflate |")
    print("|---|---|---|")
    for name in (c for c in clients if c.startswith("nonstop-")):
        for peer in (c for c in clients if not c.startswith("nonstop-")):
            cells = []
            for deflate in (False, True):
                ours, theirs = med(name, deflate), med(peer, deflate)
                cells.append(f"{ours / theirs:.2f}x" if ours and theirs else "n/a")
            print(f"| {name} vs {peer} | {cells[0]} | {cells[1]} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
