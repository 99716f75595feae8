"""The blocking driver: one I/O thread with ``socket``, ``ssl`` and ``selectors``.

Theory of operation
-------------------
:class:`SyncFeed` runs :class:`~nonstop.core.FeedCore` in one background
thread that does all the I/O, the same loop as the anyio driver: write
``data_to_send()``, handle effects and events, then wait in
``selector.select(timeout)`` until the socket is readable, the wake-up socket
is readable, or ``core.next_deadline()`` passes, and feed exactly one input.
The thread sleeps exactly until the next deadline: an idle feed costs no CPU.

The application lives in other threads.  Its calls (``send``, ``subscribe``,
...) take one lock around the *core* call only -- never around I/O -- and then
write a byte to a ``socketpair`` to wake the loop, so new bytes are written
and a new deadline is honoured at once.  One exception, for latency: on a
plain TCP socket ``send`` writes its bytes itself, without blocking, under
the write lock the loop also takes to write (so bytes never interleave);
whatever the kernel does not take at once is left in ``_unsent`` for the
loop.  (TLS: an SSL object must not read in one thread and write in another,
so there the loop always writes.)  ``stop()`` takes no lock at all: it
sets a flag and writes the wake-up byte, so it is safe from a signal handler;
the loop then runs the close handshake and the thread ends.

Messages reach the application through the bounded
:class:`~nonstop.transports._common.MessageBuffer` behind a condition
variable, with the same slow-consumer policies as the anyio driver.

**Whoever waits runs the loop.**  A consumer that finds the buffer empty
does not sleep until the I/O thread hands it messages (a thread hop: a
condition variable and the GIL, about 12 µs per echo on the bench, and
reads in the I/O thread's malloc arena cost 64 KiB messages a fifth of
their rate in page faults): it takes the loop over and runs it itself
until messages come, then gives it back on its way out of ``next()``.  One
thread at a time owns the loop (``_owner``, under the condition):

* the I/O thread, while nobody iterates (or the consumer is busy elsewhere);
* a consumer thread, while it waits in ``next()``, ``receive()``,
  ``batches()`` or ``records()``;
* nobody, for a moment after a consumer returned with messages: the I/O
  thread takes the loop back only once the consumer has been away for
  :data:`HANDBACK` (a consumer that iterates comes back long before), or at
  once for a stop, a write the caller could not do, or the end of the feed.
  Core deadlines and ``stop()`` may therefore wait up to :data:`HANDBACK`.

A consumer that finds the I/O thread owning the loop asks for it
(``_wanted`` and the wake-up byte); the I/O thread hands it over at the top
of its next turn.  While it does not own the loop the I/O thread waits on a
condition of its own (``_io_cond``, over the same lock), notified only when
the loop is free for it: the condition consumers and senders wait on is
notified at every push and write, and each of those wake-ups took the GIL
from the consumer.  Callbacks (``on_event``, the logger) run in whichever
thread owns the loop.  A ``KeyboardInterrupt`` in a consumer that owns the
loop almost always lands in ``select``, where nothing is lost; in the rare
instant between a read and its dispatch, that read (or a lifecycle step)
can be lost, and during a blocked write the rest of a frame, as in any
single-threaded client; the docs say to let the interrupt end the feed.
The loop's own blocking steps (a name lookup before a connect, a write
that waits for room, up to ``write_timeout``) then also run in the
consumer's thread, so ``receive(timeout)`` can return that much later.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import operator
import os
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

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
    NEXT_ADDRESS_DELAY,
    DriverOptions,
    MessageBuffer,
    Observer,
    ReadSize,
    WriteStalled,
    take_pending,
)

__all__ = ["SyncFeed"]

E = TypeVar("E", bound=AppEvent)

HIGH_WATER = 1 << 20
FAILURE_GRACE = 1.0
TAKE = 512
#: ``for message in feed``: messages up to this size are held until their
#: batch is consumed, bigger ones are let go one by one (see __iter__).
HOLD_SIZE = 4096
_END: Any = object()  # the end of a popped batch
#: ``_owner`` values besides a consumer's thread ident.
_FREE = 0
_IO = -1

T = TypeVar("T")

_AddrInfo = tuple[Any, Any, int, str, Any]


class _Connecting:
    """Non-blocking TCP connects (happy eyeballs: the next address starts
    when the last failed or after NEXT_ADDRESS_DELAY, the first to connect
    wins), then a non-blocking TLS handshake."""

    __slots__ = ("effect", "addresses", "trying", "next_at", "sock", "tls", "errors")

    def __init__(self, effect: OpenTransport, addresses: list[_AddrInfo]) -> None:
        self.effect = effect
        self.addresses = addresses
        self.trying: list[socket.socket] = []  # TCP connects in flight
        self.next_at: float | None = None  # when to start the next address beside them
        self.sock: socket.socket | None = None  # the one that connected
        self.tls: ssl.SSLSocket | None = None
        self.errors: list[OSError] = []


class SyncFeed:
    """A running feed for blocking code; see :func:`nonstop.sync.connect`."""

    def __init__(self, core: FeedCore, options: DriverOptions) -> None:
        self._core = core
        self._opts = options
        self._lock = threading.Lock()  # guards the core only
        self._write_lock = threading.Lock()  # one writer on the socket at a time
        self._unsent = b""  # taken from the core, not yet written (send() wrote part)
        self._reads = ReadSize(options.read_size, options.queue_size)
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # guards the buffer and waiters
        # The I/O thread waits for the loop (_io_turn) on a condition of its
        # own, over the same lock: the notifications meant for consumers and
        # senders (every push, every write, every wait) must not wake it.
        # They did: on the echo bench each woke it to take the GIL from the
        # consumer, 10 context switches and about 15 us of CPU per round trip.
        self._io_cond = threading.Condition(lock)
        self._buffer = MessageBuffer(options.queue_size, options.overflow)
        self._observer = Observer(core.config.label, options.logger, options.on_event)
        self._waiters: list[tuple[Callable[[AppEvent], bool], list[AppEvent]]] = []
        self._sock: socket.socket | None = None
        self._connecting: _Connecting | None = None
        self._pending_open: OpenTransport | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop_requested = False
        self._local: list[str | bytes] = []  # taken by __next__, reversed
        # a ``for`` loop's current batch and its iterator (see __iter__)
        self._run_left: tuple[list[str | bytes], Iterator[str | bytes] | None] | None = None
        self._consumer_waiting = False  # blocked in __next__ for lack of messages
        self._consumer_seen = False
        # Who runs the loop (see the module docstring); guarded by _cond.
        self._owner = _IO
        self._released_at = 0.0  # when a consumer last gave the loop up
        self._wanted = False  # a consumer asked the I/O thread for the loop
        self._nudged = False  # the loop is wanted at once (a write is waiting)
        self._io_parked = False  # the I/O thread waits for a consumer to give it up
        self._releases = 0  # how many times a consumer gave the loop up
        self._done = threading.Event()
        self._crash: BaseException | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------
    # lifecycle
    def start(self) -> SyncFeed:
        """Start the I/O thread (``with`` does this for you)."""
        if self._thread is not None:
            raise RuntimeError("this feed was already started; call nonstop.sync.connect() again")
        self._thread = threading.Thread(
            target=self._run, name=f"nonstop:{self._core.config.label}", daemon=True
        )
        self._thread.start()
        return self

    def __enter__(self) -> SyncFeed:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: close handshake, then the thread ends.

        Safe from any thread and from a signal handler (it takes no lock).
        Waits up to *timeout* (default ``close_timeout`` + 2 s) for the thread
        to finish, except when called from the thread running the loop (a
        callback, or a signal handler that interrupted a consumer waiting in
        ``next()``): the loop ends the feed once the caller returns.
        """
        self._stop_requested = True
        self._wake()
        thread = self._thread
        if thread is None:
            self._close_wake()
            return
        if self._in_loop():
            return  # from a callback: the loop ends the feed once this returns
        limit = self._core.config.close_timeout + 2.0 if timeout is None else timeout
        thread.join(limit)

    def _in_loop(self) -> bool:
        """True in the thread running the loop (a callback): it must not
        wait for the loop."""
        return threading.current_thread() is self._thread or self._owner == threading.get_ident()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._wake_w.send(b"\0")

    def _close_wake(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------
    # the application's side
    def __iter__(self) -> Iterator[str | bytes]:
        """``for message in feed``: C iterators per message, Python per
        batch.  A ``for`` loop's step is an iterator over the batch being
        consumed, chained by :func:`itertools.chain` (for a 1 KiB message 15
        ns, against 70 ns for a ``__next__`` method: 10 % of its cost).
        Small messages: the list's own iterator.  Big ones (over
        :data:`HOLD_SIZE`): ``list.pop`` until a sentinel, so that each
        message is let go once consumed, as with ``next()`` -- a batch of
        512 kept to its end cost 64 KiB messages half their rate in page
        faults.  Nothing is lost when the loop breaks: the batch and its
        iterator are kept in ``_run_left``, and the next call of any other
        kind (``next(feed)``, ``receive``, ``batches``, a new loop) first
        takes back what the iterator had not reached (:meth:`_reclaim`)."""
        return itertools.chain.from_iterable(self._runs())

    def _runs(self) -> Iterator[Iterator[str | bytes]]:
        while True:
            try:
                batch = self._take(TAKE, None)
            except StopIteration:
                return
            run: Iterator[str | bytes]
            if len(batch[0]) <= HOLD_SIZE:
                run = iter(batch)
                self._run_left = (batch, run)
            else:
                batch.append(_END)
                batch.reverse()
                run = iter(batch.pop, _END)
                self._run_left = (batch, None)
            yield run

    def _reclaim(self) -> None:
        """Take back the messages a ``for`` loop's batch iterator has not
        reached (it broke out, or another call came in between), in order,
        ahead of anything else; that iterator then yields nothing more."""
        assert self._run_left is not None
        batch, run = self._run_left
        self._run_left = None
        if run is not None:  # a list iterator
            left = operator.length_hint(run)
            rest = batch[len(batch) - left:]
            batch.clear()  # the old iterator is exhausted: no message twice
            rest.reverse()  # as _local keeps them: oldest last
        else:  # popped up to the sentinel at [0]: the rest is reversed already
            rest = batch[1:]
            del batch[1:]  # the old iterator's next pop is the sentinel
        if rest:
            self._local = self._local + rest  # (empty then: a batch is taken only once _local is)

    def __next__(self) -> str | bytes:
        if self._run_left is not None:
            self._reclaim()
        local = self._local
        if local:
            return local.pop()
        batch = self._take(TAKE, None)
        batch.reverse()  # pop() from the end is O(1)
        self._local = batch
        return batch.pop()

    def receive(self, timeout: float | None = None) -> str | bytes:
        """The next message; :class:`TimeoutError` after *timeout* seconds,
        :class:`StopIteration` once the feed has stopped."""
        if self._run_left is not None:
            self._reclaim()
        local = self._local
        if local:
            return local.pop()
        return self._take(1, timeout)[0]

    def batches(self, limit: int = TAKE) -> Iterator[list[str | bytes]]:
        """Messages in lists, as many as are ready (up to *limit*): the
        fastest way to consume a busy feed.  After plain iteration (a
        ``for`` loop left by ``break``, or ``next()``) the messages it took
        and did not hand out come first, in order."""
        while True:
            try:
                yield self._take(limit, None)
            except StopIteration:
                return

    def records(self) -> Iterator[Message]:
        """Iterate messages with metadata (connection number, receive time).

        Don't mix with plain iteration or :meth:`batches` on one feed: the
        messages those took and did not hand out yet have no metadata
        left, so they are not in this iteration (they stay for the next
        plain one)."""
        buffer = self._buffer
        while True:
            try:
                records = self._await(lambda: buffer.take_records(TAKE), None)
            except StopIteration:
                return
            yield from records

    def _take(self, limit: int, timeout: float | None) -> list[str | bytes]:
        if self._run_left is not None:
            self._reclaim()
        if self._local:  # left by plain iteration
            batch, self._local = take_pending(self._local, limit)
            return batch
        buffer = self._buffer
        return self._await(lambda: buffer.take(limit), timeout)

    def _made_room(self) -> None:
        if not self._buffer.held and self._core.reading_paused:
            self._wake()

    def _await(self, take: Callable[[], T], timeout: float | None) -> T:
        """Once messages are queued, ``take()`` some; at the end raise
        StopIteration, FeedGaveUp or the I/O thread's crash.  While there
        are none, run the loop in this thread (or wait for whoever does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        cond = self._cond
        running = False  # this thread owns the loop
        self._consumer_seen = True
        try:
            while True:
                with cond:
                    if len(self._buffer):
                        self._consumer_waiting = False  # (under the lock: see _wait)
                        got = take()
                        self._made_room()
                        return got
                    if self._done.is_set():
                        self._observer.end(self._crash, StopIteration)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"no message within {timeout}s")
                    self._consumer_seen = self._consumer_waiting = True
                    cond.notify_all()
                    running = self._claim_loop(me)
                    if not running:
                        cond.wait(remaining)
                        continue
                if not self._step(remaining):  # stopped: the I/O thread ends it
                    self._release_loop(me)
                    running = False
        finally:
            self._consumer_waiting = False
            if running:
                self._release_loop(me)

    def _claim_loop(self, me: int) -> bool:
        """With the condition held: True if thread *me* now owns the loop;
        if the I/O thread has it, ask for it (the caller then waits)."""
        owner = self._owner
        if owner == me:
            return True
        if owner == _FREE and self._core.state is not State.STOPPED:
            self._owner = me
            return True
        if owner == _IO and not self._wanted:
            self._wanted = True
            self._wake()
        return False

    def _release_loop(self, me: int) -> None:
        with self._cond:
            if self._owner == me:
                self._owner = _FREE
                self._released_at = time.monotonic()
                self._releases += 1
                if self._io_parked or self._core.state is State.STOPPED:
                    self._io_cond.notify()

    def _io_turn(self) -> None:
        """In the I/O thread, before each turn of the loop: hand the loop to
        a consumer that asked for it, and wait until it is the I/O thread's
        again (see the module docstring)."""
        cond = self._cond
        seen = -1
        with cond:
            while True:
                owner = self._owner
                if owner == _IO:
                    if not self._wanted:
                        return
                    self._wanted = False
                    self._owner = _FREE
                    self._released_at = time.monotonic()
                    cond.notify_all()
                elif owner == _FREE:
                    away = time.monotonic() - self._released_at
                    if (away >= HANDBACK or self._nudged or self._stop_requested
                            or self._core.state is State.STOPPED):
                        self._owner = _IO
                        self._nudged = False
                        return
                    self._io_cond.wait(HANDBACK - away)
                elif self._releases != seen:
                    # A consumer runs it and comes and goes: look again in
                    # HANDBACK (a notify per release would wake this thread,
                    # and take the GIL, at every batch).
                    seen = self._releases
                    self._io_cond.wait(HANDBACK)
                else:  # it has held the loop since (it waits for messages):
                    self._io_parked = True  # notify when it gives it up
                    try:
                        self._io_cond.wait()
                    finally:
                        self._io_parked = False

    def _nudge(self) -> None:
        """The loop is needed now (a write the caller could not do, a
        subscription, a reconnect): if no thread runs it, the I/O thread
        takes it back at once."""
        with self._cond:
            if self._owner == _FREE:
                self._nudged = True
                self._io_cond.notify()

    def send(self, message: object) -> None:
        """Send ``str`` (text), ``bytes`` (binary) or a JSON-able object.

        Raises :class:`~nonstop.NotConnected` when no connection is open.
        """
        with self._lock:
            self._core.send(message, time.monotonic())
            backlog = self._core.pending_output
        if not self._write_now():
            self._wake()
            self._nudge()
        if backlog > HIGH_WATER and not self._in_loop():
            with self._cond:
                self._cond.wait_for(
                    lambda: self._core.pending_output <= HIGH_WATER or self._done.is_set(),
                    timeout=self._opts.write_timeout,
                )

    def subscribe(self, subscription: object) -> Subscription:
        with self._lock:
            sub = self._core.subscribe(subscription, time.monotonic())
        self._wake()
        self._nudge()
        return sub

    def unsubscribe(self, subscription: object) -> Subscription:
        with self._lock:
            sub = self._core.unsubscribe(subscription, time.monotonic())
        self._wake()
        self._nudge()
        return sub

    def reconnect(self) -> bool:
        with self._lock:
            started = self._core.reconnect(time.monotonic())
        self._wake()
        self._nudge()
        return started

    def metrics(self) -> Metrics:
        with self._lock:
            metrics = self._core.metrics(time.monotonic())
        with self._cond:
            return self._buffer.add_driver_metrics(metrics)

    @property
    def state(self) -> State:
        return self._core.state

    @property
    def history(self) -> list[AppEvent]:
        with self._cond:
            return list(self._observer.history)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._core.subscriptions

    def wait_for(
        self,
        kind: type[E],
        predicate: Callable[[E], bool] | None = None,
        *,
        timeout: float | None = None,
    ) -> E:
        """Block until the next lifecycle event of *kind* (matching *predicate*)."""

        def match(event: AppEvent) -> bool:
            return isinstance(event, kind) and (predicate is None or predicate(event))

        box: list[AppEvent] = []
        entry = (match, box)
        with self._cond:
            self._waiters.append(entry)
            try:
                self._cond.wait_for(lambda: bool(box) or self._done.is_set(), timeout)
            finally:
                self._waiters.remove(entry)
            if not box:
                if not self._done.is_set():
                    raise TimeoutError(f"no {kind.__name__} event within {timeout}s")
                gave_up = self._observer.gave_up()
                if gave_up is not None:
                    raise gave_up
                raise RuntimeError(f"the feed stopped before a {kind.__name__} event")
        event = box[0]
        assert isinstance(event, kind)
        return event

    def wait_connected(self, timeout: float | None = None) -> None:
        if self._core.state is not State.OPEN:
            self.wait_for(Connected, timeout=timeout)

    # ------------------------------------------------------------------
    # the I/O thread
    def _run(self) -> None:
        core = self._core
        try:
            with self._lock:
                core.start(time.monotonic())
            while True:
                self._io_turn()
                if not self._step(None):
                    break
        except BaseException as exc:  # a bug: surface it to the consumer
            self._crash = exc
            raise
        finally:
            self._drop_socket(abort=True)
            self._close_wake()
            self._done.set()
            with self._cond:
                self._cond.notify_all()

    def _step(self, limit: float | None) -> bool:
        """One turn of the loop, in whichever thread owns it: write, hand
        out events, then wait (at most *limit* seconds) for one input.  A
        consumer that owns the loop does not wait once messages are queued:
        it returns to hand them out.  False once stopped."""
        core = self._core
        self._flush()
        self._dispatch()
        if core.state is State.STOPPED:
            return False
        if self._stop_requested and core.state is not State.STOPPING:
            with self._lock:
                core.stop(time.monotonic())
            return True
        if self._owner != _IO and len(self._buffer):
            return True  # a consumer: go and hand them out
        self._wait(limit)
        return True

    def _now(self) -> float:
        return time.monotonic()

    def _fail_transport(self, exc: BaseException) -> None:
        with self._lock:
            core = self._core
            if core.state in HAS_TRANSPORT and core.state is not State.CONNECTING:
                core.transport_failed(exc, time.monotonic())

    def _write_now(self) -> bool:
        """From an application thread: write what the core has queued, if
        the socket is plain TCP and nobody else is writing; never block.
        The write lock is only tried: the I/O thread holds it for as long as
        a backlog takes to drain (up to ``write_timeout``).
        False: the loop must write (or write the rest)."""
        sock = self._sock
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return False
        if not self._write_lock.acquire(blocking=False):
            return False  # the bytes stay queued in the core, in order
        try:
            if self._unsent or sock is not self._sock:
                return False
            with self._lock:
                data = self._core.data_to_send()
            try:
                sent = sock.send(data) if data else 0
            except OSError:  # full (BlockingIOError) or broken: the loop sees which
                sent = 0
            if sent < len(data):
                self._unsent = data[sent:]
                return False
        finally:
            self._write_lock.release()
        return True

    def _flush(self) -> None:
        with self._write_lock:
            with self._lock:
                data = self._core.data_to_send()
            if self._unsent:
                data, self._unsent = self._unsent + data, b""
            sock = self._sock
            if not data or sock is None:
                return
            try:
                sock.settimeout(self._opts.write_timeout)
                sock.sendall(data)
                sock.setblocking(False)
            except TimeoutError:
                self._fail_transport(WriteStalled(
                    f"write blocked for {self._opts.write_timeout}s: the server is not reading"
                ))
            except OSError as exc:
                self._fail_transport(exc)
        with self._cond:  # a sender may be waiting for the backlog to drain
            self._cond.notify_all()

    def _dispatch(self) -> None:
        core = self._core
        buffer = self._buffer
        while True:
            with self._lock:
                events: list[Event] = []
                while (event := core.next_event()) is not None:
                    events.append(event)
            if not events:
                return
            slow = False
            i, n = 0, len(events)
            while i < n:
                if type(events[i]) is Messages:
                    # Runs of messages: one lock acquisition, one wake-up.
                    with self._cond:
                        while i < n and type(events[i]) is Messages:
                            batch = events[i]
                            assert isinstance(batch, Messages)
                            self._reads.messages += len(batch.data)
                            if buffer.push(batch) == "disconnect":
                                slow = True
                            i += 1
                        self._cond.notify_all()
                    continue
                self._effect_or_event(events[i])
                i += 1
            if slow:
                with self._lock:
                    core.reconnect(time.monotonic(), reason=Reason.SLOW_CONSUMER)

    def _effect_or_event(self, event: Event) -> None:
        if isinstance(event, OpenTransport):
            self._pending_open = event
        elif isinstance(event, CloseTransport):
            self._pending_open = None
            self._drop_socket(abort=event.abort)
        else:
            assert not isinstance(event, Messages)
            with self._cond:
                self._observer.observe(event)
                for match, box in self._waiters:
                    if not box and match(event):
                        box.append(event)
                self._cond.notify_all()

    def _drop_socket(self, *, abort: bool) -> None:
        connecting, self._connecting = self._connecting, None
        with self._write_lock:  # no send() is writing to it; its leftovers go too
            sock, self._sock = self._sock, None
            self._unsent = b""
        sockets = [sock]
        if connecting is not None:
            sockets += [connecting.tls, connecting.sock, *connecting.trying]
        for s in sockets:
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                if abort:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()

    def _wait(self, limit: float | None = None) -> None:
        core = self._core
        if core.failure_pending:
            # Give the application up to FAILURE_GRACE seconds to take (and
            # answer) the messages that came just before a protocol error:
            # until none is queued and the consumer is back waiting for more
            # (or never came: then it has nothing to answer).  Queued
            # messages are waited for even before the first iteration -- an
            # application that starts iterating a moment after connect()
            # would otherwise find the connection failed under its answer.
            with self._cond:
                self._cond.wait_for(
                    lambda: not len(self._buffer)
                    and (self._consumer_waiting or not self._consumer_seen),
                    FAILURE_GRACE,
                )
        with self._cond:
            held = bool(self._buffer.held)
        with self._lock:
            if held and not core.reading_paused:
                core.pause_reading(time.monotonic())
            elif not held and core.reading_paused:
                core.resume_reading(time.monotonic())
            deadline = core.next_deadline()
        if self._pending_open is not None:
            self._begin_connect(self._pending_open)
            return
        now = time.monotonic()
        timeout = None if deadline is None else max(0.0, deadline - now)
        next_at = self._connecting.next_at if self._connecting is not None else None
        if next_at is not None:  # happy eyeballs: the next address is due then
            until_next = max(0.0, next_at - now)
            timeout = until_next if timeout is None else min(timeout, until_next)
        if limit is not None:  # a consumer's receive(timeout)
            timeout = limit if timeout is None else min(timeout, limit)
        ready = self._selector.select(timeout)
        woken = False
        for key, _mask in ready:
            if key.fileobj is self._wake_r:
                woken = True
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            elif self._connecting is not None:
                self._advance_connect(key.fileobj)  # type: ignore[arg-type]
                return
            elif not held:
                self._read()
                return
        if woken:
            return
        now = time.monotonic()
        c = self._connecting
        if c is not None and c.next_at is not None and now >= c.next_at:
            self._next_address()  # the first is slow: try the next beside it
            return
        if deadline is not None and now >= deadline:
            with self._lock:
                core.handle_timer(max(deadline, now))

    # -- connecting, without blocking the loop (stop() must stay prompt) --
    def _begin_connect(self, effect: OpenTransport) -> None:
        self._pending_open = None
        try:
            infos = socket.getaddrinfo(effect.host, effect.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            with self._lock:
                self._core.transport_failed(exc, time.monotonic())
            return
        self._connecting = _Connecting(effect, list(infos))
        self._next_address()

    def _next_address(self) -> None:
        """Start connecting to the next address (beside those in flight);
        with none left and none in flight, the connect failed."""
        c = self._connecting
        assert c is not None
        c.next_at = None
        while c.addresses:
            family, kind, proto, _, address = c.addresses.pop(0)
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                c.errors.append(exc)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(address)
            if err in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                c.trying.append(sock)
                self._selector.register(sock, selectors.EVENT_WRITE, None)
                if c.addresses:
                    c.next_at = time.monotonic() + NEXT_ADDRESS_DELAY
                return
            sock.close()
            c.errors.append(OSError(err, os.strerror(err)))
        if c.trying:
            return  # the last ones may still connect
        self._connecting = None
        error = c.errors[-1] if c.errors else OSError(f"no address for {c.effect.host}")
        if len(c.errors) > 1:
            error.__context__ = c.errors[0]
        with self._lock:
            self._core.transport_failed(error, time.monotonic())

    def _advance_connect(self, ready: socket.socket) -> None:
        c = self._connecting
        assert c is not None
        if c.sock is None:  # a TCP connect finished, one way or the other
            err = ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            c.trying.remove(ready)
            if err:
                self._selector.unregister(ready)
                ready.close()
                c.errors.append(OSError(err, os.strerror(err)))
                if c.addresses or not c.trying:
                    self._next_address()  # at once: no point waiting for the delay
                return
            c.sock = ready  # the first to connect wins
            for other in c.trying:
                self._selector.unregister(other)
                other.close()
            c.trying, c.next_at = [], None
        assert c.sock is not None
        if c.tls is None:
            if not c.effect.tls:
                self._connected(c.sock)
                return
            context = self._opts.ssl_context
            assert context is not None
            self._selector.unregister(c.sock)
            try:
                c.tls = context.wrap_socket(
                    c.sock, server_hostname=c.effect.server_hostname, do_handshake_on_connect=False
                )
            except (OSError, ValueError) as exc:
                self._fail_connect(exc)
                return
            self._selector.register(c.tls, selectors.EVENT_READ, None)
        try:
            c.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(c.tls, selectors.EVENT_READ, None)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(c.tls, selectors.EVENT_WRITE, None)
            return
        except OSError as exc:
            self._fail_connect(exc)
            return
        self._connected(c.tls)

    def _fail_connect(self, exc: BaseException) -> None:
        self._drop_socket(abort=True)
        with self._lock:
            self._core.transport_failed(exc, time.monotonic())

    def _connected(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        self._connecting = None
        self._sock = sock
        self._reads = ReadSize(self._opts.read_size, self._opts.queue_size)
        self._selector.register(sock, selectors.EVENT_READ, None)
        with self._lock:
            self._core.transport_opened(time.monotonic())

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        chunks: list[bytes] = []
        try:
            while True:
                data = sock.recv(self._reads.now)
                if not data:
                    break
                chunks.append(data)
                self._reads.update(len(data))
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    break
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if not chunks:
                return
        except OSError as exc:
            if chunks:
                with self._lock:
                    self._core.receive_data(b"".join(chunks), time.monotonic())
            self._fail_transport(exc)
            return
        with self._lock:
            if chunks:
                self._core.receive_data(b"".join(chunks), time.monotonic())
            else:
                self._core.receive_eof(time.monotonic())

