"""``nonstop.connect``: the async entry point (asyncio or trio, through anyio)."""

from __future__ import annotations

import logging
import random
import ssl as _ssl
from collections.abc import Callable, Iterable, Sequence

from .core import AlertPolicy, AppEvent, AppPing, Backoff, FeedCore
from .core._config import HeaderProvider, HeadersLike
from .transports._anyio import AsyncFeed
from .transports._common import Overflow, OverflowName, build_config, build_driver_options

__all__ = ["connect"]


def connect(
    url: str,
    *,
    subscribe: Iterable[object] = (),
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
    stable_after: float = 10.0,
    backoff: Backoff | None = None,
    max_attempts: int | None = None,
    fatal_statuses: Iterable[int] = (),
    fatal_close_codes: Iterable[int] = (),
    max_message_size: int | None = 1 << 20,
    alerts: AlertPolicy | None = None,
    user_agent: str | None = "nonstop",
    server_hostname: str | None = None,
    ssl: _ssl.SSLContext | None = None,
    queue_size: int = 4096,
    overflow: Overflow | OverflowName = "backpressure",
    on_event: Callable[[AppEvent], None] | None = None,
    read_size: int = 256 * 1024,
    write_timeout: float = 10.0,
    logger: logging.Logger | None = None,
    rng: random.Random | None = None,
) -> AsyncFeed:
    """Open a feed that keeps receiving; use as ``async with connect(...) as feed``.

    Iterate the feed for messages (``str`` or ``bytes``); reconnects happen
    inside.  Every option is described in ``docs/usage.md``; the ones the
    core owns (timeouts, backoff, subscriptions, alerts) in ``docs/core.md``.
    Bad options and URLs raise :class:`~nonstop.ConfigError` /
    :class:`~nonstop.InvalidURL` here, before anything connects.
    """
    config = build_config(
        url,
        subscribe=subscribe,
        headers=headers,
        subprotocols=subprotocols,
        name=name,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        silence_timeout=silence_timeout,
        app_ping=app_ping,
        connect_timeout=connect_timeout,
        handshake_timeout=handshake_timeout,
        close_timeout=close_timeout,
        stable_after=stable_after,
        backoff=backoff,
        max_attempts=max_attempts,
        fatal_statuses=fatal_statuses,
        fatal_close_codes=fatal_close_codes,
        max_message_size=max_message_size,
        alerts=alerts,
        user_agent=user_agent,
        server_hostname=server_hostname,
    )
    options = build_driver_options(
        config,
        ssl=ssl,
        queue_size=queue_size,
        overflow=overflow,
        on_event=on_event,
        read_size=read_size,
        write_timeout=write_timeout,
        logger=logger,
    )
    return AsyncFeed(FeedCore(config, rng=rng if rng is not None else random.Random()), options)
