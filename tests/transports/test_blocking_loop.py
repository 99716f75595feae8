"""The blocking driver's loop ownership: a consumer that waits in ``next()``
runs the loop itself, and the I/O thread takes it back when the consumer is
away (see ``nonstop.transports._blocking``).

Real sockets on 127.0.0.1 (the ``websockets`` package's threaded server,
TLS from trustme); hard timeouts; time bounds many times what they guard.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from websockets.sync.server import ServerConnection

import nonstop
from nonstop import Disconnected

from .test_driver_behaviour import FAST, burst, ping_while_busy, server
from .test_tls import CERTS, client_context, tls_server

pytestmark = pytest.mark.timeout(60)

# The speed-ups under test here: on whatever NONSTOP_FAST says.
QUIET: dict[str, Any] = dict(FAST, ping_interval=None, silence_timeout=None, fast=True)


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


def test_pings_are_answered_while_the_consumer_is_busy() -> None:
    """The consumer takes a message and then works for 3 s without asking
    for the next: the I/O thread takes the loop back and answers the
    server's ping long before the consumer returns."""
    answered: list[float] = []

    with server(ping_while_busy(answered)) as port:
        with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", **QUIET) as feed:
            assert feed.receive(timeout=10) == "first"  # the consumer ran the loop for this
            feed.send("busy now")
            time.sleep(3.0)
            assert answered and answered[0] < 2.0, answered
            assert feed.receive(timeout=10) == "second"


def test_messages_queue_up_while_the_consumer_is_busy() -> None:
    """While the consumer is away the I/O thread keeps reading into the queue."""
    def handler(ws: ServerConnection) -> None:
        ws.send("first")
        assert ws.recv(10) == "more"
        for i in range(200):
            ws.send(str(i))
        for _ in ws:
            pass

    with server(handler) as port:
        with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", **QUIET) as feed:
            assert feed.receive(timeout=10) == "first"
            feed.send("more")
            deadline = time.monotonic() + 10
            while feed.metrics().queued < 200 and time.monotonic() < deadline:
                time.sleep(0.01)  # not iterating: someone else must read
            assert feed.metrics().queued == 200
            assert [feed.receive(timeout=10) for _ in range(200)] == [str(i) for i in range(200)]


def test_a_receive_timeout_while_running_the_loop_loses_nothing() -> None:
    def handler(ws: ServerConnection) -> None:
        assert ws.recv(10) == "go"
        ws.send("late")
        for _ in ws:
            pass

    with server(handler) as port:
        with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", **QUIET) as feed:
            feed.wait_connected(10)
            with pytest.raises(TimeoutError):
                feed.receive(timeout=0.2)
            feed.send("go")
            assert feed.receive(timeout=10) == "late"
            with pytest.raises(TimeoutError):
                feed.receive(timeout=0.2)
            assert feed.state is nonstop.State.OPEN


def test_keepalive_runs_while_the_consumer_waits() -> None:
    """The consumer blocks in receive() on a feed that sends nothing: the
    loop it runs still sends pings on time and measures their round trip;
    no silence reconnect."""
    events: list[nonstop.core.AppEvent] = []

    def handler(ws: ServerConnection) -> None:
        for _ in ws:
            pass

    with server(handler) as port:
        with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", ping_interval=0.1, ping_timeout=2.0,
                                  silence_timeout=0.3, on_event=events.append, **FAST) as feed:
            feed.wait_connected(10)
            with pytest.raises(TimeoutError):
                feed.receive(timeout=1.5)
            metrics = feed.metrics()
            assert metrics.last_ping_rtt is not None
            assert metrics.reconnects == 0
            assert not [e for e in events if isinstance(e, Disconnected)]


def test_two_threads_share_the_messages_exactly_once() -> None:
    count = 5000
    with server(burst(count)) as port:
        with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", queue_size=64, **QUIET) as feed:
            got: list[list[str | bytes]] = [[], []]

            def consume(mine: list[str | bytes]) -> None:
                for batch in feed.batches(limit=7):
                    mine.extend(batch)

            threads = [threading.Thread(target=consume, args=(got[i],)) for i in range(2)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while len(got[0]) + len(got[1]) < count and time.monotonic() < deadline:
                time.sleep(0.01)
            feed.stop()
            for t in threads:
                t.join(10)
            assert not any(t.is_alive() for t in threads)
    together = got[0] + got[1]
    assert sorted(together, key=lambda m: int(m)) == [str(i) for i in range(count)]
    for mine in got:  # each thread saw its share in order
        assert [int(m) for m in mine] == sorted(int(m) for m in mine)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_echo_from_the_consuming_thread(tls: bool) -> None:
    """Send, then wait for the echo, 300 times: on plain TCP send() writes
    itself; over TLS the loop writes (the I/O thread, or the consumer once
    it waits)."""
    ca, cert = CERTS["trusted"]
    context = tls_server(cert, echo) if tls else server(echo)
    with context as port:
        url = f"wss://localhost:{port}/" if tls else f"ws://127.0.0.1:{port}/"
        options: dict[str, Any] = dict(QUIET, ssl=client_context(ca)) if tls else QUIET
        with nonstop.sync.connect(url, **options) as feed:
            feed.wait_connected(10)
            for i in range(300):
                feed.send(f"m{i}")
                assert feed.receive(timeout=10) == f"m{i}"


def test_stop_while_the_consumer_is_away_ends_promptly() -> None:
    """The consumer broke out of its loop (nobody owns the loop for a
    moment): stop() still ends the feed, well within close_timeout."""
    with server(burst(100)) as port:
        feed = nonstop.sync.connect(f"ws://127.0.0.1:{port}/", **QUIET).start()
        for message in feed:
            if message == "10":
                break
        t0 = time.monotonic()
        feed.stop()
        assert time.monotonic() - t0 < 5.0
        assert feed.state is nonstop.State.STOPPED


def test_stop_from_a_callback_in_the_consuming_thread_does_not_wait_for_itself() -> None:
    """The server goes away while the consumer waits in ``next()``: the
    consumer's thread runs the loop, so it runs ``on_event`` too, and a
    ``stop()`` there must not wait for the loop it is called from."""
    seen: list[int] = []

    def handler(ws: ServerConnection) -> None:
        ws.send("only")
        assert ws.recv(10) == "bye"

    with server(handler) as port:
        def on_event(event: nonstop.core.AppEvent) -> None:
            if isinstance(event, Disconnected):
                seen.append(threading.get_ident())
                feed.stop()

        feed = nonstop.sync.connect(f"ws://127.0.0.1:{port}/", close_timeout=10,
                                    on_event=on_event, **QUIET)
        t0 = time.monotonic()
        with feed:
            got = []
            for message in feed:
                got.append(message)
                feed.send("bye")
        assert got == ["only"]
        assert seen == [threading.get_ident()]  # it did run in this thread
        assert time.monotonic() - t0 < 6.0  # not close_timeout + 2 s
        assert feed.state is nonstop.State.STOPPED
