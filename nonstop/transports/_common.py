"""What both drivers share: options, the message buffer, logging, event fan-out.

Theory of operation
-------------------
The drivers are thin: they move bytes and sleep.  The few things they do
beyond that are identical for anyio and blocking sockets, so they live here:

* :func:`prepare` turns ``connect(url, **options)`` keyword arguments into
  the core's :class:`~nonstop.core.Config` and the driver's options, so both
  drivers accept exactly the same options with the same defaults.
* :class:`MessageBuffer` is the bounded queue between the driver and the
  application, with the slow-consumer policy (``backpressure``,
  ``drop_oldest``, ``disconnect``).  It is not thread-safe; the blocking
  driver wraps it in a condition variable.
* :class:`Observer` logs every lifecycle event with the core's formatter on the
  ``nonstop`` logger, calls the ``on_event`` callback, keeps a short history
  and remembers the final ``Stopped``.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

from .._options import DriverOptions, Overflow, prepare  # defined with the options of connect
from ..core import (
    AppEvent,
    Gap,
    Message,
    Messages,
    Metrics,
    Payload,
    Pong,
    Reason,
    Stopped,
    event_level,
    format_event,
)
from ..errors import FeedGaveUp, WriteStalled  # public: nonstop.errors

__all__ = [
    "Overflow",
    "FeedGaveUp",
    "WriteStalled",
    "prepare",
    "DriverOptions",
    "MessageBuffer",
    "Observer",
    "ReadSize",
    "LOGGER",
]

LOGGER = logging.getLogger("nonstop")


#: The first and the smallest socket read.  Python's ``recv(n)`` allocates
#: *n* bytes up front; at 128 KiB and more glibc maps them afresh for every
#: read (mmap, mremap, munmap), so a trickle of small messages reads in 64 KiB.
MIN_READ = 64 * 1024
#: How long a consumer that reads the socket itself while it waits (the
#: blocking driver; the anyio driver on trio) may be away in the application
#: before the driver's own loop takes the socket back.
HANDBACK = 0.02
RETRY_AFTER = 64  # full reads before a size that came back short is tried again


class ReadSize:
    """How much to ask the socket for (:attr:`size`): adaptive, between
    :data:`MIN_READ` and ``read_size``.  A read that fills the request makes
    the next one four times larger -- a burst is read in large gulps --
    unless that larger read would bring more messages than the queue holds
    (estimated from the last read: the driver adds the messages each read
    brought to :attr:`messages`); a larger read then only overflows the
    queue.  A read that would have fitted in the smallest size goes back to
    it.

    A size is *proven* once a read of it came back full.  A larger one that
    comes back short falls back to the proven size for :data:`RETRY_AFTER`
    reads before it is tried again.  The reason is the allocator: every
    read is a new ``bytes`` of the requested size, and glibc serves a
    request over its mmap threshold with a fresh ``mmap`` -- page faults on
    every byte -- raising the threshold only when such a block is freed at
    full size; a short read is shrunk first, so a size that never fills
    would cost a fresh mapping on every read.
    """

    __slots__ = ("_high", "_last", "_low", "_proven", "_queue", "_retry", "messages", "size")

    def __init__(self, high: int, queue_size: int) -> None:
        self._high = high
        self._low = self._proven = self.size = min(MIN_READ, high)
        self._queue = queue_size
        self._last = 0  # bytes of the read the messages came from
        self._retry = 0  # full reads to go before trying past the proven size
        self.messages = 0

    @property
    def largest(self) -> int:
        """The largest size it will ask for (``read_size``)."""
        return self._high

    def update(self, got: int) -> int:
        """After a read of *got* bytes: the size of the next one."""
        size = self.size
        if got >= size:
            if size > self._proven:
                self._proven = size
            bigger = min(size * 4, self._high)
            if self._retry and bigger > self._proven:
                self._retry -= 1
            elif self.messages * bigger <= self._queue * self._last:  # fits in the queue
                self.size = bigger
        elif got <= self._low:
            self.size = self._low
        elif size > self._proven:  # a new size that did not fill: not yet
            self.size = self._proven
            self._retry = RETRY_AFTER
        self._last, self.messages = got, 0
        return self.size


def take_pending(pending: list[Payload], limit: int) -> tuple[list[Payload], list[Payload]]:
    """Up to *limit* of the messages plain iteration took from the buffer
    and has not handed out yet (kept reversed, the oldest last, so that
    ``pop()`` is O(1)): those, oldest first, and what is left, as kept."""
    if len(pending) <= limit:
        pending.reverse()
        return pending, []
    taken = pending[-limit:]
    del pending[-limit:]
    taken.reverse()
    return taken, pending


class MessageBuffer:
    """The bounded queue of messages between a driver and its application.

    The core delivers messages in runs (:class:`~nonstop.core.Messages`), and
    the buffer keeps them as runs: ``push`` appends the run's list itself (no
    copy), and ``take`` hands the consumer a run's list as it is when the
    run fits, so a message costs no per-item queue operation between the
    socket and the application.  Each run keeps its connection number and
    receive time, for :meth:`take_records`.  The lists become the buffer's
    once pushed (the core never touches a run it has handed out) and the
    consumer's once taken.

    A :class:`~nonstop.core.Gap` takes its place among the runs
    (:meth:`push_gap`, an empty run): :meth:`take_records` hands it out
    there, :meth:`take` passes over it, and it counts as no message.

    ``push`` returns what the driver must do: ``"ok"``, ``"full"`` (under
    ``backpressure``: the rest of the run is held and reading stops) or
    ``"disconnect"``.  Held runs -- at most one read's worth, since the
    driver stops reading -- move in as the consumer makes room.
    """

    __slots__ = ("_runs", "_count", "_held", "size", "policy", "dropped", "overflows")

    def __init__(self, size: int, policy: Overflow) -> None:
        # [messages, index of the first not taken, connection, received_at];
        # a gap: [[], 0, the Gap, its end]
        self._runs: collections.deque[list[Any]] = collections.deque()
        self._count = 0  # messages in _runs, not taken
        self._held: collections.deque[Messages | Gap] = collections.deque()
        self.size = size
        self.policy = policy
        self.dropped = 0
        self.overflows = 0

    def __len__(self) -> int:
        return self._count

    @property
    def held(self) -> bool:
        """Messages are waiting for room (backpressure): don't read more."""
        return bool(self._held)

    def _append(self, data: list[Payload], connection: int, received_at: float) -> None:
        self._runs.append([data, 0, connection, received_at])
        self._count += len(data)

    def push_gap(self, gap: Gap) -> None:
        """Mark *gap* here, before the messages pushed after it."""
        if self._held:
            self._held.append(gap)
        else:
            self._runs.append([[], 0, gap, gap.end])

    def push(self, batch: Messages) -> str:
        if self._held:
            self._held.append(batch)
            return "full"
        data = batch.data
        room = self.size - self._count
        if len(data) <= room:
            self._append(data, batch.connection, batch.received_at)
            return "ok"
        self.overflows += 1
        if self.policy is Overflow.DROP_OLDEST:
            self._append(data, batch.connection, batch.received_at)
            self._drop_oldest(self._count - self.size)
            return "ok"
        if room > 0:
            self._append(data[:room], batch.connection, batch.received_at)
        if self.policy is Overflow.BACKPRESSURE:
            self._held.append(Messages(data=data[room:], connection=batch.connection,
                                       received_at=batch.received_at))
            return "full"
        self.dropped += len(data) - max(room, 0)
        return "disconnect"

    def _drop_oldest(self, count: int) -> None:
        self.dropped += count
        self._count -= count
        runs = self._runs
        while count:
            first = runs[0]
            left = len(first[0]) - first[1]
            if left > count:
                first[1] += count
                return
            count -= left
            runs.popleft()

    def take(self, limit: int) -> list[Payload]:
        """Up to *limit* messages, oldest first (a list that is the caller's)."""
        runs = self._runs
        out: list[Payload] | None = None
        want = limit
        while runs and want:
            first = runs[0]
            data, start = first[0], first[1]
            left = len(data) - start
            if left <= want:
                runs.popleft()
                piece = data if not start else data[start:]
                want -= left
            else:
                piece = data[start:start + want]
                first[1] = start + want
                want = 0
            if out is None:
                out = piece
            else:
                out += piece
        self._count -= limit - want
        if self._held:
            self._refill()
        return out if out is not None else []

    def take_records(self, limit: int) -> list[Message | Gap]:
        """Like :meth:`take`, with each message's connection and receive
        time, and the gaps among them."""
        out: list[Message | Gap] = []
        runs = self._runs
        taken = 0
        while runs and taken < limit:
            first = runs[0]
            data, start, connection, received_at = first
            if type(connection) is Gap:
                runs.popleft()
                out.append(connection)
                continue
            end = min(len(data), start + limit - taken)
            out += [Message(data=item, connection=connection, received_at=received_at)
                    for item in data[start:end]]
            taken += end - start
            if end == len(data):
                runs.popleft()
            else:
                first[1] = end
        self._count -= taken
        if self._held:
            self._refill()
        return out

    def _refill(self) -> None:
        held = self._held
        while held:
            room = self.size - self._count
            if room <= 0:
                return
            batch = held[0]
            if type(batch) is Gap:
                held.popleft()
                self._runs.append([[], 0, batch, batch.end])
                continue
            assert type(batch) is Messages
            if len(batch.data) <= room:
                held.popleft()
                self._append(batch.data, batch.connection, batch.received_at)
            else:
                self._append(batch.data[:room], batch.connection, batch.received_at)
                held[0] = Messages(data=batch.data[room:], connection=batch.connection,
                                   received_at=batch.received_at)
                return

    def add_driver_metrics(self, metrics: Metrics) -> Metrics:
        return replace(
            metrics,
            queued=self._count + sum(len(b.data) for b in self._held if type(b) is Messages),
            messages_dropped=self.dropped,
            overflows=self.overflows,
        )


class Observer:
    """Logs lifecycle events, calls ``on_event``, keeps history, catches Stopped."""

    __slots__ = ("_label", "_logger", "_callback", "history", "stopped", "callback_errors")

    def __init__(self, label: str, logger: logging.Logger,
                 callback: Callable[[AppEvent], None] | None) -> None:
        self._label = label
        self._logger = logger
        self._callback = callback
        self.history: collections.deque[AppEvent] = collections.deque(maxlen=256)
        self.stopped: Stopped | None = None
        self.callback_errors = 0

    def observe(self, event: AppEvent) -> None:
        level = event_level(event)
        if level is not None and self._logger.isEnabledFor(level):  # (a line costs)
            line = format_event(event, self._label)
            assert line is not None
            self._logger.log(level, line[1])
        if not isinstance(event, Pong):  # one every ping_interval: not history
            self.history.append(event)
        if isinstance(event, Stopped):
            self.stopped = event
        if self._callback is not None:
            try:
                self._callback(event)
            except Exception:
                # A broken callback must not take the feed down; say so loudly.
                self.callback_errors += 1
                self._logger.exception("[ALERT] feed=%s on_event callback raised", self._label)

    def gave_up(self) -> FeedGaveUp | None:
        stopped = self.stopped
        if stopped is not None and stopped.reason is not Reason.STOPPED:
            return FeedGaveUp.of(stopped)
        return None

    def ended_before(self, kind: type) -> NoReturn:
        """A ``wait_for(kind)`` saw the feed end first: raise
        :class:`FeedGaveUp` (it gave up) or :class:`RuntimeError` (a stop)."""
        gave_up = self.gave_up()
        if gave_up is not None:
            raise gave_up
        raise RuntimeError(f"the feed stopped before a {kind.__name__} event")

    def end(self, crash: BaseException | None, stop: type[Exception]) -> NoReturn:
        """A consumer asked for messages after the feed ended: raise the
        driver's crash, :class:`FeedGaveUp` (it gave up) or *stop* (a stop:
        ``StopIteration`` or ``StopAsyncIteration``)."""
        if crash is not None:
            raise crash
        gave_up = self.gave_up()
        if gave_up is not None:
            raise gave_up
        raise stop

