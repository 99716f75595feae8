"""The blocking driver's redundant feed: several legs, one stream.

Theory of operation
-------------------
:class:`MergedSyncFeed` is what ``nonstop.sync.connect(..., redundancy=N)``
returns.  Each leg is a whole :class:`~._blocking.SyncFeed` on the plain
loop, with its own I/O thread, core and connection; all of them share the
feed's one condition variable, so the one queue the
:class:`~._merged.Merger` fills is guarded as a one-connection feed's is,
and a consumer waiting on the condition wakes for any leg.  The
application's side is :class:`~._blocking.SyncFeed`'s, over that queue;
the calls that act on a connection act on every leg.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..core import AppEvent, FeedCore, Merge, Metrics, NotConnected, State, Subscription
from ._blocking import SyncFeed
from ._common import DriverOptions
from ._merged import Head, LegSession, MergedParts, Merger, merged_metrics
from ._session import Session, confirms

__all__ = ["MergedSyncFeed"]


class _Leg(SyncFeed):
    """One leg: its session hands messages to the merger; it shares the
    owner's condition; its end is the owner's to count."""

    def __init__(self, owner: MergedSyncFeed, leg: int, core: FeedCore,
                 options: DriverOptions) -> None:
        self._owner, self._leg = owner, leg
        super().__init__(core, options)
        self._cond = owner._cond

    def _new_session(self, core: FeedCore, options: DriverOptions) -> Session:
        return LegSession(core, options, self._owner._merger, self._leg, time.monotonic)

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            with self._cond:
                self._owner._leg_ended()


class MergedSyncFeed(MergedParts[SyncFeed], SyncFeed):
    """A running redundant feed for blocking code: iterate it for
    messages, each once; see :func:`nonstop.sync.connect`."""

    def __init__(self, cores: list[FeedCore], merge: Merge, options: DriverOptions,
                 new_core: Callable[[int], FeedCore]) -> None:
        self._merger = merger = Merger(merge, options, cores[0].config.label.rpartition("#")[0]
                                       or cores[0].config.label, len(cores))
        self._head = Head(merger)
        super().__init__(cores[0], options)
        self._close_wake()  # this feed has no loop of its own
        self._new_core = new_core
        self._legs: list[SyncFeed] = [_Leg(self, i, core, options) for i, core in enumerate(cores)]
        #: Legs replaced (rotation) and still closing.
        self._retiring: list[SyncFeed] = []
        merger.start_leg = self._start_leg
        merger.retire_leg = self._retire_leg
        merger.poke_leg = self._poke_leg

    # -- the legs ---------------------------------------------------------
    def start(self) -> MergedSyncFeed:
        """Start every leg's I/O thread (``with`` does this for you)."""
        if self._thread is not None:
            raise RuntimeError("this feed was already started; call nonstop.sync.connect() again")
        self._thread = threading.current_thread()  # started (the legs have the threads)
        for leg in self._legs:
            leg.start()
        return self

    def _start_leg(self, slot: int) -> None:
        """With the condition held: open a replacement for the leg of
        *slot* (it takes that leg's place; the old one closes once the two
        overlap)."""
        leg = _Leg(self, slot, self._new_core(slot), self._opts)
        place = slot % len(self._legs)
        self._retiring.append(self._legs[place])
        self._legs[place] = leg
        leg.start()

    def _retire_leg(self, session: Session) -> None:
        """Close a replaced leg for good (1000), without waiting for it."""
        leg = self._leg_of(session)
        if leg is not None:
            leg._stop_requested = True
            leg._wake()

    def _poke_leg(self, session: Session) -> None:
        leg = self._leg_of(session)
        if leg is not None:
            leg._poke()

    def _leg_ended(self) -> None:
        """With the condition held: a leg's thread ends."""
        self._retiring = [leg for leg in self._retiring if not leg._done.is_set()]
        if self._retiring or not all(leg._done.is_set() for leg in self._legs):
            return
        for leg in self._legs:
            if leg._crash is not None and self._crash is None:
                self._crash = leg._crash
        self._done.set()
        self._cond.notify_all()

    def _in_loop(self) -> bool:
        return any(leg._in_loop() for leg in self._all())

    def stop(self, timeout: float | None = None) -> None:
        """Stop every leg gracefully; see :meth:`SyncFeed.stop`."""
        with self._cond:
            legs = self._all()
        for leg in legs:
            leg._stop_requested = True
            leg._wake()
        for leg in legs:
            leg.stop(timeout)

    def _poke(self) -> None:
        for leg in self._all():
            leg._poke()

    # -- the consumer's side ------------------------------------------------
    def _made_room(self) -> None:
        if not self._buffer.held and any(leg._core.reading_paused for leg in self._all()):
            self._poke()

    def _await(self, take: Any, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            for leg in self._all():
                leg._session.consumer_seen = True
            while not len(self._buffer):
                self._check_waitable(timeout, deadline)
                legs = self._all()  # (a rotation may have replaced one)
                sessions = [leg._session for leg in legs]
                for leg, session in zip(legs, sessions, strict=True):
                    session.consumer_seen = True
                    session.consumer_waiting = True
                    if leg._core.failure_pending:
                        leg._wake()  # its loop tells the core the application caught up
                try:
                    self._cond.wait(None if deadline is None else deadline - time.monotonic())
                finally:
                    for session in sessions:
                        session.consumer_waiting = False
            got = take()
            self._made_room()
            return got

    # -- calls on every leg ---------------------------------------------------
    def send(self, message: object) -> None:
        """Send a message on every open leg (``str``: text, ``bytes``:
        binary, else JSON); :class:`~nonstop.NotConnected` if none is open."""
        with self._cond:
            now = time.monotonic()
            open_legs = [leg for leg in self._legs if leg._core.state is State.OPEN]
            if not open_legs:
                raise NotConnected("no leg of this feed is open; wait_connected() first")
            for leg in open_legs:
                leg._core.send(message, now)
        self._poke()

    def subscribe(self, subscription: object, *, timeout: float | None = None) -> Subscription:
        """Add a subscription on every leg, replayed on each of their
        connects; while a leg is connected, wait until one has it (or a
        connection ends); :class:`TimeoutError` after *timeout* seconds."""
        sub = Subscription.coerce(subscription)
        with self._cond:
            now = time.monotonic()
            for leg in self._legs:
                leg._core.subscribe(sub, now)
            connected = self.state is State.OPEN
        self._poke()
        if connected and not self._in_loop():
            self._wait_event(confirms(sub), timeout, f"no Subscribed event for {sub.label}")
        return sub

    def unsubscribe(self, subscription: object) -> Subscription:
        """Remove a subscription from every leg (each sends its
        ``unsubscribe`` message while connected)."""
        with self._cond:
            now = time.monotonic()
            subs = [leg._core.unsubscribe(subscription, now) for leg in self._legs]
        self._poke()
        return subs[0]

    def reconnect(self) -> bool:
        """Close every leg's connection (1001) and reconnect it with
        backoff; ``False`` if no leg was open."""
        with self._cond:
            now = time.monotonic()
            started = [leg._core.reconnect(now) for leg in self._legs]
        self._poke()
        return any(started)

    # -- what it says about itself --------------------------------------------
    def metrics(self) -> Metrics:
        """The merged stream's figures, with each leg's own in ``leg_metrics``."""
        with self._cond:
            return merged_metrics(self._merger, [leg.metrics() for leg in self._legs])

    @property
    def history(self) -> list[AppEvent]:
        """The last 256 lifecycle events of every leg and the merge, oldest first."""
        with self._cond:
            return self._merger.history
