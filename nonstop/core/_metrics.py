"""Metrics: counters kept by the core, read as an immutable snapshot.

Theory of operation
-------------------
The core updates a few plain counters as inputs arrive (cheap: one addition
per chunk of data, one per message).  :meth:`~nonstop.core.FeedCore.metrics`
turns them into a :class:`Metrics` snapshot for a given ``now``: ages,
ratios and the reconnects in the last minute are computed at read time, so
reading metrics never changes the feed.  Counters only ever grow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._state import State

__all__ = ["Metrics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    """A snapshot of one feed.  Times are seconds; ``None`` means "not yet"."""

    state: State
    running_time: float
    """Seconds since ``start``."""
    uptime: float
    """Seconds the current connection has been open (0 when not open)."""
    total_uptime: float
    """Seconds spent open, all connections together."""
    connected_ratio: float
    """``total_uptime / running_time`` (0 before the first second passes)."""
    connection: int
    """Connections opened so far (the current one's number when open)."""
    attempts: int
    """Connection attempts so far."""
    reconnects: int
    """Connections opened after the first one."""
    reconnects_last_minute: int
    last_time_to_reconnect: float | None
    """Downtime before the latest reconnect: loss detected to 101."""
    consecutive_failures: int
    """Failures since the last connection that stayed up ``stable_after``."""
    messages_received: int
    bytes_received: int
    """Every byte read from the server, handshakes and frames included."""
    last_message_age: float | None
    """Seconds since the last complete message."""
    last_ping_rtt: float | None
    """Round trip of the latest answered protocol ping."""
    pending_acks: int
    """Subscriptions sent on this connection and not acknowledged yet."""
    subscriptions: int
    """Subscriptions that are replayed on every connect."""
    disconnects: Mapping[str, int]
    """Disconnects so far, by reason (a graceful stop is not counted)."""
    last_disconnect_reason: str | None
    alerts_active: tuple[str, ...]
    gaps: int = 0
    """Windows in which messages may have been lost (``Gap`` events)."""
    gap_seconds: float = 0.0
    """Their length, all together."""
    reading_paused: bool = False
    """The driver stopped reading because the application fell behind."""
    legs: int = 1
    """Connections the feed keeps at once (``redundancy``)."""
    legs_live: int = 0
    """Of those, the ones delivering now (a message came on the connection,
    or its subscriptions are acknowledged)."""
    duplicates: int = 0
    """Messages dropped because another leg had delivered them already."""
    missing: int = 0
    """Sequence numbers reported missing in gaps (``sequence=``)."""
    unreadable: int = 0
    """Messages whose sequence number could not be read (the function
    raised or gave no ``int``): delivered as they are."""
    rotations: int = 0
    """Connections replaced before their lifetime (``max_lifetime``)."""
    leg_metrics: tuple[Metrics, ...] = ()
    """Each leg's own metrics, of a redundant feed (empty: one connection)."""
    # Filled in by the drivers (the core has no queue of its own):
    queued: int = 0
    """Messages waiting for the application."""
    messages_dropped: int = 0
    """Messages dropped by the ``drop_oldest`` or ``disconnect`` policy."""
    overflows: int = 0
    """Times the application's queue was full when a message arrived."""
