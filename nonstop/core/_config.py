"""Configuration: every option of a feed, validated once, frozen.

Theory of operation
-------------------
:class:`Config` holds every knob of a feed with its default and the reason for
it.  It is validated in ``__post_init__``: a bad value raises
:class:`~nonstop.core.ConfigError` naming the option, the value and the valid
range, before any connection is tried.  The drivers build a ``Config`` from
keyword arguments, so the public ``connect(...)`` functions and the core share
one list of options and one set of defaults.

Subscriptions are values too: :class:`Subscription` encodes its message once
(``str`` and ``bytes`` as given, anything else as compact JSON) so what is
replayed after a reconnect is byte-for-byte what was first sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from ._checks import check_positive
from ._errors import ConfigError
from ._guard import AlertPolicy
from ._url import Endpoint, parse_url

__all__ = [
    "Config",
    "Backoff",
    "Subscription",
    "AppPing",
    "HeadersLike",
    "HeaderProvider",
    "Payload",
    "encode_message",
]

Payload = Union[str, bytes]
"""A WebSocket message: ``str`` is sent as a text frame, ``bytes`` as binary."""
HeadersLike = Union[Mapping[str, str], Sequence[tuple[str, str]]]
HeaderProvider = Callable[[], HeadersLike]
Matcher = Callable[[Payload], bool]


def encode_message(message: object, what: str = "message") -> Payload:
    """``str``/``bytes`` unchanged (``bytearray``/``memoryview`` as bytes),
    anything else as compact JSON text."""
    if isinstance(message, (str, bytes)):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{what} must be str, bytes or JSON-serialisable, got {type(message).__name__}: {exc}"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with jitter.

    After the *n*-th failure in a row the wait is drawn from
    ``[ceiling * (1 - jitter), ceiling]`` where
    ``ceiling = min(cap, initial * factor ** (n - 1))``.  The default
    ``jitter=1.0`` is "full jitter": clients that lost the same server spread
    their retries over the whole window instead of returning together.
    The very first connection attempt of a feed is never delayed, and
    neither is the first retry after a connection that stayed up
    ``stable_after`` seconds: it waits at most ``first`` (0: none), so a
    working feed that breaks is back within a round trip or two.  If that
    retry fails, the series above starts from ``initial``.  A connection
    that never became stable, and server hints (``Retry-After``, close
    1013), get the series as before.
    """

    initial: float = 0.5
    """Ceiling of the first retry's wait, seconds."""
    factor: float = 2.0
    """Growth of the ceiling per failure in a row (>= 1)."""
    cap: float = 60.0
    """No wait is ever longer, whatever the failure count or server hints."""
    jitter: float = 1.0
    """Fraction of the ceiling that is randomised, 0 (none) to 1 (full)."""
    first: float = 0.0
    """Ceiling of the wait before the first retry after a stable
    connection, jittered as the others (0: at once).  A fleet of clients
    of one server may set a fraction of a second to spread their returns."""

    def __post_init__(self) -> None:
        check_positive("backoff.first", self.first, zero=True)
        if self.first > self.cap:
            raise ConfigError(f"backoff.first ({self.first!r}) must be <= backoff.cap ({self.cap!r})")
        check_positive("backoff.initial", self.initial)
        check_positive("backoff.cap", self.cap)
        check_positive("backoff.factor", self.factor)
        if self.factor < 1:
            raise ConfigError(f"backoff.factor must be >= 1, got {self.factor!r}")
        if self.cap < self.initial:
            raise ConfigError(
                f"backoff.cap ({self.cap!r}) must be >= backoff.initial ({self.initial!r})"
            )
        check_positive("backoff.jitter", self.jitter, zero=True)
        if self.jitter > 1:
            raise ConfigError(f"backoff.jitter must be between 0 and 1, got {self.jitter!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """A message sent after every connect, in order, optionally acknowledged.

    ``message`` may be ``str`` (text frame), ``bytes`` (binary frame) or any
    JSON-serialisable object (sent as compact JSON text).  If ``ack`` is
    given, it is called with each incoming message until it returns true; a
    subscription not acknowledged within ``ack_timeout`` seconds fails the
    connection (reason ``ack_timeout``).  ``unsubscribe``, if given, is sent
    when the subscription is removed while connected.
    """

    message: Any
    ack: Matcher | None = None
    ack_timeout: float = 10.0
    unsubscribe: Any = None
    name: str | None = None
    payload: Payload = field(init=False, repr=False, compare=False)
    unsubscribe_payload: Payload | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload", encode_message(self.message, "subscription message"))
        unsub = None
        if self.unsubscribe is not None:
            unsub = encode_message(self.unsubscribe, "unsubscribe message")
        object.__setattr__(self, "unsubscribe_payload", unsub)
        check_positive("subscription ack_timeout", self.ack_timeout)
        if self.ack is not None and not callable(self.ack):
            raise ConfigError(f"subscription ack must be callable, got {self.ack!r}")

    @property
    def label(self) -> str:
        """A short printable name for logs: ``name`` or the start of the message."""
        if self.name:
            return self.name
        text = self.payload if isinstance(self.payload, str) else self.payload.hex()
        return text if len(text) <= 40 else text[:37] + "..."

    @classmethod
    def coerce(cls, value: object) -> Subscription:
        return value if isinstance(value, Subscription) else cls(message=value)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppPing:
    """An application-level keep-alive: some servers want a JSON ping.

    ``message`` is sent every ``interval`` seconds while connected; ``is_pong``
    must recognise the answer within ``timeout`` seconds, else the connection
    is failed with reason ``ping_timeout``.  Unlike protocol pings, other
    traffic does not satisfy an application ping: it checks the application,
    not the socket.  Recognised pongs are swallowed unless ``deliver_pongs``.
    """

    message: Any
    is_pong: Matcher
    interval: float = 20.0
    timeout: float = 10.0
    deliver_pongs: bool = False
    payload: Payload = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload", encode_message(self.message, "app ping message"))
        check_positive("app_ping.interval", self.interval)
        check_positive("app_ping.timeout", self.timeout)
        if not callable(self.is_pong):
            raise ConfigError(f"app_ping.is_pong must be callable, got {self.is_pong!r}")


def _check_optional(name: str, value: float | None) -> None:
    if value is not None:
        check_positive(name, value)


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def check_header_value(what: str, value: str) -> None:
    """A header value must be Latin-1 text without line breaks or NUL (RFC 9110 5.5)."""
    if any(c in value for c in "\r\n\x00"):
        raise ConfigError(f"{what} contains a line break or NUL")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} is not Latin-1 text; percent- or base64-encode it") from None


def normalize_headers(headers: object, where: str = "headers") -> list[tuple[str, str]]:
    """Check and flatten headers; raise :class:`ConfigError` naming the bad one."""
    if isinstance(headers, Mapping):
        items = list(headers.items())
    elif isinstance(headers, (list, tuple)):
        items = list(headers)
    else:
        raise ConfigError(f"{where} must be a mapping or a list of (name, value) pairs, got {headers!r}")
    out: list[tuple[str, str]] = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ConfigError(f"{where}: expected (name, value) pairs, got {item!r}")
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError(f"{where}: header names and values must be str, got {item!r}")
        if not name or not all(c in _TCHAR for c in name):
            raise ConfigError(
                f"{where}: {name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
            )
        check_header_value(f"{where}: the value of {name!r}", value)
        out.append((name, value))
    return out


_RESERVED_HEADERS = frozenset(
    {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
     "sec-websocket-protocol", "sec-websocket-extensions", "content-length",
     "transfer-encoding"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything a feed needs to know.  See ``docs/core.md`` for each option."""

    url: str
    name: str | None = None
    """A label for logs and metrics; default: the redacted URL."""
    subscriptions: Sequence[object] = ()
    headers: HeadersLike | HeaderProvider | None = None
    """Extra upgrade headers, or a callable returning them, called before
    every attempt (fresh auth tokens).  Never logged."""
    subprotocols: Sequence[str] = ()
    user_agent: str | None = "nonstop"
    server_hostname: str | None = None
    """TLS server name (SNI and certificate check); default: the URL's host."""
    connect_timeout: float = 10.0
    """DNS, TCP and TLS must finish within this."""
    handshake_timeout: float = 10.0
    """The HTTP upgrade must be answered within this after TCP/TLS."""
    ping_interval: float | None = 20.0
    """A protocol ping is sent this often while connected (``None``: never)."""
    ping_timeout: float | None = 10.0
    """Fail if nothing at all (pong or data) arrives this long after a ping."""
    silence_timeout: float | None = 60.0
    """Fail if no byte arrives for this long, from the moment the connection
    opens: the zombie-connection watchdog."""
    app_ping: AppPing | None = None
    close_timeout: float = 5.0
    """How long a close handshake may take before the socket is dropped."""
    failure_grace: float = 1.0
    """When bad bytes from the server follow good messages in one read, the
    failure waits up to this long for the application to take (and answer)
    those messages before our close frame goes out; it fails at once when
    the driver reports the application caught up (``FeedCore.caught_up``).
    0: fail at the next timer call."""
    stable_after: float = 10.0
    """A connection that stays open this long resets the backoff and the
    failure count; one that drops sooner counts as a failure in a row."""
    backoff: Backoff = field(default_factory=Backoff)
    max_attempts: int | None = None
    """Give up after this many failures in a row (``None``: never give up)."""
    fatal_statuses: frozenset[int] = frozenset()
    """Upgrade statuses that stop the feed instead of retrying (e.g. {401})."""
    fatal_close_codes: frozenset[int] = frozenset()
    """Server close codes that stop the feed instead of retrying."""
    max_message_size: int | None = 1 << 20
    """Bytes (text: UTF-8 bytes) a message may have; bigger closes with 1009."""
    alerts: AlertPolicy = field(default_factory=AlertPolicy)
    max_lifetime: float | None = None
    """Seconds a connection may live: ``rotation_lead`` seconds before, a
    ``Rotating`` event asks a redundant feed for its replacement; a server
    close 1001 ("going away") after a shorter life shortens it (``None``:
    no rotation)."""
    endpoint: Endpoint = field(init=False, repr=False, compare=False)
    subscription_list: tuple[Subscription, ...] = field(init=False, repr=False, compare=False)

    @property
    def rotation_lead(self) -> float:
        """How long before ``max_lifetime`` a replacement is opened: time
        for its connect, its upgrade and its slowest acknowledgement."""
        acks = [s.ack_timeout for s in self.subscription_list if s.ack is not None]
        return self.connect_timeout + self.handshake_timeout + max(acks, default=0.0)

    @property
    def label(self) -> str:
        """The feed's name in logs and metrics."""
        return self.name or self.endpoint.redacted

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoint", parse_url(self.url))
        if isinstance(self.subscriptions, (str, bytes)):
            raise ConfigError("subscriptions must be a list of messages, not a single message")
        subs = tuple(Subscription.coerce(s) for s in self.subscriptions)
        payloads = [s.payload for s in subs]
        if len(set(payloads)) != len(payloads):
            raise ConfigError("subscriptions contain the same message twice")
        object.__setattr__(self, "subscription_list", subs)
        if self.headers is not None and not callable(self.headers):
            for name, _ in normalize_headers(self.headers):
                if name.lower() in _RESERVED_HEADERS:
                    raise ConfigError(f"headers: {name!r} is set by the WebSocket handshake itself")
        if isinstance(self.subprotocols, str):
            raise ConfigError("subprotocols must be a list of names, not a single string")
        if self.user_agent is not None:
            if not isinstance(self.user_agent, str):
                raise ConfigError(f"user_agent must be a str or None, got {self.user_agent!r}")
            check_header_value("user_agent", self.user_agent)
        for proto in self.subprotocols:
            if not isinstance(proto, str) or not proto or not proto.isascii() or any(
                c in proto for c in " ,\t\r\n"
            ):
                raise ConfigError(f"subprotocols: {proto!r} is not a valid subprotocol token")
        for name in ("connect_timeout", "handshake_timeout", "close_timeout", "stable_after"):
            check_positive(name, getattr(self, name))
        check_positive("failure_grace", self.failure_grace, zero=True)
        for name in ("ping_interval", "ping_timeout", "silence_timeout"):
            _check_optional(name, getattr(self, name))
        if self.max_attempts is not None:
            check_positive("max_attempts", self.max_attempts, integer=True)
        if self.max_lifetime is not None:
            check_positive("max_lifetime", self.max_lifetime)
            if self.max_lifetime <= self.rotation_lead:
                raise ConfigError(
                    f"max_lifetime ({self.max_lifetime!r}s) must be longer than a connect, an "
                    f"upgrade and an ACK may take ({self.rotation_lead!r}s: connect_timeout + "
                    f"handshake_timeout + the longest ack_timeout); lower those or raise it")
        if self.max_message_size is not None:
            check_positive("max_message_size", self.max_message_size, integer=True)
        if not isinstance(self.backoff, Backoff):
            raise ConfigError(f"backoff must be a nonstop.Backoff, got {self.backoff!r}")
        if not isinstance(self.alerts, AlertPolicy):
            raise ConfigError(f"alerts must be a nonstop.AlertPolicy, got {self.alerts!r}")
        if self.app_ping is not None and not isinstance(self.app_ping, AppPing):
            raise ConfigError(f"app_ping must be a nonstop.AppPing, got {self.app_ping!r}")
        object.__setattr__(self, "fatal_statuses", frozenset(self.fatal_statuses))
        object.__setattr__(self, "fatal_close_codes", frozenset(self.fatal_close_codes))
