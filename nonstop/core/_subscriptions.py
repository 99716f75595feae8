"""Subscriptions: what is replayed on every connect, and the ACKs awaited.

Theory of operation
-------------------
The feed remembers its subscriptions itself (stateless reconnection: every
new connection starts from the initial settings, never from stale state).
One :class:`Subscriptions` object per feed holds

* the list to replay, in order: the configured subscriptions, then those
  added at run time, minus those removed;
* the ACKs the current connection waits for: one deadline per subscription
  with an ``ack`` matcher, armed when it is sent and dropped when the
  connection ends, when it is acknowledged or when it is removed.

:meth:`Subscriptions.replay` is called when a connection opens and returns
what to send; :meth:`Subscriptions.match` offers each incoming message to the
pending matchers, in subscription order, and a message acknowledges at most
one subscription.  While the driver has paused reading, ACK deadlines do not
run (unread bytes may hold the ACK); :meth:`Subscriptions.resume` moves them
later by the time spent paused.

The core decides when (it knows the connection's state); this module only
keeps the books, so it sends nothing and emits no events.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._config import Payload, Subscription, callable_name
from ._errors import LocalProtocolError
from ._health import after

__all__ = ["Subscriptions", "AckMatcherFailed"]


class AckMatcherFailed(Exception):
    """An ACK matcher raised; the message says which and what it raised."""


class Subscriptions:
    """The subscriptions of one feed and the ACKs its connection awaits."""

    __slots__ = ("_list", "_paused", "pending")

    def __init__(self, initial: Iterable[Subscription]) -> None:
        self._list: list[Subscription] = list(initial)
        #: ``id(subscription)`` -> ACK deadline, for the current connection.
        #: Tested for truth on every read: empty means no matcher to call.
        self.pending: dict[int, float] = {}
        self._paused = False

    @property
    def all(self) -> tuple[Subscription, ...]:
        """What is replayed on every connect, in order."""
        return tuple(self._list)

    def __len__(self) -> int:
        return len(self._list)

    # -- the list to replay ---------------------------------------------
    def add(self, sub: Subscription, sent_at: float | None) -> None:
        """Remember *sub* after the others.

        ``sent_at``: when it goes out on the open connection (its ACK
        deadline starts then), or ``None`` if it waits for the next connect.
        Raises :class:`LocalProtocolError`, changing nothing, if a
        subscription with the same message is already there.
        """
        if any(s.key == sub.key for s in self._list):
            raise LocalProtocolError(f"already subscribed: {sub.label}")
        self._list.append(sub)
        if sent_at is not None and sub.ack is not None:
            self.pending[id(sub)] = after(sent_at, sub.ack_timeout)

    def remove(self, key: object) -> Subscription:
        """Forget the subscription whose :attr:`~Subscription.key` is *key*
        (its encoded message, or the callable that builds it) and its
        pending ACK; raises :class:`LocalProtocolError`, changing nothing,
        if there is none."""
        for sub in self._list:
            if sub.key == key:
                break
        else:
            shown = f"{key!r:.60}" if isinstance(key, (str, bytes)) else callable_name(key)
            raise LocalProtocolError(f"not subscribed: {shown}")
        self._list.remove(sub)
        self.pending.pop(id(sub), None)
        return sub

    def replay(self, now: float) -> list[Subscription]:
        """A connection opened at *now*: every subscription to send, in order.

        The ACK deadlines of those with a matcher start at *now*; a
        subscription without one counts as subscribed once it is sent.
        """
        self.pending = {id(s): after(now, s.ack_timeout) for s in self._list if s.ack is not None}
        return self._list.copy()

    # -- ACKs -----------------------------------------------------------
    def match(self, data: Payload) -> Subscription | None:
        """The first pending subscription whose matcher accepts *data*, now
        acknowledged; ``None`` if no matcher accepts it.

        Raises :class:`AckMatcherFailed` if a matcher raised.
        """
        pending = self.pending
        for sub in self._list:
            if id(sub) not in pending:
                continue
            assert sub.ack is not None
            try:
                matched = sub.ack(data)
            except Exception as exc:
                raise AckMatcherFailed(
                    f"ack matcher of {sub.label} raised {type(exc).__name__}: {exc}"
                ) from exc
            if matched:
                del pending[id(sub)]
                return sub
        return None

    def next_deadline(self) -> float | None:
        """The earliest ACK deadline (``None``: none pending, or paused)."""
        if not self.pending or self._paused:
            return None
        return min(self.pending.values())

    def expired(self, now: float) -> Subscription | None:
        """The first subscription, in order, whose ACK is overdue at *now*."""
        if self._paused:
            return None
        for sub in self._list:
            deadline = self.pending.get(id(sub))
            if deadline is not None and now >= deadline:
                return sub
        return None

    def connection_ended(self) -> None:
        """No ACK is awaited any more: the connection is gone."""
        self.pending.clear()

    def pause(self) -> None:
        """Reading is paused: ACK deadlines stop running."""
        self._paused = True

    def resume(self, paused_for: float) -> None:
        """Reading again after *paused_for* seconds: ACK deadlines move later by it."""
        self._paused = False
        pending = self.pending
        for key, deadline in pending.items():
            pending[key] = deadline + paused_for
