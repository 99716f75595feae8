"""``nonstop.sync``: the blocking entry point, for scripts and threads.

    with nonstop.sync.connect("wss://feed.example/ws", subscribe=[...]) as feed:
        for message in feed:
            ...
        feed.send("...")
        feed.stop()          # safe from another thread or a signal handler
"""

from __future__ import annotations

import logging
import random
import ssl as _ssl
from collections.abc import Callable, Iterable, Sequence

from .core import AlertPolicy, AppEvent, AppPing, Backoff
from .core._config import HeaderProvider, HeadersLike
from .transports._blocking import SyncFeed
from .transports._common import Overflow, OverflowName, prepare

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
    read_size: int = 1024 * 1024,
    write_timeout: float = 10.0,
    logger: logging.Logger | None = None,
    rng: random.Random | None = None,
) -> SyncFeed:
    """Open a feed that keeps receiving; use as ``with connect(...) as feed``.

    The feed runs in one background I/O thread; iterate it for messages.

    Iterate the feed for messages (``str`` or ``bytes``); reconnects happen
    inside.  Every option is described in ``docs/usage.md``; the ones the
    core owns (timeouts, backoff, subscriptions, alerts) in ``docs/core.md``.
    Bad options and URLs raise :class:`~nonstop.ConfigError` /
    :class:`~nonstop.InvalidURL` here, before anything connects.
    """
    core, options = prepare(locals())
    return SyncFeed(core, options)
