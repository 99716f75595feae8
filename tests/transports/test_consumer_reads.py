"""A consumer that waits, and one that is away: keepalive, queueing and
order must not depend on which of the two the feed has.

On trio (plain TCP) a consumer that waits for messages reads the socket in
its own task while the loop's task steps aside, and the loop's task takes
the socket back once the consumer has been away for ``HANDBACK`` (see
``AsyncFeed._consumer_read``); on asyncio the same behaviour comes from the
loop's task and the protocol callback; in the blocking driver a consumer
waiting in ``next()`` runs the loop itself and the I/O thread takes it back
when the consumer is away (see ``nonstop.transports._blocking``).  A test
taking ``backend`` runs on all three; the others are about async tasks.

Real sockets on 127.0.0.1 (the ``websockets`` package's threaded server);
hard timeouts; time bounds many times what they guard.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from websockets.sync.server import ServerConnection

import nonstop
from nonstop import Disconnected, Reason, State
from tests.helpers import frame

from .backends import backend_for
from .conftest import FAST, QUIET_FAST, Backend
from .test_driver_behaviour import burst, ping_while_busy, server
from .test_streams import accept_upgrade
from .test_tls import CERTS, client_context, tls_server

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


async def take_the_socket(feed: Any, backend: Backend) -> None:
    """Wait for a message with nothing coming, so that what follows runs
    with the consumer in charge: on trio it then reads the socket itself
    (checked); the blocking consumer runs the loop while it waits."""
    await feed.wait_connected(10)
    if backend.blocking:
        with pytest.raises(TimeoutError):
            await feed.receive(timeout=0.2)
        return
    with anyio.move_on_after(0.2):
        await feed.__anext__()
    assert feed._consumer_reads is (backend.name == "trio")


async def test_pings_are_answered_while_the_consumer_is_busy(backend: Backend) -> None:
    """The consumer (reading the socket itself on trio, running the loop in
    the blocking driver) takes a message, then works for 3 s without
    iterating: the loop's task or the I/O thread takes the socket back and
    answers the server's ping long before the consumer returns."""
    answered: list[float] = []

    with server(ping_while_busy(answered, go=True)) as port, anyio.fail_after(30):
        async with backend.connect(f"ws://127.0.0.1:{port}/", **QUIET_FAST) as feed:
            await take_the_socket(feed, backend)
            await feed.send("go")
            assert await feed.__anext__() == "first"  # the consumer read it itself (trio)
            await feed.send("busy now")
            await anyio.sleep(3.0)  # not iterating
            assert answered and answered[0] < 2.0, answered
            assert await feed.__anext__() == "second"


async def test_messages_queue_up_while_the_consumer_is_busy(backend: Backend) -> None:
    """While the consumer is away the loop keeps reading into the queue."""

    def handler(ws: ServerConnection) -> None:
        assert ws.recv(10) == "go"
        ws.send("first")
        assert ws.recv(10) == "more"
        for i in range(200):
            ws.send(str(i))
        for _ in ws:
            pass

    with server(handler) as port, anyio.fail_after(30):
        async with backend.connect(f"ws://127.0.0.1:{port}/", **QUIET_FAST) as feed:
            await take_the_socket(feed, backend)
            await feed.send("go")
            assert await feed.__anext__() == "first"
            await feed.send("more")
            with anyio.fail_after(10):
                while feed.metrics().queued < 200:
                    await anyio.sleep(0.01)  # not iterating: someone else must read
            assert feed.metrics().queued == 200
            assert [await feed.__anext__() for _ in range(200)] == [str(i) for i in range(200)]


async def test_keepalive_runs_while_the_consumer_waits(backend: Backend) -> None:
    """The consumer waits for a message on a feed that sends nothing: the
    loop it runs (or leaves to the loop's task) still sends pings on time
    and measures their round trip; no reconnect (the silence watchdog, which
    counts data only, is off for this quiet feed)."""
    events: list[nonstop.core.AppEvent] = []

    def handler(ws: ServerConnection) -> None:
        for _ in ws:
            pass

    with server(handler) as port, anyio.fail_after(30):
        async with backend.connect(f"ws://127.0.0.1:{port}/", ping_interval=0.1, ping_timeout=2.0,
                                   silence_timeout=None, on_event=events.append, **FAST) as feed:
            await feed.wait_connected(10)
            with pytest.raises(TimeoutError):
                await feed.receive(timeout=1.5)  # nothing comes; pongs do
            metrics = feed.metrics()
            assert metrics.last_ping_rtt is not None
            assert metrics.reconnects == 0
            assert not [e for e in events if isinstance(e, Disconnected)]


def late_after_go(ws: ServerConnection) -> None:
    """Sends "late" once the client said "go"."""
    assert ws.recv(10) == "go"
    ws.send("late")
    for _ in ws:
        pass


async def test_a_receive_timeout_loses_nothing(backend: Backend) -> None:
    with server(late_after_go) as port, anyio.fail_after(30):
        async with backend.connect(f"ws://127.0.0.1:{port}/", **QUIET_FAST) as feed:
            await feed.wait_connected(10)
            with pytest.raises(TimeoutError):
                await feed.receive(timeout=0.2)
            await feed.send("go")
            assert await feed.receive(timeout=10) == "late"
            with pytest.raises(TimeoutError):
                await feed.receive(timeout=0.2)
            assert feed.state is State.OPEN


async def test_a_cancelled_wait_loses_nothing(anyio_backend: object) -> None:
    """A cancelled ``__anext__`` (the async feed's own way to stop
    waiting; the blocking one has only the timeout above)."""

    with server(late_after_go) as port, anyio.fail_after(30):
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", **QUIET_FAST) as feed:
            await take_the_socket(feed, backend_for(anyio_backend))  # type: ignore[arg-type]
            for _ in range(3):
                with anyio.move_on_after(0.1):
                    await feed.__anext__()
            await feed.send("go")
            assert await feed.__anext__() == "late"
            assert feed.state is State.OPEN


async def test_stop_from_another_task_ends_a_waiting_consumer() -> None:
    """A consumer task beside the one that stops the feed (tasks: the async
    driver's own; the blocking one's threads are in test_blocking_loop)."""
    with server(echo) as port, anyio.fail_after(30):
        got: list[str | bytes] = []
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", **QUIET_FAST) as feed:
            await feed.wait_connected(10)

            async def consume() -> None:
                async for message in feed:
                    got.append(message)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await feed.send("one")
                with anyio.fail_after(10):
                    while not got:
                        await anyio.sleep(0.01)
                await anyio.sleep(0.1)  # the consumer waits on the socket again
                await feed.aclose()
        assert got == ["one"]
        assert feed.state is State.STOPPED


async def test_the_server_going_away_while_the_consumer_waits_is_seen_and_healed() -> None:
    """The server closes while the consumer waits on the socket (the trio
    consumer read; on asyncio the protocol callback): the end is reported,
    the feed reconnects, and the consumer gets the next connection's
    messages."""
    connections: list[int] = []

    def handler(ws: ServerConnection) -> None:
        connections.append(1)
        ws.send(f"hello {len(connections)}")
        if len(connections) == 1:
            time.sleep(0.3)  # the consumer is waiting by now
            ws.close()
            return
        for _ in ws:
            pass

    events: list[nonstop.core.AppEvent] = []
    with server(handler) as port, anyio.fail_after(30):
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", on_event=events.append,
                                   **QUIET_FAST) as feed:
            assert await feed.__anext__() == "hello 1"
            assert await feed.__anext__() == "hello 2"
    first = next(e for e in events if isinstance(e, Disconnected))
    assert first.reason is Reason.SERVER_CLOSED


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_echo_from_the_consumer(tls: bool, backend: Backend) -> None:
    """Send, then wait for the echo, 300 times: on plain TCP send() writes
    itself; over TLS the loop writes (the blocking driver's I/O thread, or
    the consumer once it waits)."""
    ca, cert = CERTS["trusted"]
    context = tls_server(cert, echo) if tls else server(echo)
    with context as port, anyio.fail_after(30):
        url = f"wss://localhost:{port}/" if tls else f"ws://127.0.0.1:{port}/"
        options = dict(QUIET_FAST, ssl=client_context(ca)) if tls else QUIET_FAST
        async with backend.connect(url, **options) as feed:
            await feed.wait_connected(10)
            for i in range(300):
                await feed.send(f"m{i}")
                assert await feed.__anext__() == f"m{i}"


async def test_a_burst_read_by_the_consumer_arrives_in_order() -> None:
    """The trio consumer read and the loop's task taking turns (the
    consumer yields for longer than ``HANDBACK`` now and then)."""
    count = 20_000
    with server(burst(count, pad=300)) as port, anyio.fail_after(40):
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", queue_size=256, **QUIET_FAST) as feed:
            got = []
            async for message in feed:
                assert isinstance(message, str)
                got.append(int(message.partition(":")[0]))
                if len(got) % 500 == 0:
                    await anyio.sleep(0.03)  # away longer than HANDBACK: the loop reads
                if len(got) == count:
                    break
    assert got == list(range(count))


@contextlib.contextmanager
def pong_and_message_server() -> Iterator[tuple[int, dict[int, float]]]:
    """A bare server that answers each ping with its pong and a numbered
    text message in one ``sendall`` (one read for the client: a lifecycle
    event, then a message)."""
    listener = socket.create_server(("127.0.0.1", 0))
    sent_at: dict[int, float] = {}

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                accept_upgrade(conn)
                buf = bytearray()
                n = 0
                while True:
                    while len(buf) < 6 or len(buf) < 6 + (buf[1] & 0x7F):
                        data = conn.recv(4096)
                        if not data:
                            return
                        buf += data
                    opcode, size = buf[0] & 0x0F, buf[1] & 0x7F  # client frames are small
                    mask, payload = buf[2:6], bytes(buf[6:6 + size])
                    del buf[:6 + size]
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                    if opcode == 0x9:
                        n += 1
                        sent_at[n] = time.monotonic()
                        conn.sendall(frame(0xA, payload) + frame(0x1, str(n).encode()))
                    elif opcode == 0x8:
                        conn.sendall(frame(0x8, payload))
                        return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], sent_at
    finally:
        listener.close()
        thread.join(10)


async def test_a_message_behind_a_lifecycle_event_in_the_same_read_is_not_held_back() -> None:
    """The consumer reads a pong and a message in one read: the pong goes
    to the loop's task (in order, so the message waits behind it), and the
    consumer waits for the loop to queue them rather than on the socket,
    where they would stay until the next bytes (the next ping, 3 s on)."""
    with pong_and_message_server() as (port, sent_at), anyio.fail_after(30):
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", ping_interval=3.0, ping_timeout=2.0,
                                   silence_timeout=None, **FAST) as feed:
            await feed.wait_connected(10)
            for _ in range(2):
                message = await feed.__anext__()
                assert isinstance(message, str)
                late = time.monotonic() - sent_at[int(message)]
                assert late < 1.5, f"message {message} came {late:.3f} s after it was sent"


async def test_two_tasks_iterating_one_feed_share_it() -> None:
    """Two tasks iterate the same feed (only one may wait on a trio socket
    at a time): every message once, no error, no reconnect."""

    def handler(ws: ServerConnection) -> None:
        for i in range(20):
            ws.send(str(i))
            time.sleep(0.05)
        for _ in ws:
            pass

    events: list[nonstop.core.AppEvent] = []
    got: list[int] = []
    with server(handler) as port, anyio.fail_after(30):
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", on_event=events.append,
                                   **QUIET_FAST) as feed:
            async def consume() -> None:
                async for message in feed:
                    got.append(int(message))

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                tg.start_soon(consume)
                with anyio.fail_after(10):
                    while len(got) < 20:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    assert sorted(got) == list(range(20))
    assert not [e for e in events if isinstance(e, Disconnected)
                and e.reason is not Reason.STOPPED]
