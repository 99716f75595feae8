"""``nonstop.sync``: the blocking entry point, for scripts and threads.

    with nonstop.sync.connect("wss://feed.example/ws", subscribe=[...]) as feed:
        for message in feed:
            ...
        feed.send("...")
        feed.stop()          # safe from another thread or a signal handler

Its options are those of :func:`nonstop._options.options`, given to it by
:func:`~nonstop._options.with_options`; this module only builds the feed.
"""

from __future__ import annotations

import inspect

from ._options import Options, options, with_options
from .core import ConfigError
from .transports._blocking import SyncFeed
from .transports._blocking_fast import FastSyncFeed
from .transports._blocking_merged import MergedSyncFeed

__all__ = ["connect"]


@with_options(options)
def connect(chosen: Options) -> SyncFeed:
    """Open a feed that keeps receiving; use as ``with connect(...) as feed``.

    The feed runs in one background I/O thread; iterate it for messages
    (``str`` or ``bytes``); reconnects happen inside.  Every option is
    described in ``docs/usage.md``; the ones the core owns (timeouts,
    backoff, subscriptions, alerts) in ``docs/core.md``.  Bad options and
    URLs raise :class:`~nonstop.ConfigError` / :class:`~nonstop.InvalidURL`
    here, before anything connects.
    """
    for config in (chosen.config, *chosen.legs):
        if inspect.iscoroutinefunction(config.url_provider):
            raise ConfigError("url is a coroutine function; the blocking API calls a plain "
                              "function before every attempt (use nonstop.connect for async)")
    if chosen.new_merge is not None:
        return MergedSyncFeed(chosen.leg_cores(), chosen.new_merge(), chosen.driver,
                              chosen.new_leg_core)
    kind = FastSyncFeed if chosen.driver.fast else SyncFeed
    return kind(chosen.new_core(), chosen.driver)
