"""Name lookups on every back end: the ``resolver`` hook, the last good
address standing in for a lookup that fails or hangs right after a working
connection, and lookup failures reported as such (reason ``dns``).

The hook maps the name ``feed.test`` to the testing server on 127.0.0.1; a
test then makes it fail or hang, and breaks the connection.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import anyio
import pytest

from nonstop import Disconnected, Reason
from nonstop.testing import Fault, FeedServer

from .conftest import Backend
from .test_fast_return import CLIENT as FAST_RETURN_CLIENT
from .test_faults import Recorder

pytestmark = pytest.mark.timeout(60)

#: The fast-return tests' client, with a connect timeout short enough that a
#: hung lookup (half of it) ends within the test.
CLIENT: dict[str, Any] = {**FAST_RETURN_CLIENT, "connect_timeout": 2.0}


class Resolver:
    """``feed.test`` -> 127.0.0.1:*port*; then, as told, fails or hangs."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, host: str, port: int) -> list[tuple[Any, ...]]:
        self.calls += 1
        assert host == "feed.test"
        if self.mode == "fail":
            raise socket.gaierror(socket.EAI_NONAME, "feed.test: Name or service not known")
        if self.mode == "hang":
            self.release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]


def named(server: FeedServer) -> str:
    return server.url.replace("127.0.0.1", "feed.test")


@pytest.mark.parametrize("mode", ["fail", "hang"])
@pytest.mark.anyio
async def test_a_lookup_that_fails_right_after_a_connection_worked_uses_its_address(
        mode: str, backend: Backend) -> None:
    rec = Recorder()
    resolver = Resolver()
    try:
        async with FeedServer(interval=0.01) as server:
            with anyio.fail_after(30):
                async with backend.connect(named(server), on_event=rec, resolver=resolver,
                                           **CLIENT) as feed:
                    await rec.acked(timeout=10)
                    assert resolver.calls == 1
                    await anyio.sleep(0.3)  # stable
                    resolver.mode = mode
                    t0 = time.monotonic()
                    server.inject(Fault.RESET)
                    with anyio.fail_after(10):
                        while rec.recovered(t0, Reason.RESET) is None:
                            await anyio.sleep(0.01)
                    back = rec.recovered(t0, Reason.RESET)
                    assert back is not None
                    assert feed.metrics().connection == 2
    finally:
        resolver.release.set()
    t_back, connection = back
    assert connection == 2 and resolver.calls == 2
    # a failed lookup stands aside at once; a hung one after LOOKUP_PATIENCE (1 s)
    assert t_back - t0 < (0.5 if mode == "fail" else 2.0)
    assert not [e for _, e in rec.events if isinstance(e, Disconnected) and e.reason is Reason.DNS]


@pytest.mark.parametrize("mode", ["fail", "hang"])
@pytest.mark.anyio
async def test_a_lookup_that_fails_with_nothing_to_stand_in_is_a_dns_failure(
        mode: str, backend: Backend) -> None:
    rec = Recorder()
    resolver = Resolver(mode)
    try:
        async with FeedServer(interval=0.01) as server:
            with anyio.fail_after(30):
                async with backend.connect(named(server), on_event=rec, resolver=resolver,
                                           **CLIENT):
                    with anyio.fail_after(10):
                        while not rec.after(0, Disconnected):
                            await anyio.sleep(0.01)
    finally:
        resolver.release.set()
    gone = rec.after(0, Disconnected)[0][1]
    assert gone.reason is Reason.DNS
    if mode == "fail":
        assert "Name or service not known" in gone.detail
    else:  # half the connect timeout, not a connect timeout
        assert "feed.test gave no answer within 1s" in gone.detail


@pytest.mark.anyio
async def test_a_resolver_that_raises_anything_is_named_in_a_dns_failure(backend: Backend) -> None:
    rec = Recorder()

    def broken(host: str, port: int) -> list[tuple[Any, ...]]:
        raise KeyError(host)

    async with FeedServer(interval=0.01) as server:
        with anyio.fail_after(30):
            async with backend.connect(named(server), on_event=rec, resolver=broken, **CLIENT):
                with anyio.fail_after(10):
                    while not rec.after(0, Disconnected):
                        await anyio.sleep(0.01)
    gone = rec.after(0, Disconnected)[0][1]
    assert gone.reason is Reason.DNS and "raised KeyError('feed.test')" in gone.detail
