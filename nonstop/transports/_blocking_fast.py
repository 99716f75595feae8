"""The blocking driver's speed-ups, beside its plain loop (``fast=True``).

Theory of operation
-------------------
:class:`FastSyncFeed` is :class:`~._blocking.SyncFeed` with a few of its
steps overridden; the loop, its order and every decision stay the plain
driver's.

**Whoever waits runs the loop.**  A consumer that finds the queue empty
does not sleep until the I/O thread hands it messages (a thread hop: a
condition variable and the GIL per message in an echo, and reads in the
I/O thread's malloc arena, which cost big messages page faults): it takes
the loop over and runs it itself until messages come, then gives it back on
its way out.  One thread at a time owns the loop (``_owner``, under the
condition):

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
notified at every push and write, and each of those wake-ups would take the
GIL from the consumer.  Callbacks (``on_event``, the logger) run in
whichever thread owns the loop.  A ``KeyboardInterrupt`` in a consumer
that owns the loop almost always lands in ``select``, where nothing is
lost; in the rare instant between a read and its dispatch, that read (or a
lifecycle step) can be lost, as in any single-threaded client.  The loop's
own blocking steps (a name lookup before a connect, a write that waits for
room, up to ``write_timeout``) then also run in the consumer's thread, so
``receive(timeout)`` can return that much later.

**Writes from the caller.**  On a plain TCP socket ``send`` writes its
bytes itself, without blocking, under the write lock the loop also takes
(so bytes never interleave); what the kernel does not take at once is left
in ``_unsent`` for the loop.  (TLS: an SSL object must not read in one
thread and write in another, so there the loop always writes.)

**``for message in feed``** steps through each batch with C iterators
(:func:`itertools.chain` over the list's own iterator), Python only per
batch.
"""

from __future__ import annotations

import itertools
import operator
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..core import FeedCore, State
from ._blocking import TAKE, SyncFeed
from ._common import HANDBACK, DriverOptions
from ._proxy import TLS_SOCKETS

__all__ = ["FastSyncFeed"]

T = TypeVar("T")

#: ``for message in feed``: messages up to this size are held until their
#: batch is consumed, bigger ones are let go one by one (see __iter__).
HOLD_SIZE = 4096
_END: Any = object()  # the end of a popped batch
#: ``_owner`` values besides a consumer's thread ident.
_FREE = 0
_IO = -1


class FastSyncFeed(SyncFeed):
    """:class:`~._blocking.SyncFeed` with its speed-ups (see the module doc)."""

    def __init__(self, core: FeedCore, options: DriverOptions) -> None:
        super().__init__(core, options)
        # The I/O thread waits for the loop on a condition of its own, over
        # the same lock: notifications meant for consumers and senders must
        # not wake it.
        self._io_cond = threading.Condition(self._cond._lock)  # type: ignore[attr-defined]
        # a ``for`` loop's current batch and its iterator (see __iter__)
        self._run_left: tuple[list[str | bytes], Iterator[str | bytes] | None] | None = None
        self._owner = _IO  # who runs the loop; guarded by _cond
        self._released_at = 0.0  # when a consumer last gave the loop up
        self._wanted = False  # a consumer asked the I/O thread for the loop
        self._nudged = False  # the loop is wanted at once (a write is waiting)
        self._io_parked = False  # the I/O thread waits for a consumer to give it up
        self._releases = 0  # how many times a consumer gave the loop up

    def _in_loop(self) -> bool:
        return super()._in_loop() or self._owner == threading.get_ident()

    # -- for message in feed ---------------------------------------------------
    def __iter__(self) -> Iterator[str | bytes]:
        """C iterators per message, Python per batch.  Small messages: the
        list's own iterator.  Big ones (over :data:`HOLD_SIZE`): ``list.pop``
        until a sentinel, so that each message is let go once consumed.
        Nothing is lost when the loop breaks: the batch and its iterator
        are kept in ``_run_left``, and the next call of any other kind
        first takes back what the iterator had not reached (:meth:`_reclaim`)."""
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
        reached, in order, ahead of anything else; that iterator then
        yields nothing more."""
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
        return super().__next__()

    def receive(self, timeout: float | None = None) -> str | bytes:
        if self._run_left is not None:
            self._reclaim()
        return super().receive(timeout)

    def _take(self, limit: int, timeout: float | None) -> list[str | bytes]:
        if self._run_left is not None:
            self._reclaim()
        return super()._take(limit, timeout)

    # -- the consumer runs the loop ------------------------------------------
    def _await(self, take: Callable[[], T], timeout: float | None) -> T:
        """Once messages are queued, ``take()`` some; while there are none,
        run the loop in this thread (or wait for whoever does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        cond = self._cond
        session = self._session
        running = False  # this thread owns the loop
        session.consumer_seen = True
        try:
            while True:
                with cond:
                    if len(self._buffer):
                        session.consumer_waiting = False  # (under the lock: see prepare_wait)
                        got = take()
                        self._made_room()
                        return got
                    self._check_waitable(timeout, deadline)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    session.consumer_waiting = True
                    cond.notify_all()
                    running = self._claim_loop(me)
                    if not running:
                        if self._core.failure_pending:
                            self._wake()
                        cond.wait(remaining)
                        continue
                if not self._step(remaining):  # stopped: the I/O thread ends it
                    self._release_loop(me)
                    running = False
        finally:
            session.consumer_waiting = False
            if running:
                self._release_loop(me)

    def _hand_out(self) -> bool:
        return self._owner != _IO and bool(len(self._buffer))  # a consumer: go and hand them out

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

    def _turn(self) -> None:
        """In the I/O thread, before each turn of the loop: hand the loop to
        a consumer that asked for it, and wait until it is the I/O thread's
        again."""
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

    def _poke(self) -> None:
        """The loop is needed now: wake it, and if no thread runs it, the
        I/O thread takes it back at once."""
        self._wake()
        with self._cond:
            if self._owner == _FREE:
                self._nudged = True
                self._io_cond.notify()

    # -- writes from the caller's thread ---------------------------------------
    def _write_soon(self) -> None:
        if not self._write_now():
            self._poke()

    def _write_now(self) -> bool:
        """Write what the core has queued, if the socket is plain TCP and
        nobody else is writing; never block.  The write lock is only tried:
        the loop holds it for as long as a backlog takes to drain.
        False: the loop must write (or write the rest)."""
        sock = self._sock
        if sock is None or isinstance(sock, TLS_SOCKETS):
            return False
        if not self._write_lock.acquire(blocking=False):
            return False  # the bytes stay queued in the core, in order
        try:
            if self._unsent or sock is not self._sock:
                return False
            with self._cond:
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
