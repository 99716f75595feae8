"""Redundant feeds on real sockets: every message once, every loss reported.

On every back end, a testing server broadcasts one numbered stream to every
connection at a steady rate (the same numbers on each, as an exchange's
public feed does), and a fault script resets one connection at a time:

* with ``redundancy=2`` nothing is missing and nothing is delivered twice,
  by sequence number and by key (the payload itself), with no gap reported;
* legs spread over two servers (``urls=``) cover a server that goes away;
* with one connection, every number missing from the stream lies between a
  ``Gap`` record and the message before it, in ``records()``; with
  ``sequence=`` each gap names exactly the numbers that never came.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from nonstop import Backoff, Disconnected, Gap, Reason
from nonstop.testing import Fault, FeedServer

from .conftest import Backend

pytestmark = pytest.mark.timeout(90)

#: Quick returns, no keep-alive traffic: only the stream on the wire.
CLIENT: dict[str, Any] = dict(backoff=Backoff(initial=0.05, cap=0.2), stable_after=0.2,
                              ping_interval=None, silence_timeout=None)
#: Seconds between two numbers of the stream.
EVERY = 0.002


def number(message: str | bytes) -> int:
    value: int = json.loads(message)["n"]
    return value


@asynccontextmanager
async def broadcasting(*servers: FeedServer) -> AsyncIterator[Callable[[], int]]:
    """Broadcast ``{"n": N}`` to every open connection of *servers* every
    :data:`EVERY` seconds, N = 1, 2, ...; yields a function returning the
    last N sent."""
    sent = 0

    async def run() -> None:
        nonlocal sent
        while True:
            sent += 1
            for server in servers:
                server.broadcast(json.dumps({"n": sent}))
            await anyio.sleep(EVERY)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        yield lambda: sent
        tg.cancel_scope.cancel()


def open_connections(server: FeedServer) -> list[int]:
    return sorted(c.number for c in server.history if c.phase == "open" and c.number)


class Stream:
    """What ``records()`` handed out: numbers and gap records, in order."""

    def __init__(self) -> None:
        self.items: list[int | Gap] = []
        self.notes: list[str | bytes] = []  # messages without a number

    async def consume(self, feed: Any) -> None:
        async for record in feed.records():
            if isinstance(record, Gap):
                self.items.append(record)
            elif record.data.startswith('{"n"'):
                self.items.append(number(record.data))
            else:
                self.notes.append(record.data)

    @property
    def numbers(self) -> list[int]:
        return [item for item in self.items if not isinstance(item, Gap)]

    @property
    def gaps(self) -> list[Gap]:
        return [item for item in self.items if isinstance(item, Gap)]

    async def until(self, count: int, timeout: float = 10) -> None:
        with anyio.fail_after(timeout):
            while len(self.numbers) < count:
                await anyio.sleep(0.01)

    def unreported(self) -> list[int]:
        """Numbers missing from the stream with no gap record where they
        should have been (between the message before and the one after)."""
        out: list[int] = []
        last: int | None = None
        gap_since_last = False
        for item in self.items:
            if isinstance(item, Gap):
                gap_since_last = True
                continue
            if last is not None and item > last + 1 and not gap_since_last:
                out.extend(range(last + 1, item))
            last, gap_since_last = item, False
        return out


@asynccontextmanager
async def consuming(backend: Backend, url: str, options: dict[str, Any]
                    ) -> AsyncIterator[tuple[Any, Stream]]:
    """A feed on *url* whose ``records()`` a task collects, flowing (50
    numbers in); the collection stops on the way out."""
    stream = Stream()
    async with backend.connect(url, **options) as feed, anyio.create_task_group() as tg:
        tg.start_soon(stream.consume, feed)
        await stream.until(50)
        yield feed, stream
        tg.cancel_scope.cancel()


def merged_by(by: str, **options: Any) -> dict[str, Any]:
    """The client's options, merged by sequence number or by key."""
    out = dict(CLIENT, **options)
    if by == "sequence":
        out["sequence"] = number
    return out


def check_whole(stream: Stream, *, ordered: bool = True) -> None:
    """Nothing twice, nothing missing, no gap; in order when merged by
    number (by key, a leg that came back may bring a number before the
    other leg brought the one before it: each leg's order is kept, not a
    global one)."""
    numbers = stream.numbers
    assert numbers, "nothing came"
    assert len(numbers) == len(set(numbers)), "a number was delivered twice"
    if ordered:
        assert numbers == sorted(numbers), "the merged stream is out of order"
    missing = sorted(set(range(min(numbers), max(numbers) + 1)) - set(numbers))
    assert missing == [], f"{len(missing)} numbers missing: {missing[:20]}"
    assert stream.gaps == []


async def reset_one_leg_at_a_time(server: FeedServer, stream: Stream, resets: int) -> None:
    """Reset the oldest open connection, *resets* times, each once the
    stream has moved on past the new connection."""
    for _ in range(resets):
        with anyio.fail_after(10):
            while len(open_connections(server)) < 2:
                await anyio.sleep(0.01)
        server.inject(Fault.RESET, connection=open_connections(server)[0])
        await stream.until(len(stream.numbers) + 100)
        await anyio.sleep(0.1)


@pytest.mark.parametrize("by", ["sequence", "key"])
@pytest.mark.anyio
async def test_two_legs_lose_nothing_while_one_leg_at_a_time_is_reset(by: str,
                                                                      backend: Backend) -> None:
    async with FeedServer(interval=None) as server, broadcasting(server):
        async with consuming(backend, server.url, merged_by(by, redundancy=2)) as (feed, stream):
            await reset_one_leg_at_a_time(server, stream, resets=6)
            metrics = feed.metrics()
    check_whole(stream, ordered=by == "sequence")
    assert metrics.legs == 2 and len(metrics.leg_metrics) == 2
    assert metrics.duplicates > 0
    assert metrics.gaps == 0 and metrics.missing == 0
    assert sum(m.reconnects for m in metrics.leg_metrics) >= 6
    assert server.connections >= 8


@pytest.mark.anyio
async def test_legs_over_two_servers_cover_a_server_that_goes_away(backend: Backend) -> None:
    async with FeedServer(interval=None) as one, FeedServer(interval=None) as two, \
            broadcasting(one, two):
        options = dict(CLIENT, urls=[one.url, two.url], sequence=number, name="pair")
        async with consuming(backend, None, options) as (feed, stream):
            assert (one.connections, two.connections) == (1, 1)  # a leg on each ...
            one.inject(Fault.REFUSE)
            one.inject(Fault.RESET)  # ... gone, and not coming back
            await stream.until(len(stream.numbers) + 300)
            metrics = feed.metrics()
            # (not restored: while it refuses, the kernel may give its port
            # to one of the client's own outgoing connections)
    check_whole(stream)
    assert metrics.legs == 2
    assert metrics.leg_metrics[0].consecutive_failures >= 1  # the first leg kept trying


@pytest.mark.parametrize("by", ["connection", "sequence"])
@pytest.mark.anyio
async def test_one_connection_reports_every_loss_in_a_gap_record(by: str, backend: Backend) -> None:
    async with FeedServer(interval=None) as server, broadcasting(server):
        async with consuming(backend, server.url, merged_by(by)) as (_feed, stream):
            for _ in range(5):
                server.inject(Fault.RESET)
                await stream.until(len(stream.numbers) + 100)
    numbers = stream.numbers
    assert len(numbers) == len(set(numbers)) and numbers == sorted(numbers)
    missing = set(range(numbers[0], numbers[-1] + 1)) - set(numbers)
    assert missing, "the resets lost nothing: the test shows nothing"
    assert stream.unreported() == []
    if by == "sequence":  # each gap names exactly the numbers that never came
        named = {n for gap in stream.gaps
                 for n in range(gap.first_missing or 0, (gap.last_missing or -1) + 1)}
        assert named == missing
        assert all(gap.reason == "sequence" for gap in stream.gaps)
    else:
        assert len(stream.gaps) == 5
        assert all(gap.reason == "reset" for gap in stream.gaps)


class Lifetime:
    """Closes every connection of *server* with 1001 once it is *age*
    seconds old, as servers with a maximum connection lifetime do."""

    def __init__(self, server: FeedServer, age: float) -> None:
        self.server = server
        self.age = age
        self.closed: list[int] = []  # connections it had to close

    async def run(self) -> None:
        first_seen: dict[int, float] = {}
        while True:
            now = anyio.current_time()
            for number in open_connections(self.server):
                if now - first_seen.setdefault(number, now) >= self.age \
                        and number not in self.closed:
                    self.closed.append(number)
                    self.server.inject(Fault.CLOSE_CODE, code=1001, connection=number)
            await anyio.sleep(0.01)


#: Rotation in a test's time: a replacement is opened rotation_lead = 0.4 s
#: before max_lifetime.
ROTATION: dict[str, Any] = dict(CLIENT, connect_timeout=0.2, handshake_timeout=0.2)


@pytest.mark.parametrize("by", ["sequence", "key"])
@pytest.mark.anyio
async def test_one_connection_rotated_before_the_servers_limit_loses_nothing(
        by: str, backend: Backend) -> None:
    options = merged_by(by, **ROTATION, max_lifetime=1.5)
    async with FeedServer(interval=None) as server, broadcasting(server), \
            anyio.create_task_group() as tg:
        limit = Lifetime(server, age=2.0)
        tg.start_soon(limit.run)
        async with consuming(backend, server.url, options) as (feed, stream):
            with anyio.fail_after(20):
                while feed.metrics().rotations < 4:
                    await anyio.sleep(0.05)
            await stream.until(len(stream.numbers) + 50)
            metrics = feed.metrics()
        tg.cancel_scope.cancel()
    check_whole(stream, ordered=by == "sequence")
    assert limit.closed == []  # every connection was replaced before the server's limit
    assert metrics.legs == 1 and metrics.rotations >= 4
    assert metrics.gaps == 0


@pytest.mark.anyio
async def test_a_servers_close_1001_teaches_the_lifetime(backend: Backend) -> None:
    options = dict(ROTATION, max_lifetime=30.0, sequence=number)
    async with FeedServer(interval=None) as server, broadcasting(server), \
            anyio.create_task_group() as tg:
        limit = Lifetime(server, age=1.5)
        tg.start_soon(limit.run)
        async with consuming(backend, server.url, options) as (feed, stream):
            with anyio.fail_after(20):
                while feed.metrics().rotations < 3:
                    await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert limit.closed == [1]  # the first connection taught it; the others were rotated
    numbers = stream.numbers
    assert len(numbers) == len(set(numbers)) and numbers == sorted(numbers)
    assert stream.unreported() == []


@pytest.mark.anyio
async def test_a_leg_that_answers_pings_but_brings_no_data_is_replaced(backend: Backend) -> None:
    events: list[Any] = []
    async with FeedServer(interval=None) as server, broadcasting(server):
        options = dict(CLIENT, redundancy=2, sequence=number, leg_lag=0.5, ping_interval=0.2,
                       on_event=events.append)
        async with consuming(backend, server.url, options) as (feed, stream):
            muted = open_connections(server)[0]
            server.inject(Fault.MUTE, connection=muted)  # pongs still come, data does not
            t0 = anyio.current_time()
            with anyio.fail_after(10):
                while not any(isinstance(e, Disconnected) and e.reason is Reason.LAGGING
                              for e in events):
                    await anyio.sleep(0.01)
            replaced_after = anyio.current_time() - t0
            await stream.until(len(stream.numbers) + 100)
            metrics = feed.metrics()
    check_whole(stream)
    assert replaced_after < 0.5 + 0.5
    assert metrics.disconnects.get("lagging") == 1
    assert server.connection(muted).phase == "closed"


@pytest.mark.anyio
async def test_messages_without_a_number_are_delivered_once_and_logged_once(
        backend: Backend) -> None:
    logger = logging.getLogger(f"tests.unreadable.{backend.name}")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    notes = [f"note {i}" for i in range(5)]
    got: list[str] = []
    try:
        async with FeedServer(interval=None) as server, broadcasting(server):
            options = dict(CLIENT, redundancy=2, sequence=number, logger=logger)
            async with consuming(backend, server.url, options) as (feed, stream):
                with anyio.fail_after(10):
                    while len(open_connections(server)) < 2 or feed.metrics().legs_live < 2:
                        await anyio.sleep(0.01)
                for note in notes:
                    server.broadcast(note)
                    await anyio.sleep(0.02)
                await stream.until(len(stream.numbers) + 50)
                metrics = feed.metrics()
                got = list(stream.notes)
    finally:
        logger.removeHandler(handler)
    assert got == notes  # each once, in order
    assert metrics.unreadable == 2 * len(notes)  # every arrival counted, on both legs
    said = [line for line in lines if "sequence function raised JSONDecodeError" in line]
    assert len(said) == 1, lines
