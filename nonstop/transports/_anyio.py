"""The anyio driver: the application's side of a feed, on asyncio or trio.

Theory of operation
-------------------
:class:`AsyncFeed` is what ``nonstop.connect`` returns: the application's
calls on top of the loop in :mod:`._anyio_loop`.  Messages come out of the
session's bounded queue in lists (``take``), handed out one by one from a
local list; a consumer that finds the queue empty waits on an event the
loop sets when it queued messages, after telling the session it waits (a
deferred protocol failure goes ahead once the application caught up).
``send`` writes from the caller's task; ``subscribe`` and friends call the
core and kick the loop.  There is one event-loop thread: no lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TypeVar

import anyio

from ..core import AppEvent, Gap, Message, Metrics, State, Subscription
from ._anyio_loop import AnyioLoop
from ._common import take_pending
from ._session import Waiter, confirms, matcher

__all__ = ["AsyncFeed"]

E = TypeVar("E", bound=AppEvent)

#: Messages the consumer takes from the queue at a time.
TAKE = 512
#: What waiting on a feed that was never entered raises (it would wait forever).
NOT_STARTED = ("this feed was not started: use `async with nonstop.connect(...) as feed:` "
               "and use the feed inside that block")


class AsyncFeed(AnyioLoop):
    """A running feed: iterate it for messages; see :func:`nonstop.connect`."""

    # ------------------------------------------------------------------
    # context management
    async def __aenter__(self) -> AsyncFeed:
        if self._tg is not None:
            raise RuntimeError("this feed was already started; call nonstop.connect() again")
        self._setup()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._run)
        except BaseException:
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._tg is not None
        try:
            await self._finish_gracefully()
        finally:
            self._tg.cancel_scope.cancel()
            try:
                result = await self._tg.__aexit__(exc_type, exc, tb)
            except BaseException as raised:
                if exc is None or not _only(raised, exc):
                    raise
                # The body's own exception, which the task group wrapped in
                # an exception group: returning False lets it out as it was
                # raised, so ``except FeedGaveUp`` around ``async with``
                # catches it.
                result = False
        return result

    async def _finish_gracefully(self) -> None:
        self.stop()
        # Shielded but bounded: a stop must finish the close handshake even
        # when the enclosing scope is being cancelled, but never hang.
        with anyio.move_on_after(self._core.config.close_timeout + 2.0, shield=True):
            await self._done.wait()

    async def aclose(self) -> None:
        """Stop gracefully and wait until the feed has stopped."""
        await self._finish_gracefully()

    def stop(self) -> None:
        """Ask for a graceful stop without waiting (safe from callbacks)."""
        if not self._finished:
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
        await self._wait_messages()
        batch = self._buffer.take(TAKE)
        self._made_room()
        batch.reverse()  # pop() from the end is O(1)
        self._local = batch
        return batch.pop()

    async def receive(self, timeout: float | None = None) -> str | bytes:
        """The next message; :class:`TimeoutError` after *timeout* seconds,
        :class:`StopAsyncIteration` once the feed has stopped."""
        if self._local:
            return self._local.pop()
        try:
            with anyio.fail_after(timeout):
                await self._wait_messages()
        except TimeoutError:
            raise TimeoutError(f"no message within {timeout}s") from None
        batch = self._buffer.take(1)
        self._made_room()
        return batch[0]

    async def batches(self, limit: int = TAKE) -> AsyncIterator[list[str | bytes]]:
        """Iterate messages in lists, as many as are ready (up to *limit*):
        the fastest way to consume a busy feed.  After plain iteration the
        messages it took and did not hand out come first, in order."""
        while True:
            if self._local:
                batch, self._local = take_pending(self._local, limit)
                yield batch
                continue
            try:
                await self._wait_messages()
            except StopAsyncIteration:
                return
            batch = self._buffer.take(limit)
            self._made_room()
            yield batch

    async def records(self) -> AsyncIterator[Message | Gap]:
        """Iterate messages with their metadata (connection number, receive
        time), and a :class:`~nonstop.Gap` record wherever messages may have
        been lost, before the first message after it.

        Don't mix with plain iteration or :meth:`batches` on one feed: the
        messages those took and did not hand out yet have no metadata left,
        so they are not in this iteration (they stay for the next plain one)."""
        while True:
            try:
                await self._wait_messages()
            except StopAsyncIteration:
                return
            records = self._buffer.take_records(TAKE)
            self._made_room()
            for record in records:
                yield record

    def _made_room(self) -> None:
        if not self._buffer.held and self._core.reading_paused:
            self._space.set()

    async def _wait_messages(self) -> None:
        """Return once messages are queued; at the end raise StopAsyncIteration
        (a stop), FeedGaveUp (it gave up) or the driver's crash."""
        session = self._session
        session.consumer_seen = True
        while not len(self._buffer):
            if self._finished:
                session.observer.end(self._crash, StopAsyncIteration)
            if self._tg is None:
                raise RuntimeError(NOT_STARTED)
            if await self._consumer_turn() or len(self._buffer) or self._finished:
                continue  # (what the loop's task did while the consumer read: not lost below)
            if self._has_data.is_set():
                self._has_data = self._new_event()
            session.consumer_waiting = True
            if session.check_caught_up(self._clock()):
                self._kick(force=True)  # the deferred failure goes ahead now
            try:
                await self._has_data.wait()
            finally:
                session.consumer_waiting = False

    async def _consumer_turn(self) -> bool:
        """The queue is empty: may the consumer fetch messages itself
        before it waits?  True if it did (the plain loop never does)."""
        return False

    async def send(self, message: object) -> None:
        """Send a message (``str``: text, ``bytes``: binary, else JSON).

        Raises :class:`~nonstop.NotConnected` when no connection is open.
        Written at once from the caller's task; returns when the bytes are
        handed to the socket.
        """
        self._core.send(message, self._clock())
        if not await self._write():
            self._kick()  # the write failed: let the loop act on it

    async def subscribe(self, subscription: object, *, timeout: float | None = None) -> Subscription:
        """Add a subscription, replayed on every connect.  While connected,
        wait until the server has it (its ``Subscribed`` event: sent, and
        acknowledged if it has an ACK matcher) or the connection ends;
        :class:`TimeoutError` after *timeout* seconds (it stays subscribed).
        While not connected, return at once: the next connect sends it."""
        sub = self._core.subscribe(subscription, self._clock())
        if self._core.state is State.OPEN:
            await self._write()
            await self._wait_event(confirms(sub), timeout, f"no Subscribed event for {sub.label}")
        self._kick()
        return sub

    async def unsubscribe(self, subscription: object) -> Subscription:
        """Remove a subscription; while connected, write its ``unsubscribe``
        message (if it has one) before returning."""
        sub = self._core.unsubscribe(subscription, self._clock())
        if not await self._write():
            self._kick()
        return sub

    async def reconnect(self) -> bool:
        """Close the current connection (1001) and reconnect with backoff;
        ``False`` if no connection is open.  Returns once the close frame is
        written."""
        started = self._core.reconnect(self._clock())
        await self._write()
        self._kick()
        return started

    def metrics(self) -> Metrics:
        """The core's metrics plus the queue's (``queued``, ``messages_dropped``)."""
        return self._session.metrics(self._clock())

    @property
    def history(self) -> list[AppEvent]:
        """The last 256 lifecycle events (no messages), oldest first."""
        return list(self._session.observer.history)

    async def wait_for(self, kind: type[E], predicate: Callable[[E], bool] | None = None, *,
                       timeout: float | None = None) -> E:
        """Wait for the next lifecycle event of *kind* (matching *predicate*).

        Raises :class:`TimeoutError` after *timeout* seconds, and
        :class:`~nonstop.FeedGaveUp` or :class:`RuntimeError` if the feed
        stops first.
        """
        event = await self._wait_event(matcher(kind, predicate), timeout, f"no {kind.__name__} event")
        if event is None:
            self._session.observer.ended_before(kind)
        assert isinstance(event, kind)
        return event

    async def _wait_event(self, accepts: Callable[[AppEvent], bool], timeout: float | None,
                          what: str) -> AppEvent | None:
        """The first event *accepts* takes, ``None`` if the feed ends first."""
        if self._tg is None:
            raise RuntimeError(NOT_STARTED)
        flag = anyio.Event()
        waiter = Waiter(accepts, flag.set)
        self._session.waiters.append(waiter)
        try:
            with anyio.fail_after(timeout):
                if not self._finished:
                    await flag.wait()
        except TimeoutError:
            raise TimeoutError(f"{what} within {timeout}s") from None
        finally:
            self._session.waiters.remove(waiter)
        return waiter.box[0] if waiter.box else None

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once a connection is open and its login, if any, accepted
        (at once if one is)."""
        kind = self._awaited_readiness()
        if kind is not None:
            await self.wait_for(kind, timeout=timeout)


def _only(raised: BaseException, exc: BaseException) -> bool:
    """Is *raised* *exc* itself, or groups holding nothing else?"""
    while raised is not exc:
        nested = getattr(raised, "exceptions", None)
        if not isinstance(nested, tuple) or len(nested) != 1:
            return False
        raised = nested[0]
    return True
