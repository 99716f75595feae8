"""Interoperability: both drivers against the ``websockets`` package's server.

``websockets`` is an independent, widely used implementation; its threaded
server runs beside the test on 127.0.0.1, over ws:// and wss:// (a trustme
CA), and each test runs on asyncio, trio and the blocking driver (the
``backend`` fixture).  Each test has a hard timeout.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import pytest
from websockets.sync.server import ServerConnection, serve

import nonstop
from nonstop import Connected, Disconnected, Reason

from .conftest import FAST, Backend, until_seen

pytestmark = pytest.mark.timeout(60)


class Behaviour:
    """What the websockets server does with each connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[tuple[int, str | bytes]] = []
        self.headers: list[dict[str, str]] = []
        self.close_first_after: int | None = None  # close connection 1 after N echoes

    def __call__(self, ws: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        assert ws.request is not None
        self.headers.append(dict(ws.request.headers.raw_items()))
        for echoed, message in enumerate(ws, 1):
            self.received.append((number, message))
            ws.send(message)
            if number == 1 and self.close_first_after == echoed:
                ws.close(1001, "going away")
                return


@contextmanager
def websockets_server(
    behaviour: Callable[[ServerConnection], None], ssl_context: ssl.SSLContext | None = None
) -> Iterator[int]:
    with serve(behaviour, "127.0.0.1", 0, ssl=ssl_context) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(10)


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.anyio
async def test_echo_reconnect_and_resubscribe(
    tls: bool, server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, backend: Backend
) -> None:
    behaviour = Behaviour()
    behaviour.close_first_after = 2
    with websockets_server(behaviour, server_ssl if tls else None) as port:
        url = f"{'wss' if tls else 'ws'}://{'localhost' if tls else '127.0.0.1'}:{port}/feed?x=1"
        seen: list[str | bytes] = []
        with anyio.fail_after(30):
            async with backend.connect(
                url,
                subscribe=["sub-a", b"sub-b"],
                headers={"Authorization": "Bearer test-token"},
                ssl=client_ssl if tls else None,
                **FAST,
            ) as feed:
                async for message in feed:
                    seen.append(message)
                    if len(seen) == 4:
                        break
                await feed.send("after")
                seen.append(await feed.__anext__())
                metrics = feed.metrics()
    # connection 1 echoed both subscriptions and was closed with 1001;
    # connection 2 got them replayed, in order, with their types.
    assert seen == ["sub-a", b"sub-b", "sub-a", b"sub-b", "after"]
    assert behaviour.received == [(1, "sub-a"), (1, b"sub-b"), (2, "sub-a"), (2, b"sub-b"),
                                  (2, "after")]
    assert behaviour.headers[0]["Authorization"] == "Bearer test-token"
    assert behaviour.headers[0]["User-Agent"] == "nonstop"
    assert metrics.connection == 2 and metrics.reconnects == 1
    assert metrics.disconnects == {"server_closed": 1}


@pytest.mark.anyio
async def test_json_subscription_and_binary_echo_over_tls(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, backend: Backend
) -> None:
    behaviour = Behaviour()
    behaviour.close_first_after = 1
    events: list[nonstop.core.AppEvent] = []
    with websockets_server(behaviour, server_ssl) as port, anyio.fail_after(30):
        async with backend.connect(
            f"wss://localhost:{port}/", subscribe=[{"op": "sub"}], ssl=client_ssl,
            on_event=events.append, **FAST,
        ) as feed:
            first = await feed.receive(timeout=10)
            second = await feed.receive(timeout=10)
            await feed.send(b"\x00binary")
            third = await feed.receive(timeout=10)
    assert (first, second, third) == ('{"op":"sub"}', '{"op":"sub"}', b"\x00binary")
    assert [type(e) for e in events if isinstance(e, (Connected, Disconnected))] == [
        Connected, Disconnected, Connected, Disconnected]
    server_close = next(e for e in events if isinstance(e, Disconnected))
    assert (server_close.reason, server_close.code) == (Reason.SERVER_CLOSED, 1001)
    assert feed.state is nonstop.State.STOPPED


@pytest.mark.anyio
async def test_an_untrusted_certificate_is_refused(
    server_ssl: ssl.SSLContext, backend: Backend
) -> None:
    """The default context verifies: a self-made CA is not trusted."""
    with websockets_server(Behaviour(), server_ssl) as port, anyio.fail_after(30):
        events: list[nonstop.core.AppEvent] = []
        async with backend.connect(f"wss://localhost:{port}/", on_event=events.append, **FAST):
            event = await until_seen(events, lambda e: isinstance(e, Disconnected))
    assert event.reason is Reason.TLS
    assert "certificate" in event.detail.lower()
