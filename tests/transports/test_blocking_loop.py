"""The blocking driver's loop ownership: a consumer that waits in ``next()``
runs the loop itself, and the I/O thread takes it back when the consumer is
away (see ``nonstop.transports._blocking``).  What every driver must do with
a waiting or an absent consumer is in test_consumer_reads, over all back
ends; here is what takes threads: two consumer threads sharing a feed, and
stopping the feed from the thread that runs its loop or while no one does.

Real sockets on 127.0.0.1 (the ``websockets`` package's threaded server,
TLS from trustme); hard timeouts; time bounds many times what they guard.
"""

from __future__ import annotations

import threading
import time

import pytest
from websockets.sync.server import ServerConnection

import nonstop
from nonstop import Disconnected

from .conftest import QUIET_FAST
from .test_driver_behaviour import burst, server

pytestmark = pytest.mark.timeout(60)


def test_two_threads_share_the_messages_exactly_once() -> None:
    count = 5000
    with server(burst(count)) as port:
        with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", queue_size=64, **QUIET_FAST) as feed:
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


def test_stop_while_the_consumer_is_away_ends_promptly() -> None:
    """The consumer broke out of its loop (nobody owns the loop for a
    moment): stop() still ends the feed, well within close_timeout."""
    with server(burst(100)) as port:
        feed = nonstop.sync.connect(f"ws://127.0.0.1:{port}/", **QUIET_FAST).start()
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
                                    on_event=on_event, **QUIET_FAST)
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
