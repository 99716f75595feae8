"""``subscribe`` waits for the server while connected, on every back end.

The same call on both feeds (``await`` on the async one): while a
connection is open it returns once the subscription's ``Subscribed`` event
came (sent, and acknowledged when it has an ACK matcher); ``timeout`` bounds
the wait; while not connected it returns at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest
from websockets.sync.server import ServerConnection

import nonstop
from nonstop import Subscribed, Subscription

from .conftest import QUIET
from .test_driver_behaviour import server

pytestmark = pytest.mark.timeout(30)

ACK_DELAY = 0.3


def acknowledging(ws: ServerConnection) -> None:
    """Acknowledges "sub:slow" after ACK_DELAY, never "sub:never"."""
    for message in ws:
        if message == "sub:slow":
            time.sleep(ACK_DELAY)
            ws.send("ack:sub:slow")


def acked_by(answer: str) -> Callable[[object], bool]:
    return lambda message: message == answer


SLOW = Subscription(message="sub:slow", ack=acked_by("ack:sub:slow"))
NEVER = Subscription(message="sub:never", ack=acked_by("ack:sub:never"), ack_timeout=20)


def confirmed(history: list[nonstop.AppEvent], sub: Subscription) -> bool:
    return any(isinstance(e, Subscribed) and e.subscription is sub and e.acked for e in history)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("driver", ["asyncio", "trio", "blocking"])
def test_subscribe_returns_once_the_server_acknowledged(driver: str, fast: bool) -> None:
    with server(acknowledging) as port:
        url = f"ws://127.0.0.1:{port}/"
        if driver == "blocking":
            with nonstop.sync.connect(url, fast=fast, **QUIET) as sync_feed:
                sync_feed.wait_connected(10)
                t0 = time.monotonic()
                sub = sync_feed.subscribe(SLOW, timeout=10)
                assert time.monotonic() - t0 >= ACK_DELAY * 0.9
                assert sub is SLOW and confirmed(sync_feed.history, sub)
                with pytest.raises(TimeoutError, match="no Subscribed event for sub:never"):
                    sync_feed.subscribe(NEVER, timeout=0.2)
                assert NEVER in sync_feed.subscriptions  # it stays: replayed on reconnect
            return

        async def main() -> None:
            async with nonstop.connect(url, fast=fast, **QUIET) as feed:
                await feed.wait_connected(10)
                t0 = time.monotonic()
                sub = await feed.subscribe(SLOW, timeout=10)
                assert time.monotonic() - t0 >= ACK_DELAY * 0.9
                assert sub is SLOW and confirmed(feed.history, sub)
                with pytest.raises(TimeoutError, match="no Subscribed event for sub:never"):
                    await feed.subscribe(NEVER, timeout=0.2)
                assert NEVER in feed.subscriptions

        anyio.run(main, backend=driver)


@pytest.mark.parametrize("driver", ["asyncio", "trio", "blocking"])
def test_subscribe_while_not_connected_returns_at_once(driver: str) -> None:
    url = "ws://127.0.0.1:9/"  # the discard port: nothing listens, the feed keeps retrying
    if driver == "blocking":
        with nonstop.sync.connect(url, **QUIET) as sync_feed:
            assert sync_feed.subscribe(SLOW, timeout=None) is SLOW
            assert sync_feed.subscriptions == (SLOW,)
        return

    async def main() -> None:
        async with nonstop.connect(url, **QUIET) as feed:
            with anyio.fail_after(5):
                assert await feed.subscribe(SLOW, timeout=None) is SLOW
            assert feed.subscriptions == (SLOW,)

    anyio.run(main, backend=driver)
