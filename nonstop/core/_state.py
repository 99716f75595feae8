"""The states of a feed and every transition between them.

Theory of operation
-------------------
This module is the whole state machine, as data (h11's "rule 1": everything
that decides a transition lives here).  The core turns what happens -- an
input from the driver, a timer firing, a frame from the server -- into one of
the :class:`Input` values below and looks the transition up in
:data:`TRANSITIONS`.  A missing entry means the caller asked for something the
current state cannot do, and raises :class:`LocalProtocolError` before
anything changed.

The lifecycle of the strategy document maps onto the states like this::

    IDLE --start--> CONNECTING --tcp/tls up--> HANDSHAKING --101--> OPEN
    OPEN --ping timeout, silence, EOF, reset, bad frame--> (abort) BACKOFF
    OPEN --server close / our close--> CLOSING --EOF or close_timeout--> BACKOFF
    BACKOFF --retry timer--> CONNECTING           (the endless loop)
    any --stop--> STOPPING (close handshake) or STOPPED at once
    failures exhaust max_attempts, fatal status/code --> STOPPED

``CLOSING`` and ``STOPPING`` both wait for the close handshake; they differ in
where they go next, which keeps every transition a plain table lookup.
``docs/core.md`` holds a diagram generated from this table by
``docs/make_state_diagram.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from ._errors import LocalProtocolError

__all__ = ["State", "Input", "TRANSITIONS", "next_state", "HAS_TRANSPORT"]


class State(enum.Enum):
    """Where a feed is in its lifecycle."""

    IDLE = "idle"
    """Created, :meth:`~nonstop.core.FeedCore.start` not called yet."""
    CONNECTING = "connecting"
    """The driver is resolving, connecting TCP and doing TLS."""
    HANDSHAKING = "handshaking"
    """The upgrade request is sent; waiting for ``101 Switching Protocols``."""
    OPEN = "open"
    """Connected: subscriptions sent, messages flowing, health watched."""
    CLOSING = "closing"
    """A close handshake is under way; a reconnect follows."""
    BACKOFF = "backoff"
    """Disconnected, waiting for the retry timer."""
    STOPPING = "stopping"
    """Graceful stop: close handshake under way; ``STOPPED`` follows."""
    STOPPED = "stopped"
    """Final.  No more events, effects or deadlines."""


class Input(enum.Enum):
    """Everything that can move a feed from one state to another."""

    START = "start"
    TRANSPORT_OPENED = "transport_opened"
    ACCEPTED = "accepted"
    """The server answered the upgrade with a valid 101."""
    FAIL = "fail"
    """The connection is dead or must be dropped at once (abort)."""
    CLOSE = "close"
    """A close handshake starts: the server's close frame, or ours."""
    CLOSED = "closed"
    """The close handshake ended: EOF, close timeout or transport error."""
    RETRY_DUE = "retry_due"
    STOP = "stop"
    GIVE_UP = "give_up"
    """Abort a failed connection and do not retry (``max_attempts`` reached,
    fatal status).  A failure that ends with a close handshake and must not be
    retried is a ``STOP``."""


S, I = State, Input

TRANSITIONS: Final[Mapping[tuple[State, Input], State]] = {
    (S.IDLE, I.START): S.CONNECTING,
    (S.IDLE, I.STOP): S.STOPPED,
    (S.CONNECTING, I.TRANSPORT_OPENED): S.HANDSHAKING,
    (S.CONNECTING, I.FAIL): S.BACKOFF,
    (S.CONNECTING, I.GIVE_UP): S.STOPPED,
    (S.CONNECTING, I.STOP): S.STOPPED,
    (S.HANDSHAKING, I.ACCEPTED): S.OPEN,
    (S.HANDSHAKING, I.FAIL): S.BACKOFF,
    (S.HANDSHAKING, I.GIVE_UP): S.STOPPED,
    (S.HANDSHAKING, I.STOP): S.STOPPED,
    (S.OPEN, I.FAIL): S.BACKOFF,
    (S.OPEN, I.CLOSE): S.CLOSING,
    (S.OPEN, I.GIVE_UP): S.STOPPED,
    (S.OPEN, I.STOP): S.STOPPING,
    (S.CLOSING, I.CLOSED): S.BACKOFF,
    (S.CLOSING, I.STOP): S.STOPPING,
    (S.BACKOFF, I.RETRY_DUE): S.CONNECTING,
    (S.BACKOFF, I.STOP): S.STOPPED,
    (S.STOPPING, I.CLOSED): S.STOPPED,
}

#: States in which the driver holds a transport (or is opening one).
HAS_TRANSPORT: Final = frozenset({S.CONNECTING, S.HANDSHAKING, S.OPEN, S.CLOSING, S.STOPPING})


def next_state(state: State, event: Input) -> State:
    """Look up the transition, raising :class:`LocalProtocolError` on a miss."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise LocalProtocolError(
            f"can't handle {event.value} in state {state.value}"
        ) from None
