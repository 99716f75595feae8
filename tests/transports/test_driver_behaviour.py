"""Driver behaviour: slow consumers, cancellation, stopping, logging, refusals.

Real sockets on 127.0.0.1 (the ``websockets`` package's threaded server);
a test taking ``backend`` runs on asyncio, trio and the blocking driver (see
conftest), the others say why they are one driver's own.  Hard timeouts,
and no assertion on how fast anything happened beyond generous bounds.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import pytest
from websockets.sync.server import ServerConnection, serve
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

import nonstop
from nonstop import Disconnected, Reason, State

from .conftest import FAST, Backend, until_seen

pytestmark = pytest.mark.timeout(60)


@contextmanager
def server(handler: Callable[[ServerConnection], None]) -> Iterator[int]:
    with serve(handler, "127.0.0.1", 0) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield srv.socket.getsockname()[1]
        finally:
            srv.shutdown()
            thread.join(10)


def burst(count: int, then_wait: bool = True, pad: int = 0) -> Callable[[ServerConnection], None]:
    """Send *count* numbered messages as fast as possible, then idle (with
    *pad*: ``"<n>:xxx..."``, *pad* x's)."""

    def handler(ws: ServerConnection) -> None:
        for i in range(count):
            ws.send(f"{i}:{'x' * pad}" if pad else str(i))
        if then_wait:
            for _ in ws:
                pass

    return handler


def ping_while_busy(answered: list[float], *, go: bool = False) -> Callable[[ServerConnection], None]:
    """Send "first"; once the client says "busy now", ping it and record
    in *answered* how long the pong took; then send "second" (with *go*:
    first wait for the client's "go")."""

    def handler(ws: ServerConnection) -> None:
        if go:
            assert ws.recv(10) == "go"
        ws.send("first")
        assert ws.recv(10) == "busy now"
        t0 = time.monotonic()
        if ws.ping().wait(10):
            answered.append(time.monotonic() - t0)
        ws.send("second")
        for _ in ws:
            pass

    return handler


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------------
# slow consumers


@pytest.mark.anyio
async def test_backpressure_loses_nothing_and_suspends_liveness_checks(backend: Backend) -> None:
    """The consumer stalls far longer than silence_timeout: reading pauses,
    the connection survives, and every message arrives in order."""
    with server(burst(3000)) as port, anyio.fail_after(40):
        async with backend.connect(f"ws://127.0.0.1:{port}/", queue_size=16,
                                   silence_timeout=0.3, ping_interval=0.1, ping_timeout=0.1,
                                   **FAST) as feed:
            await feed.wait_connected(10)
            with anyio.fail_after(10):
                while not feed.metrics().reading_paused:
                    await anyio.sleep(0.01)
            await anyio.sleep(1.0)  # > silence_timeout and ping_timeout while paused
            paused = feed.metrics()
            got = []
            async for message in feed:
                got.append(int(message))
                if len(got) == 3000:
                    break
            metrics = feed.metrics()
    assert paused.reading_paused and paused.queued >= 16
    assert got == list(range(3000))
    assert metrics.messages_dropped == 0 and metrics.overflows > 0
    assert metrics.connection == 1 and metrics.disconnects == {}


@pytest.mark.parametrize("pad", [0, 5000], ids=["small", "big"])  # big: over HOLD_SIZE
def test_blocking_for_loops_lose_and_repeat_nothing_when_mixed(pad: int) -> None:
    """The blocking driver's own: its ``for message in feed`` walks each
    batch with a C iterator; breaking out of it, or calling
    next()/receive()/batches() in between, must hand on exactly the
    messages it had not reached, in order."""
    count = 3000 if not pad else 300
    with server(burst(count, pad=pad)) as port:
        with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", **FAST) as feed:
            feed.wait_connected(10)
            deadline = time.monotonic() + 10
            while feed.metrics().messages_received < count and time.monotonic() < deadline:
                time.sleep(0.01)  # all queued: the first loop's batch holds many
            got: list[str | bytes] = []
            for message in feed:
                got.append(message)
                if len(got) == 5:
                    break
            got.append(next(feed))
            got.append(feed.receive(timeout=10))
            it = iter(feed)
            got += [next(it), next(feed), next(it), next(it)]
            for batch in feed.batches(limit=3):
                assert len(batch) == 3  # the limit holds for what a loop left, too
                got += batch
                break
            for message in it:  # the old loop's iterator goes on where it is
                got.append(message)
                if len(got) == count - 10:
                    break
            for message in feed:
                got.append(message)
                if len(got) == count:
                    break
            with pytest.raises(TimeoutError):
                feed.receive(timeout=0.2)  # nothing left over, nothing twice
    assert [int(str(m).split(":")[0]) for m in got] == list(range(count))


@contextmanager
def message_then_protocol_error() -> Iterator[tuple[int, list[object]]]:
    """A server that, right after the upgrade, sends a fragmented text
    message and then a continuation frame with nothing to continue
    (Autobahn 5.15), and records what the client sends: the client must
    still be able to answer the message, then fail with 1002."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[object] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            ws = WSConnection(ConnectionType.SERVER)
            while not any(isinstance(e, Request) for e in seen):
                ws.receive_data(conn.recv(4096))
                seen.extend(ws.events())
            conn.sendall(ws.send(AcceptConnection()))
            conn.sendall(b"\x01\x09fragment1\x80\x09fragment2\x00\x09fragment3")
            while not any(isinstance(e, CloseConnection) for e in seen):
                data = conn.recv(4096)
                if not data:
                    break
                ws.receive_data(data)
                seen.extend(ws.events())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        thread.join(10)
        listener.close()


def answers_then_close(seen: list[object]) -> list[object]:
    return [(type(e).__name__, getattr(e, "data", getattr(e, "code", None)))
            for e in seen if isinstance(e, (TextMessage, CloseConnection))]


@pytest.mark.anyio
async def test_a_late_consumer_answers_the_messages_before_a_protocol_error(
    backend: Backend,
) -> None:
    """The application starts iterating only after the bad bytes arrived: the
    failure waits (up to a second) until it took and answered the message."""
    with message_then_protocol_error() as (port, seen), anyio.fail_after(30):
        async with backend.connect(f"ws://127.0.0.1:{port}/", max_attempts=1, **FAST) as feed:
            await feed.wait_connected(10)
            await anyio.sleep(0.2)
            with pytest.raises(nonstop.FeedGaveUp):
                async for message in feed:
                    await feed.send(message)
    assert answers_then_close(seen) == [("TextMessage", "fragment1fragment2"),
                                        ("CloseConnection", 1002)]


@pytest.mark.anyio
async def test_async_iteration_mixed_with_batches_in_order() -> None:
    """The async feed's own: ``__anext__`` hands out a batch it took one
    message at a time (the blocking counterpart is the for-loop test above)."""
    count = 2000
    with server(burst(count)) as port:
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", **FAST) as feed:
            await feed.wait_connected(10)
            with anyio.fail_after(20):
                while feed.metrics().messages_received < count:
                    await anyio.sleep(0.01)
                got: list[str | bytes] = [await feed.__anext__() for _ in range(3)]
                async for batch in feed.batches(limit=2):
                    assert len(batch) == 2  # what plain iteration left, within the limit
                    got += batch
                    break
                async for message in feed:
                    got.append(message)
                    if len(got) == count:
                        break
    assert [int(m) for m in got] == list(range(count))


@pytest.mark.anyio
async def test_drop_oldest_keeps_the_newest_messages(backend: Backend) -> None:
    with server(burst(1000)) as port, anyio.fail_after(30):
        async with backend.connect(f"ws://127.0.0.1:{port}/", queue_size=10,
                                   overflow="drop_oldest", **FAST) as feed:
            with anyio.fail_after(10):
                while feed.metrics().messages_received < 1000:
                    await anyio.sleep(0.01)
            got = [int(await feed.__anext__()) for _ in range(10)]
            metrics = feed.metrics()
    assert got == list(range(990, 1000))
    assert metrics.messages_dropped == 990 and metrics.queued == 0


@pytest.mark.anyio
async def test_disconnect_policy_reconnects_a_slow_consumer(backend: Backend) -> None:
    events: list[nonstop.core.AppEvent] = []
    with server(burst(500)) as port, anyio.fail_after(30):
        async with backend.connect(f"ws://127.0.0.1:{port}/", queue_size=10,
                                   overflow="disconnect", on_event=events.append, **FAST) as feed:
            slow = await until_seen(events, lambda e: isinstance(e, Disconnected))
            await until_seen(events, lambda e: isinstance(e, nonstop.Connected) and e.connection >= 2)
            metrics = feed.metrics()
    assert slow.reason is Reason.SLOW_CONSUMER and slow.code == 1001
    assert metrics.messages_dropped > 0 and metrics.connection >= 2


# ---------------------------------------------------------------------------
# cancellation and stopping


@pytest.mark.anyio
async def test_cancelling_the_enclosing_scope_leaves_nothing_behind() -> None:
    """Cancel a feed mid-iteration, again and again: no file descriptor and
    no task accumulates (the first round warms up the event loop's own).
    Cancel scopes are the async driver's own way to end a feed."""

    async def one_round(port: int) -> None:
        with anyio.move_on_after(0.3):
            async with nonstop.connect(f"ws://127.0.0.1:{port}/", **FAST) as feed:
                async for _message in feed:
                    pass  # blocks after the burst until cancelled
        assert feed._done.is_set()  # the driver task has finished

    with server(burst(10)) as port, anyio.fail_after(30):
        await one_round(port)
        await anyio.sleep(0.2)
        before = open_fds()
        tasks_before = len(anyio.get_running_tasks())
        for _ in range(5):
            await one_round(port)
        await anyio.sleep(0.2)
        assert open_fds() <= before
        assert len(anyio.get_running_tasks()) <= tasks_before


@pytest.mark.anyio
async def test_a_cancelled_feed_ends_stopped_open_or_in_backoff() -> None:
    """Cancelling the enclosing scope (the async driver's own) aborts the
    socket at once; the feed must then say STOPPED (not STOPPING forever),
    and its log and ``on_event`` see the end."""
    seen: list[object] = []
    with server(burst(10)) as port, anyio.fail_after(30):
        with anyio.move_on_after(0.5):
            async with nonstop.connect(f"ws://127.0.0.1:{port}/", on_event=seen.append,
                                       **FAST) as feed:
                async for _message in feed:
                    pass  # blocks after the burst until cancelled
        assert feed.state is State.STOPPED and feed.metrics().state is State.STOPPED
        assert [type(e).__name__ for e in seen[-2:]] == ["Disconnected", "Stopped"]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    try:
        with anyio.fail_after(30), anyio.move_on_after(0.3):
            async with nonstop.connect(f"ws://127.0.0.1:{closed.getsockname()[1]}/",
                                       **FAST) as feed:
                await anyio.sleep(10)
        assert feed.state is State.STOPPED
    finally:
        closed.close()


@pytest.mark.anyio
async def test_leaving_the_block_is_a_graceful_stop(backend: Backend) -> None:
    closes: list[int | None] = []

    def handler(ws: ServerConnection) -> None:
        ws.send("one")
        for _ in ws:
            pass
        closes.append(ws.close_code)

    with server(handler) as port, anyio.fail_after(20):
        async with backend.connect(f"ws://127.0.0.1:{port}/", **FAST) as feed:
            assert await feed.__anext__() == "one"
        assert feed.state is State.STOPPED
        with anyio.fail_after(5):
            while not closes:
                await anyio.sleep(0.01)
    assert closes == [1000]
    assert [type(e).__name__ for e in feed.history][-2:] == ["Disconnected", "Stopped"]


def test_blocking_stop_from_another_thread_ends_iteration() -> None:
    """The blocking driver's own: a consumer thread iterating with ``for``
    ends when another thread calls ``stop()``."""
    with server(burst(5)) as port:
        feed = nonstop.sync.connect(f"ws://127.0.0.1:{port}/", **FAST).start()
        got: list[str | bytes] = []
        consumer = threading.Thread(target=lambda: got.extend(feed), daemon=True)
        consumer.start()
        feed.wait_connected(10)
        time.sleep(0.2)
        feed.stop()
        consumer.join(10)
    assert not consumer.is_alive()
    assert got == [str(i) for i in range(5)]
    assert feed.state is State.STOPPED


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_blocking_stop_from_a_signal_handler() -> None:
    """The blocking driver's own: ``stop()`` from a signal handler that
    interrupts ``list(feed)`` in the main thread."""
    with server(burst(3)) as port:
        with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", **FAST) as feed:
            previous = signal.signal(signal.SIGALRM, lambda *_: feed.stop())
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.5)
                got = list(feed)  # returns once the handler has stopped the feed
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
    assert got == ["0", "1", "2"]
    stopped = feed.history[-1]
    assert isinstance(stopped, nonstop.Stopped) and stopped.reason is Reason.STOPPED


# ---------------------------------------------------------------------------
# refused connections and logging


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.anyio
async def test_refused_connections_are_retried_with_backoff(backend: Backend) -> None:
    events: list[nonstop.core.AppEvent] = []
    port = free_port()
    with anyio.fail_after(20):
        async with backend.connect(f"ws://127.0.0.1:{port}/", max_attempts=3,
                                   on_event=events.append, **FAST) as feed:
            with pytest.raises(nonstop.FeedGaveUp) as info:
                await feed.__anext__()
    refused = [e for e in events if isinstance(e, Disconnected)]
    assert [e.reason for e in refused] == [Reason.REFUSED] * 3
    assert all(0 <= (e.retry_in or 0) <= 0.2 for e in refused)
    assert "max_attempts" in str(info.value)


@pytest.mark.anyio
async def test_log_lines_carry_keywords_and_no_secret(
    caplog: pytest.LogCaptureFixture, backend: Backend,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nonstop")

    def handler(ws: ServerConnection) -> None:
        ws.send("x")
        ws.close(1011, "oops")

    with server(handler) as port, anyio.fail_after(30):
        async with backend.connect(
            f"ws://user:hunter2@127.0.0.1:{port}/feed?token=SECRET123&symbol=BTC",
            headers=lambda: {"Authorization": "Bearer SECRET456"},
            name="prices", max_attempts=2, **FAST,
        ) as feed:
            with pytest.raises(nonstop.FeedGaveUp):
                while True:
                    await feed.receive(timeout=10)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "nonstop")
    for keyword in ("[CONNECTING]", "[CONNECTED]", "[DISCONNECTED]", "[RECONNECTING]",
                    "[STOPPED]"):
        assert keyword in text
    assert "reason=server_closed code=1011" in text
    for secret in ("SECRET123", "SECRET456", "hunter2"):
        assert secret not in text
    assert "token=***&symbol=BTC" in text  # only the secret is hidden


@pytest.mark.anyio
async def test_stopping_at_any_moment_of_the_handshake_never_crashes() -> None:
    """A stop() racing a read or a connect that has just completed: the late
    input is dropped (found stopping feeds at random moments, 2 in 400)."""
    import random

    from nonstop.testing import FeedServer

    rng = random.Random(3)
    async with FeedServer(interval=0.0005) as srv:
        with anyio.fail_after(60):
            for _ in range(150):
                async with nonstop.connect(srv.url, **FAST) as feed:
                    await anyio.sleep(rng.uniform(0, 0.004))
                assert feed.state is State.STOPPED
