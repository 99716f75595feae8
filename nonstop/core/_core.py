"""FeedCore: the handler (the anchor), as a sans-IO state machine.

Theory of operation
-------------------
``FeedCore`` is the single source of truth for one feed: its state, the
current connection, the subscriptions to replay, the health clocks, the
backoff and the alerts.  It never touches a socket or a clock.  The driver
feeds it *inputs*, each stamped with ``now`` (monotonic seconds):

====================================  =========================================
input                                 when the driver calls it
====================================  =========================================
``start(now)``                        once, to begin
``url_fetched(url, now)``             after ``FetchUrl``: the provider's URL
``url_failed(exc, now)``              after ``FetchUrl``: the provider failed
``transport_opened(now)``             after ``OpenTransport``: TCP (+TLS) is up
``transport_failed(exc, now)``        opening, reading or writing failed
``transport_lost(exc, now)``          reading or writing failed on a transport
                                      the core may already have let go of
``receive_data(data, now)``           bytes arrived (never empty)
``receive_eof(now)``                  the server closed its side
``handle_timer(now)``                 ``now >= next_deadline()``
``caught_up(now)``                    the application took every message
                                      delivered so far and waits for more
``send / subscribe / unsubscribe``    the application asks
``reconnect(now)``                    the application (or the driver's
                                      slow-consumer policy) wants a new socket
``stop(now)``                         graceful shutdown, from any state
====================================  =========================================

and pulls *outputs*: ``data_to_send()`` (bytes to write), ``next_event()``
(effects for the driver and events for the application, in one ordered
queue) and ``next_deadline()`` (a pure query).

Each input first checks that the current state can take it (raising
:class:`LocalProtocolError` with nothing changed), then decides everything at
once: state changes happen when an input is fed, never when events are pulled.
Every failure goes through :meth:`FeedCore._disconnect`, the one place that
counts failures, picks the backoff, asks the guard for alerts and moves the
state.  That is the whole "fail fast, retry smart" strategy in one method.

Loop the driver runs::

    while core.state is not State.STOPPED:
        write(core.data_to_send())
        while (ev := core.next_event()) is not None: dispatch(ev)
        wait until readable or core.next_deadline()
        feed one input: receive_data / receive_eof /
                        transport_failed (opening) / transport_lost (reading,
                        writing) / handle_timer(max(deadline, now))
        when the application has taken every message: caught_up(now)
"""

from __future__ import annotations

import collections
import math
import random
import re

from ._backoff import ceiling, first_retry_delay, retry_delay
from ._config import (
    _RESERVED_HEADERS,
    Config,
    Payload,
    Subscription,
    callable_name,
    encode_message,
    normalize_headers,
)
from ._dial import KNOWN_ADDRESS_TIME
from ._errors import ConfigError, LocalProtocolError, NotConnected
from ._events import (
    Alert,
    CloseTransport,
    Connected,
    Connecting,
    Disconnected,
    Event,
    FetchUrl,
    Gap,
    LoggedIn,
    Messages,
    OpenTransport,
    Pong,
    Rotating,
    Stopped,
    Subscribed,
)
from ._framing import (
    Accepted,
    Failed,
    Framing,
    HandshakeFailed,
    PeerClosed,
    PongReceived,
    Rejected,
)
from ._guard import (
    AlertChange,
    AlertTracker,
    Reason,
    Verdict,
    error_detail,
    proxy_retry_after,
    server_closed,
    transport_error,
    upgrade_rejected,
)
from ._health import Health, after
from ._logfmt import redact_text
from ._metrics import Metrics
from ._retry_after import parse_retry_after
from ._state import HAS_TRANSPORT, Input, State, next_state
from ._subscriptions import AckMatcherFailed, Subscriptions
from ._url import Endpoint, parse_url, redact_url

__all__ = ["FeedCore"]

#: Close code we send when we end a healthy-looking connection ourselves.
GOING_AWAY = 1001
#: Close code for a graceful stop (and after a refused login).
NORMAL = 1000
#: Close code when one of the application's callbacks raised.
INTERNAL_ERROR = 1011
#: Close code reported when the connection ended without a close frame.
ABNORMAL = 1006

# One Messages event per read, made by its slots' own setters rather than the
# frozen dataclass's __init__ (which sets each field through
# object.__setattr__).  The same object, equal, hashed and printed the same.
_new_messages = object.__new__
_set_data = Messages.__dict__["data"].__set__
_set_connection = Messages.__dict__["connection"].__set__
_set_received_at = Messages.__dict__["received_at"].__set__
# Where bytes from the server are expected: a transport is open past
# CONNECTING (a tuple: _require's order).
_RECEIVING = (State.HANDSHAKING, State.OPEN, State.CLOSING, State.STOPPING)
# Words of a login or a built message that may be secrets (a signature, a
# token, a listen key): kept to scrub them from details before they are
# emitted (with and without "/": base64 has it, paths are split by it).
_SECRET_WORDS = (re.compile(r"[A-Za-z0-9+/=_.~-]{16,}"), re.compile(r"[A-Za-z0-9+=_.~-]{16,}"))
#: How many such words are remembered (the latest connections' worth).
_SECRETS_KEPT = 64


class FeedCore:
    """One feed's whole lifecycle as a synchronous state machine.

    Create it with a :class:`Config` and an injected :class:`random.Random`
    (the jitter source; seed it for reproducible runs), then call
    :meth:`start`.
    """

    def __init__(self, config: Config, *, rng: random.Random) -> None:
        if not isinstance(config, Config):
            raise ConfigError(f"config must be a nonstop.core.Config, got {config!r}")
        self.config = config
        self._rng = rng
        self._state = State.IDLE
        self._events: collections.deque[Event] = collections.deque()
        self._out = bytearray()
        self._now = -math.inf
        self._subs = Subscriptions(config.subscription_list)
        self._endpoint: Endpoint | None = config.endpoint  # where this attempt goes
        # The login of the open connection: its ACK deadline while it is
        # awaited (None otherwise), and the refusals in a row.
        self._login_due: float | None = None
        self._rejections = 0
        self._secrets: collections.deque[str] = collections.deque(maxlen=_SECRETS_KEPT)
        self._framing: Framing | None = None
        self._health: Health | None = None
        # per-attempt / per-connection
        self._attempt_started = 0.0
        self._proxy: str | None = None  # the current attempt's proxy, shown redacted
        self._deadline: float | None = None  # connect, handshake or close timeout
        self._opened_at: float | None = None  # 101 received
        self._stable_at: float | None = None
        self._stable = False  # the open connection has stayed up stable_after
        self._retry_at: float | None = None
        self._stop_reason: tuple[Reason, str] | None = None
        self._callback_failed: str | None = None
        self._paused_at: float | None = None  # reading paused by the driver
        self._deferred: tuple[Failed, float] | None = None  # protocol failure, due at
        # counters
        self._started_at: float | None = None
        self._stopped_at: float | None = None  # running time ends at STOPPED
        self._failures = 0
        self._attempts_in_row = 0  # attempts since the last stable connection
        self._free = 0  # failures before the series (the first retry after a stable connection)
        self._attempts_total = 0  # every attempt of the feed
        self._connections = 0
        self._lost_at: float | None = None
        self._last_ttr: float | None = None
        self._uptime_total = 0.0
        self._messages = 0
        self._bytes = 0
        self._last_message_at: float | None = None
        self._last_rtt: float | None = None
        # A window of possible loss: since a connection that was open broke,
        # until the next one delivers (see _end_gap); and the totals.
        self._gap_since: float | None = None
        self._live = 0  # the latest connection known to deliver (see delivering)
        # Rotation: when the open connection asks for its replacement, and
        # the lifetime a server's close 1001 taught (see lifetime).
        self._rotate_at: float | None = None
        self._learned_lifetime: float | None = None
        self._gap_reason = ""
        self._gaps = 0
        self._gap_seconds = 0.0
        self._disconnects: dict[str, int] = {}
        self._last_reason: str | None = None
        self._alerts = AlertTracker(config.alerts)

    # ------------------------------------------------------------------
    # queries
    @property
    def state(self) -> State:
        return self._state

    @property
    def connection(self) -> int:
        """Number of the current (or last) connection, 0 before the first."""
        return self._connections

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """What is replayed on every connect, in order."""
        return self._subs.all

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport now; ``b""`` when there are none."""
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def pending_output(self) -> int:
        """Bytes queued and not yet taken by :meth:`data_to_send`."""
        return len(self._out)

    def next_event(self) -> Event | None:
        """The next effect or event, in order; ``None`` when the queue is empty."""
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next (a pure query).

        ``None``: nothing is scheduled.  After ``handle_timer(now)`` this is
        always ``None`` or strictly later than ``now``.
        """
        state = self._state
        if state is State.STOPPED:
            return None
        # The earliest of a few optional times, without a list: a driver asks
        # after every read, so this is on the hot path.
        best = self._alerts.next_deadline()
        t: float | None
        if state is State.OPEN:
            deferred = self._deferred
            if deferred is not None:
                t = deferred[1]  # the connection is failing: its other timers wait
            else:
                assert self._health is not None
                t = self._health.next_deadline()
                if t is not None and (best is None or t < best):
                    best = t
                t = self._subs.next_deadline()
                if t is not None and (best is None or t < best):
                    best = t
                t = self._rotate_at
                if t is not None and (best is None or t < best):
                    best = t
                t = self._login_due
                if t is not None and self._paused_at is None and (best is None or t < best):
                    best = t
                t = self._stable_at
        elif state is State.BACKOFF:
            assert self._retry_at is not None
            t = self._retry_at
        else:
            t = self._deadline
        if t is not None and (best is None or t < best):
            best = t
        return best

    def metrics(self, now: float) -> Metrics:
        """A snapshot of the feed's counters at *now* (changes nothing)."""
        started = self._started_at
        end = now if self._stopped_at is None else min(now, self._stopped_at)
        running = 0.0 if started is None else max(0.0, end - started)
        current = 0.0
        if self._state is State.OPEN and self._opened_at is not None:
            current = max(0.0, now - self._opened_at)
        total = self._uptime_total + current
        last_msg = self._last_message_at
        return Metrics(
            state=self._state,
            running_time=running,
            uptime=current,
            total_uptime=total,
            connected_ratio=min(1.0, total / running) if running > 0 else 0.0,
            connection=self._connections,
            attempts=self._attempts_total,
            reconnects=max(0, self._connections - 1),
            reconnects_last_minute=self._alerts.reconnects_in_window(now),
            last_time_to_reconnect=self._last_ttr,
            consecutive_failures=self._failures,
            messages_received=self._messages,
            bytes_received=self._bytes,
            last_message_age=None if last_msg is None else max(0.0, now - last_msg),
            last_ping_rtt=self._last_rtt,
            pending_acks=len(self._subs.pending),
            subscriptions=len(self._subs),
            disconnects=dict(self._disconnects),
            last_disconnect_reason=self._last_reason,
            gaps=self._gaps,
            gap_seconds=self._gap_seconds,
            alerts_active=tuple(sorted(k.value for k in self._alerts.active)),
            reading_paused=self._paused_at is not None,
            legs_live=1 if self.delivering else 0,
        )

    # ------------------------------------------------------------------
    # input checks
    def _tick(self, now: float) -> None:
        """Validate *now* (finite, not going back); call before changing anything."""
        if type(now) is float and -math.inf < self._now <= now < math.inf:
            return  # the common case in one test (NaN fails it; so does the first call)
        if not isinstance(now, (int, float)) or isinstance(now, bool) or not math.isfinite(now):
            raise LocalProtocolError(f"now must be a finite number of seconds, got {now!r}")
        if now < self._now:
            raise LocalProtocolError(
                f"time went backwards: now={now!r} after {self._now!r}; "
                "pass a monotonic clock"
            )

    def _require(self, what: str, *states: State) -> None:
        if self._state not in states:
            raise LocalProtocolError(f"can't handle {what} in state {self._state.value}")

    def _move(self, event: Input) -> None:
        self._state = next_state(self._state, event)

    # ------------------------------------------------------------------
    # inputs from the driver
    def start(self, now: float) -> None:
        """Begin: emits ``Connecting`` and ``OpenTransport`` (first attempt, no delay).

        Next: open the transport, then :meth:`transport_opened` or
        :meth:`transport_failed`.
        """
        self._tick(now)
        next_state(self._state, Input.START)
        self._now = now
        self._started_at = now
        self._alerts.on_down(now)
        self._begin_attempt(now)

    def transport_opened(self, now: float) -> None:
        """TCP (and TLS) is up: queues the HTTP upgrade request.

        Next: write :meth:`data_to_send`, then feed the response with
        :meth:`receive_data`.
        """
        self._tick(now)
        next_state(self._state, Input.TRANSPORT_OPENED)
        self._now = now
        try:
            headers = self._headers()
        except Exception as exc:  # the user's header provider or its output
            self._disconnect(now, Verdict(reason=Reason.CALLBACK_ERROR,
                                          detail=f"header provider failed: {exc}"), abort=True)
            return
        self._move(Input.TRANSPORT_OPENED)
        assert self._framing is not None and self._endpoint is not None
        self._framing.request(self._endpoint, headers, self.config.subprotocols)
        self._flush()
        self._deadline = after(now, self.config.handshake_timeout)

    def url_fetched(self, url: object, now: float) -> None:
        """The URL provider returned *url* for this attempt: emits
        ``OpenTransport`` for it, or (a bad URL) fails the attempt with
        reason ``url_provider``.  Next: drain :meth:`next_event`."""
        self._tick(now)
        self._require_fetch("url_fetched")
        self._now = now
        name = callable_name(self.config.url)
        try:
            if not isinstance(url, str):
                raise ConfigError(f"it returned a {type(url).__name__}, not a str")
            endpoint = parse_url(url)
        except ConfigError as exc:
            why = str(exc)
            if isinstance(url, str):  # the error quotes the URL: its key stays hidden
                why = why.replace(url, redact_url(url))
                self._remember_secrets(url.partition("://")[2].partition("/")[2])
            self._disconnect(now, Verdict(reason=Reason.URL_PROVIDER,
                                          detail=f"url provider {name}() gave a bad URL: {why}"),
                             abort=True)
            return
        self._endpoint = endpoint
        self._remember_secrets(endpoint.target)
        self._open_transport(endpoint)

    def url_failed(self, error: BaseException, now: float) -> None:
        """The URL provider raised *error*: the attempt fails with reason
        ``url_provider`` and is retried with backoff.  Next: drain
        :meth:`next_event`."""
        self._tick(now)
        self._require_fetch("url_failed")
        self._now = now
        name = callable_name(self.config.url)
        self._disconnect(now, Verdict(reason=Reason.URL_PROVIDER,
                                      detail=f"url provider {name}() raised {error_detail(error)}"),
                         abort=True)

    def _require_fetch(self, what: str) -> None:
        if self._state is not State.CONNECTING or self._endpoint is not None:
            raise LocalProtocolError(f"can't handle {what}: no FetchUrl is outstanding "
                                     f"(state {self._state.value})")

    def transport_failed(self, error: BaseException, now: float) -> None:
        """Opening, reading or writing failed.  Classified by the guard
        (:func:`~nonstop.core.classify_error`).

        Next: handle the ``CloseTransport`` that follows (the transport is
        done either way).
        """
        self._tick(now)
        self._require("transport_failed", *HAS_TRANSPORT)
        self._now = now
        if self._state in (State.CLOSING, State.STOPPING):
            self._close_done(abort=True)
            return
        ep = self._endpoint
        connecting_to = None
        if ep is not None and self._state is State.CONNECTING:
            connecting_to = (ep.host, ep.port)
        self._disconnect(now, transport_error(error, connecting_to=connecting_to), abort=True,
                         retry_after=proxy_retry_after(error))

    def transport_lost(self, error: BaseException, now: float) -> bool:
        """Reading or writing failed on a transport the core may already have
        let go of (the driver's read or write raced a ``CloseTransport``).

        If the core has an open transport past ``CONNECTING``, it fails it
        exactly as :meth:`transport_failed` does and returns ``True``: next,
        handle the ``CloseTransport`` that follows.  Otherwise (no transport,
        or one still being opened, whose failure is :meth:`transport_failed`'s)
        it ignores *error* and returns ``False``.  Raises only for a bad *now*.
        """
        self._tick(now)
        if self._state not in _RECEIVING:
            return False
        self.transport_failed(error, now)
        return True

    def may_reuse_address(self, now: float) -> bool:
        """May the driver dial the address of the last connection when the
        name lookup of a new attempt fails or takes longer than
        ``LOOKUP_PATIENCE``?  Yes within ``KNOWN_ADDRESS_TIME`` of the moment
        that connection ended (so never before the first one)."""
        self._tick(now)
        return self._lost_at is not None and now - self._lost_at <= KNOWN_ADDRESS_TIME

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the server (never empty: use :meth:`receive_eof`).

        Never raises for what the bytes contain: a bad handshake or frame
        becomes a ``Disconnected``.  Next: write :meth:`data_to_send` (pongs,
        close replies) and drain :meth:`next_event`.
        """
        self._tick(now)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"data must be bytes, got {type(data).__name__}")
        if not data:
            raise LocalProtocolError("receive_data(b'') is not EOF: call receive_eof(now)")
        if self._state not in _RECEIVING:
            self._require("receive_data", *_RECEIVING)
        self._now = now
        self._bytes += len(data)
        framing = self._framing
        assert framing is not None
        if self._health is not None:
            self._health.on_bytes(now)
        items = framing.feed(bytes(data))
        accepted = items[-1] if items else None
        if isinstance(accepted, Accepted):
            # The 101 ends the list: open (subscriptions queued), then parse
            # the frames that came in the same chunk.
            items.pop()
            self._on_accepted(accepted, now)
            items += framing.resume()
        for item in items:
            if type(item) is list:  # a run from the fast path
                self._deliver(item, now)
            elif isinstance(item, (str, bytes)):
                self._deliver([item], now)
            elif isinstance(item, PongReceived):
                rtt = None if self._health is None else self._health.on_pong(item.payload, now)
                if rtt is not None:
                    self._last_rtt = rtt
                    self._events.append(Pong(rtt=rtt, connection=self._connections))
            elif isinstance(item, PeerClosed):
                self._on_peer_closed(item, now)
            elif isinstance(item, Failed):
                if self._state is not State.OPEN:  # garbage while closing: give up on it
                    self._close_done(abort=True)
                else:
                    # Let the application take (and answer) the messages that
                    # came before the bad bytes, then fail (RFC 6455 7.1.7):
                    # at caught_up(), or when failure_grace has passed.
                    self._deferred = (item, now + self.config.failure_grace)
            elif isinstance(item, Rejected):
                self._on_rejected(item, now)
            else:
                assert isinstance(item, HandshakeFailed)
                self._disconnect(now, Verdict(reason=Reason.HANDSHAKE_FAILED, detail=item.detail),
                                 abort=True)
        if self._callback_failed is not None and self._state is State.OPEN:
            detail, self._callback_failed = self._callback_failed, None
            framing.close(INTERNAL_ERROR, "client callback failed")
            self._disconnect(now, Verdict(reason=Reason.CALLBACK_ERROR, detail=detail,
                                          code=INTERNAL_ERROR), abort=False, close_sent=True)
        self._callback_failed = None
        health = self._health
        if health is not None and health.last_data != now and framing.mid_message:
            health.last_data = now  # a data message still arriving is data too
        self._flush()

    def _fail_protocol(self, item: Failed, now: float) -> None:
        """Fail the WebSocket connection (RFC 6455 7.1.7): our close frame
        with the error's code, then wait for the server to close TCP."""
        assert self._framing is not None
        self._framing.close(item.code, item.detail[:100])
        self._disconnect(now, Verdict(reason=item.reason, detail=item.detail, code=item.code),
                         abort=False, close_sent=True)

    @property
    def failure_pending(self) -> bool:
        """A protocol failure was detected after messages of the same read and
        waits for the application to take them: until :meth:`caught_up`, or
        ``failure_grace`` seconds after it was detected (the deadline
        :meth:`next_deadline` returns meanwhile).  Nothing more is read from
        the server, the connection's other timers wait, but the application
        may still send."""
        return self._deferred is not None

    def caught_up(self, now: float) -> None:
        """The application has taken every message delivered so far and waits
        for more (or nothing is queued for it and it never iterated).

        A driver calls it when its application queue becomes empty with the
        application waiting on it -- at least while :attr:`failure_pending`;
        calling it at other times is harmless.  If a protocol failure is
        deferred, it fails now, as when its timer fires: our close frame goes
        out and ``Disconnected`` is queued; next, write :meth:`data_to_send`
        and drain :meth:`next_event`.  Otherwise nothing changes.  Idempotent;
        raises only for a bad *now*.
        """
        self._tick(now)
        deferred = self._deferred
        if deferred is None:
            return
        self._now = now
        self._fail_protocol(deferred[0], now)
        self._flush()

    def receive_eof(self, now: float) -> None:
        """The server closed the TCP connection (or TLS sent close_notify)."""
        self._tick(now)
        self._require("receive_eof", State.HANDSHAKING, State.OPEN, State.CLOSING, State.STOPPING)
        self._now = now
        assert self._framing is not None
        self._framing.feed_eof()
        if self._state in (State.CLOSING, State.STOPPING):
            self._close_done(abort=False)
        elif self._state is State.HANDSHAKING:
            self._disconnect(now, Verdict(reason=Reason.EOF,
                                          detail="connection closed during the handshake"),
                             abort=True)
        else:
            self._disconnect(now, Verdict(reason=Reason.EOF, code=ABNORMAL,
                                          detail="connection closed without a close frame"),
                             abort=True)

    def handle_timer(self, now: float) -> None:
        """Do every job due at or before *now*; safe early, late or twice.

        Afterwards :meth:`next_deadline` is ``None`` or later than *now*.
        """
        self._tick(now)
        self._now = now
        for _ in range(100_000):
            deadline = self.next_deadline()
            if deadline is None or deadline > now:
                break
            self._fire(now)
        else:  # pragma: no cover - every job moves its deadline past now
            raise AssertionError("handle_timer did not converge")
        self._flush()

    # ------------------------------------------------------------------
    # inputs from the application
    def send(self, message: object, now: float) -> None:
        """Queue a message (``str``: text, ``bytes``: binary, else JSON text).

        Raises :class:`NotConnected` unless the connection is open: nothing
        is kept for a later connection.
        """
        self._tick(now)
        if type(message) is str:  # the common case, without a call
            payload: Payload = message
        else:
            try:
                payload = encode_message(message)
            except ConfigError as exc:
                raise LocalProtocolError(str(exc)) from None
        if self._state is not State.OPEN or self._framing is None or not self._framing.is_open:
            raise NotConnected(f"cannot send while {self._state.value}; wait for Connected")
        self._now = now
        self._framing.send(payload)
        self._flush()

    def subscribe(self, subscription: object, now: float) -> Subscription:
        """Add a subscription: replayed after every connect, sent now if open."""
        self._tick(now)
        sub = Subscription.coerce(subscription)
        if self._state in (State.STOPPING, State.STOPPED):
            raise LocalProtocolError(f"can't subscribe in state {self._state.value}")
        send = self.ready
        payload = None
        if send:  # built before anything changes: a callable that fails raises here
            try:
                payload = sub.render()
            except ConfigError as exc:
                raise LocalProtocolError(str(exc)) from None
        self._subs.add(sub, now if send else None)  # raises on a duplicate, changing nothing
        self._now = now
        if payload is not None:
            self._send_subscription(sub, payload)
            self._flush()
        return sub

    @property
    def ready(self) -> bool:
        """A connection is open and its login, if any, accepted: what
        ``wait_connected`` waits for, and when a subscription goes out at
        once (else it waits for the replay)."""
        return (self._state is State.OPEN and self._framing is not None
                and self._framing.is_open and self._login_due is None)

    def unsubscribe(self, subscription: object, now: float) -> Subscription:
        """Forget a subscription (matched by value); send its ``unsubscribe``
        message if one is configured and the connection is open."""
        self._tick(now)
        if self._state in (State.STOPPING, State.STOPPED):
            raise LocalProtocolError(f"can't unsubscribe in state {self._state.value}")
        key: object
        if isinstance(subscription, Subscription):
            key = subscription.key
        elif callable(subscription):
            key = subscription
        else:
            key = encode_message(subscription, "subscription")
        sub = self._subs.remove(key)  # raises if unknown, changing nothing
        self._now = now
        if self.ready and sub.unsubscribe is not None:
            try:
                unsub = sub.render_unsubscribe()
            except ConfigError as exc:  # forgotten all the same: it is not replayed
                raise LocalProtocolError(f"{exc} (the subscription is removed)") from None
            assert unsub is not None and self._framing is not None
            self._remember_secrets(unsub if sub.unsubscribe_payload is None else None)
            self._framing.send(unsub)
            self._flush()
        return sub

    def pause_reading(self, now: float) -> None:
        """The driver stopped reading the socket (backpressure from a slow
        application).  Liveness cannot be observed while unread bytes pile up
        in the kernel, so the ping, silence and ACK timeouts are suspended;
        pings are still sent.  Idempotent.  Next: :meth:`resume_reading`.
        """
        self._tick(now)
        if self._state is State.STOPPED or self._paused_at is not None:
            return
        self._now = now
        self._paused_at = now
        self._subs.pause()
        if self._health is not None:
            self._health.pause()

    def resume_reading(self, now: float) -> None:
        """Reading again: liveness clocks restart from *now* and pending ACK
        deadlines move later by the time spent paused.  Idempotent."""
        self._tick(now)
        paused_at = self._paused_at
        if paused_at is None:
            return
        self._now = now
        self._paused_at = None
        if self._health is not None:
            self._health.resume(now)
        self._subs.resume(now - paused_at)
        if self._login_due is not None:  # unread bytes may have held the ACK
            self._login_due += now - paused_at

    @property
    def reading_paused(self) -> bool:
        return self._paused_at is not None

    def reconnect(self, now: float, *, reason: Reason = Reason.CLIENT_RECONNECT,
                  detail: str = "reconnect requested") -> bool:
        """Close the open connection (code 1001) and reconnect with backoff;
        *reason* and *detail* go in its ``Disconnected``.

        Returns ``False`` (and does nothing) when no connection is open.
        """
        self._tick(now)
        if self._state is not State.OPEN:
            return False
        self._now = now
        assert self._framing is not None
        self._framing.close(GOING_AWAY, "reconnecting")
        self._disconnect(now, Verdict(reason=reason, detail=detail, code=GOING_AWAY),
                         abort=False, close_sent=True)
        self._flush()
        return True

    def stop(self, now: float) -> None:
        """Graceful shutdown, from any state; idempotent.

        While open: send close 1000, keep delivering messages until the
        server's close (or ``close_timeout``), then ``CloseTransport`` and
        ``Stopped``.  Otherwise ``Stopped`` at once.
        """
        self._tick(now)
        if self._state in (State.STOPPING, State.STOPPED):
            return
        self._now = now
        self._stop_reason = (Reason.STOPPED, "stop requested")
        state = self._state
        if state is State.OPEN:
            assert self._framing is not None
            self._framing.close(NORMAL, "stopping")
            self._emit_disconnected(now, Verdict(reason=Reason.STOPPED, detail="stop requested",
                                                 code=NORMAL), retry_in=None)
            self._move(Input.STOP)
            self._deadline = after(now, self.config.close_timeout)
            self._flush()
            return
        if state is State.CLOSING:
            self._move(Input.STOP)  # keep the running close deadline
            return
        if state in (State.CONNECTING, State.HANDSHAKING):
            self._emit_disconnected(now, Verdict(reason=Reason.STOPPED, detail="stop requested"),
                                    retry_in=None)
            self._events.append(CloseTransport(abort=True))
        self._move(Input.STOP)
        self._finish()

    # ------------------------------------------------------------------
    # internals: attempts
    def _begin_attempt(self, now: float) -> None:
        self._move(Input.START if self._state is State.IDLE else Input.RETRY_DUE)
        self._attempts_total += 1
        self._attempts_in_row += 1
        self._attempt_started = now
        self._retry_at = None
        self._framing = Framing(self.config.max_message_size,
                                compression=self.config.compression is not None)
        self._health = None
        self._opened_at = None
        self._stable_at = None
        self._rotate_at = None
        self._subs.connection_ended()
        self._login_due = None
        self._deadline = after(now, self.config.connect_timeout)
        ep = self._endpoint = self.config.endpoint
        url = self.config.label if ep is None else ep.redacted
        self._events.append(
            Connecting(attempt=self._attempts_in_row, total_attempts=self._attempts_total,
                       url=url)
        )
        if ep is None:
            self._events.append(FetchUrl())
        else:
            self._open_transport(ep)

    def _open_transport(self, ep: Endpoint) -> None:
        rules = self.config.proxy
        proxy = None if rules is None else rules.choose(tls=ep.tls, host=ep.host, port=ep.port)
        self._proxy = None if proxy is None else str(proxy)
        self._events.append(
            OpenTransport(
                host=ep.host,
                port=ep.port,
                tls=ep.tls,
                server_hostname=(self.config.server_hostname or ep.host) if ep.tls else None,
                proxy=proxy,
            )
        )

    def _headers(self) -> list[tuple[str, str]]:
        config = self.config
        source = config.headers
        if callable(source):
            headers = normalize_headers(source(), "header provider result")
            for name, _ in headers:
                if name.lower() in _RESERVED_HEADERS:
                    raise ConfigError(f"{name!r} is set by the WebSocket handshake itself")
        elif source is None:
            headers = []
        else:
            headers = normalize_headers(source)
        names = {name.lower() for name, _ in headers}
        assert self._endpoint is not None
        basic_auth = self._endpoint.basic_auth
        if basic_auth is not None and "authorization" not in names:
            headers.append(("Authorization", basic_auth))
        if config.user_agent and "user-agent" not in names:
            headers.append(("User-Agent", config.user_agent))
        return headers

    def _on_accepted(self, item: Accepted, now: float) -> None:
        self._move(Input.ACCEPTED)
        self._connections += 1
        self._opened_at = now
        self._stable_at = after(now, self.config.stable_after)
        lifetime = self.lifetime
        if lifetime is not None:
            self._rotate_at = now + lifetime - self.config.rotation_lead
        self._deadline = None
        self._health = Health(self.config, now)
        if self._paused_at is not None:
            self._health.pause()
        downtime = None if self._lost_at is None else now - self._lost_at
        if downtime is not None:
            self._last_ttr = downtime
        self._events.append(
            Connected(
                connection=self._connections,
                attempt=self._attempts_in_row,
                subprotocol=item.subprotocol,
                handshake_time=now - self._attempt_started,
                downtime=downtime,
                proxy=self._proxy,
            )
        )
        login = self.config.login
        self._alert(self._alerts.on_connected(now, reconnect=self._connections > 1,
                                              login=login is not None))
        if login is None:
            self._replay(now)
            return
        try:
            payload = login.render()
        except ConfigError as exc:
            self._callback_failed = str(exc)  # fails the connection once this read is done
            return
        self._remember_secrets(payload)  # (a fixed one may hold an API key too)
        assert self._framing is not None
        self._framing.send(payload)
        self._login_due = after(now, login.timeout)

    def _replay(self, now: float) -> None:
        """Send every subscription, in order (the login, if any, is accepted)."""
        for sub in self._subs.replay(now):
            try:
                payload = sub.render()
            except ConfigError as exc:
                self._callback_failed = str(exc)  # fails the connection once this read is done
                return
            if sub.payload is None:
                self._remember_secrets(payload)
            self._send_subscription(sub, payload)
        if not self._subs.pending:  # nothing to wait for
            self._went_live(now)

    def _remember_secrets(self, text: str | bytes | None) -> None:
        """Keep the secret-looking words of a built message or a provided
        URL, to scrub them from what is emitted (:meth:`_scrub`)."""
        if isinstance(text, str):
            for pattern in _SECRET_WORDS:
                self._secrets.extend(pattern.findall(text))

    def _scrub(self, text: str) -> str:
        """*text* without credentials: :func:`redact_text`, and every word
        of a recently built login, message or provided URL hidden."""
        text = redact_text(text)
        for word in self._secrets:
            if word in text:
                text = text.replace(word, "***")
        return text

    @property
    def lifetime(self) -> float | None:
        """The lifetime connections are rotated before: ``max_lifetime``,
        or less if the server closed one with 1001 ("going away") at a
        younger age (``None``: no rotation)."""
        configured = self.config.max_lifetime
        learned = self._learned_lifetime
        if configured is None or learned is None:
            return configured
        return min(configured, learned)

    @property
    def delivering(self) -> bool:
        """The open connection delivers: a message came on it, or every
        subscription it replayed is acknowledged (at once when none waits
        for an ACK).  What a redundant feed counts as a leg that covers."""
        return self._state is State.OPEN and self._live == self._connections

    def _went_live(self, now: float) -> None:
        """The current connection delivers: a gap since the last break ends."""
        self._live = self._connections
        if self._gap_since is not None:
            self._end_gap(now)

    def _end_gap(self, now: float) -> None:
        """The window since the break ends: queue its ``Gap`` (before the
        messages that follow it) and count it."""
        since, self._gap_since = self._gap_since, None
        assert since is not None
        self._gaps += 1
        self._gap_seconds += now - since
        self._events.append(Gap(start=since, end=now, reason=self._gap_reason,
                                connection=self._connections))

    def _send_subscription(self, sub: Subscription, payload: Payload) -> None:
        """Send *sub* as *payload* (its message, built now); one without an
        ACK matcher is subscribed once sent."""
        assert self._framing is not None
        self._framing.send(payload)
        if sub.ack is None:
            self._events.append(Subscribed(subscription=sub, connection=self._connections,
                                           acked=False))

    def _deliver(self, payloads: list[Payload], now: float) -> None:
        """Hand a run of messages to the application (one ``Messages`` event
        per run).  While open, each is first offered to the application-ping
        matcher and the pending ACK matchers, when there are any: the hot
        path costs one test per run when there are not."""
        if self._state is State.OPEN and (self._subs.pending or self.config.app_ping is not None
                                          or self._login_due is not None):
            payloads = self._inspect(payloads, now)
        if payloads:
            self._emit_messages(payloads, now)

    def _inspect(self, payloads: list[Payload], now: float) -> list[Payload]:
        kept: list[Payload] = []
        app = self.config.app_ping
        for data in payloads:
            if self._callback_failed is not None or self._state is not State.OPEN:
                kept.append(data)
                continue
            if self._login_due is not None:
                kept.append(data)  # the login's answers are delivered, after LoggedIn
                self._login_answer(data, kept, now)
                continue
            if app is not None:
                try:
                    is_pong = app.is_pong(data)
                except Exception as exc:
                    is_pong = False
                    self._callback_failed = f"app_ping.is_pong raised {type(exc).__name__}: {exc}"
                if is_pong:
                    assert self._health is not None
                    self._health.on_app_pong()
                    if not app.deliver_pongs:
                        continue
            if self._subs.pending:
                try:
                    sub = self._subs.match(data)
                except AckMatcherFailed as exc:
                    sub, self._callback_failed = None, str(exc)
                if sub is not None:  # the ACK message itself comes after Subscribed
                    if kept:
                        self._emit_messages(kept, now)
                        kept = []
                    self._events.append(Subscribed(subscription=sub, connection=self._connections,
                                                   acked=True))
                    if not self._subs.pending:
                        self._went_live(now)
            kept.append(data)
        return kept

    def _login_answer(self, data: Payload, kept: list[Payload], now: float) -> None:
        """Offer *data* (the last of *kept*) to the login's matchers: a
        refusal ends the connection, an acceptance sends the subscriptions."""
        login = self.config.login
        assert login is not None
        try:
            refused = login.reject is not None and login.reject(data)
            accepted = not refused and login.ack(data)
        except Exception as exc:
            self._callback_failed = f"login matcher of {login.label} raised {type(exc).__name__}: {exc}"
            return
        if refused:
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            self._login_refused(now, f"the server refused {login.label}: {text[:120]}", code=None)
        elif accepted:
            # What came before the ACK, LoggedIn, the ACK, then the
            # subscriptions: none of these messages is the feed's data, so
            # the connection does not count as delivering yet (the login
            # is still awaited while they are queued).
            kept.pop()
            if kept:
                self._emit_messages(kept.copy(), now)  # (a copy: the event keeps it)
                kept.clear()
            assert self._opened_at is not None
            self._events.append(LoggedIn(connection=self._connections,
                                         login_time=now - self._opened_at))
            self._alert(self._alerts.on_logged_in())
            self._emit_messages([data], now)
            self._login_due = None
            self._rejections = 0
            self._replay(now)

    def _login_refused(self, now: float, detail: str, *, code: int | None) -> None:
        """The server refused the login: the ``auth`` alert, and the feed
        stops after ``max_rejections`` refusals in a row."""
        login = self.config.login
        assert login is not None and self._framing is not None
        self._rejections += 1
        limit = login.max_rejections
        verdict = Verdict(reason=Reason.LOGIN_REJECTED, detail=detail,
                          code=NORMAL if code is None else code, auth=True,
                          fatal=limit is not None and self._rejections >= limit)
        if code is None:  # refused by a message: we close
            self._framing.close(NORMAL, "login refused")
        self._disconnect(now, verdict, abort=False, close_sent=True)

    def _emit_messages(self, payloads: list[Payload], now: float) -> None:
        """Queue *payloads* (a list the core owns), extending the last queued
        ``Messages`` event when it belongs to the same connection and input."""
        if self._live != self._connections and self._state is State.OPEN and self._login_due is None:
            self._went_live(now)  # the connection's first message (not a broken one's last)
        self._messages += len(payloads)
        self._last_message_at = now
        health = self._health
        if health is not None:  # data: the silence watchdog's clock
            health.last_data = now
        events = self._events
        if events:
            last = events[-1]
            if (type(last) is Messages and last.received_at == now
                    and last.connection == self._connections):
                last.data.extend(payloads)
                return
        run = _new_messages(Messages)  # = Messages(data=..., connection=..., received_at=...)
        _set_data(run, payloads)
        _set_connection(run, self._connections)
        _set_received_at(run, now)
        events.append(run)

    def _on_peer_closed(self, item: PeerClosed, now: float) -> None:
        if self._state is not State.OPEN:
            return  # the answer to our close: now wait for EOF
        login = self.config.login
        if self._login_due is not None and login is not None and item.code in login.reject_codes:
            why = f": {item.reason}" if item.reason else ""
            self._login_refused(now, f"the server refused {login.label}, closing with "
                                     f"{item.code}{why}", code=item.code)
            return
        verdict = server_closed(item.code, item.reason,
                                fatal_close_codes=self.config.fatal_close_codes)
        self._disconnect(now, verdict, abort=False, close_sent=True)

    def _on_rejected(self, item: Rejected, now: float) -> None:
        verdict = upgrade_rejected(item.status, fatal_statuses=self.config.fatal_statuses)
        retry_after = parse_retry_after(item.headers) if verdict.later else None
        self._disconnect(now, verdict, abort=False, retry_after=retry_after)

    # ------------------------------------------------------------------
    # internals: the one failure path
    def _disconnect(
        self,
        now: float,
        verdict: Verdict,
        *,
        abort: bool,
        close_sent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        """A connection or attempt ended as the guard's *verdict* says: count
        it, pick the backoff, raise alerts, and move on.

        ``abort``: the transport is closed at once.  Otherwise
        (``close_sent``) a close frame is on its way and we wait for the
        server's answer and EOF, up to ``close_timeout``.  ``retry_after``:
        the server's ``Retry-After``, in seconds, when the verdict is "later".
        """
        reason = verdict.reason
        was_open = self._state is State.OPEN
        if was_open and self._stable_at is not None and now >= self._stable_at:
            self._become_stable()  # due, and no timer call saw it yet
        after_stable, self._stable = self._stable, False
        self._failures += 1
        self._disconnects[reason.value] = self._disconnects.get(reason.value, 0) + 1
        self._last_reason = reason.value
        if was_open:
            self._lost_at = now
        limit = self.config.max_attempts
        fatal = verdict.fatal
        give_up = fatal or (limit is not None and self._failures >= limit)
        retry_in = None
        if not give_up:
            policy = self.config.backoff
            step = self._failures - self._free  # the place in the series
            if verdict.later:  # the server's hint: the series, at least as long as it asks
                hint = ceiling(step, policy) if retry_after is None else retry_after
                retry_in = retry_delay(step, policy, self._rng, hint)
            elif after_stable:  # a working feed broke: back at once, the series if that fails
                retry_in = first_retry_delay(policy, self._rng)
                self._free = 1
            else:
                retry_in = retry_delay(step, policy, self._rng)
        self._emit_disconnected(now, verdict, retry_in=retry_in)
        self._alerts.on_down(now)
        self._alert(self._alerts.on_failure(self._failures, verdict))
        self._subs.connection_ended()
        self._login_due = None
        self._health = None
        self._stable_at = None
        self._rotate_at = None
        if give_up and fatal and reason in (Reason.PROXY, Reason.PROXY_AUTH):  # the proxy's own words
            self._stop_reason = (reason, verdict.detail)
        elif give_up and reason is Reason.LOGIN_REJECTED:
            self._stop_reason = (reason, (
                f"the server refused the login {self._rejections} times in a row "
                f"(max_rejections): check the credentials (key, secret, permissions) "
                f"and the clock the signature uses; last: {verdict.detail}"))
        elif give_up:
            why = "fatal" if fatal else f"{self._failures} failures in a row (max_attempts)"
            self._stop_reason = (Reason.GAVE_UP, f"{reason.value}: {why}")
        else:
            assert retry_in is not None
            self._retry_at = now + retry_in
        if abort or not close_sent:
            if abort:
                self._drop_output()
            self._events.append(CloseTransport(abort=abort))
            self._move(Input.GIVE_UP if give_up else Input.FAIL)
            if give_up:
                self._finish()
            return
        self._move(Input.STOP if give_up else Input.CLOSE)
        self._deadline = after(now, self.config.close_timeout)

    def _emit_disconnected(self, now: float, verdict: Verdict, *, retry_in: float | None) -> None:
        """Queue ``Disconnected``; account the uptime of a connection that was open."""
        self._deferred = None  # whatever ends the connection supersedes it
        was_open = self._state is State.OPEN and self._opened_at is not None
        if was_open:
            assert self._opened_at is not None
            self._uptime_total += now - self._opened_at
            self._learn_lifetime(verdict, now - self._opened_at)
            if self._gap_since is None and retry_in is not None:  # messages may be lost now
                self._gap_since, self._gap_reason = now, verdict.reason.value
        self._events.append(
            Disconnected(
                reason=verdict.reason,
                code=verdict.code,
                status=verdict.status,
                detail=self._scrub(verdict.detail),
                level=verdict.level,
                connection=self._connections if was_open else None,
                uptime=now - self._opened_at if was_open and self._opened_at is not None else 0.0,
                failures=self._failures,
                retry_in=retry_in,
                retry_at=None if retry_in is None else now + retry_in,
            )
        )

    def _learn_lifetime(self, verdict: Verdict, age: float) -> None:
        """A server that closes with 1001 at an age past the rotation lead
        announced its limit: later connections are rotated before it."""
        if verdict.code == GOING_AWAY and verdict.reason is Reason.SERVER_CLOSED:
            self.limit_lifetime(age)

    def limit_lifetime(self, seconds: float) -> None:
        """Rotate connections before *seconds* of age from now on (the open
        one too), if that is shorter than the lifetime so far and longer
        than the rotation lead; what another connection to the same server
        learned (see :attr:`lifetime`).  Without ``max_lifetime``, nothing."""
        lifetime = self.lifetime
        if lifetime is None or not self.config.rotation_lead < seconds < lifetime:
            return
        self._learned_lifetime = seconds
        if self._rotate_at is not None and self._opened_at is not None:
            self._rotate_at = min(self._rotate_at,
                                  self._opened_at + seconds - self.config.rotation_lead)

    def _close_done(self, *, abort: bool) -> None:
        """The close handshake is over (EOF, error or timeout)."""
        if abort:
            self._drop_output()
        self._events.append(CloseTransport(abort=abort))
        self._deadline = None
        self._move(Input.CLOSED)
        if self._state is State.STOPPED:
            self._finish()

    def _finish(self) -> None:
        """Enter STOPPED for good: clear alerts, emit ``Stopped``."""
        self._stopped_at = self._now
        self._deadline = None
        self._retry_at = None
        self._health = None
        self._subs.connection_ended()
        self._alert(self._alerts.reset())
        reason, detail = self._stop_reason or (Reason.STOPPED, "stop requested")
        self._events.append(Stopped(reason=reason, detail=self._scrub(detail)))

    def _alert(self, changes: list[AlertChange]) -> None:
        for change in changes:
            self._events.append(Alert(kind=change.kind, active=change.active,
                                      detail=change.detail, level=change.level))

    # ------------------------------------------------------------------
    # internals: timers
    def _fire(self, now: float) -> None:
        """Run the earliest due job.  Each one moves its own deadline."""
        changes = self._alerts.handle_timer(now)
        if changes:
            self._alert(changes)
            return
        state = self._state
        if state is State.BACKOFF:
            assert self._retry_at is not None
            if now >= self._retry_at:
                self._begin_attempt(now)
                return
        elif state is State.OPEN:
            self._fire_open(now)
            return
        elif self._deadline is not None and now >= self._deadline:
            if state is State.CONNECTING and self._endpoint is None:
                self._disconnect(now, Verdict(
                    reason=Reason.URL_PROVIDER,
                    detail=f"url provider {callable_name(self.config.url)}() did not return "
                           f"within connect_timeout ({self.config.connect_timeout}s)"),
                    abort=True)
            elif state is State.CONNECTING:
                self._disconnect(now, Verdict(
                    reason=Reason.CONNECT_TIMEOUT,
                    detail=f"TCP/TLS not up within {self.config.connect_timeout}s"), abort=True)
            elif state is State.HANDSHAKING:
                self._disconnect(now, Verdict(
                    reason=Reason.HANDSHAKE_TIMEOUT,
                    detail=f"no upgrade response within {self.config.handshake_timeout}s"),
                    abort=True)
            else:  # CLOSING, STOPPING
                self._close_done(abort=True)
            return
        raise AssertionError(f"no job due in state {state.value}")  # pragma: no cover

    def _fire_open(self, now: float) -> None:
        assert self._health is not None and self._framing is not None
        if self._deferred is not None:  # the only job of a failing connection
            self._fail_protocol(self._deferred[0], now)
            return
        pings, failure = self._health.poll(now)
        if failure is not None:
            reason, detail = failure
            self._disconnect(now, Verdict(reason=reason, detail=detail, code=ABNORMAL), abort=True)
            return
        for ping in pings:
            if ping is None:
                assert self.config.app_ping is not None
                self._framing.send(self.config.app_ping.payload)
            else:
                self._framing.ping(ping)
        login_due = self._login_due
        if login_due is not None and now >= login_due and self._paused_at is None:
            login = self.config.login
            assert login is not None
            self._not_acknowledged(now, Reason.LOGIN_TIMEOUT, "login", login.label, login.timeout)
            return
        sub = self._subs.expired(now)
        if sub is not None:
            self._not_acknowledged(now, Reason.ACK_TIMEOUT, "subscription", sub.label,
                                   sub.ack_timeout)
            return
        if self._rotate_at is not None and now >= self._rotate_at:
            self._rotate_at = None
            assert self._opened_at is not None and self.lifetime is not None
            self._events.append(Rotating(connection=self._connections, age=now - self._opened_at,
                                         lifetime=self.lifetime))
        if self._stable_at is not None and now >= self._stable_at:
            self._become_stable()

    def _not_acknowledged(self, now: float, reason: Reason, what: str, label: str,
                          timeout: float) -> None:
        """A login or subscription went unanswered: close with 1001."""
        assert self._framing is not None
        self._framing.close(GOING_AWAY, f"{what} not acknowledged")
        self._disconnect(now, Verdict(reason=reason, code=GOING_AWAY,
                                      detail=f"{label} not acknowledged within {timeout}s"),
                         abort=False, close_sent=True)

    def _become_stable(self) -> None:
        """The connection has stayed up ``stable_after``: failures start over."""
        self._stable_at = None
        self._stable = True
        self._failures = 0
        self._free = 0
        self._attempts_in_row = 0
        self._alert(self._alerts.on_stable())

    def _drop_output(self) -> None:
        """Forget unsent bytes: whatever was queued for a dead peer is pointless."""
        self._out.clear()
        assert self._framing is not None
        self._framing.outgoing.clear()

    def _flush(self) -> None:
        framing = self._framing
        if framing is not None and framing.outgoing:
            self._out += framing.outgoing
            framing.outgoing.clear()

