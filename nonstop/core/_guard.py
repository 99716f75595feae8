"""The guard (``ConnectionErrorHandler``): classify failures, decide alerts.

Theory of operation
-------------------
Every way a connection can end is one :class:`Reason`.  A reason carries its
log level (a normal close is ``INFO``, everything else ``ERROR``, as the
strategy asks) so every driver logs the same failure the same way.

The core hands the guard what happened and gets back a :class:`Verdict`: the
reason, the detail text, the log level, and what the failure means for the
feed -- the server refused us (the ``auth`` alert), asked us to come back
later (the full backoff ceiling, or its ``Retry-After``), or said never to
come back (``fatal``).  The guard decides; the core acts on the verdict:

* :func:`transport_error`: an exception from the driver.
  :func:`classify_error` maps it to a reason by type and ``errno`` (walking
  ``__cause__``, ``__context__`` and exception groups), without importing
  ``socket`` or ``ssl``: the core stays free of I/O modules, so TLS and DNS
  errors are recognised by their class names.  While connecting, the detail
  says what to check.
* :func:`upgrade_rejected`: an HTTP status instead of ``101``.
* :func:`server_closed`: the server's close frame and its code.
* :class:`Verdict` itself, for failures whose reason is plain from where
  they are found (a timer, a bad frame, a callback).

:class:`AlertTracker` turns a stream of connects and disconnects into
:class:`~nonstop.core.Alert` decisions with hysteresis: one alert when a
condition starts, one when it clears, never one per attempt.  It owns two
timers (``down_for`` firing and the reconnect-rate window sliding) and exposes
them through :meth:`AlertTracker.next_deadline`.
"""

from __future__ import annotations

import collections
import enum
import errno
from dataclasses import dataclass
from typing import Final, NamedTuple

from ._checks import check_positive
from ._errors import NonstopError

__all__ = [
    "Reason",
    "AlertKind",
    "AlertPolicy",
    "AlertChange",
    "Verdict",
    "classify_error",
    "error_detail",
    "transport_error",
    "upgrade_rejected",
    "server_closed",
    "level_for",
    "INFO",
    "WARNING",
    "ERROR",
]

#: Log levels, equal to the :mod:`logging` constants (the core does not import
#: logging: it only decides the level, the driver logs).
INFO: Final = 20
WARNING: Final = 30
ERROR: Final = 40


class Reason(enum.Enum):
    """Why a connection ended (the ``reason=`` field of log lines)."""

    SERVER_CLOSED = "server_closed"
    """The server sent a close frame; ``code`` says which."""
    EOF = "eof"
    """The TCP connection ended without a close frame (close code 1006)."""
    RESET = "reset"
    """The connection was reset (RST) or broke while writing."""
    REFUSED = "refused"
    """Nothing listens on the port (connection refused)."""
    DNS = "dns"
    """The host name did not resolve."""
    TLS = "tls"
    """The TLS handshake failed: untrusted or expired certificate, wrong host."""
    NETWORK = "network"
    """Another operating-system error while connecting or reading."""
    CONNECT_TIMEOUT = "connect_timeout"
    """TCP and TLS did not complete within ``connect_timeout``."""
    REJECTED = "rejected"
    """The server answered the upgrade with an HTTP status other than 101."""
    HANDSHAKE_FAILED = "handshake_failed"
    """The server's upgrade response was not a valid WebSocket handshake."""
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    """No upgrade response within ``handshake_timeout``."""
    PING_TIMEOUT = "ping_timeout"
    """No pong (and no other byte) within ``ping_timeout`` of a ping."""
    SILENCE = "silence"
    """No byte at all for ``silence_timeout``: a zombie connection."""
    ACK_TIMEOUT = "ack_timeout"
    """A subscription was not acknowledged within its ``ack_timeout``."""
    LOGIN_REJECTED = "login_rejected"
    """The server refused the login (its ``reject`` matcher, or a close
    with one of its ``reject_codes``); the feed stops after
    ``max_rejections`` in a row."""
    LOGIN_TIMEOUT = "login_timeout"
    """The login was not acknowledged within its ``timeout``."""
    PROXY = "proxy"
    """The proxy could not be reached, broke the connection during its
    handshake or answered what no proxy of its kind would."""
    PROXY_AUTH = "proxy_auth"
    """The proxy wants credentials, or refused the ones given (HTTP 407, a
    SOCKS authentication failure): fatal."""
    PROXY_REFUSED = "proxy_refused"
    """The proxy would not open a tunnel to the feed (HTTP 403/502/503, a
    SOCKS reply code); ``Retry-After`` is honoured."""
    URL_PROVIDER = "url_provider"
    """The URL provider raised, returned a bad URL, or did not return
    within ``connect_timeout``."""
    PROTOCOL_ERROR = "protocol_error"
    """The server broke RFC 6455 framing (we closed with 1002)."""
    INVALID_DATA = "invalid_data"
    """A text message was not valid UTF-8 (we closed with 1007)."""
    MESSAGE_TOO_BIG = "message_too_big"
    """A message exceeded ``max_message_size`` (we closed with 1009)."""
    CALLBACK_ERROR = "callback_error"
    """A user callback raised or returned no message: the header provider,
    an ACK, pong or login matcher, a login or subscription message callable."""
    SLOW_CONSUMER = "slow_consumer"
    """The application fell behind and the ``disconnect`` policy applied."""
    LAGGING = "lagging"
    """A leg of a redundant feed brought nothing fresh for ``leg_lag``
    seconds while another leg delivered: a zombie leg, replaced."""
    CLIENT_RECONNECT = "client_reconnect"
    """The application asked for a reconnect."""
    STOPPED = "stopped"
    """The application stopped the feed."""
    GAVE_UP = "gave_up"
    """``max_attempts`` was reached or a fatal status or close code was seen."""

    @property
    def level(self) -> int:
        """The log level for this reason when no close code refines it."""
        return INFO if self in _INFO_REASONS else ERROR


_INFO_REASONS: Final = frozenset({Reason.STOPPED, Reason.CLIENT_RECONNECT})


#: Close codes of a normal close by the server (1005: no code given).
_NORMAL_CLOSE_CODES: Final = frozenset({None, 1000, 1001, 1005})
#: Upgrade statuses that mean the server refused our credentials.
AUTH_STATUSES: Final = frozenset({401, 403})
#: Upgrade statuses that mean "come back later" (``Retry-After`` may say when).
LATER_STATUSES: Final = frozenset({429, 503})
#: Close code 1008: the server closed for a policy violation (e.g. a bad token).
POLICY_VIOLATION: Final = 1008
#: Close code 1013: the server asks us to try again later.
TRY_AGAIN_LATER: Final = 1013


def level_for(reason: Reason, code: int | None) -> int:
    """The log level of a disconnect: normal closes INFO, the rest ERROR."""
    if reason is Reason.SERVER_CLOSED and code in _NORMAL_CLOSE_CODES:
        return INFO
    return reason.level


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The guard's classification of one failure, for the core to act on."""

    reason: Reason
    detail: str
    """What happened, in words (secrets are redacted when it is emitted)."""
    code: int | None = None
    """The close code: the server's, or the one we close with."""
    status: int | None = None
    """The HTTP status of a rejected upgrade."""
    auth: bool = False
    """The server refused us (HTTP 401/403, close 1008): the ``auth`` alert."""
    later: bool = False
    """The server asked us to come back later (HTTP 429/503, close 1013):
    wait the full backoff ceiling, or what its ``Retry-After`` says."""
    fatal: bool = False
    """A status or close code configured as fatal: stop instead of retrying."""

    @property
    def level(self) -> int:
        """The log level of the ``Disconnected`` it becomes."""
        return level_for(self.reason, self.code)


_TLS_NAMES: Final = frozenset(
    {"SSLError", "SSLCertVerificationError", "CertificateError", "SSLZeroReturnError",
     "SSLEOFError", "SSLSyscallError", "BrokenTLSError", "TrioSSLError"}
)
_DNS_NAMES: Final = frozenset({"gaierror", "herror"})
_RESET_ERRNOS: Final = frozenset(
    {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ESHUTDOWN}
)
_REFUSED_ERRNOS: Final = frozenset({errno.ECONNREFUSED})


def _walk(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack = [exc]
    while stack and len(seen) < 32:
        e = stack.pop()
        if any(e is s for s in seen):
            continue
        seen.append(e)
        nested = getattr(e, "exceptions", None)
        if isinstance(nested, (list, tuple)):
            stack.extend(x for x in nested if isinstance(x, BaseException))
        for linked in (e.__context__, e.__cause__):
            if linked is not None:
                stack.append(linked)
    return seen


class ProxyError(NonstopError):
    """The proxy did not open the tunnel to the feed (raised by
    :class:`~nonstop.core._proxy.ProxyHandshake`, or by a driver with
    :func:`~nonstop.core._proxy.proxy_unreachable`).

    ``reason``: ``proxy``, ``proxy_auth`` or ``proxy_refused``; ``fatal``:
    retrying cannot help (credentials); ``retry_after``: the seconds the
    proxy asked us to wait, if it said; ``later``: it asked us to come back
    later (HTTP 429/503).
    """

    def __init__(self, reason: Reason, message: str, *, fatal: bool = False,
                 retry_after: float | None = None, later: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.fatal = fatal
        self.retry_after = retry_after
        self.later = later


def proxy_retry_after(error: BaseException) -> float | None:
    """The wait a proxy asked for in *error* (``Retry-After``), if any."""
    return next((e.retry_after for e in _walk(error) if isinstance(e, ProxyError)), None)


def classify_error(exc: BaseException) -> Reason:
    """Map a transport exception to a :class:`Reason`.

    Looks at the exception, its chained causes and group members: TLS errors
    by class name, DNS by ``gaierror``, refused and reset by type or errno,
    timeouts as :attr:`Reason.CONNECT_TIMEOUT`; anything else is
    :attr:`Reason.NETWORK`.
    """
    chain = _walk(exc)
    for e in chain:
        if isinstance(e, ProxyError):
            return e.reason
    names = [{cls.__name__ for cls in type(e).__mro__} for e in chain]
    for found in names:
        if found & _TLS_NAMES:
            return Reason.TLS
    for found in names:
        if found & _DNS_NAMES:
            return Reason.DNS
    for e in chain:
        if isinstance(e, ConnectionRefusedError) or (
            isinstance(e, OSError) and e.errno in _REFUSED_ERRNOS
        ):
            return Reason.REFUSED
    for e, found in zip(chain, names, strict=True):
        if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) or (
            isinstance(e, OSError) and e.errno in _RESET_ERRNOS
        ) or "BrokenResourceError" in found:
            return Reason.RESET
    for e in chain:
        if isinstance(e, TimeoutError):
            return Reason.CONNECT_TIMEOUT
    return Reason.NETWORK


#: What to check, added to the detail of a transport error while connecting.
_HINTS: Final = {
    Reason.TLS: "check the server's certificate chain and name, the clock, and the CA "
                "you trust (ssl=...)",
    Reason.DNS: "check the host name {host!r}",
    Reason.REFUSED: "nothing accepts connections on {host}:{port}; is the server up?",
}


def error_detail(error: BaseException) -> str:
    """``Type: message`` of *error*, followed by its cause's when that has a
    message (a reset often arrives wrapped, e.g. as anyio's
    ``BrokenResourceError`` from a ``ConnectionResetError``)."""
    detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause):
        detail += f" ({type(cause).__name__}: {cause})"
    return detail


def transport_error(error: BaseException, *, connecting_to: tuple[str, int] | None) -> Verdict:
    """The verdict on an exception from opening, reading or writing.

    ``connecting_to``: ``(host, port)`` while the connection is being opened;
    a TLS, DNS or refused error then says what to check.
    """
    proxy = next((e for e in _walk(error) if isinstance(e, ProxyError)), None)
    if proxy is not None:
        return Verdict(reason=proxy.reason, detail=str(proxy), later=proxy.later, fatal=proxy.fatal)
    reason = classify_error(error)
    detail = error_detail(error)
    hint = _HINTS.get(reason)
    if hint is not None and connecting_to is not None:
        host, port = connecting_to
        detail = f"{detail} ({hint.format(host=host, port=port)})"
    return Verdict(reason=reason, detail=detail)


def upgrade_rejected(status: int, *, fatal_statuses: frozenset[int]) -> Verdict:
    """The verdict on an HTTP *status* answering the upgrade instead of 101."""
    return Verdict(
        reason=Reason.REJECTED,
        detail=f"server answered the upgrade with HTTP {status}",
        status=status,
        auth=status in AUTH_STATUSES,
        later=status in LATER_STATUSES,
        fatal=status in fatal_statuses,
    )


def server_closed(code: int | None, text: str, *, fatal_close_codes: frozenset[int]) -> Verdict:
    """The verdict on the server's close frame (*code*, reason *text*)."""
    detail = f"server closed the connection: {text}" if text else "server closed the connection"
    return Verdict(
        reason=Reason.SERVER_CLOSED,
        detail=detail,
        code=code,
        auth=code == POLICY_VIOLATION,
        later=code == TRY_AGAIN_LATER,
        fatal=code in fatal_close_codes,
    )


class AlertKind(enum.Enum):
    """What an :class:`~nonstop.core.Alert` is about."""

    CONSECUTIVE_FAILURES = "consecutive_failures"
    """``consecutive_failures`` connections in a row ended before ``stable_after``."""
    DOWN = "down"
    """No open connection for ``down_for`` seconds."""
    RECONNECT_RATE = "reconnect_rate"
    """More than ``reconnects_per_minute`` reconnects in the last 60 seconds."""
    AUTH = "auth"
    """The server refused us: HTTP 401/403, close code 1008, or a refused login."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertPolicy:
    """When to raise an operator alert.  ``None`` disables a condition.

    Each condition raises one alert when it starts and one "cleared" alert
    when it ends (hysteresis): a feed stuck in a reconnect loop raises one
    alert, not one per attempt.
    """

    consecutive_failures: int | None = 5
    """Alert after this many failed connections in a row (reset after a
    connection stayed up for ``stable_after``)."""
    down_for: float | None = 60.0
    """Alert when no connection has been open for this many seconds."""
    reconnects_per_minute: int | None = 10
    """Alert when more reconnects than this happen within 60 seconds; clears
    when the count in the sliding window falls back to this number."""
    auth: bool = True
    """Alert on 401/403 upgrade rejections, close code 1008 and refused
    logins; clears on the next successful connection (with a login: the
    next accepted login)."""

    def __post_init__(self) -> None:
        if self.consecutive_failures is not None:
            check_positive("alerts.consecutive_failures", self.consecutive_failures, integer=True,
                           optional=True)
        if self.down_for is not None:
            check_positive("alerts.down_for", self.down_for, optional=True)
        if self.reconnects_per_minute is not None:
            check_positive("alerts.reconnects_per_minute", self.reconnects_per_minute,
                           integer=True, optional=True)


#: The window of "reconnects per minute", seconds: the ``reconnect_rate``
#: alert and the ``reconnects_last_minute`` metric both count in it.
RATE_WINDOW: Final = 60.0


class AlertChange(NamedTuple):
    """An alert starting (``active``) or clearing, with its text and log level."""

    kind: AlertKind
    active: bool
    detail: str
    level: int


class AlertTracker:
    """The alert half of the guard: pure bookkeeping driven by the core.

    Each method returns the alerts that start or clear, as
    :class:`AlertChange` records the core turns into ``Alert`` events.
    """

    def __init__(self, policy: AlertPolicy) -> None:
        self.policy = policy
        self.active: set[AlertKind] = set()
        self.down_since: float | None = None
        # Times of reconnects within the window; bounded by the window and by
        # maxlen, which only matters for a pathological zero backoff.
        self.reconnect_times: collections.deque[float] = collections.deque(maxlen=10_000)

    def reconnects_in_window(self, now: float) -> int:
        """Reconnects within :data:`RATE_WINDOW` seconds before *now*.

        A pure query: the alert and the metrics count with it.
        """
        count = 0
        for t in reversed(self.reconnect_times):  # newest first: stop at the window's edge
            if t + RATE_WINDOW <= now:
                break
            count += 1
        return count

    def _forget_before(self, now: float) -> None:
        """Drop the reconnects that left the window: they never count again."""
        times = self.reconnect_times
        while times and times[0] + RATE_WINDOW <= now:
            times.popleft()

    def _set(self, kind: AlertKind, on: bool, out: list[AlertChange], detail: str = "") -> None:
        """Start (*on*, with *detail*) or clear *kind*, if it is not so already."""
        if on and kind not in self.active:
            self.active.add(kind)
            out.append(AlertChange(kind, True, detail, ERROR))
        elif not on and kind in self.active:
            self.active.discard(kind)
            out.append(AlertChange(kind, False, f"{kind.value} cleared", INFO))

    def on_down(self, now: float) -> None:
        if self.down_since is None:
            self.down_since = now

    def on_failure(self, failures: int, verdict: Verdict) -> list[AlertChange]:
        """The *failures*-th failure in a row, classified as *verdict*."""
        out: list[AlertChange] = []
        limit = self.policy.consecutive_failures
        if limit is not None and failures >= limit:
            self._set(AlertKind.CONSECUTIVE_FAILURES, True, out,
                      f"{failures} failures in a row (threshold {limit})")
        if verdict.auth and self.policy.auth:
            self._set(AlertKind.AUTH, True, out, f"server refused us ({verdict.reason.value})")
        return out

    def on_connected(self, now: float, reconnect: bool, *, login: bool = False) -> list[AlertChange]:
        """A connection opened; with a *login* to come, the ``auth`` alert
        waits for its answer (:meth:`on_logged_in`)."""
        out: list[AlertChange] = []
        self.down_since = None
        self._set(AlertKind.DOWN, False, out)
        if not login:
            self._set(AlertKind.AUTH, False, out)
        if reconnect:
            self._forget_before(now)
            self.reconnect_times.append(now)
            limit = self.policy.reconnects_per_minute
            count = len(self.reconnect_times)  # every one left is in the window
            if limit is not None and count > limit:
                self._set(AlertKind.RECONNECT_RATE, True, out,
                          f"{count} reconnects in the last {RATE_WINDOW:g}s (threshold {limit})")
        return out

    def on_logged_in(self) -> list[AlertChange]:
        """The server accepted the login: we are not refused any more."""
        out: list[AlertChange] = []
        self._set(AlertKind.AUTH, False, out)
        return out

    def on_stable(self) -> list[AlertChange]:
        out: list[AlertChange] = []
        self._set(AlertKind.CONSECUTIVE_FAILURES, False, out)
        return out

    def next_deadline(self) -> float | None:
        if self.down_since is None and not self.active:
            return None  # connected, no alert: the common case, asked after every read
        deadlines = []
        down_for = self.policy.down_for
        if down_for is not None and self.down_since is not None and AlertKind.DOWN not in self.active:
            deadlines.append(self.down_since + down_for)
        if AlertKind.RECONNECT_RATE in self.active and self.reconnect_times:
            limit = self.policy.reconnects_per_minute
            assert limit is not None
            # The window count falls to `limit` when the entry at index
            # len - limit - 1 leaves the window.
            index = max(0, len(self.reconnect_times) - limit - 1)
            deadlines.append(self.reconnect_times[index] + RATE_WINDOW)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[AlertChange]:
        out: list[AlertChange] = []
        down_for = self.policy.down_for
        if down_for is not None and self.down_since is not None and now >= self.down_since + down_for:
            self._set(AlertKind.DOWN, True, out, f"no connection for {down_for}s")
        if AlertKind.RECONNECT_RATE in self.active:
            limit = self.policy.reconnects_per_minute
            assert limit is not None
            self._forget_before(now)
            if len(self.reconnect_times) <= limit:  # every one left is in the window
                self._set(AlertKind.RECONNECT_RATE, False, out)
        return out

    def reset(self) -> list[AlertChange]:
        """Clear every active alert (on stop)."""
        out: list[AlertChange] = []
        for kind in sorted(self.active, key=lambda k: k.value):
            self._set(kind, False, out)
        self.down_since = None
        return out
