"""The anyio driver's loop: one task per feed, on asyncio or trio.

Theory of operation
-------------------
:class:`AsyncFeed` runs :class:`~nonstop.core.FeedCore` in one task, the
loop every driver runs:

1. write ``core.data_to_send()`` (bounded by ``write_timeout``);
2. drain the core's events through the :class:`~._session.Session`:
   messages go to the bounded queue, lifecycle events to the log, the
   ``on_event`` callback and waiters; effects open or close the stream;
3. wait -- for the TCP/TLS connect, for bytes, or (backpressure, or no
   transport) for nothing -- inside a cancel scope whose deadline is the
   core's next deadline;
4. feed exactly one input: ``transport_opened``/``transport_failed``,
   ``receive_data``/``receive_eof``, or ``handle_timer(max(deadline, now))``.

Every decision is the core's or the session's.  The application's calls
(``subscribe``, ``stop``, ...) call the core synchronously -- there is one
event loop thread, so no lock is needed -- and then *kick* the loop: cancel
its wait scope so step 1 writes the new bytes and step 3 uses the new
deadline.  A kick never interrupts a TCP/TLS connect unless the core has
left ``CONNECTING`` (a stop), so the attempt is not wasted.  ``send`` writes
from the caller's task (see :meth:`AsyncFeed._write`).

This module is the plain loop over anyio's own streams; the application's
side of a feed (iteration, ``send``, ``subscribe``, ``wait_for``, ...) is
:class:`~._anyio.AsyncFeed`, built on it.  The speed-ups
(reads handled in asyncio's protocol callback, a consumer that reads the
socket itself, reads and writes without a trip through the event loop)
override a few of its steps in :mod:`._anyio_fast`; ``fast=False`` on
``connect`` (or ``NONSTOP_FAST=0``) runs this loop alone.

Cancellation: everything lives in one task group.  Leaving the ``async with``
block stops gracefully (close handshake, bounded by ``close_timeout``);
cancelling the enclosing scope cancels the task, and the ``finally`` closes
the stream: no task, socket or file descriptor is left behind.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

from ..core import (
    CloseTransport,
    FeedCore,
    FetchUrl,
    OpenTransport,
    State,
)
from ._common import DriverOptions, ReadSize, WriteStalled
from ._dial import dial
from ._proxy import open_through_proxy
from ._session import Feed
from ._tls import Endpoint, offering

__all__ = ["AnyioLoop", "AnyioStream", "Stream", "wrap_socket", "linger_zero", "on_asyncio"]


#: States in which the core reads from its transport (a tuple: an Enum in a
#: frozenset hashes through a Python call).
READ_STATES = (State.HANDSHAKING, State.OPEN, State.CLOSING, State.STOPPING)


class Stream(Protocol):
    """What the loop needs of a connection."""

    async def receive(self) -> bytes: ...
    async def send(self, data: bytes) -> None: ...
    def write_nowait(self, data: bytes) -> int: ...
    async def aclose(self) -> None: ...
    async def abort(self) -> None: ...
    def ssl_object(self) -> ssl.SSLObject | None: ...


class _Flag(Protocol):
    """What the driver needs of an event: anyio's, or the loop's own."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self) -> Awaitable[object]: ...


class _Scope(Protocol):
    """What the driver needs of its wait's cancel scope: anyio's or trio's."""

    def cancel(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> bool | None: ...


def linger_zero(sock: object) -> None:
    """Make the coming close an RST (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # type: ignore[attr-defined]
    except (OSError, AttributeError, ValueError):  # already closed underneath us (uvloop: fd -1)
        pass


class AnyioStream:
    """anyio's TCP or TLS stream.  Reads are sized by *reads* where a read
    allocates what it asks for (trio: ``recv(n)``); on asyncio anyio hands
    out what its protocol already holds, and a request smaller than that
    chunk would copy the rest back, so there each read asks for *limit*."""

    __slots__ = ("_limit", "_reads", "_stream")

    def __init__(self, stream: anyio.abc.ByteStream, reads: ReadSize, limit: int | None = None) -> None:
        self._stream = stream
        self._reads = reads
        self._limit = limit

    async def receive(self) -> bytes:
        limit = self._limit
        if limit is not None:
            return await self._stream.receive(limit)
        data = await self._stream.receive(self._reads.size)
        self._reads.update(len(data))
        return data

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)

    def write_nowait(self, data: bytes) -> int:
        return 0  # every write goes through send()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS connection's ``ssl`` object (``None``: plain TCP)."""
        try:
            ssl_object: ssl.SSLObject | None = self._stream.extra(TLSAttribute.ssl_object, None)
        except Exception:  # closed
            return None
        return ssl_object

    async def abort(self) -> None:
        try:
            raw = self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        except Exception:  # the transport is gone already (uvloop's then names no socket)
            raw = None
        linger_zero(raw)
        await anyio.aclose_forcefully(self._stream)


def on_asyncio() -> bool:
    """Is this task running on an asyncio loop (not trio)?"""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def wrap_socket(sock: socket.socket, *, tls: bool, ssl_context: ssl.SSLContext | None,
                      server_hostname: str | None,
                      session: ssl.SSLSession | None = None) -> anyio.abc.ByteStream:
    """anyio's stream over a connected socket, with TLS if asked (offering
    *session*, see :mod:`._tls`)."""
    try:
        stream: anyio.abc.ByteStream = await anyio.abc.SocketStream.from_socket(sock)
    except BaseException:
        sock.close()
        raise
    if tls:
        try:
            with offering(ssl_context, session):
                stream = await TLSStream.wrap(stream, hostname=server_hostname, ssl_context=ssl_context,
                                              standard_compatible=False)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
    return stream


class AnyioLoop(Feed):
    """One feed's loop over anyio: the state it keeps, and the loop itself."""

    def __init__(self, core: FeedCore, options: DriverOptions) -> None:
        super().__init__(core, options)
        self._stream: Stream | None = None
        self._pending_open: FetchUrl | OpenTransport | None = None
        self._endpoint: Endpoint | None = None  # (host, port, TLS name) of the stream
        self._wait_scope: _Scope | None = None
        self._in_connect = False
        self._new_event: Callable[[], _Flag] = anyio.Event
        self._clock: Callable[[], float] = anyio.current_time
        self._new_scope: Callable[..., _Scope] = anyio.CancelScope  # (deadline=...)
        self._has_data: _Flag = anyio.Event()
        self._space = anyio.Event()
        self._writing = False
        self._written = anyio.Event()
        self._done = anyio.Event()
        self._finished = False  # _done is set (a plain test for the consumer's hot path)
        self._crash: BaseException | None = None
        self._tg: anyio.abc.TaskGroup | None = None


    def _setup(self) -> None:
        """Inside the event loop, before the feed's task starts."""

    # ------------------------------------------------------------------
    # the loop
    def _kick(self, force: bool = False) -> None:
        scope = self._wait_scope
        if scope is None:
            return
        if self._in_connect and not force and self._core.state is State.CONNECTING:
            return  # don't waste a connect attempt for a subscribe
        scope.cancel()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        core = self._core
        try:
            core.start(self._clock())
            task_status.started()
            while True:
                await self._flush()
                await self._dispatch()
                if core.state is State.STOPPED:
                    break
                await self._wait()
        except BaseException as exc:
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                self._crash = exc
            raise
        finally:
            stream, self._stream = self._stream, None
            try:
                if stream is not None:
                    with anyio.CancelScope(shield=True):  # we may be cancelled already
                        await stream.abort()
            finally:
                try:
                    self._session.settle(self._clock())
                finally:  # whatever happens, nobody waits for this task any more
                    self._finished = True
                    self._done.set()
                    self._has_data.set()
                    for waiter in self._session.waiters:
                        waiter.wake()

    async def _flush(self) -> None:
        if self._core.pending_output:
            await self._write()

    async def _write(self) -> bool:
        """Write what the core has queued, in order, whoever calls (the loop
        or an application task).  One writer at a time, the bytes taken
        while writing: a plain flag, not an anyio.Lock, so an uncontended
        write costs no extra trip through the event loop.  The write is
        shielded -- a cancelled caller must not leave half a frame on the
        wire -- and bounded by ``write_timeout``.  False if the transport
        failed."""
        while self._writing:  # another task is writing: it will take our bytes too
            if self._written.is_set():
                self._written = anyio.Event()
            await self._written.wait()
        data = self._core.data_to_send()
        stream = self._stream
        if not data or stream is None:
            return True
        written = stream.write_nowait(data)
        if written == len(data):
            return True  # written at once: no scope, no trip through the loop
        data = data[written:]
        self._writing = True
        timeout = self._opts.write_timeout
        try:
            with anyio.CancelScope(shield=True, deadline=self._clock() + timeout) as scope:
                await stream.send(data)
            if scope.cancelled_caught:
                raise WriteStalled(f"write blocked for {timeout}s: the server is not reading")
        except Exception as exc:
            if stream is self._stream:
                self._session.lost(exc, self._clock())
            return False
        finally:
            self._writing = False
            self._written.set()
        return True

    async def _dispatch(self) -> None:
        session = self._session
        queued = len(self._buffer)
        while (effect := session.effect(self._clock())) is not None:
            await self._apply(effect)
        if len(self._buffer) > queued:
            self._has_data.set()

    async def _apply(self, effect: FetchUrl | OpenTransport | CloseTransport) -> None:
        if not isinstance(effect, CloseTransport):
            self._pending_open = effect
            return
        self._pending_open = None
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._tls_sessions.take()  # its TLS session, for the next connection, if not read yet
        if effect.abort:
            await stream.abort()
            return
        with anyio.move_on_after(self._core.config.close_timeout, shield=True) as scope:
            await stream.aclose()
        if scope.cancelled_caught:
            await stream.abort()

    async def _wait(self) -> None:
        core = self._core
        now = self._clock()
        deadline = self._session.prepare_wait(now)
        if self._tls_sessions.pending and core.state is State.OPEN:  # idle: read it now
            self._tls_sessions.take()
        if deadline is not None and deadline <= now and core.state is State.BACKOFF:
            # The retry is due already (the one at once after a stable
            # connection): no trip through the event loop.  Other due
            # timers still wait below, which yields once (a deferred
            # failure lets the consumer take what came before it).
            self._session.handle_timer(now)
            return
        if self._pending_open is None:  # (a connect releases them once under way)
            self._session.release()
        held = self._buffer.held
        with self._new_scope(deadline=math.inf if deadline is None else deadline) as scope:
            self._wait_scope = scope
            try:
                stream = self._stream
                if self._pending_open is not None:
                    await self._open(self._pending_open)
                elif stream is not None and not held:
                    await self._read(stream, math.inf if deadline is None else deadline)
                elif held:
                    if self._space.is_set():
                        self._space = anyio.Event()
                    await self._space.wait()
                else:
                    await anyio.sleep_forever()
                return
            finally:
                self._wait_scope = None
        now = self._clock()
        if deadline is not None and now >= deadline:
            self._session.handle_timer(max(deadline, now))

    async def _open(self, effect: FetchUrl | OpenTransport) -> None:
        self._pending_open = None
        if isinstance(effect, FetchUrl):
            await self._fetch_url()
            return
        self._endpoint = (effect.host, effect.port, effect.server_hostname)
        core = self._core
        self._in_connect = True
        reads = self._session.new_reads()
        try:
            stream = await self._connect(effect, reads)
        except Exception as exc:
            if core.state is State.CONNECTING:  # (a stop may have come while it failed)
                core.transport_failed(exc, self._clock())
            return
        finally:
            self._in_connect = False
        if core.state is not State.CONNECTING:  # stopped while the connect completed
            with anyio.CancelScope(shield=True):
                await stream.abort()
            return
        self._stream = stream
        self._opened(stream)
        if effect.tls:
            self._tls_sessions.watch(self._endpoint, stream.ssl_object())
        core.transport_opened(self._clock())

    async def _fetch_url(self) -> None:
        """Ask the URL provider (within the wait's scope: the core's connect
        deadline) and hand its answer to the core."""
        core = self._core
        provider = core.config.url_provider
        assert provider is not None
        self._session.release()  # (the call may wait)
        self._in_connect = True
        try:
            url = provider()
            if inspect.isawaitable(url):
                url = await url
        except Exception as exc:
            if core.state is State.CONNECTING:  # (a stop may have come meanwhile)
                core.url_failed(exc, self._clock())
            return
        finally:
            self._in_connect = False
        if core.state is State.CONNECTING:
            core.url_fetched(url, self._clock())

    async def _connect(self, effect: OpenTransport, reads: ReadSize) -> Stream:
        """Open the connection *effect* asks for."""
        lookup = self._lookup_rules(self._clock())
        if effect.proxy is None:
            sock = await dial(effect.host, effect.port, **lookup)
        else:
            through = await open_through_proxy(effect, lookup, user_agent=self._core.config.user_agent,
                                               ssl_context=self._opts.ssl_context)
            if not isinstance(through, socket.socket):
                return AnyioStream(through, reads, self._opts.read_size if on_asyncio() else None)
            sock = through
        if effect.tls:
            self._session.release()
        stream = await wrap_socket(sock, tls=effect.tls, ssl_context=self._opts.ssl_context,
                                   server_hostname=effect.server_hostname,
                                   session=self._tls_sessions.offer(self._endpoint))
        return AnyioStream(stream, reads, self._opts.read_size if on_asyncio() else None)

    def _opened(self, stream: Stream) -> None:
        """The stream is the core's transport from now on."""

    async def _read(self, stream: Stream, deadline: float) -> None:
        """Wait for bytes (the scope around it ends at *deadline*) and feed
        them to the core."""
        core = self._core
        try:
            data = await stream.receive()
        except anyio.EndOfStream:
            if self._live(stream):
                core.receive_eof(self._clock())
            return
        except Exception as exc:
            if stream is self._stream:
                self._session.lost(exc, self._clock())
            return
        if data and self._live(stream):  # not if a stop() came while the read completed
            core.receive_data(data, self._clock())

    def _live(self, stream: Stream) -> bool:
        """Is *stream* still the core's transport (it may have been dropped
        by an application call while we awaited it)?"""
        return stream is self._stream and self._core.state in READ_STATES

