"""The anyio driver's redundant feed: several legs, one stream.

Theory of operation
-------------------
:class:`MergedAsyncFeed` is what ``nonstop.connect(..., redundancy=N)``
returns.  Each leg is a whole :class:`~._anyio.AsyncFeed` (or its fast
kind) run in the feed's one task group: its own loop, core and
connection.  A leg's session hands its messages to the shared
:class:`~._merged.Merger`, which queues what the merge lets through in the
feed's one queue; a leg's wake-ups of the consumer wake this feed's
consumer.  The application's side is :class:`~._anyio.AsyncFeed`'s, over
that queue; the calls that act on a connection (``send``, ``subscribe``,
``unsubscribe``, ``reconnect``, ``stop``) act on every leg.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from ..core import AppEvent, FeedCore, Merge, Metrics, NotConnected, State, Subscription
from ._anyio import NOT_STARTED, AsyncFeed
from ._anyio_fast import FastAsyncFeed
from ._common import DriverOptions
from ._merged import Head, LegSession, MergedParts, Merger, merged_metrics
from ._session import Session, confirms

__all__ = ["MergedAsyncFeed"]


class _Leg:
    """What makes a feed a leg: its session hands messages to the merger,
    its wake-ups of the consumer wake the owner's, and its end is the
    owner's to count."""

    _owner: MergedAsyncFeed
    _leg: int
    _clock: Callable[[], float]

    def _new_session(self, core: FeedCore, options: DriverOptions) -> Session:
        return LegSession(core, options, self._owner._merger, self._leg, lambda: self._clock())

    @property
    def _has_data(self) -> Any:
        return self._owner._has_data

    @_has_data.setter
    def _has_data(self, flag: Any) -> None:
        """The owner's flag is the one that counts."""

    async def _run(self, **kwargs: Any) -> None:
        try:
            await super()._run(**kwargs)  # type: ignore[misc]
        finally:
            self._owner._leg_ended()


class _PlainLeg(_Leg, AsyncFeed):
    def __init__(self, owner: MergedAsyncFeed, leg: int, core: FeedCore,
                 options: DriverOptions) -> None:
        self._owner, self._leg = owner, leg
        super().__init__(core, options)


class _FastLeg(_Leg, FastAsyncFeed):
    def __init__(self, owner: MergedAsyncFeed, leg: int, core: FeedCore,
                 options: DriverOptions) -> None:
        self._owner, self._leg = owner, leg
        super().__init__(core, options)


class MergedAsyncFeed(MergedParts[AsyncFeed], AsyncFeed):
    """A running redundant feed: iterate it for messages, each once; see
    :func:`nonstop.connect` (``redundancy``, ``urls``, ``sequence``)."""

    def __init__(self, cores: list[FeedCore], merge: Merge, options: DriverOptions,
                 new_core: Callable[[int], FeedCore]) -> None:
        self._merger = merger = Merger(merge, options, _label(cores[0]), len(cores))
        self._kind = _FastLeg if options.fast else _PlainLeg
        self._new_core = new_core
        self._legs: list[AsyncFeed] = [self._kind(self, i, core, options)
                                       for i, core in enumerate(cores)]
        #: Legs replaced (rotation) and still closing.
        self._retiring: list[AsyncFeed] = []
        self._head = Head(merger)
        super().__init__(cores[0], options)
        merger.wake = lambda: self._has_data.set()
        merger.start_leg = self._start_leg
        merger.retire_leg = self._retire_leg
        merger.poke_leg = self._poke_leg

    # -- the legs ---------------------------------------------------------
    async def __aenter__(self) -> MergedAsyncFeed:
        if self._tg is not None:
            raise RuntimeError("this feed was already started; call nonstop.connect() again")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            for leg in self._legs:
                leg._setup()
                leg._tg = self._tg
                await self._tg.start(leg._run)
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    def _start_leg(self, slot: int) -> None:
        """Open a replacement for the leg of *slot* (it takes that leg's
        place; the old one closes once the two overlap)."""
        assert self._tg is not None
        leg = self._kind(self, slot, self._new_core(slot), self._opts)
        place = slot % len(self._legs)
        self._retiring.append(self._legs[place])
        self._legs[place] = leg
        leg._setup()
        leg._tg = self._tg
        self._tg.start_soon(leg._run)

    def _retire_leg(self, session: Session) -> None:
        """Close a replaced leg for good (1000)."""
        leg = self._leg_of(session)
        if leg is not None:
            leg.stop()

    def _poke_leg(self, session: Session) -> None:
        leg = self._leg_of(session)
        if leg is not None:
            leg._kick(force=True)

    def _leg_ended(self) -> None:
        self._retiring = [leg for leg in self._retiring if not leg._finished]
        if self._retiring or not all(leg._finished for leg in self._legs):
            return
        for leg in self._legs:
            if leg._crash is not None and self._crash is None:
                self._crash = leg._crash
        self._finished = True
        self._done.set()
        self._has_data.set()

    def stop(self) -> None:
        """Ask for a graceful stop of every leg without waiting (safe from callbacks)."""
        for leg in self._all():
            leg.stop()

    def _kick(self, force: bool = False) -> None:
        for leg in self._all():
            leg._kick(force)

    # -- the consumer's side ------------------------------------------------
    def _made_room(self) -> None:
        if self._buffer.held:
            return
        for leg in self._all():
            if leg._core.reading_paused:
                leg._space.set()

    async def _wait_messages(self) -> None:
        for leg in self._all():
            leg._session.consumer_seen = True
        while not len(self._buffer):
            if self._finished:
                self._merger.ended().end(self._crash, StopAsyncIteration)
            if self._tg is None:
                raise RuntimeError(NOT_STARTED)
            if self._has_data.is_set():
                self._has_data = self._new_event()
            now = self._clock()
            legs = self._all()  # (a rotation may have replaced one)
            sessions = [leg._session for leg in legs]
            for leg, session in zip(legs, sessions, strict=True):
                session.consumer_seen = True
                session.consumer_waiting = True
                if session.check_caught_up(now):
                    leg._kick(force=True)  # its deferred failure goes ahead now
            try:
                await self._has_data.wait()
            finally:
                for session in sessions:
                    session.consumer_waiting = False

    # -- calls on every leg ---------------------------------------------------
    async def send(self, message: object) -> None:
        """Send a message on every open leg (``str``: text, ``bytes``:
        binary, else JSON); :class:`~nonstop.NotConnected` if none is open."""
        sent = 0
        for leg in self._legs:
            if leg._core.state is State.OPEN:
                leg._core.send(message, self._clock())
                sent += 1
        if not sent:
            raise NotConnected("no leg of this feed is open; wait_connected() first")
        await self._write_all()

    async def _write_all(self) -> None:
        for leg in self._all():
            if not await leg._write():
                leg._kick()

    async def subscribe(self, subscription: object, *, timeout: float | None = None) -> Subscription:
        """Add a subscription on every leg, replayed on each of their
        connects.  While a leg is connected, wait until one has it (its
        ``Subscribed`` event) or a connection ends; :class:`TimeoutError`
        after *timeout* seconds (it stays subscribed)."""
        sub = Subscription.coerce(subscription)
        now = self._clock()
        for leg in self._legs:
            leg._core.subscribe(sub, now)
        if self.state is State.OPEN:
            await self._write_all()
            await self._wait_event(confirms(sub), timeout, f"no Subscribed event for {sub.label}")
        self._kick()
        return sub

    async def unsubscribe(self, subscription: object) -> Subscription:
        """Remove a subscription from every leg; while connected, write its
        ``unsubscribe`` message (if it has one) on each before returning."""
        now = self._clock()
        subs = [leg._core.unsubscribe(subscription, now) for leg in self._legs]
        await self._write_all()
        return subs[0]

    async def reconnect(self) -> bool:
        """Close every leg's connection (1001) and reconnect it with
        backoff; ``False`` if no leg was open."""
        now = self._clock()
        started = [leg._core.reconnect(now) for leg in self._legs]
        await self._write_all()
        self._kick()
        return any(started)

    # -- what it says about itself --------------------------------------------
    def metrics(self) -> Metrics:
        """The merged stream's figures, with each leg's own in ``leg_metrics``."""
        return merged_metrics(self._merger, [leg.metrics() for leg in self._legs])

    @property
    def history(self) -> list[AppEvent]:
        """The last 256 lifecycle events of every leg and the merge, oldest first."""
        return self._merger.history


def _label(core: FeedCore) -> str:
    """The feed's label: the first leg's, without its ``#0``."""
    return core.config.label.rpartition("#")[0] or core.config.label
