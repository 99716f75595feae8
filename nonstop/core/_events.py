"""What the core tells the outside world: events for the app, effects for the driver.

Theory of operation
-------------------
The core never calls out.  Everything it decides is queued, in order, as one
of the frozen, slotted, keyword-only dataclasses below, and pulled with
``FeedCore.next_event()``:

* **Effects** (:class:`FetchUrl`, :class:`OpenTransport`,
  :class:`CloseTransport`) are orders to the driver: ask the URL provider,
  open a TCP/TLS connection, close or abort it.
* **Events** (everything else) are for the application and its logs.

One queue keeps their relative order meaningful: a ``Disconnected`` comes
after the last ``Message`` of its connection, and ``Stopped`` is always last.
Match on :data:`Event` with ``assert_never`` for exhaustiveness.  Don't
subclass these (h11's rule): they are ``@final``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union, final

from ._config import Payload, Subscription
from ._guard import AlertKind, Reason
from ._proxy import Proxy

__all__ = [
    "FetchUrl",
    "OpenTransport",
    "CloseTransport",
    "Connecting",
    "Connected",
    "LoggedIn",
    "Subscribed",
    "Message",
    "Messages",
    "Pong",
    "Disconnected",
    "Gap",
    "Rotating",
    "Alert",
    "Stopped",
    "Effect",
    "AppEvent",
    "Event",
]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class FetchUrl:
    """Effect: call the feed's URL provider (``config.url``) for this attempt.

    Then call ``url_fetched(url, now)`` or ``url_failed(exc, now)``; an
    :class:`OpenTransport` for that URL follows.  The core counts the call
    against ``connect_timeout``: if it fires first, a :class:`CloseTransport`
    follows and the driver must abandon the call.
    """


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class OpenTransport:
    """Effect: open a TCP connection (with TLS if ``tls``) to ``host:port``.

    Then call ``transport_opened(now)`` or ``transport_failed(exc, now)``.
    The core enforces ``connect_timeout`` itself: if it fires first, a
    :class:`CloseTransport` follows and the driver must cancel the attempt.
    """

    host: str
    port: int
    tls: bool
    server_hostname: str | None
    """Name for SNI and certificate checks; ``None`` when ``tls`` is false."""
    proxy: Proxy | None = None
    """The proxy to reach ``host:port`` through (``None``: direct): connect
    to it, open the tunnel with :class:`~nonstop.core.ProxyHandshake`, then
    speak to ``host:port`` (TLS included) through it."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CloseTransport:
    """Effect: close the transport (or cancel its opening) and feed it no more.

    ``abort=True`` means the peer is dead or hostile: close at once without
    flushing (for TCP, an RST is fine).  ``abort=False``: write what
    ``data_to_send()`` returned, then close.
    """

    abort: bool


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Connecting:
    """A connection attempt starts (log keyword ``[CONNECTING]``, or
    ``[RECONNECTING]`` for every attempt after the feed's first)."""

    attempt: int
    """Attempts since the last stable connection, from 1."""
    total_attempts: int
    """Attempts since :meth:`start`, from 1."""
    url: str
    """The URL, redacted."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    """The WebSocket handshake succeeded (``[CONNECTED]``)."""

    connection: int
    """Number of this connection since start, from 1."""
    attempt: int
    subprotocol: str | None
    handshake_time: float
    """Seconds from the attempt's start (DNS, TCP, TLS, upgrade) to 101."""
    downtime: float | None
    """Seconds since the previous connection was lost; ``None`` the first time."""
    proxy: str | None = None
    """The proxy this connection goes through, its credentials shown as
    ``***`` (``None``: direct)."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedIn:
    """The server accepted the login; the subscriptions go out now
    (``[LOGGED_IN]``)."""

    connection: int
    login_time: float
    """Seconds from the upgrade's 101 to the login's acknowledgement."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed:
    """A subscription was sent and, if it has an ACK matcher, acknowledged
    (``[SUBSCRIBED]``)."""

    subscription: Subscription
    connection: int
    acked: bool
    """True when the server's acknowledgement was matched."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Messages:
    """Complete messages from the server, in order (not logged).

    One event per run of messages: per chunk, not per message, which keeps
    the hot path free of per-message objects (a driver extends its queue
    with ``data`` in one call).  A run never spans two connections or two
    inputs; lifecycle events between messages split runs, so order is kept.
    """

    data: list[Payload]
    """The messages: ``str`` for text frames, ``bytes`` for binary ones."""
    connection: int
    received_at: float
    """The ``now`` of the input that completed these messages."""

    def __iter__(self) -> Iterator[Message]:
        """Each message with its metadata (what ``records()`` yields)."""
        connection, received_at = self.connection, self.received_at
        for data in self.data:
            yield Message(data=data, connection=connection, received_at=received_at)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One message with its metadata: what ``feed.records()`` yields."""

    data: Payload
    connection: int
    """Which connection (1, 2, ...) it came on."""
    received_at: float
    """The driver's monotonic time when it was read."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """The answer to our latest protocol ping arrived (not logged; for
    round-trip histograms).  ``metrics().last_ping_rtt`` keeps the latest."""

    rtt: float
    """Seconds from our ping to its pong."""
    connection: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnected:
    """A connection ended or an attempt failed (``[DISCONNECTED]``).

    Emitted when the failure is *detected*; a close handshake may still be
    under way.  ``retry_at``/``retry_in`` say when the next attempt starts,
    ``None`` when the feed is stopping instead.
    """

    reason: Reason
    code: int | None
    """The WebSocket close code: the server's, or the one we sent."""
    status: int | None
    """The HTTP status of a rejected upgrade."""
    detail: str
    """Human-readable detail, safe to log (no secrets)."""
    level: int
    """Log level (``logging.INFO`` for normal closes, else ``ERROR``)."""
    connection: int | None
    """Which connection ended; ``None`` if the attempt never connected."""
    uptime: float
    """Seconds the connection was open (0 if it never opened)."""
    failures: int
    """Failures in a row, this one included (reset to 0 once a connection
    stays up ``stable_after``; a graceful stop does not count)."""
    retry_in: float | None
    retry_at: float | None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    """Messages may have been lost between ``start`` and ``end`` (``[GAP]``).

    From the core of one connection: a connection that was open broke, and
    the window runs from the break to the next connection's first message,
    or to the moment all its subscriptions were acknowledged (or, with none
    to acknowledge, to its 101), whichever came first.  From a
    :class:`~nonstop.core.Merge` of several legs: numbers that never came,
    or a time with no leg subscribed.  Emitted before the first message
    after it.
    """

    start: float
    """When the loss may have begun (the core's clock): the break, the last
    leg going down, or the last message before the missing numbers."""
    end: float
    """When it ended: the new connection's first message (or its
    subscriptions acknowledged), a leg up again, or the first message after
    the missing numbers."""
    reason: str
    """Why: the break's reason (``reset``, ``silence``, ...: the value of its
    :class:`~nonstop.Reason`), ``no_leg`` (no leg was subscribed) or
    ``sequence`` (numbers never came)."""
    connection: int | None = None
    """The connection after the gap (from the core of one connection)."""
    first_missing: int | None = None
    """With sequence numbers: the first number that never came."""
    last_missing: int | None = None
    """With sequence numbers: the last number that never came."""
    legs_down: tuple[int, ...] = ()
    """The legs that were not subscribed when the gap was found."""

    @property
    def seconds(self) -> float:
        """How long the gap lasted."""
        return self.end - self.start

    @property
    def missing(self) -> int | None:
        """How many numbers never came (``None`` without sequence numbers)."""
        if self.first_missing is None or self.last_missing is None:
            return None
        return self.last_missing - self.first_missing + 1


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Rotating:
    """The open connection nears its lifetime (``max_lifetime``, or what the
    server's close 1001 taught): a redundant feed opens its replacement now
    and closes this one once the new one delivers (``[ROTATING]``)."""

    connection: int
    age: float
    """Seconds the connection has been open."""
    lifetime: float
    """The lifetime it is rotated before."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """An operator alert started (``active``) or cleared (``[ALERT]``)."""

    kind: AlertKind
    active: bool
    detail: str
    level: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped:
    """The feed is finished (``[STOPPED]``); always the last event."""

    reason: Reason
    """``STOPPED`` when asked to stop, ``GAVE_UP`` otherwise."""
    detail: str


Effect = Union[FetchUrl, OpenTransport, CloseTransport]
AppEvent = Union[Connecting, Connected, LoggedIn, Subscribed, Messages, Pong, Disconnected, Gap,
                 Rotating, Alert, Stopped]
Event = Union[FetchUrl, OpenTransport, CloseTransport, Connecting, Connected, LoggedIn,
              Subscribed, Messages, Pong, Disconnected, Gap, Rotating, Alert, Stopped]
