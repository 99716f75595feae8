"""The anyio driver: one task per feed, on asyncio or trio.

Theory of operation
-------------------
:class:`AsyncFeed` runs :class:`~nonstop.core.FeedCore` in one task, the
loop every driver runs (STYLE.md 7):

1. write ``core.data_to_send()`` (bounded by ``write_timeout``);
2. drain ``core.next_event()``: effects open or close the stream, messages go
   to the bounded :class:`~nonstop.transports._common.MessageBuffer`,
   lifecycle events to the log, the ``on_event`` callback and waiters;
3. wait -- for the TCP/TLS connect, for bytes, or (backpressure, or no
   transport) for nothing -- inside a :class:`anyio.CancelScope` whose
   deadline is ``core.next_deadline()``;
4. feed exactly one input: ``transport_opened``/``transport_failed``,
   ``receive_data``/``receive_eof``, or ``handle_timer(max(deadline, now))``.

Every decision is the core's.  The application's calls (``subscribe``,
``stop``, ...) call the core synchronously -- there is one event loop
thread, so no lock is needed -- and then *kick* the loop: cancel its wait
scope so step 1 writes the new bytes and step 3 uses the new deadline.  A
kick never interrupts a TCP/TLS connect unless the core has left
``CONNECTING`` (a stop), so the attempt is not wasted.  ``send`` writes
from the caller's task (see :meth:`AsyncFeed._write`).

Two shortcuts on asyncio, for latency (the streams are in
:mod:`._streams`): the stream writes without a trip through the event loop
when asyncio's buffer has room, and while the loop waits in step 3 for
bytes, the protocol's callback hands them to :meth:`AsyncFeed._on_data`,
which does step 4 and the message part of step 2 right there, so the
consumer is woken one loop turn earlier; the loop itself wakes only when
there is more to do.

Reads by the consumer (plain TCP; see :meth:`AsyncFeed._inline_read` and
:meth:`AsyncFeed._consumer_read`).  A consumer that finds the queue empty
during a burst reads what the socket has right there (asyncio and trio).
On trio a waiting consumer goes further: it waits on the socket itself and
feeds what it reads through the same :meth:`AsyncFeed._on_data`, while the
loop's task parks in step 3 (still running timers, writes and lifecycle
events) and takes the socket back once the consumer has been away for
``HANDBACK`` (20 ms).  One party at a time waits on the socket, and no
reader yields between ``recv`` and the core, so bytes are never reordered.

Cancellation: everything lives in one task group.  Leaving the ``async with``
block stops gracefully (close handshake, bounded by ``close_timeout``);
cancelling the enclosing scope cancels the task, and the ``finally`` closes
the stream: no task, socket or file descriptor is left behind.
"""

from __future__ import annotations

import asyncio
import functools
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar

import anyio
import anyio.abc

from ..core import (
    AppEvent,
    CloseTransport,
    Connected,
    Event,
    FeedCore,
    Message,
    Messages,
    Metrics,
    OpenTransport,
    Reason,
    State,
    Subscription,
)
from ..core._state import HAS_TRANSPORT
from ._common import (
    HANDBACK,
    MIN_READ,
    DriverOptions,
    MessageBuffer,
    Observer,
    ReadSize,
    WriteStalled,
    take_pending,
)
from ._streams import AnyioStream, AsyncioStream, Stream, _on_asyncio, loop_clock, open_stream

__all__ = ["AsyncFeed"]

E = TypeVar("E", bound=AppEvent)

#: States in which the core reads from its transport.
# (a tuple: membership tests identity first; an Enum hashes in Python)
_READ_STATES = (State.HANDSHAKING, State.OPEN, State.CLOSING, State.STOPPING)
#: Messages the consumer takes from the queue at a time.
TAKE = 512
#: Longest wait for the application to take the messages that came just
#: before a protocol error, before the connection is failed.
FAILURE_GRACE = 1.0


class _Flag(Protocol):
    """What the driver needs of an event: anyio's, or asyncio's own."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self) -> Awaitable[object]: ...


class _LoopFlag:
    """:class:`asyncio.Event`'s job, for the consumer's wait for messages
    (a new one each time it waits): the same waiters and the same wake-up,
    without the loop look-up mixin and the deque (3.75 against 4.25 us per
    make, wait and set, measured).  It is given the feed's loop: CPython's
    ``asyncio.get_running_loop()`` makes a ``getpid`` system call on every
    call (its fork check), once per echo round trip here."""

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


class _Scope(Protocol):
    """What the driver needs of its wait's cancel scope: anyio's or trio's."""

    def cancel(self) -> None: ...
    @property
    def cancelled_caught(self) -> bool: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> bool | None: ...


class AsyncFeed:
    """A running feed: iterate it for messages; see :func:`nonstop.connect`."""

    def __init__(self, core: FeedCore, options: DriverOptions) -> None:
        self._core = core
        self._opts = options
        self._buffer = MessageBuffer(options.queue_size, options.overflow)
        self._observer = Observer(core.config.label, options.logger, options.on_event)
        self._stream: Stream | None = None
        self._pending_open: OpenTransport | None = None
        self._wait_scope: _Scope | None = None
        self._in_connect = False
        # The event loop's own event, clock and (trio) cancel scope instead
        # of anyio's wrappers, which look the backend up on every call
        # (measured on asyncio: anyio.Event() 743 ns, asyncio.Event() 122 ns;
        # anyio.current_time() 400 ns, loop.time() 60 ns; on trio the echo
        # round trip cost 10 % less CPU).  The consumer makes an event each
        # time it waits, the loop a scope each time it waits, and every
        # input reads the clock.  Chosen in __aenter__.
        self._new_event: Callable[[], _Flag] = anyio.Event
        self._clock: Callable[[], float] = anyio.current_time
        self._new_scope: Callable[..., _Scope] = anyio.CancelScope  # (deadline=...)
        self._has_data: _Flag = anyio.Event()
        self._local: list[str | bytes] = []  # taken by __anext__, reversed
        self._consumer_waiting = False  # blocked in __anext__ for lack of messages
        self._consumer_seen = False  # the application has iterated at all
        self._idle = anyio.Event()  # set by a waiting consumer while _catching_up
        self._catching_up = False
        self._space = anyio.Event()
        self._writing = False
        self._written = anyio.Event()
        self._done = anyio.Event()
        self._finished = False  # _done is set (a plain test for the consumer's hot path)
        self._crash: BaseException | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._waiters: list[tuple[Callable[[AppEvent], bool], anyio.Event, list[AppEvent]]] = []
        # asyncio: reads handled in the protocol's callback (see _on_data)
        self._parked: Stream | None = None  # the stream the loop waits on in _read
        self._parked_deadline = math.inf  # and the deadline it waits with
        self._stash: list[Event] = []  # events _on_data left for _dispatch
        self._sink_error: BaseException | None = None
        self._reads = ReadSize(options.read_size, options.queue_size)
        # trio, plain TCP: the consumer reads the socket itself while it
        # waits (see _consumer_read); the loop's task steps aside.
        self._wait_readable: Callable[[socket.socket], Awaitable[None]] | None = None
        self._loop_on_fd = False  # the loop's task waits on (or reads) the socket
        self._consumer_reads = False  # reading is the consumer's (until HANDBACK away)
        self._consumer_on_fd = False  # the consumer waits on the socket right now
        self._consumer_left = 0.0  # when it last went back to the application
        self._releases = 0  # how many times it did
        self._seen_releases = -1  # the count the loop's task saw when it parked
        self._loop_deep = False  # the loop's task parked until the consumer leaves

    # ------------------------------------------------------------------
    # context management
    async def __aenter__(self) -> AsyncFeed:
        if self._tg is not None:
            raise RuntimeError("this feed was already started; call nonstop.connect() again")
        if _on_asyncio():
            loop = asyncio.get_running_loop()
            self._new_event = functools.partial(_LoopFlag, loop)
            self._clock = loop_clock(loop)
        else:
            import trio  # anyio runs on trio: it is there

            self._new_event = trio.Event
            self._clock = trio.current_time
            self._new_scope = trio.CancelScope
            self._wait_readable = trio.lowlevel.wait_readable
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._run)
        except BaseException:
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        try:
            await self._finish_gracefully()
        finally:
            self._tg.cancel_scope.cancel()
            result = await self._tg.__aexit__(exc_type, exc, tb)
        return result

    async def _finish_gracefully(self) -> None:
        self.stop()
        # Shielded but bounded: a stop must finish the close handshake even
        # when the enclosing scope is being cancelled, but never hang.
        limit = self._core.config.close_timeout + 2.0
        with anyio.move_on_after(limit, shield=True):
            await self._done.wait()

    async def aclose(self) -> None:
        """Stop gracefully and wait until the feed has stopped."""
        await self._finish_gracefully()

    def stop(self) -> None:
        """Ask for a graceful stop without waiting (safe from callbacks)."""
        if not self._done.is_set():
            self._core.stop(self._clock())
            self._kick(force=True)

    # ------------------------------------------------------------------
    # the application's side
    def __aiter__(self) -> AsyncFeed:
        return self

    async def __anext__(self) -> str | bytes:
        local = self._local
        if local:
            return local.pop()
        await self._wait_messages()  # (_take, inlined: one coroutine less per wait)
        batch = self._buffer.take(TAKE)
        self._made_room()
        batch.reverse()  # pop() from the end is O(1)
        self._local = batch
        return batch.pop()

    async def batches(self, limit: int = TAKE) -> AsyncIterator[list[str | bytes]]:
        """Iterate messages in lists, as many as are ready (up to *limit*):
        the fastest way to consume a busy feed.  After plain iteration the
        messages it took and did not hand out come first, in order."""
        while True:
            try:
                yield await self._take(limit)
            except StopAsyncIteration:
                return

    async def records(self) -> AsyncIterator[Message]:
        """Iterate messages with their metadata (connection number, receive time).

        Don't mix with plain iteration or :meth:`batches` on one feed: the
        messages those took and did not hand out yet have no metadata
        left, so they are not in this iteration (they stay for the next
        plain one)."""
        while True:
            try:
                await self._wait_messages()
            except StopAsyncIteration:
                return
            records = self._buffer.take_records(TAKE)
            self._made_room()
            for record in records:
                yield record

    async def _take(self, limit: int) -> list[str | bytes]:
        if self._local:  # left by plain iteration
            batch, self._local = take_pending(self._local, limit)
            return batch
        await self._wait_messages()
        batch = self._buffer.take(limit)
        self._made_room()
        return batch

    def _made_room(self) -> None:
        if not self._buffer.held and self._core.reading_paused:
            self._space.set()

    async def _wait_messages(self) -> None:
        """Return once messages are queued; at the end raise StopAsyncIteration
        (a stop), FeedGaveUp (it gave up) or the driver's crash."""
        buffer = self._buffer
        self._consumer_seen = True
        try:
            while not len(buffer):
                if self._finished:
                    self._observer.end(self._crash, StopAsyncIteration)
                if self._wait_readable is not None and await self._consumer_read():
                    continue
                if self._inline_read():
                    continue
                if self._has_data.is_set():
                    self._has_data = self._new_event()
                self._consumer_seen = self._consumer_waiting = True
                if self._catching_up:
                    self._idle.set()
                try:
                    await self._has_data.wait()
                finally:
                    self._consumer_waiting = False
        finally:
            if self._consumer_reads:  # back to the application: the loop may read again
                self._consumer_left = self._clock()
                self._releases += 1
                if self._loop_deep:
                    self._loop_deep = False
                    self._kick(force=True)

    async def send(self, message: object) -> None:
        """Send a message (``str``: text, ``bytes``: binary, else JSON).

        Raises :class:`~nonstop.NotConnected` when no connection is open.
        Written at once from the caller's task (no hop through the feed's
        loop); returns when the bytes are handed to the socket.  Like a
        transport's ``write()``, it does not yield to the event loop when
        the bytes fit: it waits only while the socket's buffer is full.
        """
        self._core.send(message, self._clock())
        if not await self._write():
            self._kick()  # the write failed: let the loop act on it

    async def subscribe(self, subscription: object) -> Subscription:
        """Add a subscription (replayed on every connect; sent now if open)."""
        sub = self._core.subscribe(subscription, self._clock())
        self._kick()
        return sub

    async def unsubscribe(self, subscription: object) -> Subscription:
        """Remove a subscription (its ``unsubscribe`` message is sent if open)."""
        sub = self._core.unsubscribe(subscription, self._clock())
        self._kick()
        return sub

    async def reconnect(self) -> bool:
        """Close the current connection and reconnect (``False`` if not open)."""
        started = self._core.reconnect(self._clock())
        self._kick()
        return started

    def metrics(self) -> Metrics:
        """The core's metrics plus the queue's (``queued``, ``messages_dropped``)."""
        return self._buffer.add_driver_metrics(self._core.metrics(self._clock()))

    @property
    def state(self) -> State:
        return self._core.state

    @property
    def history(self) -> list[AppEvent]:
        """The last 256 lifecycle events (no messages), oldest first."""
        return list(self._observer.history)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._core.subscriptions

    async def wait_for(
        self,
        kind: type[E],
        predicate: Callable[[E], bool] | None = None,
        *,
        timeout: float | None = None,
    ) -> E:
        """Wait for the next lifecycle event of *kind* (matching *predicate*).

        Raises :class:`TimeoutError` after *timeout* seconds, and
        :class:`~nonstop.FeedGaveUp` or :class:`RuntimeError` if the feed
        stops first.
        """

        def match(event: AppEvent) -> bool:
            return isinstance(event, kind) and (predicate is None or predicate(event))

        box: list[AppEvent] = []
        entry = (match, anyio.Event(), box)
        self._waiters.append(entry)
        try:
            with anyio.fail_after(timeout):
                done_wait = self._done
                async with anyio.create_task_group() as tg:
                    async def watch_done() -> None:
                        await done_wait.wait()
                        entry[1].set()

                    tg.start_soon(watch_done)
                    await entry[1].wait()
                    tg.cancel_scope.cancel()
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        if not box:
            gave_up = self._observer.gave_up()
            if gave_up is not None:
                raise gave_up
            raise RuntimeError(f"the feed stopped before a {kind.__name__} event")
        event = box[0]
        assert isinstance(event, kind)
        return event

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once a connection is open (at once if one is)."""
        if self._core.state is not State.OPEN:
            await self.wait_for(Connected, timeout=timeout)

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
                    self._settle_core()
                finally:  # whatever happens, nobody waits for this task any more
                    self._finished = True
                    self._done.set()
                    self._has_data.set()
                    self._idle.set()

    def _settle_core(self) -> None:
        """The task is ending before the core stopped (its scope was
        cancelled, or a bug): the socket is gone, so take the core to STOPPED
        too -- ``feed.state`` must not say STOPPING forever -- and let the log
        and ``on_event`` see its last events (``Disconnected``, ``Stopped``).
        Messages still queued in the core are dropped with the feed."""
        core = self._core
        if core.state is State.STOPPED:
            return
        now = self._clock()
        core.stop(now)
        after_stop: State = core.state
        if after_stop is not State.STOPPED:  # it was open or closing: the transport is gone
            core.transport_failed(ConnectionAbortedError("the feed's task ended"), now)
        while (event := core.next_event()) is not None:
            if not isinstance(event, (Messages, OpenTransport, CloseTransport)):
                self._observer.observe(event)

    def _fail_transport(self, exc: BaseException) -> None:
        core = self._core
        if core.state in HAS_TRANSPORT and core.state is not State.CONNECTING:
            core.transport_failed(exc, self._clock())

    async def _flush(self) -> None:
        if self._core.pending_output:
            await self._write()

    async def _write(self) -> bool:
        """Write what the core has queued, in order, whoever calls (the
        loop or an application task).  One writer at a time, the bytes taken
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
                self._fail_transport(exc)
            return False
        finally:
            self._writing = False
            self._written.set()
        return True

    async def _dispatch(self) -> None:
        core = self._core
        buffer = self._buffer
        stash = self._stash
        delivered = False
        while True:
            # Events _on_data left in the stash came first.
            event = stash.pop(0) if stash else core.next_event()
            if event is None:
                break
            if type(event) is Messages:
                delivered = True
                self._reads.messages += len(event.data)
                if buffer.push(event) == "disconnect":
                    core.reconnect(self._clock(), reason=Reason.SLOW_CONSUMER)
            else:
                await self._effect_or_event(event)
        if delivered:
            self._has_data.set()

    async def _effect_or_event(self, event: Event) -> None:
        if isinstance(event, OpenTransport):
            self._pending_open = event
        elif isinstance(event, CloseTransport):
            self._pending_open = None
            await self._close_stream(event.abort)
        else:
            assert not isinstance(event, Messages)
            self._observer.observe(event)
            for match, flag, box in list(self._waiters):
                if not flag.is_set() and match(event):
                    box.append(event)
                    flag.set()

    async def _close_stream(self, abort: bool) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        if abort:
            await stream.abort()
            return
        with anyio.move_on_after(self._core.config.close_timeout, shield=True) as scope:
            await stream.aclose()
        if scope.cancelled_caught:
            await stream.abort()

    async def _let_consumer_catch_up(self) -> None:
        """Before a deferred protocol failure: give the application up to
        FAILURE_GRACE seconds to take (and answer) the messages before it."""
        self._catching_up = True  # the consumer sets _idle when it waits
        try:
            with anyio.move_on_after(FAILURE_GRACE):
                # Until none is queued and the consumer is back waiting for
                # more (or never came: nothing to answer).  Queued messages
                # are waited for even before the first iteration: an
                # application that starts iterating a moment late would
                # otherwise find the connection failed under its answer.
                while len(self._buffer) or (self._consumer_seen and not self._consumer_waiting):
                    if self._idle.is_set():
                        self._idle = anyio.Event()
                    await self._idle.wait()
        finally:
            self._catching_up = False

    async def _wait(self) -> None:
        core = self._core
        if core.failure_pending:
            await self._let_consumer_catch_up()
        held = bool(self._buffer.held)
        if held and not core.reading_paused:
            core.pause_reading(self._clock())
        elif not held and core.reading_paused:
            core.resume_reading(self._clock())
        deadline = core.next_deadline()
        until = math.inf if deadline is None else deadline
        stream = self._stream
        park = False
        if self._consumer_reads and stream is not None and not held and self._pending_open is None:
            park, until = self._park_until(until)
        scope = self._new_scope(deadline=until)
        with scope:
            self._wait_scope = scope
            try:
                if self._pending_open is not None:
                    await self._open(self._pending_open)
                    return
                if park:
                    self._parked, self._parked_deadline = stream, until
                    try:
                        if self._consumer_waiting:
                            self._has_data.set()  # it may take the socket now
                        await anyio.sleep_forever()
                    finally:
                        self._parked = None
                        self._loop_deep = False
                    return
                if stream is not None and not held:
                    await self._read(stream, math.inf if deadline is None else deadline)
                    return
                if held:
                    if self._space.is_set():
                        self._space = anyio.Event()
                    await self._space.wait()
                    return
                await anyio.sleep_forever()
            finally:
                self._wait_scope = None
        now = self._clock()
        if deadline is not None and now >= deadline:
            core.handle_timer(max(deadline, now))

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

    async def _open(self, effect: OpenTransport) -> None:
        self._pending_open = None
        core = self._core
        self._in_connect = True
        self._reads = reads = ReadSize(self._opts.read_size, self._opts.queue_size)
        try:
            stream = await open_stream(
                effect.host,
                effect.port,
                tls=effect.tls,
                ssl_context=self._opts.ssl_context,
                server_hostname=effect.server_hostname,
                reads=reads,
            )
        except Exception as exc:
            core.transport_failed(exc, self._clock())
            return
        finally:
            self._in_connect = False
        if core.state is not State.CONNECTING:  # stopped while the connect completed
            with anyio.CancelScope(shield=True):
                await stream.abort()
            return
        self._stream = stream
        if type(stream) is AsyncioStream:
            stream.set_sink(functools.partial(self._on_data, stream))  # (no Python frame)
        core.transport_opened(self._clock())

    async def _consumer_read(self) -> bool:
        """trio, plain TCP, queue empty: read the socket in the consumer's
        own task -- wait until it is readable, read, queue the messages
        (:meth:`_on_data`) -- instead of waiting for the loop's task to do
        it and wake this one (two trips through trio's scheduler per
        message in an echo: measured 82 µs against a bare trio socket's
        54).  The loop's task steps aside while the consumer reads, and
        takes the socket back once the consumer has been away for
        :data:`HANDBACK` (it keeps the queue filling and pings answered
        while the application is busy).  One task at a time waits on the
        socket.  True if bytes were read; False: wait the usual way."""
        stream = self._stream
        if type(stream) is not AnyioStream or stream.raw is None:
            return False
        if self._consumer_on_fd or self._stash:
            # Another consumer task waits on the socket (trio allows one), or
            # a read left events and messages in _stash for the loop's
            # task: its _dispatch queues them and sets _has_data.
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
        self._consumer_on_fd = True
        try:
            while True:
                try:
                    data = raw.recv(self._reads.now)
                except BlockingIOError:
                    # Waiting, as in _wait_for_messages (a deferred failure
                    # waits for this before it closes: _let_consumer_catch_up).
                    self._consumer_seen = self._consumer_waiting = True
                    if self._catching_up:
                        self._idle.set()
                    try:
                        await wait_readable(raw)
                    except Exception:  # closed under us (a stop, a reconnect)
                        return False
                    finally:
                        self._consumer_waiting = False
                    if not self._may_sink(stream):
                        return False
                    continue
                except OSError as exc:
                    self._consumer_reads = False
                    self._fail_transport(exc)
                    self._wake_loop(stream)
                    return False
                if not data:  # the end: the loop's task reads it and says so
                    self._consumer_reads = False
                    self._wake_loop(stream)
                    return False
                self._reads.update(len(data))
                self._on_data(stream, data, self._clock())
                return True
        finally:
            self._consumer_on_fd = False

    def _inline_read(self) -> bool:
        """Plain TCP, during a burst (the last reads filled their size): the
        consumer found the queue empty.  Read what the socket has right here
        and queue its messages (:meth:`_on_data`), instead of waiting for
        the event loop to see the socket readable, read and wake the
        consumer (trio: two trips through its scheduler; asyncio: one
        through the loop).  The loop's task is parked in :meth:`_read`; it
        finds nothing there, or the next bytes.  Outside bursts (an echo)
        it is not tried: the socket would be empty.  True if bytes were
        read."""
        if self._reads.now <= MIN_READ or self._stash:  # not a burst; or wait for _dispatch
            return False
        stream = self._stream
        if (type(stream) is not AnyioStream and type(stream) is not AsyncioStream) \
                or not self._may_sink(stream):
            return False
        try:
            data = stream.read_nowait()
        except OSError as exc:  # reset: say so now (the next read may only see the end)
            self._fail_transport(exc)
            self._wake_loop(stream)
            return False
        if not data:
            return False
        self._on_data(stream, data, self._clock())
        return True

    def _may_sink(self, stream: Stream) -> bool:
        """May bytes from *stream* be handled outside the loop's task, now?"""
        return not (self._parked is not stream or self._writing or self._buffer.held
                    or self._sink_error is not None or not self._live(stream))

    def _on_data(self, stream: Stream, data: bytes, now: float) -> bool:
        """A read outside the loop's task (asyncio: in the protocol's
        callback; trio: the consumer's :meth:`_inline_read`), while the loop
        waits in :meth:`_read`.  Feed it to the core and queue the
        messages right here -- the consumer wakes one trip through the event
        loop earlier than if this task woke first -- and wake the loop only
        if there is more to do: bytes to write, a lifecycle event or effect
        (kept in order in ``_stash``), a failure, a full queue, an earlier
        deadline.  False (not now): the protocol queues the bytes."""
        if not self._may_sink(stream):
            return False  # the loop will take them (after a pause, if the queue is full)
        try:
            core = self._core
            buffer = self._buffer
            stash = self._stash
            core.receive_data(data, now)
            wake = core.pending_output > 0
            delivered = False
            while (event := core.next_event()) is not None:
                if not stash and type(event) is Messages:
                    delivered = True
                    self._reads.messages += len(event.data)
                    if buffer.push(event) == "disconnect":
                        core.reconnect(now, reason=Reason.SLOW_CONSUMER)
                        wake = True
                else:
                    stash.append(event)
                    wake = True
            if delivered:
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

    async def _read(self, stream: Stream, deadline: float) -> None:
        core = self._core
        if self._sink_error is not None:  # _on_data failed while the loop was woken
            raise self._sink_error
        self._parked, self._parked_deadline = stream, deadline
        self._loop_on_fd = True
        try:
            data = await stream.receive()
        except anyio.EndOfStream:
            if self._live(stream):
                core.receive_eof(self._clock())
            return
        except Exception as exc:
            self._fail_transport(exc)
            return
        finally:
            self._parked = None
            self._loop_on_fd = False
        if self._sink_error is not None:  # _on_data failed: a bug, raise it here
            raise self._sink_error
        if not data:  # woken by _on_data, which fed the core already
            return
        if self._live(stream):  # not if a stop() came while the read completed
            core.receive_data(data, self._clock())

    def _live(self, stream: Stream) -> bool:
        """Is *stream* still the core's transport (it may have been dropped
        by an application call while we awaited it)?"""
        return stream is self._stream and self._core.state in _READ_STATES
