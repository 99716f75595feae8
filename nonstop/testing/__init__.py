"""Testing tools for nonstop users and for nonstop's own tests.

* :class:`FeedServer`: a local WebSocket feed server (anyio + wsproto, so it
  runs under asyncio and trio) that streams numbered messages, answers
  subscriptions, echoes, and injects faults on command (:class:`Fault`):
  FIN, RST, silence, refused connections, garbage, half frames, HTTP
  rejections with ``Retry-After``, close codes, missing ACKs, stalled
  handshakes.
* :class:`ThreadedFeedServer`: the same server on its own event loop in a
  daemon thread, for blocking code (:meth:`FeedServer.run_in_thread`).
* :class:`HmacLogin`, :class:`TokenSubscriptions`, :class:`ListenKeys`: the
  server's optional authentication checks (``FeedServer(auth=...)``), as
  private feeds have them: a signed first-message login, HMAC tokens on
  subscriptions, one-time listen keys fetched over plain HTTP.
* :class:`ConnectionInfo`: what the server recorded about one connection.
* :class:`FakeClock`: a monotonic fake clock for driving the sans-IO core.

Example (async, asyncio or trio)::

    from nonstop.testing import Fault, FeedServer

    async with FeedServer(interval=0.01) as server:
        ...connect your client to server.url...
        await server.wait_connected()
        server.inject(Fault.RESET)
        await server.wait_connected(n=2)   # it reconnected

Example (blocking)::

    with FeedServer().run_in_thread() as server:
        ...
        server.inject(Fault.REJECT, status=503, retry_after=2)
"""

from __future__ import annotations

from ._auth import HmacLogin, ListenKeys, TokenSubscriptions
from ._clock import FakeClock
from ._faults import DEFAULT_GARBAGE, Fault
from ._records import ConnectionInfo
from ._server import FeedServer
from ._thread import ThreadedFeedServer

__all__ = [
    "FeedServer",
    "Fault",
    "ThreadedFeedServer",
    "ConnectionInfo",
    "FakeClock",
    "DEFAULT_GARBAGE",
    "HmacLogin",
    "TokenSubscriptions",
    "ListenKeys",
]
