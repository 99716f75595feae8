"""``nonstop.connect``: the async entry point (asyncio or trio, through anyio).

Its options are those of :func:`nonstop._options.options`, given to it by
:func:`~nonstop._options.with_options`; this module only builds the feed.
"""

from __future__ import annotations

from ._options import Options, options, with_options
from .transports._anyio import AsyncFeed
from .transports._anyio_fast import FastAsyncFeed
from .transports._anyio_merged import MergedAsyncFeed

__all__ = ["connect"]


@with_options(options)
def connect(chosen: Options) -> AsyncFeed:
    """Open a feed that keeps receiving; use as ``async with connect(...) as feed``.

    Iterate the feed for messages (``str`` or ``bytes``); reconnects happen
    inside.  Every option is described in ``docs/usage.md``; the ones the
    core owns (timeouts, backoff, subscriptions, alerts) in ``docs/core.md``.
    Bad options and URLs raise :class:`~nonstop.ConfigError` /
    :class:`~nonstop.InvalidURL` here, before anything connects.
    """
    if chosen.new_merge is not None:
        return MergedAsyncFeed(chosen.leg_cores(), chosen.new_merge(), chosen.driver,
                              chosen.new_leg_core)
    kind = FastAsyncFeed if chosen.driver.fast else AsyncFeed
    return kind(chosen.new_core(), chosen.driver)
