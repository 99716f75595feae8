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
  the merge's timers (a hole's reorder window, a lagging leg, a
  replacement's overlap timeout) are part of every leg's next deadline
  (the first leg to wake handles them);
* rotation (``max_lifetime``): a leg's ``Rotating`` event makes the driver
  open a replacement in the leg's spare slot of the merge; once the
  replacement is up and the two overlap (the merge counted a duplicate by
  either), or after :data:`OVERLAP_TIMEOUT`, the old leg is closed; a
  lifetime one leg learned (a server's close 1001) is handed to every leg;
* a leg the merge names as lagging is reconnected (reason ``lagging``);
* a kind of message whose number cannot be read is logged once.

The drivers build the legs (:mod:`._anyio_merged`, :mod:`._blocking_merged`);
everything they decide the same way is here, and every decision about
messages is the core's :class:`~nonstop.core.Merge`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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
    Rotating,
    State,
    Subscribed,
)
from ..core._merge import Out
from ._common import DriverOptions, MessageBuffer, Observer
from ._session import Feed, Session, Waiter, notify

__all__ = ["Merger", "LegSession", "Head", "MergedParts", "merged_metrics", "OVERLAP_TIMEOUT"]

L = TypeVar("L", bound=Feed)

#: How long a replacement may deliver, after it is up, without a message
#: the old leg also brought, before the old leg is closed anyway (and the
#: rotation reported as unconfirmed).
OVERLAP_TIMEOUT = 5.0


@dataclass(slots=True, eq=False)
class Rotation:
    """A leg being replaced (make-before-break): the old leg's session, and
    what the new one has shown so far."""

    old: LegSession
    new_dups: int  # the merge's duplicates by each leg when it began
    old_dups: int
    up_at: float | None = None  # when the new leg came up
    old_down: bool = False  # the old leg broke meanwhile


class Merger:
    """The merge between a redundant feed's legs and its one queue."""

    __slots__ = ("merge", "buffer", "observer", "waiters", "wake", "legs", "slots", "rotations",
                 "rotated", "unconfirmed", "start_leg", "retire_leg", "poke_leg", "lifetime",
                 "_logger", "_told",
                 "_label")

    def __init__(self, merge: Merge, options: DriverOptions, label: str, slots: int) -> None:
        self.merge = merge
        #: Legs kept at once; a leg in slot *s* is replaced in slot
        #: ``(s + slots) % (2 * slots)`` (the merge has twice as many slots
        #: when connections are rotated).
        self.slots = slots
        #: Replacements under way, by the new leg's slot.
        self.rotations: dict[int, Rotation] = {}
        self.rotated = 0
        self.unconfirmed = 0
        #: The shortest lifetime a leg learned (``None``: none learned).
        self.lifetime: float | None = None
        #: The driver's: open a leg in a slot; close a leg for good.
        self.start_leg: Callable[[int], None] = lambda slot: None
        self.retire_leg: Callable[[LegSession], None] = lambda session: None
        #: The driver's: wake a leg's loop (its core has work: a close frame).
        self.poke_leg: Callable[[LegSession], None] = lambda session: None
        self._logger = options.logger
        self._label = label
        self._told: set[str] = set()  # kinds of unreadable numbers logged
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
        if len(merge.unreadable) != len(self._told):
            self._tell_unreadable()
        if merge.gaps == gaps:  # messages only (the usual case)
            if not out:
                return "ok"
            return self.buffer.push(Messages(data=out, connection=batch.connection,  # type: ignore[arg-type]
                                             received_at=batch.received_at))
        return self._queue(out, batch.connection, batch.received_at)

    def _tell_unreadable(self) -> None:
        """Log each new kind of message the ``sequence`` function could not
        read, once: such messages are delivered as they are, and counted."""
        for kind in self.merge.unreadable:
            if kind not in self._told:
                self._told.add(kind)
                self._logger.warning(
                    "[ALERT] feed=%s sequence function %s on a message: delivered as it is, "
                    "counted in metrics().unreadable; this line is logged once per kind",
                    self._label, kind)

    def leg_up(self, leg: int, now: float) -> None:
        self._queue(self.merge.leg_up(leg, now), 0, now, wake=True)
        rotation = self.rotations.get(leg)
        if rotation is not None:
            rotation.up_at = now
            self.check_rotations()

    def leg_down(self, session: LegSession, now: float) -> None:
        self._queue(self.merge.leg_down(session.leg, now), 0, now, wake=True)
        for rotation in self.rotations.values():
            if rotation.old is session:
                rotation.old_down = True
                self.retire_leg(session)  # replaced: it does not come back itself
        self.check_rotations()

    # -- rotation (make-before-break) ---------------------------------------
    def share_lifetime(self, lifetime: float | None) -> None:
        """A leg's core learned a shorter lifetime (a server's close 1001):
        every leg, and every replacement to come, rotates before it."""
        if lifetime is None or (self.lifetime is not None and lifetime >= self.lifetime):
            return
        self.lifetime = lifetime
        for leg in self.legs:
            leg.core.limit_lifetime(lifetime)

    def rotate(self, session: LegSession) -> None:
        """*session*'s connection nears its lifetime: open its replacement
        (once); the old leg is closed when :meth:`check_rotations` sees the
        two overlap."""
        if any(rotation.old is session for rotation in self.rotations.values()):
            return
        new = (session.leg + self.slots) % len(self.merge.leg_duplicates)
        if new in self.rotations or new == session.leg:
            return  # (no spare slot: the merge was made without rotation)
        dups = self.merge.leg_duplicates
        self.rotations[new] = Rotation(session, new_dups=dups[new], old_dups=dups[session.leg])
        self.start_leg(new)

    def check_rotations(self) -> None:
        """Close each old leg whose replacement is up and overlaps it: one
        of the two brought a message the other had delivered first (or the
        old one broke meanwhile)."""
        dups = self.merge.leg_duplicates
        for new, rotation in list(self.rotations.items()):
            if rotation.up_at is None:
                continue
            if (rotation.old_down or dups[new] > rotation.new_dups
                    or dups[rotation.old.leg] > rotation.old_dups):
                self._rotated(new, confirmed=True)

    def _rotated(self, new: int, *, confirmed: bool) -> None:
        rotation = self.rotations.pop(new)
        self.rotated += 1
        if not confirmed:
            self.unconfirmed += 1
            self._logger.warning(
                "[ROTATING] feed=%s leg=%d replaced without an overlap seen within %.1fs: "
                "the old connection is closed anyway", self._label, rotation.old.leg % self.slots,
                OVERLAP_TIMEOUT)
        self.retire_leg(rotation.old)

    # -- time ----------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The merge's reorder window, or a replacement's overlap timeout."""
        best = self.merge.next_deadline()
        for rotation in self.rotations.values():
            if rotation.up_at is not None:
                t = rotation.up_at + OVERLAP_TIMEOUT
                if best is None or t < best:
                    best = t
        return best

    def handle_timer(self, now: float) -> None:
        """The merge's reorder window may be over: what it lets out now; a
        replacement that showed no overlap in time takes over anyway."""
        deadline = self.merge.next_deadline()
        if deadline is not None and deadline <= now:
            self._queue(self.merge.handle_timer(now), 0, now, wake=True)
        for new, rotation in list(self.rotations.items()):
            if rotation.up_at is not None and now >= rotation.up_at + OVERLAP_TIMEOUT:
                self._rotated(new, confirmed=False)
        for slot in self.merge.lagging(now):
            for session in self.legs:
                if session.leg == slot and session.up:
                    session.core.reconnect(now, reason=Reason.LAGGING, detail=(
                        f"nothing fresh for {self.merge.lag}s while another leg delivered"))
                    self.poke_leg(session)

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
        if merger.lifetime is not None:  # what the legs before it learned
            core.limit_lifetime(merger.lifetime)
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
        if merger.rotations:
            merger.check_rotations()

    def observe(self, event: AppEvent) -> None:
        kind = type(event)
        if kind is Gap:
            return  # this leg's break: the merge says whether the feed lost anything
        if kind is Disconnected:
            if self.up:
                self.up = False
                self.merger.leg_down(self, self.clock())
            self.merger.share_lifetime(self.core.lifetime)
        elif kind is Rotating:
            self.merger.rotate(self)
        elif (kind is Connected or kind is Subscribed) and not self.up and self.core.delivering:
            self.up = True
            self.merger.leg_up(self.leg, self.clock())
        super().observe(event)

    def prepare_wait(self, now: float) -> float | None:
        deadline = super().prepare_wait(now)
        merged = self.merger.next_deadline()
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


class MergedParts(Generic[L]):
    """What a redundant feed answers the same way on every driver (the
    first base of each driver's merged feed, before the driver's feed)."""

    _legs: list[L]
    _retiring: list[L]  # replaced by a rotation, still closing
    _head: Head

    @property
    def _session(self) -> Any:
        return self._head

    @_session.setter
    def _session(self, session: Any) -> None:
        """The legs have the sessions; the feed answers through its head."""

    def _all(self) -> list[L]:
        return self._legs + self._retiring

    def _leg_of(self, session: Session) -> L | None:
        for leg in self._all():
            if leg._session is session:
                return leg
        return None

    @property
    def state(self) -> State:
        """``OPEN`` while any leg is open; ``STOPPED`` once every leg is;
        else the first leg's state."""
        states = [leg._core.state for leg in self._legs]
        if State.OPEN in states:
            return State.OPEN
        if all(state is State.STOPPED for state in states):
            return State.STOPPED
        return states[0]

    @property
    def legs(self) -> tuple[L, ...]:
        """The legs, each a feed of its own (read their state and metrics;
        don't iterate them)."""
        return tuple(self._legs)


def merged_metrics(merger: Merger, legs: list[Metrics]) -> Metrics:
    """The feed's metrics: the first leg's state and times, the merged
    stream's messages and gaps, the queue's, the legs' connections,
    attempts, reconnects and disconnects added up, and each leg's own
    metrics."""
    from dataclasses import replace

    merge = merger.merge
    first = legs[0]
    disconnects: dict[str, int] = {}
    for leg in legs:
        for reason, count in leg.disconnects.items():
            disconnects[reason] = disconnects.get(reason, 0) + count
    return merger.buffer.add_driver_metrics(replace(
        first,
        disconnects=disconnects,
        connection=sum(m.connection for m in legs),
        attempts=sum(m.attempts for m in legs),
        reconnects=sum(m.reconnects for m in legs),
        messages_received=merge.delivered,
        bytes_received=sum(m.bytes_received for m in legs),
        gaps=merge.gaps,
        gap_seconds=merge.gap_seconds,
        legs=len(legs),
        legs_live=sum(1 for leg in merger.legs if leg.up),
        rotations=merger.rotated,
        unreadable=sum(merge.unreadable.values()),
        duplicates=merge.duplicates,
        missing=merge.missing,
        leg_metrics=tuple(legs),
    ))
