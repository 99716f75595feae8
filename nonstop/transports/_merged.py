"""A redundant feed's legs and their merge, shared by every driver.

Theory of operation
-------------------
A feed with ``redundancy=N`` (or ``urls=[...]``, ``sequence=``,
``dedupe=``) runs N legs: N connections, each a whole feed of its own to
the driver (its core, handshake, subscriptions, keep-alive and backoff, its
loop).  What makes them one feed is here:

* the legs share one queue: each leg's :class:`LegSession` hands its
  messages to the :class:`Merger` instead of queueing them, and the merger
  queues what the core's :class:`~nonstop.core.Merge` lets through (each
  message once, the :class:`~nonstop.core.Gap` records where messages may
  have been lost);
* a leg counts as covering the feed ("up") from the moment its connection
  delivers (:attr:`~nonstop.core.FeedCore.delivering`: a message came, or
  its subscriptions are acknowledged) until its ``Disconnected``; the
  merge reports a window with no leg up as a gap (key mode);
* a leg's own ``Gap`` events are not the feed's: another leg may have
  covered the window.  They are dropped; the merge's gaps are observed
  instead, with the feed's own label;
* the legs share the waiters of ``wait_for`` and the event history, and
  the merge's reorder timer is part of every leg's next deadline (the
  first leg to wake handles it).

The drivers build the legs (:mod:`._anyio_merged`, :mod:`._blocking_merged`);
everything they decide the same way is here, and every decision about
messages is the core's :class:`~nonstop.core.Merge`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core import (
    AppEvent,
    Connected,
    Disconnected,
    FeedCore,
    Gap,
    Merge,
    Messages,
    Metrics,
    Reason,
    Subscribed,
)
from ..core._merge import Out
from ._common import DriverOptions, MessageBuffer, Observer
from ._session import Session, Waiter, notify

__all__ = ["Merger", "LegSession", "Head", "merged_metrics"]


class Merger:
    """The merge between a redundant feed's legs and its one queue."""

    __slots__ = ("merge", "buffer", "observer", "waiters", "wake", "legs")

    def __init__(self, merge: Merge, options: DriverOptions, label: str) -> None:
        self.merge = merge
        self.buffer = MessageBuffer(options.queue_size, options.overflow)
        #: The feed's own events (its gaps), with its label.
        self.observer = Observer(label, options.logger, options.on_event)
        self.waiters: list[Waiter] = []
        #: Called when a timer or a leg's coming or going queued something
        #: (a read that queues wakes the consumer the driver's own way).
        self.wake: Callable[[], None] = lambda: None
        self.legs: list[LegSession] = []

    def offer(self, leg: int, batch: Messages, now: float) -> str:
        """A leg's run of messages: queue what is new; what the queue says
        (``"disconnect"``: that leg's consumer fell too far behind)."""
        merge = self.merge
        gaps = merge.gaps
        out = merge.offer(leg, batch.data, now)
        if merge.gaps == gaps:  # messages only (the usual case)
            if not out:
                return "ok"
            return self.buffer.push(Messages(data=out, connection=batch.connection,  # type: ignore[arg-type]
                                             received_at=batch.received_at))
        return self._queue(out, batch.connection, batch.received_at)

    def leg_up(self, leg: int, now: float) -> None:
        self._queue(self.merge.leg_up(leg, now), 0, now, wake=True)

    def leg_down(self, leg: int, now: float) -> None:
        self._queue(self.merge.leg_down(leg, now), 0, now, wake=True)

    def handle_timer(self, now: float) -> None:
        """The merge's reorder window may be over: what it lets out now."""
        deadline = self.merge.next_deadline()
        if deadline is not None and deadline <= now:
            self._queue(self.merge.handle_timer(now), 0, now, wake=True)

    def _queue(self, out: list[Out], connection: int, received_at: float, *,
               wake: bool = False) -> str:
        """Queue payloads and gaps in order; observe each gap."""
        result = "ok"
        run: list[str | bytes] = []
        for item in out:
            if type(item) is Gap:
                if run:
                    result = self._push(run, connection, received_at) or result
                    run = []
                self.buffer.push_gap(item)
                notify(self.observer, self.waiters, item)
            else:
                assert not isinstance(item, Gap)
                run.append(item)
        if run:
            result = self._push(run, connection, received_at) or result
        if out and wake:
            self.wake()
        return result

    def _push(self, run: list[str | bytes], connection: int, received_at: float) -> str | None:
        said = self.buffer.push(Messages(data=run, connection=connection, received_at=received_at))
        return None if said == "ok" else said

    @property
    def history(self) -> list[AppEvent]:
        """The feed's events: every leg's and the merge's, oldest first
        (the legs' observers share one history)."""
        return list(self.observer.history)

    def ended(self) -> Observer:
        """The observer to ask how the feed ended: a leg's that gave up, if
        any did, else the feed's own."""
        for leg in self.legs:
            stopped = leg.observer.stopped
            if stopped is not None and stopped.reason is not Reason.STOPPED:
                return leg.observer
        return self.observer


class LegSession(Session):
    """Leg *leg*'s session: its messages go through the merger."""

    __slots__ = ("merger", "leg", "up", "clock")

    def __init__(self, core: FeedCore, options: DriverOptions, merger: Merger, leg: int,
                 clock: Callable[[], float]) -> None:
        super().__init__(core, options)
        self.merger = merger
        self.leg = leg
        self.up = False  # the merge counts this leg as covering the feed
        self.clock = clock
        self.buffer = merger.buffer
        self.waiters = merger.waiters
        self.observer.history = merger.observer.history
        merger.legs.append(self)

    def deliver(self, batch: Messages, now: float) -> None:
        self.reads.messages += len(batch.data)
        merger = self.merger
        if not self.up and self.core.delivering:  # (not: a broken connection's last ones)
            self.up = True
            merger.leg_up(self.leg, now)
        if merger.offer(self.leg, batch, now) == "disconnect":
            self.core.reconnect(now, reason=Reason.SLOW_CONSUMER)

    def observe(self, event: AppEvent) -> None:
        kind = type(event)
        if kind is Gap:
            return  # this leg's break: the merge says whether the feed lost anything
        if kind is Disconnected:
            if self.up:
                self.up = False
                self.merger.leg_down(self.leg, self.clock())
        elif (kind is Connected or kind is Subscribed) and not self.up and self.core.delivering:
            self.up = True
            self.merger.leg_up(self.leg, self.clock())
        super().observe(event)

    def prepare_wait(self, now: float) -> float | None:
        deadline = super().prepare_wait(now)
        merged = self.merger.merge.next_deadline()
        if merged is None or (deadline is not None and deadline <= merged):
            return deadline
        return merged

    def handle_timer(self, now: float) -> None:
        self.core.handle_timer(now)
        self.merger.handle_timer(now)



class Head:
    """A redundant feed's answers where a one-connection feed asks its
    session: the shared waiters and queue, and the observer that says how
    the feed ended."""

    __slots__ = ("_merger", "waiters", "buffer")

    def __init__(self, merger: Merger) -> None:
        self._merger = merger
        self.waiters: list[Waiter] = merger.waiters
        self.buffer = merger.buffer

    @property
    def observer(self) -> Observer:
        return self._merger.ended()


def merged_metrics(merger: Merger, legs: list[Metrics]) -> Metrics:
    """The feed's metrics: the first leg's connection figures, the merged
    stream's messages and gaps, the queue's, and the legs' counts."""
    from dataclasses import replace

    merge = merger.merge
    first = legs[0]
    return merger.buffer.add_driver_metrics(replace(
        first,
        messages_received=merge.delivered,
        bytes_received=sum(m.bytes_received for m in legs),
        gaps=merge.gaps,
        gap_seconds=merge.gap_seconds,
        legs=len(legs),
        legs_live=sum(1 for leg in merger.legs if leg.up),
        duplicates=merge.duplicates,
        missing=merge.missing,
        leg_metrics=tuple(legs),
    ))
