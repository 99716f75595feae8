"""nonstop's blocking driver (``nonstop.sync.connect``): an I/O thread and a queue.

Theory of operation
-------------------
This (main) thread iterates the feed with ``for`` (``mode="batches"``:
``feed.batches()``).  While it waits for messages it runs the feed's loop
itself (reads, parses, queues); the feed's background thread takes the loop
back only when this thread has been away for a while.  The background
thread is there and shares the GIL, as it does for every blocking user, so
it is measured as is.
"""

from __future__ import annotations

import time

import nonstop

QUEUE_SIZE = 4096
MAX_MESSAGE = 1 << 20


def _connect(url: str, legs: int = 1, seq: bool = False) -> nonstop.SyncFeed:
    return nonstop.sync.connect(
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


def receive(url: str, count: int, size: int, mode: str = "iterate", legs: str = "1",
            seq: str = "") -> float:
    n = 0
    last: str | bytes = b""
    with _connect(url, int(legs), bool(seq)) as feed:
        feed.wait_connected(10)
        deadline = time.monotonic() + 10
        while int(legs) > 1 and feed.metrics().legs_live < int(legs) and time.monotonic() < deadline:
            time.sleep(0.001)  # every leg open: each must get the "go"
        t0 = time.perf_counter()
        feed.send("go")
        if mode == "batches":
            for batch in feed.batches():
                n += len(batch)
                if n >= count:
                    last = batch[-1]
                    break
        else:
            for message in feed:
                n += 1
                if n == count:
                    last = message
                    break
        t1 = time.perf_counter()
    if n != count or len(last) != size:
        raise RuntimeError(f"got {n} of {count} messages, last of {len(last)} bytes (want {size})")
    return t1 - t0


def echo(url: str, rounds: int, message: str, mode: str = "iterate") -> list[float]:
    times: list[float] = []
    with _connect(url) as feed:
        feed.wait_connected(10)
        for _ in range(rounds):
            t0 = time.perf_counter()
            feed.send(message)
            reply = next(feed)
            times.append(time.perf_counter() - t0)
            if reply != message:
                raise RuntimeError(f"echo returned {reply!r}, sent {message!r}")
    return times
