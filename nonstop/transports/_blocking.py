"""The blocking driver: the application's side of a feed, for scripts and threads.

Theory of operation
-------------------
:class:`SyncFeed` is what ``nonstop.sync.connect`` returns: the
application's calls on top of the I/O thread's loop in
:mod:`._blocking_loop`.  Every call takes the feed's one condition variable
around the core or the queue only, never around I/O, then wakes the loop
(the wake-up socket) so it writes new bytes and honours a new deadline.
Consumers take messages from the session's bounded queue in lists and wait
on the condition, which the loop notifies whenever it queued messages or
events.  ``stop()`` takes no lock: it is safe from a signal handler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TypeVar

from ..core import AppEvent, Gap, Message, Metrics, State, Subscription
from ._blocking_loop import BlockingLoop
from ._common import take_pending
from ._session import Waiter, confirms, matcher

__all__ = ["SyncFeed"]

E = TypeVar("E", bound=AppEvent)
T = TypeVar("T")

#: Queued output above which ``send`` waits for the loop to write it.
HIGH_WATER = 1 << 20
#: Messages a consumer takes from the queue at a time.
TAKE = 512
#: What waiting on a feed that was never entered raises (it would wait forever).
NOT_STARTED = ("this feed was not started: use `with nonstop.sync.connect(...) as feed:` "
               "and use the feed inside that block")


class SyncFeed(BlockingLoop):
    """A running feed for blocking code; see :func:`nonstop.sync.connect`."""

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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: close handshake, then the thread ends.

        Safe from any thread and from a signal handler (it takes no lock).
        Waits up to *timeout* (default ``close_timeout`` + 2 s) for the thread
        to finish, except when called from the thread running the loop (a
        callback): the loop ends the feed once the caller returns.
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

    # ------------------------------------------------------------------
    # the application's side
    def __iter__(self) -> Iterator[str | bytes]:
        return self

    def __next__(self) -> str | bytes:
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
        local = self._local
        if local:
            return local.pop()
        return self._take(1, timeout)[0]

    def batches(self, limit: int = TAKE) -> Iterator[list[str | bytes]]:
        """Messages in lists, as many as are ready (up to *limit*): the
        fastest way to consume a busy feed.  After plain iteration the
        messages it took and did not hand out come first, in order."""
        while True:
            try:
                yield self._take(limit, None)
            except StopIteration:
                return

    def records(self) -> Iterator[Message | Gap]:
        """Iterate messages with metadata (connection number, receive time),
        and a :class:`~nonstop.Gap` record wherever messages may have been
        lost, before the first message after it.

        Don't mix with plain iteration or :meth:`batches` on one feed: the
        messages those took and did not hand out yet have no metadata left,
        so they are not in this iteration (they stay for the next plain one)."""
        buffer = self._buffer
        while True:
            try:
                records = self._await(lambda: buffer.take_records(TAKE), None)
            except StopIteration:
                return
            yield from records

    def _take(self, limit: int, timeout: float | None) -> list[str | bytes]:
        if self._local:  # left by plain iteration
            batch, self._local = take_pending(self._local, limit)
            return batch
        buffer = self._buffer
        return self._await(lambda: buffer.take(limit), timeout)

    def _made_room(self) -> None:
        if not self._buffer.held and self._core.reading_paused:
            self._poke()

    def _await(self, take: Callable[[], T], timeout: float | None) -> T:
        """Once messages are queued, ``take()`` some; at the end raise
        StopIteration, FeedGaveUp or the I/O thread's crash."""
        deadline = None if timeout is None else time.monotonic() + timeout
        session = self._session
        with self._cond:
            session.consumer_seen = True
            while not len(self._buffer):
                self._check_waitable(timeout, deadline)
                session.consumer_waiting = True
                if self._core.failure_pending:
                    self._wake()  # the loop tells the core the application caught up
                try:
                    self._cond.wait(None if deadline is None else deadline - time.monotonic())
                finally:
                    session.consumer_waiting = False
            got = take()
            self._made_room()
            return got

    def _check_waitable(self, timeout: float | None, deadline: float | None) -> None:
        """With the condition held, the queue empty: raise if waiting makes
        no sense (the feed ended, was never started, or time is up)."""
        if self._done.is_set():
            self._session.observer.end(self._crash, StopIteration)
        if self._thread is None:
            raise RuntimeError(NOT_STARTED)
        if deadline is not None and deadline <= time.monotonic():
            raise TimeoutError(f"no message within {timeout}s")

    def send(self, message: object) -> None:
        """Send ``str`` (text), ``bytes`` (binary) or a JSON-able object.

        Raises :class:`~nonstop.NotConnected` when no connection is open.
        Waits while more than 1 MiB is queued and not yet written.
        """
        core = self._core
        with self._cond:
            core.send(message, time.monotonic())
            backlog = core.pending_output
        self._write_soon()
        if backlog > HIGH_WATER and not self._in_loop():
            with self._cond:
                self._cond.wait_for(lambda: core.pending_output <= HIGH_WATER or self._done.is_set(),
                                    timeout=self._opts.write_timeout)

    def _write_soon(self) -> None:
        """``send`` queued bytes in the core: have them written."""
        self._poke()

    def subscribe(self, subscription: object, *, timeout: float | None = None) -> Subscription:
        """Add a subscription, replayed on every connect.  While connected,
        wait until the server has it (its ``Subscribed`` event: sent, and
        acknowledged if it has an ACK matcher) or the connection ends;
        :class:`TimeoutError` after *timeout* seconds (it stays subscribed).
        While not connected (or from a callback), return at once."""
        with self._cond:
            sub = self._core.subscribe(subscription, time.monotonic())
            connected = self._core.state is State.OPEN
        self._poke()
        if connected and not self._in_loop():
            self._wait_event(confirms(sub), timeout, f"no Subscribed event for {sub.label}")
        return sub

    def unsubscribe(self, subscription: object) -> Subscription:
        """Remove a subscription; while connected its ``unsubscribe``
        message (if it has one) is sent."""
        with self._cond:
            sub = self._core.unsubscribe(subscription, time.monotonic())
        self._poke()
        return sub

    def reconnect(self) -> bool:
        """Close the current connection (1001) and reconnect with backoff;
        ``False`` if no connection is open."""
        with self._cond:
            started = self._core.reconnect(time.monotonic())
        self._poke()
        return started

    def metrics(self) -> Metrics:
        """The core's metrics plus the queue's (``queued``, ``messages_dropped``)."""
        with self._cond:
            return self._session.metrics(time.monotonic())

    @property
    def history(self) -> list[AppEvent]:
        """The last 256 lifecycle events (no messages), oldest first."""
        with self._cond:
            return list(self._session.observer.history)

    def wait_for(self, kind: type[E], predicate: Callable[[E], bool] | None = None, *,
                 timeout: float | None = None) -> E:
        """Block until the next lifecycle event of *kind* (matching *predicate*).

        Raises :class:`TimeoutError` after *timeout* seconds, and
        :class:`~nonstop.FeedGaveUp` or :class:`RuntimeError` if the feed
        stops first.
        """
        event = self._wait_event(matcher(kind, predicate), timeout, f"no {kind.__name__} event")
        if event is None:
            self._session.observer.ended_before(kind)
        assert isinstance(event, kind)
        return event

    def _wait_event(self, accepts: Callable[[AppEvent], bool], timeout: float | None,
                    what: str) -> AppEvent | None:
        """The first event *accepts* takes, ``None`` if the feed ends first."""
        if self._thread is None:
            raise RuntimeError(NOT_STARTED)
        waiter = Waiter(accepts, lambda: None)  # the loop notifies _cond after every event
        with self._cond:
            self._session.waiters.append(waiter)
            try:
                self._cond.wait_for(lambda: bool(waiter.box) or self._done.is_set(), timeout)
            finally:
                self._session.waiters.remove(waiter)
            if not waiter.box and not self._done.is_set():
                raise TimeoutError(f"{what} within {timeout}s")
        return waiter.box[0] if waiter.box else None

    def wait_connected(self, timeout: float | None = None) -> None:
        """Return once a connection is open and its login, if any, accepted
        (at once if one is)."""
        kind = self._awaited_readiness()
        if kind is not None:
            self.wait_for(kind, timeout=timeout)

