"""The anyio driver's speed-ups, beside its plain loop (``fast=True``).

Theory of operation
-------------------
:class:`FastAsyncFeed` is :class:`~._anyio.AsyncFeed` with a few of its
steps overridden; the loop, its order and every decision stay the plain
driver's.  What changes is who moves the bytes, and how:

* **Streams** (:mod:`._streams`): on asyncio, a protocol of ours instead of
  anyio's stream (it reads all the time and writes without a trip through
  the event loop); on trio, anyio's stream with reads and writes straight
  on the socket when it is plain TCP.
* **The sink** (asyncio): while the loop's task waits for bytes, the
  protocol's callback hands each read to :meth:`FastAsyncFeed._on_data`,
  which feeds the core and queues its messages right there, so the consumer
  wakes one loop turn earlier.  Lifecycle events and effects that such a
  read brings are kept in order in ``_stash`` for the loop's task, which is
  woken only when there is more to do than queue messages.
* **Inline reads** (asyncio and trio, plain TCP, during a burst): a consumer
  that finds the queue empty reads what the socket has right there.
* **Consumer reads** (trio, plain TCP): a waiting consumer waits on the
  socket itself and feeds what it reads through the same ``_on_data``,
  while the loop's task parks (still running timers, writes and lifecycle
  events) and takes the socket back once the consumer has been away for
  ``HANDBACK``.
* **The loop's own primitives**: asyncio's futures and clock, trio's events
  and cancel scopes, instead of anyio's wrappers, which look the back end up
  on every call.

One party at a time waits on the socket, and no reader yields between
``recv`` and the core, so bytes are never reordered.
"""

from __future__ import annotations

import asyncio
import functools
import math
import socket
from collections.abc import Awaitable, Callable

import anyio

from ..core import CloseTransport, FeedCore, FetchUrl, Messages, OpenTransport
from ._anyio import AsyncFeed
from ._anyio_loop import Stream
from ._common import HANDBACK, DriverOptions, ReadSize
from ._loops import loop_clock
from ._streams import AsyncioStream, SocketStream, on_asyncio, open_stream

__all__ = ["FastAsyncFeed"]


class _LoopFlag:
    """:class:`asyncio.Event`'s job for the consumer's wait for messages (a
    new one each time it waits): the same waiters and wake-up, without the
    loop look-up and the deque.  It is given the feed's loop, since
    ``asyncio.get_running_loop()`` makes a ``getpid`` system call per call."""

    __slots__ = ("_loop", "_set", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self) -> None:
        if self._set:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)


class FastAsyncFeed(AsyncFeed):
    """:class:`~._anyio.AsyncFeed` with its speed-ups (see the module doc)."""

    def __init__(self, core: FeedCore, options: DriverOptions) -> None:
        super().__init__(core, options)
        self._parked: Stream | None = None  # the stream the loop's task waits on in _read
        self._parked_deadline = math.inf  # and the deadline it waits with
        self._stash = self._session.stash  # events _on_data left for _dispatch
        self._sink_error: BaseException | None = None
        # trio, plain TCP: the consumer reads the socket itself while it waits
        self._wait_readable: Callable[[socket.socket], Awaitable[None]] | None = None
        self._loop_on_fd = False  # the loop's task waits on (or reads) the socket
        self._consumer_reads = False  # reading is the consumer's (until HANDBACK away)
        self._consumer_on_fd = False  # the consumer waits on the socket right now
        self._consumer_left = 0.0  # when it last went back to the application
        self._releases = 0  # how many times it did
        self._seen_releases = -1  # the count the loop's task saw when it parked
        self._loop_deep = False  # the loop's task parked until the consumer leaves

    def _setup(self) -> None:
        if on_asyncio():
            loop = asyncio.get_running_loop()
            self._new_event = functools.partial(_LoopFlag, loop)
            self._clock = loop_clock(loop)
        else:
            import trio  # anyio runs on trio: it is there

            self._new_event = trio.Event
            self._clock = trio.current_time
            self._new_scope = trio.CancelScope
            self._wait_readable = trio.lowlevel.wait_readable

    async def _connect(self, effect: OpenTransport, reads: ReadSize) -> Stream:
        return await open_stream(effect.host, effect.port, tls=effect.tls,
                                 ssl_context=self._opts.ssl_context,
                                 server_hostname=effect.server_hostname, reads=reads,
                                 lookup=self._lookup_rules(self._clock()),
                                 session=self._tls_sessions.offer(self._endpoint),
                                 proxy=effect if effect.proxy is not None else None,
                                 user_agent=self._core.config.user_agent, read_size=self._opts.read_size)

    def _opened(self, stream: Stream) -> None:
        if type(stream) is AsyncioStream:
            stream.set_sink(functools.partial(self._on_data, stream))  # (no Python frame)

    # -- the consumer's side -----------------------------------------------
    async def _wait_messages(self) -> None:
        try:
            await super()._wait_messages()
        finally:
            if self._consumer_reads:  # back to the application: the loop may read again
                self._consumer_left = self._clock()
                self._releases += 1
                if self._loop_deep:
                    self._loop_deep = False
                    self._kick(force=True)

    async def _consumer_turn(self) -> bool:
        if self._wait_readable is not None and await self._consumer_read():
            return True
        return self._inline_read()

    async def _consumer_read(self) -> bool:
        """trio, plain TCP, queue empty: read the socket in the consumer's
        own task -- wait until it is readable, read, queue the messages
        (:meth:`_on_data`) -- instead of waiting for the loop's task to do
        it and wake this one (two trips through trio's scheduler).  The
        loop's task steps aside while the consumer reads, and takes the
        socket back once the consumer has been away for :data:`HANDBACK`.
        True if bytes were read; False: wait the usual way."""
        stream = self._stream
        if type(stream) is not SocketStream or stream.raw is None:
            return False
        if self._consumer_on_fd or self._stash:
            # Another consumer task waits on the socket (trio allows one), or
            # a read left events in _stash for the loop's task.
            return False
        if self._loop_on_fd:  # ask the loop's task to step aside; it wakes us
            self._consumer_reads = True
            self._consumer_left = self._clock()
            self._kick(force=True)
            return False
        if not self._consumer_reads or not self._may_sink(stream):
            self._consumer_reads = True  # from the loop's next wait on (it parks)
            return False
        raw = stream.raw
        wait_readable = self._wait_readable
        assert wait_readable is not None
        session = self._session
        self._consumer_on_fd = True
        try:
            while True:
                try:
                    data = raw.recv(session.reads.size)
                except BlockingIOError:
                    session.consumer_waiting = True
                    if session.check_caught_up(self._clock()):
                        self._wake_loop(stream)
                        return False
                    try:
                        await wait_readable(raw)
                    except Exception:  # closed under us (a stop, a reconnect)
                        if self._loop_deep:  # the loop's task parked for this wait: not any more
                            self._loop_deep = False
                            self._kick(force=True)
                        return False
                    finally:
                        session.consumer_waiting = False
                    if not self._may_sink(stream):
                        return False
                    continue
                except OSError as exc:
                    self._consumer_reads = False
                    session.lost(exc, self._clock())
                    self._wake_loop(stream)
                    return False
                if not data:  # the end: the loop's task reads it and says so
                    self._consumer_reads = False
                    self._wake_loop(stream)
                    return False
                session.reads.update(len(data))
                self._on_data(stream, data, self._clock())
                return True
        finally:
            self._consumer_on_fd = False

    def _inline_read(self) -> bool:
        """The consumer found the queue empty.  Take what the asyncio
        protocol holds or, on plain TCP during a burst (the last reads
        filled their size), what the socket has, right here, and queue its
        messages (:meth:`_on_data`), instead of waiting for the event loop
        to read and wake the consumer.  Outside bursts the socket is not
        tried: it would be empty.  True if bytes were read."""
        if self._stash:
            return False
        stream = self._stream
        if (type(stream) is not SocketStream and type(stream) is not AsyncioStream) \
                or not self._may_sink(stream):
            return False
        try:
            data = stream.read_nowait()
        except OSError as exc:  # reset: say so now (the next read may only see the end)
            self._session.lost(exc, self._clock())
            self._wake_loop(stream)
            return False
        if not data:
            return False
        self._on_data(stream, data, self._clock())
        return True

    # -- the loop's side ------------------------------------------------------
    async def _dispatch(self) -> None:
        stash = self._stash
        if stash:  # what _on_data left came first
            session = self._session
            now = self._clock()
            queued = len(self._buffer)
            while stash:
                event = stash.pop(0)
                if type(event) is Messages:
                    session.deliver(event, now)
                elif isinstance(event, (FetchUrl, OpenTransport, CloseTransport)):
                    await self._apply(event)
                else:
                    assert not isinstance(event, Messages)
                    session.observe(event)
            if len(self._buffer) > queued:
                self._has_data.set()
        await super()._dispatch()

    async def _read(self, stream: Stream, deadline: float) -> None:
        if self._sink_error is not None:  # _on_data failed while the loop was woken
            raise self._sink_error
        if self._consumer_reads:
            park, until = self._park_until(deadline)
            if park:
                await self._park(stream, until)
                return
        self._parked, self._parked_deadline = stream, deadline
        self._loop_on_fd = True
        try:
            await super()._read(stream, deadline)
        finally:
            self._parked = None
            self._loop_on_fd = False
        if self._sink_error is not None:  # _on_data failed: a bug, raise it here
            raise self._sink_error

    async def _park(self, stream: Stream, until: float) -> None:
        """The consumer reads the socket: stay off it until *until* (or a kick)."""
        self._parked, self._parked_deadline = stream, until
        try:
            with self._new_scope(deadline=until):
                if self._session.consumer_waiting:
                    self._has_data.set()  # it may take the socket now
                await anyio.sleep_forever()
        finally:
            self._parked = None
            self._loop_deep = False

    def _park_until(self, until: float) -> tuple[bool, float]:
        """The consumer reads the socket (trio): should the loop's task
        stay off it, and until when (besides the core's deadline)?"""
        if self._consumer_on_fd:
            if self._releases == self._seen_releases:
                self._loop_deep = True  # it has waited since: until it leaves
                return True, until
            self._seen_releases = self._releases
            return True, min(until, self._clock() + HANDBACK)
        back = self._consumer_left + HANDBACK
        if self._clock() < back:
            return True, min(until, back)
        self._consumer_reads = False  # away too long: the loop reads again
        return False, until

    def _may_sink(self, stream: Stream) -> bool:
        """May bytes from *stream* be handled outside the loop's task, now?"""
        return not (self._parked is not stream or self._writing or self._buffer.held
                    or self._sink_error is not None or not self._live(stream))

    def _on_data(self, stream: Stream, data: bytes, now: float) -> bool:
        """A read outside the loop's task (asyncio: in the protocol's
        callback; a consumer's read), while the loop waits in :meth:`_read`.
        Feed it to the core and queue the messages right here, and wake the
        loop only if there is more to do: bytes to write, a lifecycle event
        or effect (kept in order in ``_stash``), a failure, a full queue, an
        earlier deadline.  False (not now): the protocol queues the bytes."""
        if not self._may_sink(stream):
            return False  # the loop will take them (after a pause, if the queue is full)
        try:
            core = self._core
            session = self._session
            buffer = self._buffer
            stash = self._stash
            core.receive_data(data, now)
            if core.pending_output and type(stream) is AsyncioStream and stream.writable_now():
                # what the read calls for (the subscriptions after the 101, a
                # pong, a close reply) goes out now, not after a loop turn
                stream.write_nowait(core.data_to_send())
            wake = core.pending_output > 0
            queued = len(buffer)
            while (event := core.next_event()) is not None:
                if not stash and type(event) is Messages:
                    session.deliver(event, now)
                else:
                    stash.append(event)
                    wake = True
            if len(buffer) > queued:
                self._has_data.set()
            deadline = core.next_deadline()
            if (wake or core.failure_pending or buffer.held
                    or (deadline is not None and deadline < self._parked_deadline)):
                self._wake_loop(stream)
        except BaseException as exc:  # a bug: raise it in the feed's task
            self._sink_error = exc
            self._wake_loop(stream)
        return True

    def _wake_loop(self, stream: Stream) -> None:
        """End the loop's wait in :meth:`_read`: it has work to do."""
        if type(stream) is AsyncioStream:
            stream.wake()  # receive() returns b""
        else:
            self._kick(force=True)  # the read is cancelled: nothing was taken

