"""One feed's state beyond its I/O, shared by every driver.

Theory of operation
-------------------
A driver owns sockets, a clock and a way to sleep; everything else about a
running feed is the same whichever driver runs it, so it lives here, once:

* the core and the bounded :class:`~nonstop.transports._common.MessageBuffer`
  between it and the application, with the slow-consumer decision
  (:meth:`Session.deliver`: a full queue under ``disconnect`` asks the core
  for a reconnect);
* backpressure: before the driver waits, :meth:`Session.prepare_wait` tells
  the core to pause or resume reading as the queue is full or not, and
  returns the core's next deadline;
* the grace before a deferred protocol failure: the core holds the failure
  until its own timer (``failure_grace``) or until the application has
  caught up (every delivered message taken, the consumer waiting for more,
  or nobody iterating and nothing queued), which the session reports to it
  through ``core.caught_up``;
* the guard that feeds a transport error to the core only while the core
  still has that transport (:meth:`Session.lost`);
* the observer (log lines, ``on_event``, history) and the waiters behind
  ``wait_for`` / ``wait_connected``; when a connection breaks and the core
  retries at once, the events are held (:attr:`Session.held`) until the
  driver has started the new connection and is about to wait
  (:meth:`Session.release`): a log line costs as much as a connect on this
  host, and the break is not the time to spend it;
* the end of a feed whose driver stops before the core did
  (:meth:`Session.settle`): the socket is gone, so the core is taken to
  ``STOPPED`` and its last events are logged.

The session takes no lock and touches no socket: the anyio driver calls it from
its one event-loop thread, the blocking driver with its lock held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core import (
    AppEvent,
    CloseTransport,
    Connected,
    Disconnected,
    Event,
    FeedCore,
    FetchUrl,
    Gap,
    LoggedIn,
    Messages,
    Metrics,
    OpenTransport,
    Payload,
    Reason,
    State,
    Subscribed,
    Subscription,
)
from ..core._dial import lookup_limit
from ._common import DriverOptions, MessageBuffer, Observer, ReadSize
from ._dial import Lookup
from ._tls import TlsSessions

__all__ = ["Session", "Waiter", "Feed", "matcher", "confirms", "notify"]

E = TypeVar("E", bound=AppEvent)
#: The core's orders to the driver (every other event is the application's).
EFFECTS = (FetchUrl, OpenTransport, CloseTransport)


@dataclass(slots=True, eq=False)
class Waiter:
    """A ``wait_for`` call: the first event *match* accepts lands in *box*,
    then *wake* is called (the driver's way to end that wait)."""

    match: Callable[[AppEvent], bool]
    wake: Callable[[], None]
    box: list[AppEvent] = field(default_factory=list)


def matcher(kind: type[E], predicate: Callable[[E], bool] | None) -> Callable[[AppEvent], bool]:
    """``wait_for(kind, predicate)``'s test of an event."""
    def match(event: AppEvent) -> bool:
        return isinstance(event, kind) and (predicate is None or predicate(event))

    return match


def notify(observer: Observer, waiters: list[Waiter], event: AppEvent) -> None:
    """Log *event*, tell ``on_event``, end the waits it matches."""
    observer.observe(event)
    for waiter in waiters:
        if not waiter.box and waiter.match(event):
            waiter.box.append(event)
            waiter.wake()


def confirms(sub: Subscription) -> Callable[[AppEvent], bool]:
    """``subscribe()``'s wait: *sub* confirmed, or the connection ended
    (it is replayed on the next one)."""
    def match(event: AppEvent) -> bool:
        return (isinstance(event, Subscribed) and event.subscription is sub) or isinstance(
            event, Disconnected)

    return match


class Session:
    """The core, the queue, the observer and the waiters of one feed."""

    __slots__ = ("core", "options", "buffer", "observer", "waiters", "reads",
                 "consumer_seen", "consumer_waiting", "stash", "held")

    def __init__(self, core: FeedCore, options: DriverOptions) -> None:
        self.core = core
        self.options = options
        self.buffer = MessageBuffer(options.queue_size, options.overflow)
        self.observer = Observer(core.config.label, options.logger, options.on_event)
        self.waiters: list[Waiter] = []
        self.reads = ReadSize(options.read_size, options.queue_size)
        #: The application has asked for messages at least once.
        self.consumer_seen = False
        #: The application waits for messages right now (the queue is empty).
        self.consumer_waiting = False
        #: Events a read outside the loop's task left for it, in order (the
        #: speed-ups' sink): messages among them are not delivered yet.
        self.stash: list[Event] = []
        #: Lifecycle events not observed yet, in order: from a break the
        #: core retries at once until :meth:`release` (``None``: none held).
        self.held: list[AppEvent] | None = None

    def new_reads(self) -> ReadSize:
        """Read sizing for a new connection (it starts small again)."""
        self.reads = ReadSize(self.options.read_size, self.options.queue_size)
        return self.reads

    # -- what the core hands out -------------------------------------------
    def deliver(self, batch: Messages, now: float) -> None:
        """Queue a run of messages; a queue overflowing under the
        ``disconnect`` policy ends the connection (``slow_consumer``)."""
        self.reads.messages += len(batch.data)
        if self.buffer.push(batch) == "disconnect":
            self.core.reconnect(now, reason=Reason.SLOW_CONSUMER)

    def observe(self, event: AppEvent) -> None:
        """A lifecycle event: log it, tell ``on_event``, end matching waits;
        held instead, after the break of a connection the core retries at
        once, until :meth:`release`.  A :class:`Gap` also takes its place
        in the queue, for ``records()``."""
        if type(event) is Gap:
            self.buffer.push_gap(event)
        held = self.held
        if held is not None:
            held.append(event)
        elif type(event) is Disconnected and event.retry_in == 0.0:
            self.held = [event]
        else:
            self._observe(event)

    def release(self) -> None:
        """Observe the held events, in order.  The driver calls this once
        the new connection is under way, before anything that waits (a
        lookup, a connect that is not over at once, a TLS handshake, a
        read), and when it ends."""
        held, self.held = self.held, None
        if held is not None:
            for event in held:
                self._observe(event)

    def _observe(self, event: AppEvent) -> None:
        notify(self.observer, self.waiters, event)

    def handle_timer(self, now: float) -> None:
        """A deadline of :meth:`prepare_wait`'s passed: the jobs due."""
        self.core.handle_timer(now)

    def effect(self, now: float) -> FetchUrl | OpenTransport | CloseTransport | None:
        """Drain the core's events up to the next effect for the driver:
        messages are queued, lifecycle events observed.  ``None``: drained."""
        core = self.core
        while (event := core.next_event()) is not None:
            if type(event) is Messages:
                self.deliver(event, now)
            elif isinstance(event, EFFECTS):
                return event
            else:
                assert not isinstance(event, Messages)
                self.observe(event)
        return None

    # -- before the driver waits ---------------------------------------------
    def prepare_wait(self, now: float) -> float | None:
        """Tell the core about the queue (backpressure, caught up), then
        return its next deadline: the driver waits until then.  *now* when
        the core has work right away (a deferred failure went ahead): the
        driver's wait ends at once and its loop writes the close frame."""
        core = self.core
        held = self.buffer.held
        if held and not core.reading_paused:
            core.pause_reading(now)
        elif not held and core.reading_paused:
            core.resume_reading(now)
        if self.check_caught_up(now):
            return now
        return core.next_deadline()

    @property
    def caught_up(self) -> bool:
        """Every delivered message is taken, and the application waits for
        more (or never asked: then it has nothing to answer)."""
        return (not len(self.buffer) and not self.stash
                and (self.consumer_waiting or not self.consumer_seen))

    def check_caught_up(self, now: float) -> bool:
        """A deferred failure goes ahead once the application caught up:
        True if that happened (the driver has work: a close frame)."""
        if self.core.failure_pending and self.caught_up:
            self.core.caught_up(now)
            return True
        return False

    def lost(self, error: BaseException, now: float) -> None:
        """A read or write failed: the core fails the connection, unless it
        had already dropped that transport."""
        self.core.transport_lost(error, now)

    # -- the end ---------------------------------------------------------------
    def settle(self, now: float) -> None:
        """The driver is ending before the core stopped (cancelled, or a
        bug): the socket is gone, so take the core to ``STOPPED`` too --
        ``feed.state`` must not stay ``OPEN`` -- and let the log and
        ``on_event`` see its last events (``Disconnected``, ``Stopped``).
        Messages still in the core are dropped with the feed."""
        self.release()
        core = self.core
        if core.state is State.STOPPED:
            return
        core.stop(now)
        after_stop: State = core.state
        if after_stop is not State.STOPPED:  # it was open or closing: the transport is gone
            core.transport_failed(ConnectionAbortedError("the feed's driver ended"), now)
        while (event := core.next_event()) is not None:
            if not isinstance(event, (Messages, FetchUrl, OpenTransport, CloseTransport)):
                self.observe(event)

    def metrics(self, now: float) -> Metrics:
        """The core's metrics plus the queue's."""
        return self.buffer.add_driver_metrics(self.core.metrics(now))


class Feed:
    """What every driver's feed holds and answers the same way: the core,
    its options and its session."""

    def __init__(self, core: FeedCore, options: DriverOptions) -> None:
        self._core = core
        self._opts = options
        self._session = self._new_session(core, options)
        self._buffer = self._session.buffer
        self._lookup = Lookup(options.resolver)
        self._tls_sessions = TlsSessions()
        #: Messages taken from the queue and not handed out yet, the oldest
        #: last (``pop()`` is O(1)).
        self._local: list[Payload] = []

    def _new_session(self, core: FeedCore, options: DriverOptions) -> Session:
        """The session of this feed (a redundant feed's leg has its own kind)."""
        return Session(core, options)

    @property
    def state(self) -> State:
        """The core's state (a :class:`~nonstop.State`)."""
        return self._core.state

    def _awaited_readiness(self) -> type[Connected | LoggedIn] | None:
        """What ``wait_connected`` waits for: ``None`` if the feed is ready
        (a connection open, its login accepted), else the event that makes
        it so (``LoggedIn`` with a login, ``Connected`` without)."""
        core = self._core
        if core.ready:
            return None
        return LoggedIn if core.config.login is not None else Connected

    def _lookup_rules(self, now: float) -> dict[str, Any]:
        """How this attempt looks its host up: may the last connection's
        address stand in (the core decides), how long a lookup may take, and
        what to do before the dial waits (observe the held events)."""
        return {"lookup": self._lookup, "reuse": self._core.may_reuse_address(now),
                "limit": lookup_limit(self._core.config.connect_timeout),
                "waiting": self._session.release}

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """What is replayed on every connect, in order."""
        return self._core.subscriptions
