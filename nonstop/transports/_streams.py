"""The anyio driver's fast streams: raw socket reads on trio, a protocol on asyncio.

Theory of operation
-------------------
The fast loop (:mod:`._anyio_fast`) needs of a connection what the plain one
does -- ``receive``, ``send``, ``aclose``, ``abort`` -- plus reads and writes
that do not wait.  :func:`open_stream` dials (:func:`._dial.dial`) and
returns one of:

* :class:`SocketStream` -- anyio's TCP/TLS stream, used on **trio**; on
  plain TCP it reads and writes the socket itself when that does not have
  to wait, without a checkpoint or a trip through trio's scheduler.
* :class:`AsyncioStream` -- a protocol of ours, used on **asyncio**
  (:class:`asyncio.Protocol`; on uvloop, plain TCP, an
  :class:`asyncio.BufferedProtocol` whose buffer is as large as the
  adaptive read size, where uvloop's own reads are 256 KiB).  anyio's
  asyncio stream pays, on every ``receive`` that has to wait, a
  ``resume_reading``/``pause_reading`` pair (two ``epoll_ctl`` system
  calls) and on every ``send`` a trip through the event loop.  This
  protocol reads all the time (until ``READ_HIGH_WATER`` waits unread: then
  the transport pauses, the kernel's window fills, and the server is pushed
  back), wakes the reader with a plain future, and writes at once
  (:meth:`AsyncioStream.write_nowait`); it waits only while asyncio says
  the write buffer is full.  While the driver waits for a read it may
  install a *sink*: the protocol's callback then hands it the bytes
  directly, and the driver parses them right there, without waking its own
  task first.  A consumer that finds its queue empty takes what the
  protocol holds (:meth:`AsyncioStream.read_nowait`) before it reads the
  socket or waits.  ``READ_HIGH_WATER`` is about one large read: uvloop
  reads whenever the loop runs, and more than a read ahead of the consumer
  only costs a join and a larger working set.

The stream's errors are what the core classifies: an ``OSError`` (reset,
broken pipe), an :class:`ssl.SSLError`, or :class:`anyio.EndOfStream` for a
clean end.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from ..core import OpenTransport
from ._anyio_loop import AnyioStream, Stream, linger_zero, on_asyncio, wrap_socket
from ._common import MIN_READ, ReadSize
from ._dial import dial
from ._loops import loop_clock, read_size_knob, reads_behind, reads_into_buffer
from ._proxy import open_through_proxy
from ._tls import offering

__all__ = ["SocketStream", "AsyncioStream", "open_stream", "on_asyncio"]

#: Unread bytes at which the asyncio protocol stops reading (TCP then pushes
#: the server back); it reads again as soon as the driver takes them.
READ_HIGH_WATER = 1 << 18


def _recv_nowait(raw: socket.socket, reads: ReadSize) -> bytes:
    try:
        data = raw.recv(reads.size)
    except (BlockingIOError, InterruptedError):
        return b""
    if data:
        reads.update(len(data))
    return data


class SocketStream(AnyioStream):
    """anyio's stream (trio), reads sized by *reads*.

    On plain TCP, :meth:`write_nowait` writes straight to the socket (it is
    non-blocking): a write that fits costs no checkpoint, no cancel scope and
    no trip through trio's scheduler.  What does not fit goes through
    :meth:`send`, which waits for room.  :meth:`read_nowait` likewise reads
    what is there without waiting (the consumer's inline read).
    """

    __slots__ = ("_raw", "_sock", "send")

    def __init__(self, stream: anyio.abc.ByteStream, reads: ReadSize,
                 raw: socket.socket | None = None, sock: socket.socket | None = None) -> None:
        super().__init__(stream, reads)
        self._raw = raw
        self._sock = sock  # the socket under the stream, TLS or not
        self.send = stream.send  # type: ignore[method-assign, assignment]  # (no frame of ours per write)

    async def receive(self) -> bytes:
        raw = self._raw
        if raw is None:  # TLS
            data = await self._stream.receive(self._reads.size)
            self._reads.update(len(data))
            return data
        # Plain TCP: trio's own recv yields once more *after* it has the
        # bytes; the consumer's inline read (read_nowait) could then take
        # the bytes after them first.  Here the yields come before the read
        # (a checkpoint, then readiness), and the bytes go back to the
        # caller with no yield in between.
        import trio  # on trio: it is there

        await trio.lowlevel.checkpoint()
        while True:
            try:
                data = raw.recv(self._reads.size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw)
                continue
            if not data:
                raise anyio.EndOfStream
            self._reads.update(len(data))
            return data

    @property
    def raw(self) -> socket.socket | None:
        """The socket (plain TCP), for reads and writes outside anyio."""
        return self._raw

    def read_nowait(self) -> bytes:
        """What the socket has now (plain TCP, during a burst), without
        waiting; ``b""`` if nothing (or TLS, or the end of the stream: left
        to :meth:`receive`, which reports it).  A broken connection raises."""
        raw = self._raw
        if raw is None or self._reads.size <= MIN_READ:
            return b""
        return _recv_nowait(raw, self._reads)

    def ssl_object(self) -> ssl.SSLObject | None:
        if self._raw is not None:  # plain TCP (anyio's look-up builds a dict of its attributes)
            return None
        return super().ssl_object()

    async def abort(self) -> None:
        """Drop the connection with an RST, at once.  The socket is closed
        the way trio's own ``close`` does it (whoever waits on it is told
        first), without the checkpoint of anyio's forced close: the loop's
        next wait yields anyway, and a reconnect starts a loop turn sooner.
        No TLS close_notify: an abort sends none either way."""
        sock = self._sock
        if sock is None:
            await super().abort()
            return
        import trio  # on trio: it is there

        linger_zero(sock)
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def write_nowait(self, data: bytes) -> int:
        """Write what the socket takes now (plain TCP): how much, maybe 0."""
        raw = self._raw
        if raw is None:
            return 0  # TLS: always through send()
        try:
            return raw.send(data)
        except OSError:  # full (EAGAIN), or broken: send() waits or says which
            return 0


class _FeedProtocol(asyncio.BaseProtocol):
    """Buffers what arrives and wakes the one reader; tracks write pressure.
    (The loop hands it bytes through :class:`_Protocol` or
    :class:`_BufferedProtocol`, the two kinds below.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, reads: ReadSize) -> None:
        self.loop = loop
        self.clock = loop_clock(loop)
        self.reads = reads
        self.set_size: Callable[[int], None] | None = None  # how much the transport reads
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.queued = 0
        self.reading_paused = False
        self.at_eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None  # set while asyncio says "full"
        self.closed: asyncio.Future[None] = loop.create_future()
        #: Called with each read while the driver waits for one; True if it
        #: took the bytes (see AsyncFeed._on_data), else they are queued.
        self.sink: Callable[[bytes, float], bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports have the methods of asyncio.Transport without
        # being registered as one: no isinstance test here)
        self.transport = transport  # type: ignore[assignment]
        # The stock loop's plain TCP transport reads a fixed size at a time:
        # ours adapts (see ReadSize).  TLS and uvloop read into a buffer they
        # keep: nothing to tune there.
        if not transport.get_extra_info("sslcontext"):
            self.set_size = read_size_knob(transport)
            if self.set_size is not None:
                self.set_size(self.reads.size)

    def _resize(self, got: int) -> None:
        size = self.reads.update(got)
        if self.set_size is not None:
            self.set_size(size)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._resize(len(data))
        sink = self.sink
        if sink is not None and not self.chunks and sink(data, self.clock()):
            return
        self.chunks.append(data)
        self.queued += len(data)
        if self.queued >= READ_HIGH_WATER and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.at_eof = True
        self._wake()
        return False  # close the transport: the core treats EOF as the end

    def connection_lost(self, exc: Exception | None) -> None:
        self.at_eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None


class _Protocol(_FeedProtocol, asyncio.Protocol):
    """The loop reads, and hands over each read as ``bytes``."""


class _ReadBuffer(threading.local):
    """One thread's read buffer, shared by all its feeds: the loop reads into
    it (:meth:`_BufferedProtocol.get_buffer`) and the bytes are copied out
    (:meth:`_BufferedProtocol.buffer_updated`) before the loop reads for
    anything else."""

    view = memoryview(b"")


_READ_BUFFER = _ReadBuffer()


class _BufferedProtocol(_FeedProtocol, asyncio.BufferedProtocol):
    """The loop reads into a buffer of ours, as much as the adaptive read
    size asks (see :func:`._loops.reads_into_buffer`)."""

    def get_buffer(self, sizehint: int) -> memoryview:
        largest = self.reads.largest
        view = _READ_BUFFER.view
        if len(view) < largest:
            view = _READ_BUFFER.view = memoryview(bytearray(largest))
        return view[:self.reads.size]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_BUFFER.view[:nbytes]))


class AsyncioStream:
    """A connection over our :class:`asyncio.Protocol` (see the module doc)."""

    __slots__ = ("_protocol", "_raw", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: _FeedProtocol,
                 raw: socket.socket | None = None) -> None:
        self._transport = transport
        self._protocol = protocol
        self._raw = raw  # plain TCP: the socket, for read_nowait

    def read_nowait(self) -> bytes:
        """What the protocol holds, or else what the socket has now (plain
        TCP, during a burst), read behind the transport's back, which is
        safe: asyncio's reads hold no state but the socket's, and the
        protocol hands each read to the same sink in this thread.  ``b""``
        if nothing (or the end of the stream: the transport reports it).
        A broken connection raises."""
        raw = self._raw
        p = self._protocol
        if p.chunks:
            return self._take()
        if (raw is None or p.reads.size <= MIN_READ or p.at_eof
                or p.reading_paused or self._transport.is_closing()):
            return b""
        data = _recv_nowait(raw, p.reads)
        if data and p.set_size is not None:
            p.set_size(p.reads.size)
        return data

    def set_sink(self, sink: Callable[[bytes, float], bool] | None) -> None:
        self._protocol.sink = sink

    def wake(self) -> None:
        """End a waiting :meth:`receive` with ``b""`` (the sink took bytes
        and the driver has work to do)."""
        self._protocol._wake()

    def writable_now(self) -> bool:
        """Would :meth:`write_nowait` take everything now (no error, not
        closing, asyncio's buffer not full)?"""
        p = self._protocol
        return p.writable is None and p.error is None and not self._transport.is_closing()

    def write_nowait(self, data: bytes) -> int:
        """Write *data* now if :meth:`writable_now`: how much was taken,
        all or 0."""
        if not self.writable_now():
            return 0
        self._transport.write(data)
        return len(data)

    async def receive(self) -> bytes:
        """The bytes that are there (all of them: the protocol already holds
        them), waiting for some if there are none; ``b""`` if woken by
        :meth:`wake` with none.  (The protocol sizes asyncio's reads.)"""
        p = self._protocol
        if not p.chunks:
            if not p.at_eof:
                waiter = p.waiter = p.loop.create_future()
                try:
                    await waiter
                finally:
                    p.waiter = None
            if not p.chunks:
                if not p.at_eof:
                    return b""  # woken
                if p.error is not None:
                    raise p.error
                raise anyio.EndOfStream
        return self._take()

    def _take(self) -> bytes:
        """All the bytes the protocol holds (it reads again if it had stopped)."""
        p = self._protocol
        chunks = p.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        p.queued = 0
        if p.reading_paused:
            p.reading_paused = False
            self._transport.resume_reading()
        return data

    async def send(self, data: bytes) -> None:
        """Write at once; wait only while asyncio's write buffer is full."""
        p = self._protocol
        if p.error is not None:
            raise p.error
        if self._transport.is_closing():
            raise BrokenPipeError("the connection is closed")
        self._transport.write(data)
        while (writable := p.writable) is not None and not p.at_eof:
            # Shielded: a cancelled (timed-out) writer must not cancel the
            # future the next writer will wait on.
            await asyncio.shield(writable)
        if p.error is not None:
            raise p.error

    async def aclose(self) -> None:
        """Close (TLS: send close_notify), then wait until the socket is shut."""
        self._transport.close()
        await asyncio.shield(self._protocol.closed)

    async def abort(self) -> None:
        linger_zero(self._transport.get_extra_info("socket"))
        self._transport.abort()

    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS connection's ``ssl`` object (``None``: plain TCP)."""
        ssl_object: ssl.SSLObject | None = self._transport.get_extra_info("ssl_object")
        return ssl_object


async def open_stream(
    host: str,
    port: int,
    *,
    tls: bool,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    reads: ReadSize,
    lookup: dict[str, Any] | None = None,
    session: ssl.SSLSession | None = None,
    proxy: OpenTransport | None = None,
    user_agent: str | None = None,
    read_size: int = 1 << 20,
) -> Stream:
    """Connect (and shake hands for TLS) with the stream that suits the loop.

    *reads* sizes the stream's reads; the driver counts the messages each
    read brought into it.  *lookup*: how to look the host up (the keyword
    arguments of :func:`._dial.dial`; its ``waiting`` is called before the
    TLS handshake too).  *session*: the TLS session to offer (:mod:`._tls`).
    *proxy*: the effect, when it names a proxy to go through (:mod:`._proxy`;
    *user_agent* for its ``CONNECT``; *read_size*: the largest read of a
    stream through an ``https://`` proxy).
    """
    lookup = lookup or {}
    if proxy is None:
        sock = await dial(host, port, **lookup)
    else:
        through = await open_through_proxy(proxy, lookup, user_agent=user_agent, ssl_context=ssl_context)
        if not isinstance(through, socket.socket):
            return AnyioStream(through, reads, read_size if on_asyncio() else None)
        sock = through
    waiting = lookup.get("waiting")
    if tls and waiting is not None:
        waiting()
    if on_asyncio():
        loop = asyncio.get_running_loop()
        try:
            kind = _BufferedProtocol if not tls and reads_into_buffer(loop) else _Protocol
            with offering(ssl_context if tls else None, session):
                transport, protocol = await loop.create_connection(
                    lambda: kind(loop, reads),
                    sock=sock,
                    ssl=ssl_context if tls else None,
                    server_hostname=server_hostname if tls else None,
                )
        except BaseException:
            sock.close()
            raise
        return AsyncioStream(transport, protocol, None if tls or not reads_behind(transport) else sock)
    stream = await wrap_socket(sock, tls=tls, ssl_context=ssl_context, server_hostname=server_hostname,
                               session=session)
    return SocketStream(stream, reads, None if tls else sock, sock)
