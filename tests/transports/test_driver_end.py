"""How a feed ends when its driver fails: every back end the same way.

A bug in the loop (here: injected into the session's delivery of messages,
which runs in the loop) ends the feed's task or I/O thread.  Whichever
driver it is, the core must then be settled -- ``feed.state`` is
``STOPPED``, the ``[STOPPED]`` line is logged and ``Stopped`` is the last
event -- and the application must see the bug, not hang.
"""

from __future__ import annotations

import logging

import anyio
import pytest
from websockets.sync.server import ServerConnection

import nonstop
from nonstop import Disconnected, State, Stopped
from nonstop.transports._session import Session

# the blocking driver's I/O thread ends by the injected bug: its traceback is expected
from .conftest import QUIET
from .test_driver_behaviour import server

pytestmark = [pytest.mark.timeout(30),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")]



class Injected(RuntimeError):
    """The bug."""


def answering(ws: ServerConnection) -> None:
    """Answers every message with one."""
    for message in ws:
        ws.send(f"re: {message}")


def inject(monkeypatch: pytest.MonkeyPatch) -> None:
    def deliver(*args: object) -> None:
        raise Injected("a bug in the loop")

    monkeypatch.setattr(Session, "deliver", deliver)


def check_settled(feed: nonstop.AsyncFeed | nonstop.SyncFeed, caplog: pytest.LogCaptureFixture) -> None:
    assert feed.state is State.STOPPED
    assert isinstance(feed.history[-1], Stopped)
    assert any(isinstance(e, Disconnected) for e in feed.history)
    assert any("[STOPPED]" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("driver", ["asyncio", "trio", "blocking"])
def test_a_bug_in_the_loop_settles_the_core_and_reaches_the_application(
        driver: str, fast: bool, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="nonstop")
    with server(answering) as port:
        url = f"ws://127.0.0.1:{port}/"
        if driver == "blocking":
            with nonstop.sync.connect(url, fast=fast, **QUIET) as sync_feed:
                sync_feed.wait_connected(10)
                inject(monkeypatch)
                sync_feed.send("boom")
                assert sync_feed._thread is not None
                sync_feed._thread.join(10)  # the I/O thread ends by the bug
                with pytest.raises(Injected):
                    sync_feed.receive(5)
            check_settled(sync_feed, caplog)
            return

        async def main() -> None:
            feed = nonstop.connect(url, fast=fast, **QUIET)
            with pytest.raises(BaseException) as raised:
                async with feed:
                    await feed.wait_connected(10)
                    inject(monkeypatch)
                    await feed.send("boom")
                    with pytest.raises(Injected):
                        await feed.receive(5)
            assert raised.group_contains(Injected) if hasattr(raised.value, "exceptions") \
                else isinstance(raised.value, Injected)  # (a group from the task group, or not)
            check_settled(feed, caplog)

        anyio.run(main, backend=driver)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("driver", ["asyncio", "trio", "blocking"])
def test_a_feed_that_was_never_entered_says_so_at_once(driver: str, fast: bool) -> None:
    """Iterating (or waiting on) ``connect(url)`` without ``with`` /
    ``async with`` would wait forever for a loop that never runs."""
    url = "ws://127.0.0.1:9/"  # nothing is connected: the feed is never started
    if driver == "blocking":
        sync_feed = nonstop.sync.connect(url, fast=fast)
        for wait in (lambda: next(iter(sync_feed)), lambda: sync_feed.receive(),
                     lambda: next(sync_feed.batches()), lambda: next(sync_feed.records()),
                     lambda: sync_feed.wait_connected()):
            with pytest.raises(RuntimeError, match=r"use `with nonstop\.sync\.connect"):
                wait()
        return

    async def main() -> None:
        feed = nonstop.connect(url, fast=fast)
        with pytest.raises(RuntimeError, match=r"use `async with nonstop\.connect"):
            async for _ in feed:
                pass
        with pytest.raises(RuntimeError, match="use `async with"):
            await feed.receive()
        with pytest.raises(RuntimeError, match="use `async with"):
            async for _ in feed.batches():
                pass
        with pytest.raises(RuntimeError, match="use `async with"):
            async for _ in feed.records():
                pass
        with pytest.raises(RuntimeError, match="use `async with"):
            await feed.wait_connected()

    anyio.run(main, backend=driver)
