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
from dataclasses import dataclass, field, fields
from typing import Any, Union

from ._checks import check_positive
from ._errors import ConfigError
from ._guard import AlertPolicy
from ._proxy import ProxyRules
from ._url import Endpoint, parse_url

__all__ = [
    "Config",
    "Backoff",
    "Subscription",
    "Login",
    "UrlProvider",
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
UrlProvider = Callable[[], Any]
"""Called before every attempt for the URL to dial: a plain function (the
blocking API) or a coroutine function (the async API) returning a ``str``."""


def _repr(obj: object, shown: Mapping[str, str]) -> str:
    """The dataclass *obj*'s repr, with the fields in *shown* written as
    given (secrets left out) and the others as usual."""
    parts = [f"{f.name}={shown[f.name] if f.name in shown else repr(getattr(obj, f.name))}"
             for f in fields(obj) if f.repr]  # type: ignore[arg-type]
    return f"{type(obj).__name__}({', '.join(parts)})"


def callable_name(source: object) -> str:
    """How a user callable is named in errors and logs: its qualified name
    (never its output, which may hold a secret)."""
    name = getattr(source, "__qualname__", None) or getattr(source, "__name__", None)
    return str(name) if name else type(source).__name__


def render(source: Callable[[], object], what: str) -> Payload:
    """Call *source* for a message built now and encode it; a callable that
    raises or returns no message raises :class:`ConfigError` naming it."""
    name = callable_name(source)
    try:
        value = source()
    except Exception as exc:
        raise ConfigError(f"{what} {name}() raised {type(exc).__name__}: {exc}") from exc
    if value is None or hasattr(value, "__await__"):
        got = "None" if value is None else "an awaitable"
        raise ConfigError(f"{what} {name}() returned {got}; it must be a plain function "
                          "returning str, bytes or a JSON-serialisable value")
    try:
        return encode_message(value, f"the result of {what} {name}()")
    except ConfigError:
        raise ConfigError(f"{what} {name}() returned a {type(value).__name__}, not str, bytes "
                          "or a JSON-serialisable value") from None


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
    JSON-serialisable object (sent as compact JSON text), or a callable
    returning one: it is called each time the message is sent, so a token
    or signature in it is made afresh for every connection.  If ``ack`` is
    given, it is called with each incoming message until it returns true; a
    subscription not acknowledged within ``ack_timeout`` seconds fails the
    connection (reason ``ack_timeout``).  ``unsubscribe`` (a message or a
    callable, like ``message``), if given, is sent when the subscription is
    removed while connected.
    """

    message: Any
    ack: Matcher | None = None
    ack_timeout: float = 10.0
    unsubscribe: Any = None
    name: str | None = None
    payload: Payload | None = field(init=False, repr=False, compare=False)
    """The encoded message; ``None`` when a callable builds it at each send."""
    unsubscribe_payload: Payload | None = field(init=False, repr=False, compare=False)
    key: object = field(init=False, repr=False, compare=False)
    """What identifies the subscription: its encoded message, or its callable."""

    def __post_init__(self) -> None:
        payload = None
        if not callable(self.message):
            payload = encode_message(self.message, "subscription message")
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "key", self.message if payload is None else payload)
        unsub = None
        if self.unsubscribe is not None and not callable(self.unsubscribe):
            unsub = encode_message(self.unsubscribe, "unsubscribe message")
        object.__setattr__(self, "unsubscribe_payload", unsub)
        check_positive("subscription ack_timeout", self.ack_timeout)
        if self.ack is not None and not callable(self.ack):
            raise ConfigError(f"subscription ack must be callable, got {self.ack!r}")

    def render(self) -> Payload:
        """The message to send now (a callable's is built by this call);
        raises :class:`ConfigError` naming the callable if it fails."""
        if self.payload is not None:
            return self.payload
        return render(self.message, "subscription message")

    def render_unsubscribe(self) -> Payload | None:
        """The unsubscribe message to send now, or ``None`` if there is none."""
        if self.unsubscribe is None or self.unsubscribe_payload is not None:
            return self.unsubscribe_payload
        return render(self.unsubscribe, "unsubscribe message")

    @property
    def label(self) -> str:
        """A short printable name for logs: ``name``, the start of a fixed
        message, or the name of the callable that builds it (never what it
        builds, which may hold a token)."""
        if self.name:
            return self.name
        if self.payload is None:
            return callable_name(self.message) + "()"
        text = self.payload if isinstance(self.payload, str) else self.payload.hex()
        return text if len(text) <= 40 else text[:37] + "..."

    @classmethod
    def coerce(cls, value: object) -> Subscription:
        return value if isinstance(value, Subscription) else cls(message=value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Login:
    """A login sent first on every connection; subscriptions wait for its ACK.

    ``message`` is a callable (or a fixed message) called when the login is
    sent, on every connection, so a signature over the current time is
    always fresh.  ``ack`` recognises the server's acceptance; only then are
    the subscriptions sent.  ``reject`` (optional) recognises a refusal, and
    a server close with one of ``reject_codes`` before the ACK is one too:
    the ``auth`` alert fires, the connection ends (reason
    ``login_rejected``), and after ``max_rejections`` refusals in a row the
    feed stops with :class:`~nonstop.CredentialsRefused` (``None``: retry
    with backoff forever).  No ACK within ``timeout`` seconds fails the
    connection (reason ``login_timeout``), retried like any failure.  The
    login message is never logged; its ACK and refusal messages are
    delivered like any other.
    """

    message: Any
    ack: Matcher
    reject: Matcher | None = None
    timeout: float = 10.0
    reject_codes: frozenset[int] = frozenset({1008})
    max_rejections: int | None = 3
    name: str | None = None
    payload: Payload | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        payload = None if callable(self.message) else encode_message(self.message, "login message")
        object.__setattr__(self, "payload", payload)
        if not callable(self.ack):
            raise ConfigError(f"login ack must be callable, got {self.ack!r}")
        if self.reject is not None and not callable(self.reject):
            raise ConfigError(f"login reject must be callable or None, got {self.reject!r}")
        check_positive("login timeout", self.timeout)
        codes = frozenset(self.reject_codes)
        for code in codes:
            if isinstance(code, bool) or not isinstance(code, int) or not 1000 <= code <= 4999:
                raise ConfigError(f"login reject_codes: {code!r} is not a close code (1000-4999)")
        object.__setattr__(self, "reject_codes", codes)
        if self.max_rejections is not None:
            check_positive("login max_rejections", self.max_rejections, integer=True,
                           optional=True)

    def __repr__(self) -> str:
        hidden = f"<built by {self.label}>" if self.payload is None else "<hidden>"
        return _repr(self, {"message": hidden})

    def render(self) -> Payload:
        """The login message to send now."""
        if self.payload is not None:
            return self.payload
        return render(self.message, "login message")

    @property
    def label(self) -> str:
        """``name``, or the name of the callable that builds the message."""
        if self.name:
            return self.name
        return callable_name(self.message) + "()" if self.payload is None else "login"


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
        check_positive(name, value, optional=True)


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

    url: str | UrlProvider
    """The ``ws://`` or ``wss://`` URL, or a :data:`UrlProvider` the driver
    calls before every attempt (its time counts against ``connect_timeout``)."""
    name: str | None = None
    """A label for logs and metrics; default: the redacted URL (or the
    provider's name)."""
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
    """Bytes (text: UTF-8 bytes) a message may have; bigger closes with 1009
    (a compressed message: once inflated, and inflating stops there)."""
    compression: str | None = "deflate"
    """``"deflate"``: offer permessage-deflate (RFC 7692); ``None``: offer
    no compression."""
    proxy: ProxyRules | None = None
    """Which proxy each connection goes through (``None``: every
    connection goes direct); see :class:`~nonstop.core.ProxyRules`."""
    alerts: AlertPolicy = field(default_factory=AlertPolicy)
    max_lifetime: float | None = None
    """Seconds a connection may live: ``rotation_lead`` seconds before, a
    ``Rotating`` event asks a redundant feed for its replacement; a server
    close 1001 ("going away") after a shorter life shortens it (``None``:
    no rotation)."""
    login: Login | None = None
    """Sent first on every connection; subscriptions wait for its ACK."""
    endpoint: Endpoint | None = field(init=False, repr=False, compare=False)
    """The parsed URL; ``None`` when a provider gives it per attempt."""
    subscription_list: tuple[Subscription, ...] = field(init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        headers = self.headers
        if callable(headers):
            shown_headers = f"<built by {callable_name(headers)}()>"
        elif headers is None:
            shown_headers = "None"
        else:  # names only: values are credentials as often as not
            names = [name for name, _ in normalize_headers(headers)]
            shown_headers = f"<values hidden: {', '.join(names)}>"
        return _repr(self, {"url": repr(self.label if self.endpoint is None
                                        else self.endpoint.redacted),
                            "headers": shown_headers})

    @property
    def rotation_lead(self) -> float:
        """How long before ``max_lifetime`` a replacement is opened: time
        for its connect, its upgrade and its slowest acknowledgement."""
        acks = [s.ack_timeout for s in self.subscription_list if s.ack is not None]
        login = 0.0 if self.login is None else self.login.timeout
        return self.connect_timeout + self.handshake_timeout + login + max(acks, default=0.0)

    @property
    def url_provider(self) -> UrlProvider | None:
        """The callable giving the URL per attempt, or ``None``."""
        return None if isinstance(self.url, str) else self.url

    @property
    def label(self) -> str:
        """The feed's name in logs and metrics."""
        if self.name:
            return self.name
        if self.endpoint is None:
            return callable_name(self.url) + "()"
        return self.endpoint.redacted

    def __post_init__(self) -> None:
        if isinstance(self.url, str):
            object.__setattr__(self, "endpoint", parse_url(self.url))
        elif callable(self.url):
            object.__setattr__(self, "endpoint", None)
        else:
            raise ConfigError(f"url must be a ws:// or wss:// URL or a callable returning one, "
                              f"got {type(self.url).__name__}")
        if isinstance(self.subscriptions, (str, bytes)):
            raise ConfigError("subscriptions must be a list of messages, not a single message")
        subs = tuple(Subscription.coerce(s) for s in self.subscriptions)
        keys = [s.key for s in subs]
        if any(key in keys[:i] for i, key in enumerate(keys)):
            raise ConfigError("subscriptions contain the same message twice")
        object.__setattr__(self, "subscription_list", subs)
        if self.login is not None and not isinstance(self.login, Login):
            raise ConfigError(f"login must be a nonstop.Login, got {self.login!r}")
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
            check_positive("max_attempts", self.max_attempts, integer=True, optional=True)
        if self.max_lifetime is not None:
            check_positive("max_lifetime", self.max_lifetime, optional=True)
            if self.max_lifetime <= self.rotation_lead:
                raise ConfigError(
                    f"max_lifetime ({self.max_lifetime!r}s) must be longer than a connect, an "
                    f"upgrade and an ACK may take ({self.rotation_lead!r}s: connect_timeout + "
                    f"handshake_timeout + the longest ack_timeout); lower those or raise it")
        if self.max_message_size is not None:
            check_positive("max_message_size", self.max_message_size, integer=True,
                           optional=True)
        if self.proxy is not None and not isinstance(self.proxy, ProxyRules):
            raise ConfigError(f"proxy must be a nonstop.core.ProxyRules or None, got {self.proxy!r}")
        if self.compression not in ("deflate", None):
            raise ConfigError(f"compression must be 'deflate' or None, got {self.compression!r}")
        if not isinstance(self.backoff, Backoff):
            raise ConfigError(f"backoff must be a nonstop.Backoff, got {self.backoff!r}")
        if not isinstance(self.alerts, AlertPolicy):
            raise ConfigError(f"alerts must be a nonstop.AlertPolicy, got {self.alerts!r}")
        if self.app_ping is not None and not isinstance(self.app_ping, AppPing):
            raise ConfigError(f"app_ping must be a nonstop.AppPing, got {self.app_ping!r}")
        object.__setattr__(self, "fatal_statuses", frozenset(self.fatal_statuses))
        object.__setattr__(self, "fatal_close_codes", frozenset(self.fatal_close_codes))
