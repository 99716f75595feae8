"""The back ends a driver test runs on, behind one async surface.

A driver test is written once, as an ``async def`` taking the ``backend``
fixture (see conftest), and runs on each entry of :data:`BACKENDS`:

* ``asyncio`` and ``trio``: :func:`nonstop.connect` on that event loop;
  the feed *is* the :class:`~nonstop.AsyncFeed`, used exactly as an
  application would use it;
* ``blocking``: :func:`nonstop.sync.connect`; the test runs on asyncio and
  :class:`ThreadedFeed` gives the :class:`~nonstop.sync.SyncFeed` the async
  feed's surface, each call that may wait running in a worker thread (the
  feed's own I/O thread is untouched, and the event loop stays free for a
  server the test runs beside it).

* ``uvloop``: :func:`nonstop.connect` on asyncio with uvloop's event loop
  (anyio's ``use_uvloop``).

A new event loop is one more entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

import nonstop
from nonstop import Metrics, State, Subscription
from nonstop.core import AppEvent, Gap, Message

T = TypeVar("T")
E = TypeVar("E")

_END = object()


async def _in_thread(call: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a worker thread; the feed's end of iteration
    (``StopIteration``, which must not cross into a coroutine) comes back
    as ``StopAsyncIteration``, as the async feed raises it."""

    def run() -> Any:
        try:
            return call(*args)
        except StopIteration:
            return _END

    result = await anyio.to_thread.run_sync(run)
    if result is _END:
        raise StopAsyncIteration
    return result  # type: ignore[no-any-return]


async def _each(iterator: Iterator[T]) -> AsyncIterator[T]:
    """An async iteration over a blocking iterator, one ``next`` per thread call."""
    while True:
        try:
            yield await _in_thread(next, iterator)
        except StopAsyncIteration:
            return


class ThreadedFeed:
    """A :class:`~nonstop.sync.SyncFeed` with the async feed's surface.

    ``raw`` is the blocking feed itself, for what only it has.
    """

    def __init__(self, feed: nonstop.sync.SyncFeed) -> None:
        self.raw = feed

    # -- iteration ----------------------------------------------------------
    def __aiter__(self) -> ThreadedFeed:
        return self

    async def __anext__(self) -> str | bytes:
        return await _in_thread(next, self.raw)

    async def receive(self, timeout: float | None = None) -> str | bytes:
        return await _in_thread(self.raw.receive, timeout)

    def batches(self, limit: int | None = None) -> AsyncIterator[list[str | bytes]]:
        return _each(self.raw.batches() if limit is None else self.raw.batches(limit))

    def records(self) -> AsyncIterator[Message | Gap]:
        return _each(self.raw.records())

    # -- commands -------------------------------------------------------------
    async def send(self, message: object) -> None:
        await _in_thread(self.raw.send, message)

    async def subscribe(self, subscription: object, *, timeout: float | None = None) -> Subscription:
        return await _in_thread(lambda: self.raw.subscribe(subscription, timeout=timeout))

    async def unsubscribe(self, subscription: object) -> Subscription:
        return await _in_thread(self.raw.unsubscribe, subscription)

    async def reconnect(self) -> bool:
        return await _in_thread(self.raw.reconnect)

    async def wait_for(self, kind: type[E], predicate: Callable[[E], bool] | None = None, *,
                       timeout: float | None = None) -> E:
        return await _in_thread(lambda: self.raw.wait_for(kind, predicate, timeout=timeout))

    async def wait_connected(self, timeout: float | None = None) -> None:
        await _in_thread(self.raw.wait_connected, timeout)

    async def aclose(self) -> None:
        await _in_thread(self.raw.stop)

    # -- state ----------------------------------------------------------------
    def metrics(self) -> Metrics:
        return self.raw.metrics()

    @property
    def state(self) -> State:
        return self.raw.state

    @property
    def history(self) -> list[AppEvent]:
        return self.raw.history


Feed = Any  # an AsyncFeed or a ThreadedFeed: the same calls


@dataclass(frozen=True)
class Backend:
    """One way to run a driver test: its id, what anyio runs the test on,
    and which driver :meth:`connect` opens."""

    name: str
    runner: str | tuple[str, dict[str, Any]]
    blocking: bool = False

    @asynccontextmanager
    async def connect(self, url: str | None, **options: Any) -> AsyncIterator[Feed]:
        """Open and start a feed (``async with``); stop it on the way out."""
        if not self.blocking:
            async with nonstop.connect(url, **options) as feed:
                yield feed
            return
        feed = nonstop.sync.connect(url, **options)
        await anyio.to_thread.run_sync(feed.start)
        try:
            yield ThreadedFeed(feed)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(feed.stop)

    def __repr__(self) -> str:
        return self.name


BACKENDS = {
    "asyncio": Backend("asyncio", "asyncio"),
    "uvloop": Backend("uvloop", ("asyncio", {"use_uvloop": True})),
    "trio": Backend("trio", "trio"),
    "blocking": Backend("blocking", "asyncio", blocking=True),
}
#: The back ends an async test (one taking ``anyio_backend``) runs on.
ASYNC_BACKENDS = {name: b for name, b in BACKENDS.items() if not b.blocking}


def backend_for(runner: str | tuple[str, dict[str, Any]]) -> Backend:
    """The back end whose runner anyio was given (``anyio_backend``)."""
    return next(b for b in ASYNC_BACKENDS.values() if b.runner == runner)
