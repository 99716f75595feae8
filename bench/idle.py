"""The idle test: many concurrent nonstop feeds with keep-alive, in one process.

Theory of operation
-------------------
Opens *connections* feeds with ``nonstop.connect`` on anyio/asyncio against
the load server's ``/idle`` path (which answers pings and sends nothing
else), each with the library's keep-alive (``ping_interval``, default 20 s,
pong timeout and silence watchdog at their defaults), and waits until all are
connected.  Then, in this order:

1. **memory** -- ``gc.collect()`` and the resident set size (``VmRSS``) before
   the first feed and after the last one is connected (a second of settling
   later); the delta divided by the number of feeds.  With ``--tracemalloc``
   the Python heap is traced instead (``tracemalloc.get_traced_memory``), in a
   separate run, since tracing itself inflates the RSS.
2. **idle CPU** -- ``getrusage`` (user + system time) over a window of *window*
   seconds of doing nothing but keeping the feeds alive, as a percentage of
   one core.  The window defaults to one ping interval so that every feed
   pings exactly once in it, whatever the phase of its timer.
3. **health** -- every feed must still be on its first connection, and the
   number that measured a ping round trip in the window is reported: a test
   whose pings never went out would measure nothing.

Prints one JSON object.  ``python bench/idle.py --port P [--connections 1000]``
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
import tracemalloc
from functools import partial

import anyio
import anyio.abc

import nonstop


def rss_bytes() -> int:
    """The resident set size now (Linux ``/proc``; elsewhere the peak from ``getrusage``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"need {needed} file descriptors but the hard limit is {hard}: raise it (ulimit -Hn) "
            "or use fewer --connections"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def run(
    port: int, connections: int, ping_interval: float, window: float, trace: bool
) -> dict[str, object]:
    url = f"ws://127.0.0.1:{port}/idle"
    gc.collect()
    if trace:
        tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0] if trace else 0
    rss0 = rss_bytes()
    t_open = time.perf_counter()
    feeds: list[nonstop.AsyncFeed] = []
    release = anyio.Event()

    async def hold(task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with nonstop.connect(url, ping_interval=ping_interval) as feed:
            feeds.append(feed)
            task_status.started()
            await release.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(connections):
            await tg.start(hold)
        with anyio.fail_after(60 + connections / 20):
            for feed in feeds:
                await feed.wait_connected()
        open_seconds = time.perf_counter() - t_open
        await anyio.sleep(1.0)
        gc.collect()
        rss1 = rss_bytes()
        heap1 = tracemalloc.get_traced_memory()[0] if trace else 0
        result: dict[str, object] = {
            "connections": connections,
            "open_seconds": open_seconds,
            "rss_per_conn": (rss1 - rss0) / connections,
        }
        if trace:
            result["heap_per_conn"] = (heap1 - heap0) / connections
            tracemalloc.stop()
            release.set()
            return result
        usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        await anyio.sleep(window)
        usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        metrics = [feed.metrics() for feed in feeds]
        result.update(
            window=wall1 - wall0,
            cpu_seconds=cpu,
            cpu_percent=100.0 * cpu / (wall1 - wall0),
            pinged=sum(m.last_ping_rtt is not None for m in metrics),
            reconnects=sum(m.reconnects for m in metrics),
            open=sum(feed.state is nonstop.State.OPEN for feed in feeds),
        )
        release.set()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="memory and CPU of idle nonstop feeds")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--ping-interval", type=float, default=20.0)
    parser.add_argument(
        "--window", type=float, default=None, help="CPU window in seconds (default: the ping interval)"
    )
    parser.add_argument("--tracemalloc", action="store_true", help="measure the traced Python heap instead")
    args = parser.parse_args(argv)
    raise_fd_limit(args.connections + 256)
    window = args.ping_interval if args.window is None else args.window
    result = anyio.run(
        partial(run, args.port, args.connections, args.ping_interval, window, args.tracemalloc),
        backend="asyncio",
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
