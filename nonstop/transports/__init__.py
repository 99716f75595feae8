"""The drivers: they run :class:`nonstop.core.FeedCore` over real sockets.

A driver moves bytes and sleeps; every decision is the core's or the
session's.  Applications get a driver's feed from ``nonstop.connect``
(:class:`~nonstop.AsyncFeed`) or ``nonstop.sync.connect``
(:class:`~nonstop.SyncFeed`), not from here.  One module each:

* ``_session.py`` -- what both drivers share and decide the same way: the
  queue and slow-consumer policy, backpressure, the caught-up report before a
  deferred failure, the transport-error guard, observer, waiters.
* ``_common.py`` -- the bounded message buffer, the observer (log lines,
  ``on_event``, history) and read sizing.
* ``_anyio_loop.py`` -- the anyio driver's plain loop (asyncio or trio).
* ``_anyio.py`` -- :class:`~nonstop.AsyncFeed`, the application's side of it.
* ``_anyio_fast.py`` -- its speed-ups (``fast=True``), overriding a few steps.
* ``_streams.py`` -- the byte streams the speed-ups use: asyncio's protocol,
  and anyio's stream with direct socket reads and writes on trio.
* ``_blocking_loop.py`` -- the blocking driver's plain loop (one I/O thread,
  ``socket``/``ssl``/``selectors``).
* ``_blocking.py`` -- :class:`~nonstop.SyncFeed`, the application's side of it.
* ``_blocking_fast.py`` -- its speed-ups (``fast=True``), overriding a few steps.
* ``_dial.py`` -- the happy-eyeballs I/O (for anyio and for a selector) of
  the decisions in :mod:`nonstop.core._dial`.
"""
