"""The options of ``connect``, defined once for both entry points.

Theory of operation
-------------------
:func:`options` is the one definition of what ``nonstop.connect`` and
``nonstop.sync.connect`` accept: each option is one keyword parameter of it,
with its type, its default and an entry in its docstring.  It checks them all
and returns :class:`Options` -- the core's :class:`~nonstop.core.Config`, the
driver's :class:`DriverOptions` and the random source -- so a bad value raises
:class:`~nonstop.ConfigError` from the ``connect(...)`` call, before anything
connects.

The definition is a function rather than a dataclass whose fields are the
options because what a caller may pass and what a feed keeps are different
types: ``subscribe`` takes any iterable and becomes a list, ``overflow`` a name
or an :class:`Overflow` and becomes the enum, ``backoff=None`` becomes
``Backoff()``, ``fast=None`` becomes a ``bool`` read from the environment.
The parameters carry the first kind, the frozen values returned the second,
and the defaults stay the literal values that ``inspect.signature``,
``help()`` and the option table in ``docs/usage.md`` show.

:func:`with_options` gives both entry points that signature.  Its
:class:`~typing.ParamSpec` is captured from :func:`options`, so type checkers
and editors see every option, typed, on both ``connect`` functions (a
misspelt keyword is a type error); at run time it sets ``__signature__``,
``__annotations__`` and ``__doc__`` from the same function.  The decorated
body receives the checked :class:`Options` and only builds its feed.

A new option is a parameter and a docstring entry here, passed on to the
field of :class:`~nonstop.core.Config` or :class:`DriverOptions` that holds
it, and a row in the option table of ``docs/usage.md`` (``tests/test_options.py``
compares that table's names and defaults with this signature).
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import os
import random
import ssl as _ssl
import typing
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, ParamSpec, TypeVar

from .core import (
    AlertPolicy,
    AppEvent,
    AppPing,
    Backoff,
    Config,
    ConfigError,
    FeedCore,
    Login,
    Merge,
    Proxy,
    ProxyRules,
    UrlProvider,
    rules_from_environment,
)
from .core._config import HeaderProvider, HeadersLike, Payload
from .core._merge import DEDUPE_COUNT, DEDUPE_WINDOW, LEG_LAG, REORDER_WINDOW

__all__ = [
    "FROM_ENVIRONMENT",
    "FromEnvironment",
    "options",
    "Options",
    "with_options",
    "prepare",
    "build_driver_options",
    "DriverOptions",
    "Overflow",
    "OverflowName",
    "FAST_ENVIRONMENT",
]

P = ParamSpec("P")
R = TypeVar("R")

#: The environment variable read when ``fast`` is ``None``.
FAST_ENVIRONMENT = "NONSTOP_FAST"
#: Its values (compared stripped, in lower case) that turn the speed-ups off.
_FAST_OFF = frozenset({"0", "false", "no", "off"})

OverflowName = Literal["backpressure", "drop_oldest", "disconnect"]


class Overflow(enum.Enum):
    """What happens when the application falls ``queue_size`` messages behind."""

    BACKPRESSURE = "backpressure"
    """Stop reading the socket until there is room (nothing is dropped; the
    server's own buffers and TCP flow control absorb the burst).  Liveness
    timeouts are suspended meanwhile, pings still go out."""
    DROP_OLDEST = "drop_oldest"
    """Keep reading; drop the oldest queued message for each new one."""
    DISCONNECT = "disconnect"
    """Drop the connection (reason ``slow_consumer``) and reconnect: for feeds
    where a fresh snapshot beats a stale backlog."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverOptions:
    """Driver-side options (everything else belongs to the core's Config)."""

    ssl_context: _ssl.SSLContext | None
    queue_size: int
    overflow: Overflow
    on_event: Callable[[AppEvent], None] | None
    read_size: int
    write_timeout: float
    fast: bool
    """Use the driver's speed-ups beside its plain loop (``False``: the plain
    loop only; the same behaviour, slower)."""
    logger: logging.Logger
    resolver: Callable[[str, int], Sequence[tuple[Any, ...]]] | None = None
    """The name lookup, ``(host, port)`` -> ``getaddrinfo`` tuples, run in a
    worker thread; ``None``: :func:`socket.getaddrinfo`."""


@dataclass(frozen=True, slots=True)
class Options:
    """The checked options of one ``connect(...)`` call.

    Made by :func:`options`; a driver's feed takes :meth:`new_core` and
    :attr:`driver`.
    """

    config: Config
    """The core's part: what is decided (timeouts, backoff, subscriptions)."""
    driver: DriverOptions
    """The driver's part: how bytes move."""
    rng: random.Random
    """The jitter source the core draws from."""
    legs: tuple[Config, ...] = ()
    """A redundant feed's legs, one core's config each (empty: one
    connection, :attr:`config`)."""
    new_merge: Callable[[], Merge] | None = None
    """Makes the :class:`~nonstop.core.Merge` of the legs' messages
    (``None``: one connection, no merge)."""

    def new_core(self) -> FeedCore:
        """A fresh :class:`~nonstop.core.FeedCore` for these options; hand it,
        with :attr:`driver`, to the driver's feed."""
        return FeedCore(self.config, rng=self.rng)

    def leg_cores(self) -> list[FeedCore]:
        """One fresh core per leg (see :meth:`new_leg_core`)."""
        return [self.new_leg_core(i) for i in range(len(self.legs))]

    def new_leg_core(self, leg: int) -> FeedCore:
        """A fresh core for leg *leg* (or its replacement: *leg* modulo the
        legs), with a jitter source of its own drawn from :attr:`rng`, so
        the legs never retry in step."""
        return FeedCore(self.legs[leg % len(self.legs)], rng=random.Random(self.rng.getrandbits(64)))



class FromEnvironment(enum.Enum):
    """The ``proxy`` option's default: the environment's proxy variables."""

    FROM_ENVIRONMENT = "the environment"

    def __repr__(self) -> str:
        return "FROM_ENVIRONMENT"


#: ``proxy=FROM_ENVIRONMENT`` (the default): read ``https_proxy`` and the rest.
FROM_ENVIRONMENT: Final = FromEnvironment.FROM_ENVIRONMENT


def _proxy_rules(proxy: object) -> ProxyRules | None:
    """The ``proxy`` option as the core's rules (the environment is read
    here, once, when the feed is made)."""
    if proxy is FROM_ENVIRONMENT:
        return rules_from_environment(os.environ)
    if proxy is None:
        return None
    if isinstance(proxy, (str, Proxy)):
        return ProxyRules.fixed(proxy)
    raise ConfigError(f"proxy must be a proxy URL such as 'http://host:3128', None (no proxy) or "
                      f"left out (the environment's proxy), got {proxy!r}")

def options(
    url: str | UrlProvider | None = None,
    *,
    urls: Sequence[str | UrlProvider] = (),
    redundancy: int | None = None,
    sequence: Callable[[Payload], int] | None = None,
    dedupe: Callable[[Payload], Hashable] | None = None,
    reorder_window: float = REORDER_WINDOW,
    dedupe_window: float = DEDUPE_WINDOW,
    dedupe_count: int = DEDUPE_COUNT,
    leg_lag: float | None = LEG_LAG,
    max_lifetime: float | None = None,
    subscribe: Iterable[object] = (),
    login: Login | None = None,
    headers: HeadersLike | HeaderProvider | None = None,
    subprotocols: Sequence[str] = (),
    name: str | None = None,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 10.0,
    silence_timeout: float | None = 60.0,
    app_ping: AppPing | None = None,
    connect_timeout: float = 10.0,
    handshake_timeout: float = 10.0,
    close_timeout: float = 5.0,
    failure_grace: float = 1.0,
    stable_after: float = 10.0,
    backoff: Backoff | None = None,
    max_attempts: int | None = None,
    fatal_statuses: Iterable[int] = (),
    fatal_close_codes: Iterable[int] = (),
    max_message_size: int | None = 1 << 20,
    compression: str | None = "deflate",
    proxy: str | Proxy | FromEnvironment | None = FROM_ENVIRONMENT,
    alerts: AlertPolicy | None = None,
    user_agent: str | None = "nonstop",
    server_hostname: str | None = None,
    ssl: _ssl.SSLContext | None = None,
    queue_size: int = 4096,
    overflow: Overflow | OverflowName = "backpressure",
    on_event: Callable[[AppEvent], None] | None = None,
    read_size: int = 1 << 20,
    write_timeout: float = 10.0,
    fast: bool | None = None,
    logger: logging.Logger | None = None,
    rng: random.Random | None = None,
    resolver: Callable[[str, int], Sequence[tuple[Any, ...]]] | None = None,
) -> Options:
    """Check the options of ``connect`` and return them as :class:`Options`.

    Raises :class:`~nonstop.ConfigError` naming the option and what to do
    (:class:`~nonstop.InvalidURL` for the URL).  Next, a driver's feed is
    built from :meth:`Options.new_core` and :attr:`Options.driver`.

    Options
    -------
    url
        The feed's ``ws://`` or ``wss://`` URL (or give ``urls``), or a
        function called before every attempt that returns it (a coroutine
        function with the async API, a plain one with the blocking API):
        a REST call for a listen key or a token-bearing endpoint.  Its time
        counts against ``connect_timeout``; when it raises, the attempt
        fails with reason ``url_provider`` and is retried with backoff.
    urls
        Several endpoints of the same feed, instead of ``url``: the legs
        (``redundancy``) go to them in turn.  Each may be a function, as
        ``url``.
    redundancy
        Connections ("legs") kept to the feed at once, merged into one
        stream in which each message appears once; ``None``: one, or one
        per entry of ``urls``.
    sequence
        The feed's own sequence number of a message, ``fn(message) -> int``:
        duplicates are told apart by it, and numbers that never came are
        reported as gaps.
    dedupe
        Without ``sequence``, a message's key, ``fn(message) -> hashable``:
        a key seen within ``dedupe_window`` is a duplicate; ``None``: the
        message itself (with ``redundancy`` above one).
    reorder_window
        Seconds messages after a missing number wait for another leg to
        bring it, before the number is reported missing.
    dedupe_window
        Seconds a key is remembered.
    dedupe_count
        Keys remembered at most (the memory bound).
    leg_lag
        Seconds a leg of a redundant feed may go without a fresh message
        (a new one, or a duplicate at most this late) while another leg
        delivers, before it is replaced as a zombie (reason ``lagging``);
        ``None``: not watched.
    max_lifetime
        Seconds a connection may live (a server's limit, e.g. 24 hours):
        before a leg reaches it, its replacement is opened and subscribed,
        and the old leg is closed once the two overlap (make-before-break,
        with one connection too).  A server's close 1001 at a younger age
        shortens it.  ``None``: no rotation.
    subscribe
        Messages sent after every connect, in order: ``str``, ``bytes``,
        JSON-able objects, functions returning one (called at each send,
        for a fresh token) or :class:`~nonstop.Subscription`.
    login
        A :class:`~nonstop.Login` sent first on every connection, its
        message built at that moment; subscriptions wait for its ACK.
    headers
        Upgrade headers (a dict or pairs), or a callable returning them,
        called before every attempt.  Never logged.
    subprotocols
        Subprotocols offered in the handshake.
    name
        The feed's label in logs and metrics; ``None``: the redacted URL.
    ping_interval
        Seconds between protocol pings (``None``: no pings).
    ping_timeout
        Seconds after a ping within which some byte must arrive.
    silence_timeout
        Seconds without a data message after which the connection is
        dropped (pongs and other control frames do not count: a server
        that answers pings but stopped sending data is a zombie too).
        ``None``: off, for feeds that may be quiet for long.
    app_ping
        A :class:`~nonstop.AppPing` for servers that want an application ping.
    connect_timeout
        Seconds for name lookup, TCP and TLS.
    handshake_timeout
        Seconds for the HTTP upgrade.
    close_timeout
        Seconds a close handshake may take.
    failure_grace
        Seconds a protocol error waits for the application to take the
        messages that came before it (it goes ahead as soon as they are taken).
    stable_after
        Seconds a connection must stay up before the backoff resets.
    backoff
        A :class:`~nonstop.Backoff`; ``None``: ``Backoff()``.
    max_attempts
        Failures in a row before the feed gives up (``None``: never).
    fatal_statuses
        Upgrade statuses that stop the feed instead of retrying.
    fatal_close_codes
        Close codes that stop the feed instead of retrying.
    max_message_size
        Bytes a message may have; bigger ones close with 1009 (``None``: no
        limit).  A compressed message is measured inflated, and inflating
        stops at the limit.
    compression
        ``"deflate"``: offer permessage-deflate (RFC 7692), which most feeds
        accept; ``None``: offer no compression.
    proxy
        The proxy every connection goes through: ``http://[user:pass@]host:port``
        (HTTP ``CONNECT``), ``https://...`` (the same over TLS to the proxy),
        ``socks5://`` (the feed's name looked up here), ``socks5h://`` (by
        the proxy) or ``socks4a://``.  By default the environment's
        ``https_proxy`` (``wss://``), ``http_proxy`` (``ws://``),
        ``all_proxy`` and ``no_proxy``, as curl reads them; ``None``: no
        proxy, whatever the environment says.
    alerts
        An :class:`~nonstop.AlertPolicy`; ``None``: ``AlertPolicy()``.
    user_agent
        The ``User-Agent`` header (``None``: none).
    server_hostname
        The TLS name to verify and send; ``None``: the URL's host.
    ssl
        An ``ssl.SSLContext``; ``None`` for ``wss://``: a verifying default context.
    queue_size
        Messages buffered for the application.
    overflow
        What a full queue does: ``"backpressure"``, ``"drop_oldest"`` or
        ``"disconnect"`` (an :class:`~nonstop.Overflow`).
    on_event
        A callable receiving every lifecycle event (not messages); keep it quick.
    read_size
        Bytes of the largest socket read.
    write_timeout
        Seconds a write may block before the connection fails.
    fast
        Whether the driver uses its speed-ups beside its plain loop;
        ``None``: on, unless the environment variable ``NONSTOP_FAST`` is
        ``0``, ``false``, ``no`` or ``off``.
    logger
        Where lifecycle lines go; ``None``: the ``nonstop`` logger.
    rng
        The jitter source; ``None``: a fresh ``random.Random()``.
    resolver
        The name lookup: a function ``(host, port)`` returning
        ``socket.getaddrinfo``-style tuples, called in a worker thread
        before every attempt; ``None``: ``socket.getaddrinfo``.  When it
        fails or is slow right after a connection worked, that connection's
        address is dialed instead (see the usage guide).
    """
    endpoints = _endpoints(url, urls)
    config = Config(
        url=endpoints[0],
        name=name,
        subscriptions=_messages("subscribe", subscribe),
        login=login,
        headers=headers,
        subprotocols=tuple(_strings("subprotocols", subprotocols)),
        user_agent=user_agent,
        server_hostname=server_hostname,
        connect_timeout=connect_timeout,
        handshake_timeout=handshake_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        silence_timeout=silence_timeout,
        app_ping=app_ping,
        close_timeout=close_timeout,
        failure_grace=failure_grace,
        stable_after=stable_after,
        backoff=Backoff() if backoff is None else backoff,
        max_attempts=max_attempts,
        fatal_statuses=_codes("fatal_statuses", fatal_statuses),
        fatal_close_codes=_codes("fatal_close_codes", fatal_close_codes),
        max_message_size=max_message_size,
        compression=compression,
        proxy=_proxy_rules(proxy),
        alerts=AlertPolicy() if alerts is None else alerts,
        max_lifetime=max_lifetime,
    )
    driver = build_driver_options(
        config,
        ssl=ssl,
        queue_size=queue_size,
        overflow=overflow,
        on_event=on_event,
        read_size=read_size,
        write_timeout=write_timeout,
        fast=fast,
        logger=logger,
        resolver=resolver,
    )
    rng = rng if rng is not None else random.Random()
    legs = _legs(endpoints, redundancy)
    if legs == 1 and sequence is None and dedupe is None and max_lifetime is None:
        return Options(config, driver, rng)
    for option, function in (("sequence", sequence), ("dedupe", dedupe)):
        if function is not None and not callable(function):
            raise ConfigError(f"{option} must be a function of a message, got {function!r}")
    slots = legs if max_lifetime is None else 2 * legs  # a replacement's slot beside each leg
    new_merge = functools.partial(Merge, slots, sequence=sequence, dedupe=dedupe,
                                  reorder_window=reorder_window, dedupe_window=dedupe_window,
                                  dedupe_count=dedupe_count, lag=leg_lag if legs > 1 else None)
    new_merge()  # its checks, now
    return Options(config, driver, rng, legs=_leg_configs(config, endpoints, legs),
                   new_merge=new_merge)


#: The ceiling of the wait before a leg after the first one comes back from
#: a break of a stable connection, when ``Backoff.first`` is 0: the first
#: leg returns at once, the others spread over this, so that a server that
#: drops every leg at once does not get them back in one burst.
LEG_SPREAD = 0.5


def _endpoints(url: object, urls: object) -> list[str | UrlProvider]:
    """The feed's URLs (or URL providers): ``url`` or ``urls``, exactly one
    of them."""
    if url is not None and urls:
        raise ConfigError("give url or urls=[...], not both")
    if url is not None:
        if not isinstance(url, str) and not callable(url):
            raise ConfigError(f"url must be a ws:// or wss:// URL string or a function "
                              f"returning one, got {url!r}")
        return [url]
    found = _items("urls", urls, "URLs")
    if not found:
        raise ConfigError("no URL: give the feed's ws:// or wss:// URL, or urls=[...]")
    for item in found:
        if not isinstance(item, str) and not callable(item):
            raise ConfigError(f"urls must contain URL strings or functions returning one, "
                              f"got {item!r}")
    return found


def _legs(endpoints: list[str | UrlProvider], redundancy: object) -> int:
    if redundancy is None:
        return len(endpoints)
    if isinstance(redundancy, bool) or not isinstance(redundancy, int) or redundancy < 1:
        raise ConfigError(f"redundancy must be an integer >= 1 (connections kept at once), "
                          f"got {redundancy!r}")
    return redundancy


def _leg_configs(config: Config, endpoints: list[str | UrlProvider],
                 legs: int) -> tuple[Config, ...]:
    """Leg *i*'s config: the *i*-th endpoint in turn, the label with
    ``#i``, and (after the first leg) a spread before the first retry."""
    out = []
    for i in range(legs):
        backoff = config.backoff
        if i and not backoff.first:
            backoff = replace(backoff, first=min(LEG_SPREAD, backoff.cap))
        out.append(replace(config, url=endpoints[i % len(endpoints)],
                           name=f"{config.label}#{i}", backoff=backoff))
    return tuple(out)


def _items(option: str, value: object, what: str) -> list[Any]:
    if isinstance(value, (str, bytes, bytearray)):
        raise ConfigError(f"{option} must be a list of {what}, not a single one; write {option}=[...]")
    if not isinstance(value, Iterable):
        raise ConfigError(f"{option} must be a list of {what}, got {value!r}")
    return list(value)


def _messages(option: str, value: object) -> list[object]:
    return _items(option, value, "messages")


def _strings(option: str, value: object) -> list[str]:
    return _items(option, value, "names")


def _codes(option: str, value: object) -> frozenset[int]:
    codes = _items(option, value, "integer codes")
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int):
            raise ConfigError(f"{option} must contain integer codes, got {code!r}")
    return frozenset(codes)


def resolve_fast(fast: object) -> bool:
    """``fast`` as given (``True``/``False``), or for ``None`` from the
    environment variable :data:`FAST_ENVIRONMENT`: off when it is ``0``,
    ``false``, ``no`` or ``off`` (any case), on otherwise and when unset."""
    if fast is None:
        return os.environ.get(FAST_ENVIRONMENT, "").strip().lower() not in _FAST_OFF
    if not isinstance(fast, bool):
        raise ConfigError(
            f"fast must be True, False or None (None: from ${FAST_ENVIRONMENT}), got {fast!r}"
        )
    return fast


def build_driver_options(
    config: Config,
    *,
    ssl: _ssl.SSLContext | None,
    queue_size: int,
    overflow: Overflow | OverflowName,
    on_event: Callable[[AppEvent], None] | None,
    read_size: int,
    write_timeout: float,
    fast: bool | None = None,
    logger: logging.Logger | None,
    resolver: Callable[[str, int], Sequence[tuple[Any, ...]]] | None = None,
) -> DriverOptions:
    """Check the driver's options against the core's *config* (``ssl`` needs
    a ``wss://`` URL) and return them as :class:`DriverOptions`."""
    if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
        raise ConfigError(f"ssl must be an ssl.SSLContext or None, got {ssl!r}")
    https_proxy = config.proxy is not None and any(
        p is not None and p.tls for p in (config.proxy.ws, config.proxy.wss))
    if ssl is not None and config.endpoint is not None and not config.endpoint.tls and not https_proxy:
        raise ConfigError("ssl was given but the URL is ws://; use wss:// for TLS")
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise ConfigError(f"queue_size must be an integer >= 1, got {queue_size!r}")
    try:
        policy = Overflow(overflow)
    except ValueError:
        choices = ", ".join(o.value for o in Overflow)
        raise ConfigError(f"overflow must be one of {choices}, got {overflow!r}") from None
    if on_event is not None and not callable(on_event):
        raise ConfigError(f"on_event must be callable, got {on_event!r}")
    if isinstance(read_size, bool) or not isinstance(read_size, int) or read_size < 1024:
        raise ConfigError(f"read_size must be an integer >= 1024, got {read_size!r}")
    if (isinstance(write_timeout, bool) or not isinstance(write_timeout, (int, float))
            or not write_timeout > 0):
        raise ConfigError(f"write_timeout must be a number of seconds > 0, got {write_timeout!r}")
    if resolver is not None and not callable(resolver):
        raise ConfigError(f"resolver must be a function (host, port) -> getaddrinfo tuples, "
                          f"got {resolver!r}")
    context = ssl
    if context is None and (config.endpoint is None or config.endpoint.tls):
        context = _ssl.create_default_context()  # (a provider's URL may be wss://)
    return DriverOptions(
        ssl_context=context,
        queue_size=queue_size,
        overflow=policy,
        on_event=on_event,
        read_size=read_size,
        write_timeout=write_timeout,
        fast=resolve_fast(fast),
        logger=logger if logger is not None else logging.getLogger("nonstop"),
        resolver=resolver,
    )


def prepare(arguments: Mapping[str, Any]) -> tuple[FeedCore, DriverOptions]:
    """``connect()``'s arguments (``url`` and any options, by name) as a new
    core and the driver's options: :func:`options`, then
    :meth:`Options.new_core` and :attr:`Options.driver`."""
    chosen = options(**arguments)
    return chosen.new_core(), chosen.driver


def with_options(of: Callable[P, Options]) -> Callable[[Callable[[Options], R]], Callable[P, R]]:
    """Give the decorated function *of*'s parameters: calling it checks them
    with *of* and passes the :class:`Options` to the function's body.

    The result has *of*'s signature for type checkers (through the
    :class:`~typing.ParamSpec`) and at run time (``__signature__`` and
    ``__annotations__``, with the body's return type), and the body's
    docstring followed by the ``Options`` section of *of*'s.
    """

    def decorate(body: Callable[[Options], R]) -> Callable[P, R]:
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return body(of(*args, **kwargs))

        signature = inspect.signature(of).replace(
            return_annotation=inspect.signature(body).return_annotation
        )
        hints = typing.get_type_hints(of)
        hints["return"] = typing.get_type_hints(body)["return"]
        function: Any = call
        function.__name__ = getattr(body, "__name__", "call")
        function.__qualname__ = getattr(body, "__qualname__", function.__name__)
        function.__module__ = body.__module__
        function.__doc__ = _compose_doc(body.__doc__, of.__doc__)
        function.__signature__ = signature
        function.__annotations__ = hints
        return call

    return decorate


def _compose_doc(body: str | None, of: str | None) -> str:
    """*body*'s docstring, then the ``Options`` section of *of*'s."""
    text = inspect.cleandoc(body or "")
    section = inspect.cleandoc(of or "").partition("\nOptions\n-------\n")[2]
    if section:
        text += "\n\nOptions\n-------\n" + section
    return text
