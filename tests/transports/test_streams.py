"""The byte streams under the drivers: write stalls, every address refused,
the asyncio protocol's read pause, bugs in its read callback, writes from
many threads, and the adaptive read size.

Real sockets on 127.0.0.1 (the ``websockets`` package's threaded server);
a test taking ``backend`` runs on asyncio, trio and the blocking driver, the
others are about one driver's streams.  Hard timeouts, no assertion on how
fast anything happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from websockets.sync.server import ServerConnection

import nonstop
from nonstop import Disconnected, Reason
from nonstop.core import FeedCore
from nonstop.transports._common import MIN_READ, RETRY_AFTER, ReadSize
from nonstop.transports._streams import READ_HIGH_WATER, AsyncioStream, _BufferedProtocol, open_stream

from .conftest import FAST, Backend
from .test_driver_behaviour import burst, free_port, server

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup
else:  # pragma: no cover - anyio brings the backport
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.timeout(60)

BIG = "x" * (512 * 1024)


def deaf(stop: threading.Event) -> Any:
    """A handler that never reads: websockets stops reading the socket once
    its queue is full, so the client's writes back up."""

    def handler(ws: ServerConnection) -> None:
        stop.wait(30)

    return handler


def assert_write_stalled(events: list[nonstop.core.AppEvent]) -> None:
    """The first disconnect was the write stall, reported as a network fault."""
    stalled = next(e for e in events if isinstance(e, Disconnected))
    assert stalled.reason is Reason.NETWORK
    assert "write blocked for 0.5s" in stalled.detail


@pytest.mark.anyio
async def test_a_server_that_stops_reading_stalls_writes_and_the_feed_reconnects(
    backend: Backend,
) -> None:
    stop = threading.Event()
    events: list[nonstop.core.AppEvent] = []
    with server(deaf(stop)) as port, anyio.fail_after(40):
        try:
            async with backend.connect(f"ws://127.0.0.1:{port}/", write_timeout=0.5,
                                       on_event=events.append, **FAST) as feed:
                await feed.wait_connected(10)
                with anyio.fail_after(30):
                    while not any(isinstance(e, Disconnected) for e in events):
                        try:
                            await feed.send(BIG)
                        except nonstop.NotConnected:
                            await anyio.sleep(0.01)
                stop.set()
                await feed.wait_connected(10)  # and it comes back
        finally:
            stop.set()
    assert_write_stalled(events)


def test_a_blocking_send_never_waits_for_the_io_threads_stalled_write() -> None:
    """While the I/O thread pushes a backlog into a socket the server does
    not read (holding the write lock for up to ``write_timeout``), a small
    ``send()`` from the application queues its bytes and returns.  The
    blocking driver's own: only it writes from two threads."""
    stop = threading.Event()
    with server(deaf(stop)) as port:
        try:
            # (compression off: "x" * 100 KiB deflates to almost nothing and
            # would never fill the socket)
            with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", write_timeout=5.0, compression=None,
                                      **FAST) as feed:
                feed.wait_connected(10)
                deadline = time.monotonic() + 20
                while not feed._write_lock.locked():  # no other sender: the I/O thread has it
                    assert time.monotonic() < deadline
                    feed.send("x" * (100 * 1024))
                    time.sleep(0.01)
                t0 = time.monotonic()
                feed.send("small")
                took = time.monotonic() - t0
                assert feed._write_lock.locked()  # still stalled: the send did not wait it out
                assert took < 1.0, f"send() blocked {took:.2f}s behind the I/O thread's write"
        finally:
            stop.set()


@contextmanager
def first_address_black_holed(good_port: int) -> Iterator[str]:
    """A host name whose first address swallows the SYN (a listener whose
    accept queue is full: the kernel drops further SYNs, as a broken route
    would) and whose second is *good_port*; both on 127.0.0.1."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue (backlog 0 holds one)
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(hole.getsockname())
        fillers.append(filler)
    name = "two-addresses.invalid"
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (name, name.encode()):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p))
                    for p in (hole.getsockname()[1], good_port)]
        return real(host, port, *args, **kwargs)

    async def anyio_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (name, name.encode()):
            return getaddrinfo(host, port)
        return await real_anyio(host, port, *args, **kwargs)

    # uvloop resolves names in libuv, not through socket.getaddrinfo
    real_anyio = anyio.getaddrinfo
    socket.getaddrinfo = getaddrinfo
    anyio.getaddrinfo = anyio_getaddrinfo  # type: ignore[assignment]
    try:
        yield name
    finally:
        socket.getaddrinfo = real
        anyio.getaddrinfo = real_anyio  # type: ignore[assignment]
        for s in [hole, *fillers]:
            s.close()


@pytest.mark.anyio
async def test_an_address_that_never_answers_does_not_keep_the_next_from_being_tried(
    backend: Backend,
) -> None:
    """Happy eyeballs: the second address is tried after 250 ms, not after
    the whole ``connect_timeout`` spent on the first (and the blocking
    driver's selector is left with the one socket that won)."""
    with server(burst(1)) as port, first_address_black_holed(port) as host:
        with anyio.fail_after(20):
            async with backend.connect(f"ws://{host}:{port}/", connect_timeout=5.0, **FAST) as feed:
                t0 = time.monotonic()
                await feed.wait_connected(10)
                took = time.monotonic() - t0
                assert feed.metrics().attempts == 1 and took < 3.0, took
                if backend.blocking:  # the wake-up pipe and the one socket
                    assert len(feed.raw._selector.get_map()) == 2


def _localhost_addresses() -> int:
    return len({info[4][0] for info in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)})


@pytest.mark.anyio
async def test_refused_on_every_address_of_a_name_is_refused(backend: Backend) -> None:
    """``localhost`` may be ::1 and 127.0.0.1: both are tried, and both
    refusing is reason ``refused`` (not a generic network error)."""
    events: list[nonstop.core.AppEvent] = []
    port = free_port()
    with anyio.fail_after(20):
        async with backend.connect(f"ws://localhost:{port}/", max_attempts=1,
                                   on_event=events.append, **FAST) as feed:
            with pytest.raises(nonstop.FeedGaveUp):
                await feed.__anext__()
    refused = [e for e in events if isinstance(e, Disconnected)]
    assert [e.reason for e in refused] == [Reason.REFUSED], (refused, _localhost_addresses())


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_timed_out_asyncio_writer_leaves_the_next_one_a_live_wait() -> None:
    """Two writers wait for room on a socket the server does not read; the
    first gives up (its scope times out): the second must go on waiting,
    not get the first one's cancellation."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    try:
        stream = await open_stream("127.0.0.1", listener.getsockname()[1], tls=False,
                                   ssl_context=None, server_hostname=None,
                                   reads=ReadSize(MIN_READ, 16))
        accepted.append(listener.accept()[0])  # never read
        assert isinstance(stream, AsyncioStream)
        chunk = b"x" * (1 << 20)
        while stream.write_nowait(chunk):  # until asyncio says its buffer is full
            pass
        with anyio.move_on_after(0.2):
            await stream.send(b"first")
        second = asyncio.ensure_future(stream.send(b"second"))
        await asyncio.sleep(0.3)
        assert not second.done(), second  # still waiting for room, not cancelled
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        await stream.abort()
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


ASYNCIO_LOOPS = [pytest.param("asyncio", id="asyncio"),
                 pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]


@pytest.mark.parametrize("anyio_backend", ASYNCIO_LOOPS)
@pytest.mark.anyio
async def test_the_asyncio_protocol_stops_reading_while_the_queue_is_full() -> None:
    """A stalled consumer: the feed's queue fills, then at most about
    ``READ_HIGH_WATER`` waits unread in the protocol (TCP pushes the server
    back); when the consumer comes back every message arrives, in order."""
    count = 3000
    with server(burst(count, pad=4096)) as port, anyio.fail_after(40):
        # (compression off: the padding deflates to almost nothing, and the
        # kernel's buffers would never fill)
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", queue_size=16, fast=True, compression=None,
                                   **FAST) as feed:
            await feed.wait_connected(10)
            stream = feed._stream
            assert isinstance(stream, AsyncioStream)
            protocol = stream._protocol
            with anyio.fail_after(10):
                while not protocol.reading_paused:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.3)
            held = protocol.queued
            got = []
            async for message in feed:
                got.append(int(message.split(":")[0]))
                if len(got) == count:
                    break
            metrics = feed.metrics()
    assert READ_HIGH_WATER <= held < READ_HIGH_WATER + 512 * 1024
    assert got == list(range(count))
    assert metrics.messages_dropped == 0 and metrics.connection == 1


@pytest.mark.anyio
async def test_a_bug_in_a_read_outside_the_loops_task_reaches_the_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reads are fed to the core inside asyncio's callback (on trio, in the
    consumer's inline read, or the loop's task); an exception there must
    not vanish into asyncio's log: the consumer gets it."""

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    def broken(self: FeedCore, data: bytes, now: float) -> None:
        raise RuntimeError("a bug in the core")

    with server(echo) as port, anyio.fail_after(20):
        with pytest.raises(BaseExceptionGroup) as group:  # the feed's task failed too
            async with nonstop.connect(f"ws://127.0.0.1:{port}/", **FAST) as feed:
                await feed.wait_connected(10)
                monkeypatch.setattr(FeedCore, "receive_data", broken)
                await feed.send("hello")
                with pytest.raises(RuntimeError, match="a bug in the core"):
                    async for _ in feed:
                        pass
    assert group.group_contains(RuntimeError, match="a bug in the core")


def test_blocking_sends_from_many_threads_arrive_whole_and_in_order() -> None:
    """``send`` writes from the caller's thread (plain TCP) and leaves what
    the kernel does not take to the I/O thread: frames never interleave,
    nothing is lost, each thread's messages keep their order.  The blocking
    driver's own: a send that writes in the caller's thread."""
    got: list[str] = []
    done = threading.Event()
    threads_n, per_thread = 4, 150

    def collect(ws: ServerConnection) -> None:
        for message in ws:
            assert isinstance(message, str)
            got.append(message)
            if len(got) == threads_n * per_thread:
                done.set()

    with server(collect) as port:
        with nonstop.sync.connect(f"ws://127.0.0.1:{port}/", **FAST) as feed:
            feed.wait_connected(10)

            def sender(t: int) -> None:
                for i in range(per_thread):
                    pad = "y" * (300_000 if i % 10 == 0 else i)  # some force partial writes
                    feed.send(f"{t}:{i}:{pad}")

            workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads_n)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(30)
            assert done.wait(30)
            metrics = feed.metrics()
    for t in range(threads_n):
        mine = [m.split(":") for m in got if m.startswith(f"{t}:")]
        assert [int(i) for _, i, _ in mine] == list(range(per_thread))
        assert all(len(pad) == (300_000 if int(i) % 10 == 0 else int(i)) for _, i, pad in mine)
    assert metrics.connection == 1 and metrics.disconnects == {}


def test_read_size_grows_on_full_reads_and_falls_back_on_small_ones() -> None:
    reads = ReadSize(1 << 20, 4096)
    assert reads.size == MIN_READ == 64 * 1024
    assert reads.update(MIN_READ) == 256 * 1024  # full: four times larger
    assert reads.update(256 * 1024) == 1 << 20
    assert reads.update(1 << 20) == 1 << 20  # capped at read_size
    assert reads.update(300_000) == 1 << 20  # a partial read keeps the size
    assert reads.update(100) == MIN_READ  # a trickle: back to the smallest
    small = ReadSize(4096, 4096)  # read_size below MIN_READ: fixed
    assert small.size == 4096 and small.update(4096) == 4096 and small.update(1) == 4096


def test_read_size_falls_back_to_the_largest_full_read_when_a_bigger_one_comes_back_short() -> None:
    # A size over glibc's mmap threshold that never fills would cost a fresh
    # mapping (page faults on every byte) on every read.
    reads = ReadSize(4 << 20, 1 << 20)
    reads.update(MIN_READ)
    assert reads.update(256 * 1024) == 1 << 20  # 256 KiB is proven
    assert reads.update(300_000) == 256 * 1024  # 1 MiB came back short: back
    for _ in range(RETRY_AFTER):  # full reads at the proven size, no growth yet
        assert reads.update(256 * 1024) == 256 * 1024
    assert reads.update(256 * 1024) == 1 << 20  # then it is tried again
    assert reads.update(1 << 20) == 4 << 20  # it filled: proven, and on to 4 MiB
    assert reads.update(3_000_000) == 1 << 20  # 4 MiB short: back to 1 MiB
    assert reads.update(200_000) == 1 << 20  # short at a proven size: kept
    assert reads.update(100) == MIN_READ  # a trickle: back to the smallest


def test_read_size_stops_growing_before_a_read_would_overflow_the_queue() -> None:
    reads = ReadSize(1 << 20, 4096)
    reads.update(MIN_READ)
    assert reads.size == 256 * 1024
    reads.messages = 4096  # that read: 4,096 messages in 256 KiB
    assert reads.update(256 * 1024) == 256 * 1024  # 1 MiB would bring 16,384
    assert reads.messages == 0
    reads.messages = 1024  # 1,024 in 256 KiB: 4,096 in 1 MiB still fit
    assert reads.update(256 * 1024) == 1 << 20


def accept_upgrade(conn: socket.socket, then: bytes = b"") -> None:
    """Read a client's WebSocket upgrade request on *conn* and answer 101
    (with *then* in the same write)."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    key = re.search(rb"(?i)sec-websocket-key: *(\S+)", request)
    assert key is not None
    accept = base64.b64encode(hashlib.sha1(
        key.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n" + then)


def blast_server(frames: bytes, *, reset: bool = False) -> tuple[socket.socket, threading.Thread]:
    """A bare TCP server that accepts one WebSocket client and writes
    *frames* in one ``sendall`` (faster than any library server); then an
    ``end`` message, or with *reset* an RST at once."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            accept_upgrade(conn)
            conn.recv(4096)  # the client's "go"
            conn.sendall(frames)
            if reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            time.sleep(0.2)
            conn.sendall(b"\x81\x03end")
            conn.recv(1)  # until the client goes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_the_asyncio_transport_reads_in_larger_gulps_during_a_burst() -> None:
    count = 20_000
    payload = b"m" * 200
    frames = (bytes((0x81, 126)) + len(payload).to_bytes(2, "big") + payload) * count
    listener, thread = blast_server(frames)
    port = listener.getsockname()[1]
    try:
        with anyio.fail_after(30):
            async with nonstop.connect(f"ws://127.0.0.1:{port}/", queue_size=100_000, fast=True,
                                       read_size=512 * 1024, **FAST) as feed:
                await feed.wait_connected(10)
                stream = feed._stream
                assert isinstance(stream, AsyncioStream)
                transport = stream._transport
                first = transport.max_size  # type: ignore[attr-defined]
                await feed.send("go")
                sizes = set()
                n = 0
                async for message in feed:
                    sizes.add(transport.max_size)  # type: ignore[attr-defined]
                    n += 1
                    if message == "end":
                        break
                last = transport.max_size  # type: ignore[attr-defined]
    finally:
        listener.close()
        thread.join(10)
    assert n == count + 1
    assert first == MIN_READ and max(sizes) > MIN_READ and last == MIN_READ


@pytest.mark.parametrize("anyio_backend", [ASYNCIO_LOOPS[1]])
@pytest.mark.anyio
async def test_a_feed_on_uvloop_reads_through_our_buffer_whole_and_in_order() -> None:
    """On uvloop the feed's protocol is a buffered one; a burst faster than
    the consumer arrives through it whole and in order."""
    count = 20_000
    frames = b"".join(bytes((0x81, 126)) + (200).to_bytes(2, "big") + (b"%07d" % i).ljust(200, b"m")
                      for i in range(count))
    listener, thread = blast_server(frames)
    port = listener.getsockname()[1]
    reads: list[int] = []
    got: list[int] = []
    try:
        with anyio.fail_after(30):
            async with nonstop.connect(f"ws://127.0.0.1:{port}/", queue_size=100_000, fast=True,
                                       read_size=1 << 20, **FAST) as feed:
                await feed.wait_connected(10)
                stream = feed._stream
                assert isinstance(stream, AsyncioStream)
                protocol = stream._protocol
                assert isinstance(protocol, asyncio.BufferedProtocol)
                handed = protocol.data_received

                def counted(data: bytes) -> None:
                    reads.append(len(data))
                    handed(data)

                protocol.data_received = counted  # type: ignore[method-assign]
                await feed.send("go")
                async for message in feed:
                    if message == "end":
                        break
                    got.append(int(message[:7]))
    finally:
        listener.close()
        thread.join(10)
    assert got == list(range(count))
    assert reads


@pytest.mark.parametrize("anyio_backend", [ASYNCIO_LOOPS[1]])
@pytest.mark.anyio
async def test_uvloop_reads_as_much_as_the_adaptive_size_asks() -> None:
    """uvloop reads 256 KiB at a time into a buffer of its own; into ours it
    reads as much as the read size asks, beyond that, every byte in order."""
    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    ours.setblocking(False)
    peer.setblocking(False)
    sent = bytes(range(256)) * (12 * 1024)  # 3 MiB
    taken = 0
    with contextlib.suppress(BlockingIOError):
        while taken < len(sent):  # as much as the kernel takes before the loop reads
            taken += peer.send(sent[taken:])
    loop = asyncio.get_running_loop()
    reads = ReadSize(1 << 20, 1 << 20)
    reads.size = 1 << 20
    transport, protocol = await loop.create_connection(
        lambda: _BufferedProtocol(loop, reads), sock=ours)
    try:
        got = bytearray()
        sizes = []
        with anyio.fail_after(10):
            while len(got) < len(sent):
                if taken < len(sent):
                    with contextlib.suppress(BlockingIOError):
                        taken += peer.send(sent[taken:])
                for chunk in protocol.chunks:
                    sizes.append(len(chunk))
                    got += chunk
                protocol.chunks.clear()
                protocol.queued = 0
                if protocol.reading_paused:
                    protocol.reading_paused = False
                    transport.resume_reading()
                reads.size = 1 << 20
                await anyio.sleep(0.001)
        assert bytes(got) == sent
        assert max(sizes) > 256 * 1024
    finally:
        transport.close()
        peer.close()


@pytest.mark.anyio
async def test_feeds_on_one_loop_each_get_their_own_bytes_whole_and_in_order() -> None:
    """Several feeds read at once on one loop (on uvloop through the one
    read buffer of the thread): each gets its server's messages, whole and
    in order, none of another's."""
    count = 5000
    servers = []
    for tag in "abc":
        frames = b"".join(bytes((0x81, 126)) + (300).to_bytes(2, "big")
                          + f"{tag}{i:07d}".encode().ljust(300, tag.encode()) for i in range(count))
        servers.append(blast_server(frames))
    results: dict[str, list[str]] = {}

    async def consume(tag: str, port: int) -> None:
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", fast=True, **FAST) as feed:
            await feed.wait_connected(10)
            await feed.send("go")
            got = results.setdefault(tag, [])
            async for message in feed:
                if message == "end":
                    break
                assert isinstance(message, str) and message == message[:8].ljust(300, tag)
                got.append(message[:8])

    try:
        with anyio.fail_after(40):
            async with anyio.create_task_group() as tg:
                for tag, (listener, _thread) in zip("abc", servers, strict=True):
                    tg.start_soon(consume, tag, listener.getsockname()[1])
    finally:
        for listener, thread in servers:
            listener.close()
            thread.join(10)
    for tag in "abc":
        assert results[tag] == [f"{tag}{i:07d}" for i in range(count)]


@pytest.mark.anyio
async def test_a_blast_of_frames_arrives_whole_and_in_order() -> None:
    """A server that writes faster than the client parses: on trio the
    consumer reads inline while the loop's task waits on the same socket
    (on asyncio the protocol's callback reads); every message arrives once,
    in order, no protocol error, however the two interleave (the consumer
    yields now and then)."""
    count = 20_000
    frames = bytearray()
    for i in range(count):
        payload = f"{i}:{'x' * (i % 3000)}".encode()
        head = bytes((0x81, len(payload))) if len(payload) < 126 else \
            bytes((0x81, 126)) + len(payload).to_bytes(2, "big")
        frames += head + payload
    listener, thread = blast_server(bytes(frames))
    port = listener.getsockname()[1]
    events: list[nonstop.core.AppEvent] = []
    got: list[int] = []
    try:
        with anyio.fail_after(40):
            async with nonstop.connect(f"ws://127.0.0.1:{port}/", on_event=events.append, fast=True,
                                       **FAST) as feed:
                await feed.wait_connected(10)
                await feed.send("go")
                async for message in feed:
                    if message == "end":
                        break
                    assert isinstance(message, str)
                    number, _, rest = message.partition(":")
                    got.append(int(number))
                    assert len(rest) == int(number) % 3000
                    if len(got) % 997 == 0:
                        await anyio.sleep(0)
    finally:
        listener.close()
        thread.join(10)
    assert got == list(range(count))
    assert [e.reason for e in events if isinstance(e, Disconnected)] == [Reason.STOPPED]


@pytest.mark.anyio
async def test_a_reset_in_the_middle_of_a_burst_is_reported_as_a_reset() -> None:
    """The server writes 20 MB and resets the connection while the client
    is still reading: the feed says RESET, not a clean end of stream."""
    payload = b"y" * 1000
    frames = b"".join(bytes((0x81, 126)) + len(payload).to_bytes(2, "big") + payload
                      for _ in range(20_000))
    listener, thread = blast_server(frames, reset=True)
    port = listener.getsockname()[1]
    events: list[nonstop.core.AppEvent] = []
    got = 0
    try:
        with anyio.fail_after(30):
            async with nonstop.connect(f"ws://127.0.0.1:{port}/", on_event=events.append, fast=True,
                                       **FAST) as feed:
                await feed.wait_connected(10)
                await feed.send("go")
                with anyio.move_on_after(10):
                    async for message in feed:
                        assert message == payload.decode()
                        got += 1
                        if got % 1000 == 0:
                            await anyio.sleep(0.001)  # the reset arrives meanwhile
                        if any(isinstance(e, Disconnected) for e in events):
                            break
    finally:
        listener.close()
        thread.join(10)
    first = next(e for e in events if isinstance(e, Disconnected))
    assert first.reason is Reason.RESET, first
    assert 0 < got <= 20_000


@pytest.mark.anyio
async def test_a_reset_seen_by_the_consumers_own_read_is_reported(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: object,
) -> None:
    """The consumer's own read (asyncio: the inline read during a burst;
    trio: the read it does while it waits) is the one that meets the
    reset: it is reported as RESET at once, not left for the loop's next
    read (which on Linux would only see the end of the stream)."""
    with server(burst(50_000)) as port, anyio.fail_after(30):
        events: list[nonstop.core.AppEvent] = []
        async with nonstop.connect(f"ws://127.0.0.1:{port}/", on_event=events.append, fast=True,
                                   **FAST) as feed:
            await feed.wait_connected(10)
            stream = feed._stream
            assert stream is not None
            await feed.__anext__()
            if anyio_backend != "trio":  # asyncio, with or without uvloop
                def reset(self: object) -> bytes:
                    raise ConnectionResetError(104, "reset in the consumer's read")

                monkeypatch.setattr(type(stream), "read_nowait", reset)
                monkeypatch.setattr(feed._session.reads, "size", 1 << 20)  # as in a burst
            else:
                target = stream.raw  # type: ignore[union-attr]
                real = socket.socket.recv

                def recv(self: socket.socket, *args: Any) -> bytes:
                    if self is target:
                        raise ConnectionResetError(104, "reset in the consumer's read")
                    return real(self, *args)

                monkeypatch.setattr(socket.socket, "recv", recv)
            with anyio.move_on_after(10):
                async for _ in feed:
                    if any(isinstance(e, Disconnected) for e in events):
                        break
    first = next(e for e in events if isinstance(e, Disconnected))
    assert first.reason is Reason.RESET
    assert "reset in the consumer's read" in first.detail


@pytest.mark.anyio
async def test_a_message_in_the_same_read_as_the_101_is_answered_before_a_bad_frame_fails(
        backend: Backend) -> None:
    """The 101, a text message and a frame with a reserved opcode in one
    write: the application gets the message and its answer goes out before
    the connection fails (1002) -- the failure waits until every message
    before it was taken, also those a read outside the loop's task left
    for it."""
    listener = socket.create_server(("127.0.0.1", 0))
    heard = bytearray()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            accept_upgrade(conn, then=b"\x81\x05hello" + b"\x83\x00")
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(4096):
                    heard.extend(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    got: list[str | bytes] = []
    try:
        with anyio.fail_after(20):
            async with backend.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", max_attempts=1,
                                       ping_interval=None, silence_timeout=None,
                                       close_timeout=0.5) as feed:
                with contextlib.suppress(nonstop.FeedGaveUp):
                    async for message in feed:
                        got.append(message)
                        with contextlib.suppress(nonstop.NotConnected):
                            await feed.send(message)
    finally:
        listener.close()
        thread.join(10)
    assert got == ["hello"]
    frames = unmask_all(bytes(heard))
    assert frames[0] == (0x81, b"hello")  # the answer, then the close 1002
    assert frames[1][0] == 0x88 and frames[1][1][:2] == (1002).to_bytes(2, "big")


def unmask_all(data: bytes) -> list[tuple[int, bytes]]:
    """A client's (masked, short) frames: (first byte, unmasked payload)."""
    out = []
    pos = 0
    while pos + 6 <= len(data):
        b0, length = data[pos], data[pos + 1] & 0x7F
        mask = data[pos + 2:pos + 6]
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(data[pos + 6:pos + 6 + length]))
        out.append((b0, payload))
        pos += 6 + length
    return out
