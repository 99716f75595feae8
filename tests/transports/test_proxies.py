"""Proxies on every driver, through real proxy servers we did not write
(:mod:`.proxies`: tinyproxy for HTTP ``CONNECT``, microsocks for SOCKS5,
pproxy for an ``https://`` proxy) to the ``websockets`` package's server.
Each test has a hard timeout."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from websockets.sync.server import ServerConnection

import nonstop
import nonstop.sync
from nonstop import Connected, Disconnected, FeedGaveUp, Reason

from .conftest import QUIET, Backend, until_seen
from .proxies import Microsocks, Pproxy, ProxyServer, Tinyproxy, free_port
from .test_interop_websockets import websockets_server

pytestmark = pytest.mark.timeout(60)

SECRET = "pa55-w0rd-Zq9"


class Counter:
    """The feed's server: after each message it gets, *count* numbered
    messages (JSON of about 1 KiB, which deflate shrinks); remembers what
    each connection negotiated."""

    def __init__(self, count: int = 20) -> None:
        self.count = count
        self.connections = 0
        self.extensions: list[list[str]] = []

    def __call__(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.extensions.append([ext.name for ext in ws.protocol.extensions])
        for _ in ws:
            for seq in range(self.count):
                ws.send(json.dumps({"conn": self.connections, "seq": seq, "pad": "tick " * 200}))


async def take(feed: Any, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async for message in feed:
        got.append(json.loads(message))
        if len(got) == count:
            break
    return got


@pytest.fixture
def pem(tmp_path: Path, ca: trustme.CA) -> Path:
    """Key and certificate chain for localhost, from the tests' CA."""
    path = tmp_path / "proxy.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


def _kinds(tmp: Path, pem: Path) -> dict[str, tuple[ProxyServer, str]]:
    return {
        "http": (Tinyproxy(tmp), "http"),
        "http-auth": (Tinyproxy(tmp, user="alice", password=SECRET), "http"),
        "socks5": (Microsocks(tmp), "socks5"),
        "socks5-auth": (Microsocks(tmp, user="bob", password=SECRET), "socks5"),
        "socks5h-auth": (Microsocks(tmp, user="bob", password=SECRET), "socks5h"),
        "https-auth": (Pproxy(tmp, pem, user="carol", password=SECRET), "https"),
    }


@pytest.mark.parametrize("kind", ["http", "http-auth", "socks5", "socks5-auth", "socks5h-auth", "https-auth"])
@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.anyio
async def test_messages_flow_through_each_kind_of_proxy(
        kind: str, tls: bool, tmp_path: Path, pem: Path, server_ssl: ssl.SSLContext,
        client_ssl: ssl.SSLContext, backend: Backend) -> None:
    """Subscriptions go out and messages come back through the tunnel; with
    ``wss://`` the feed's TLS runs inside it, verified for the feed's name,
    and permessage-deflate is negotiated through it as without a proxy."""
    server, scheme = _kinds(tmp_path, pem)[kind]
    counter = Counter()
    with server, websockets_server(counter, server_ssl if tls else None) as port:
        url = f"{'wss' if tls else 'ws'}://localhost:{port}/"
        with anyio.fail_after(30):
            async with backend.connect(url, subscribe=["go"], proxy=server.url(scheme=scheme),
                                       ssl=client_ssl if tls or scheme == "https" else None,
                                       **QUIET) as feed:
                got = await take(feed, counter.count)
                connected = [e for e in feed.history if isinstance(e, Connected)]
    assert [m["seq"] for m in got] == list(range(counter.count))
    shown = f"{scheme}://{'***@' if server.user else ''}127.0.0.1:{server.port}"
    assert [e.proxy for e in connected] == [shown]
    assert counter.extensions == [["permessage-deflate"]]
    if isinstance(server, Tinyproxy):
        assert server.tunnels() == 1


@pytest.mark.parametrize("proxy_kind", ["http", "socks5", "https"])
@pytest.mark.anyio
async def test_the_feed_recovers_through_a_proxy_that_died_and_came_back(
        proxy_kind: str, tmp_path: Path, pem: Path, server_ssl: ssl.SSLContext,
        client_ssl: ssl.SSLContext, backend: Backend) -> None:
    """The proxy is killed mid-stream: the connection ends, attempts fail
    with reason ``proxy`` while it is down, and once it is back on its port
    the feed reconnects through it and resubscribes (through an
    ``https://`` proxy, to a ``wss://`` feed: TLS inside TLS, both times)."""
    server: ProxyServer = {"http": lambda: Tinyproxy(tmp_path), "socks5": lambda: Microsocks(tmp_path),
                           "https": lambda: Pproxy(tmp_path, pem)}[proxy_kind]()
    tls = proxy_kind == "https"
    counter = Counter(count=3)
    events: list[Any] = []
    with server, websockets_server(counter, server_ssl if tls else None) as port:
        url = f"wss://localhost:{port}/" if tls else f"ws://127.0.0.1:{port}/"
        with anyio.fail_after(40):
            async with backend.connect(url, subscribe=["go"], proxy=server.url(),
                                       ssl=client_ssl if tls else None,
                                       on_event=events.append, **QUIET) as feed:
                first = await take(feed, 3)
                server.stop()
                await until_seen(events, lambda e: isinstance(e, Disconnected) and e.reason is Reason.PROXY)
                server.start()
                second = await take(feed, 3)
    assert [m["conn"] for m in first] == [1, 1, 1]
    assert [m["conn"] for m in second] == [2, 2, 2]
    down = [e for e in events if isinstance(e, Disconnected) and e.reason is Reason.PROXY]
    assert "cannot reach the proxy" in down[0].detail and str(server.port) in down[0].detail


@pytest.mark.parametrize(("proxy_kind", "credentials", "words"), [
    ("http", "wrong", "refused the credentials"),
    ("http", "none", "wants a user name and password"),
    ("socks5", "wrong", "refused the credentials"),
    ("socks5", "none", "wants a user name and password"),
])
@pytest.mark.anyio
async def test_wrong_or_missing_credentials_stop_the_feed_with_a_clear_error(
        proxy_kind: str, credentials: str, words: str, tmp_path: Path, backend: Backend,
        caplog: pytest.LogCaptureFixture) -> None:
    """Retrying cannot fix credentials: the first refusal stops the feed
    (reason ``proxy_auth``), with an error that says what to fix and never
    shows the password."""
    cls = Tinyproxy if proxy_kind == "http" else Microsocks
    server = cls(tmp_path, user="alice", password="the-right-one")
    proxy = server.url(password=SECRET) if credentials == "wrong" else server.url().split("//")[0] + \
        f"//127.0.0.1:{server.port}"
    events: list[Any] = []
    caplog.set_level(logging.DEBUG, logger="nonstop")
    with server, websockets_server(Counter()) as port:
        with anyio.fail_after(30), pytest.raises(FeedGaveUp) as raised:
            async with backend.connect(f"ws://127.0.0.1:{port}/", proxy=proxy, on_event=events.append,
                                       **QUIET) as feed:
                await take(feed, 1)
    stopped = raised.value.stopped
    assert stopped.reason is Reason.PROXY_AUTH
    assert words in stopped.detail and "proxy URL" in stopped.detail
    failures = [e for e in events if isinstance(e, Disconnected)]
    assert [e.reason for e in failures] == [Reason.PROXY_AUTH]
    everything = caplog.text + repr(events) + str(raised.value)
    assert SECRET not in everything and "the-right-one" not in everything


@pytest.mark.anyio
async def test_the_environment_names_the_proxy_and_no_proxy_bypasses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend) -> None:
    """Left out, ``proxy`` is the environment's (``http_proxy`` for ``ws://``);
    ``no_proxy`` sends a matching host direct; ``proxy=None`` ignores it."""
    counter = Counter(count=2)
    with Tinyproxy(tmp_path) as server, websockets_server(counter) as port:
        monkeypatch.setenv("HTTP_PROXY", server.url())
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
        with anyio.fail_after(30):
            async with backend.connect(f"ws://127.0.0.1:{port}/", subscribe=["go"], **QUIET) as feed:
                await take(feed, 2)
            assert server.tunnels() == 1
            monkeypatch.setenv("NO_PROXY", f"example.com, 127.0.0.0/8:{port}")
            async with backend.connect(f"ws://127.0.0.1:{port}/", subscribe=["go"], **QUIET) as feed:
                await take(feed, 2)
            assert server.tunnels() == 1  # direct
            monkeypatch.delenv("NO_PROXY")
            monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")  # nothing there
            async with backend.connect(f"ws://127.0.0.1:{port}/", subscribe=["go"], proxy=None,
                                       **QUIET) as feed:
                await take(feed, 2)
    assert counter.connections == 3


@pytest.mark.anyio
async def test_the_proxy_counts_against_connect_timeout(backend: Backend) -> None:
    """A proxy that accepts the connection and never answers: the attempt
    ends at ``connect_timeout`` (reason ``connect_timeout``), and the feed
    retries."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        events: list[Any] = []
        with anyio.fail_after(30):
            async with backend.connect(f"ws://127.0.0.1:{free_port()}/", connect_timeout=0.3,
                                       proxy=f"socks5h://127.0.0.1:{silent.getsockname()[1]}",
                                       on_event=events.append, **QUIET):
                await until_seen(events, lambda e: isinstance(e, Disconnected)
                                 and e.reason is Reason.CONNECT_TIMEOUT and e.retry_in is not None)


@pytest.mark.anyio
async def test_a_proxy_that_cannot_reach_the_feed_is_retried(tmp_path: Path, backend: Backend) -> None:
    """The proxy answers, but the feed's port is closed: reason
    ``proxy_refused`` (the proxy's own words), retried with backoff."""
    events: list[Any] = []
    with Microsocks(tmp_path) as server:
        with anyio.fail_after(30):
            async with backend.connect(f"ws://127.0.0.1:{free_port()}/", proxy=server.url(scheme="socks5h"),
                                       on_event=events.append, **QUIET):
                seen = await until_seen(events, lambda e: isinstance(e, Disconnected)
                                        and e.reason is Reason.PROXY_REFUSED and e.retry_in is not None)
    assert "would not open a tunnel" in seen.detail


def test_the_environment_proxy_is_checked_when_the_feed_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"ftp://user:{SECRET}@proxy:21")
    with pytest.raises(nonstop.ConfigError) as raised:
        nonstop.sync.connect("wss://example.com/")
    assert "HTTPS_PROXY" in str(raised.value) and SECRET not in str(raised.value)

