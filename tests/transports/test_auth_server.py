"""The testing server's authentication checks (``FeedServer(auth=...)``).

The three modes private feeds use -- a signed first-message login
(:class:`HmacLogin`), one-connection tokens on subscriptions
(:class:`TokenSubscriptions`), one-time listen keys fetched over plain HTTP
(:class:`ListenKeys`) -- each accept what a correct client sends and refuse,
with the documented close code or HTTP status and reason, what a wrong one
sends.  Checked with clients that do not share the server's code: the
``websockets`` package (asyncio, trio and sync clients) and ``urllib``.
Async tests run under asyncio, uvloop and trio.  Every test has a hard
timeout and connects only to 127.0.0.1 / localhost.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

import anyio
import pytest
import sniffio
import websockets.sync.client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from nonstop.testing import Fault, FeedServer, HmacLogin, ListenKeys, TokenSubscriptions
from nonstop.testing._auth import AuthGate, hmac_sha256_hex

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]

LOGIN = HmacLogin("api-key-1", "login-secret")
TOKENS = TokenSubscriptions("token-secret", ttl=60)
LIMIT = 5  # seconds: the in-test bound on any single wait


# -- clients -------------------------------------------------------------------


def ws_connect(url: str, **kwargs: Any) -> Any:
    """The ``websockets`` client for the running backend (asyncio or trio)."""
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", LIMIT)
    kwargs.setdefault("close_timeout", 1)
    if sniffio.current_async_library() == "trio":
        trio_client = pytest.importorskip("websockets.trio.client", reason="websockets' trio "
                                          "client needs websockets >= 17 (Python >= 3.11)")
        return trio_client.connect(url, **kwargs)
    from websockets.asyncio.client import connect

    return connect(url, **kwargs)


async def recv(ws: Any) -> Any:
    with anyio.fail_after(LIMIT):
        return await ws.recv()


async def closed_with(ws: Any) -> tuple[int, str]:
    """Read until the server closes; the close code and reason it sent."""
    with pytest.raises(ConnectionClosed) as info:
        with anyio.fail_after(LIMIT):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None, "the server sent no close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


def http(method: str, url: str, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """One blocking HTTP request (no proxy): status, headers, body."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    try:
        with opener.open(request, timeout=LIMIT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


async def ahttp(
    method: str, url: str, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    with anyio.fail_after(LIMIT):
        return await anyio.to_thread.run_sync(http, method, url, context)


async def listen_key(server: FeedServer, context: ssl.SSLContext | None = None) -> str:
    status, headers, body = await ahttp("POST", server.http_url + "listenKey", context)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    key = json.loads(body)["listenKey"]
    assert isinstance(key, str) and len(key) == 43
    return key


# -- HmacLogin -----------------------------------------------------------------------------


async def test_a_good_login_is_acknowledged_then_the_stream_starts() -> None:
    async with FeedServer(interval=0.005, auth=LOGIN) as server:
        async with ws_connect(server.url) as ws:
            await server.wait_connected()
            with anyio.move_on_after(0.1):  # nothing before the login
                pytest.fail(f"sent before the login: {await ws.recv()!r}")
            assert server.sent == 0
            await ws.send(json.dumps(LOGIN.message()))
            assert await recv(ws) == '{"op":"login","success":true}'
            first = json.loads(await recv(ws))
            assert first["seq"] == 1 and first["conn"] == 1
            await ws.send('{"op":"subscribe","channel":"x"}')
            while "event" not in (answer := json.loads(await recv(ws))):
                pass
            assert answer["event"] == "subscribed"
        assert server.auth_log == [(1, "accepted")]


async def test_an_integer_timestamp_and_a_shared_stream_work_too() -> None:
    async with FeedServer(interval=0.005, shared_stream=True, auth=LOGIN) as server:
        async with ws_connect(server.url) as ws:
            await ws.send(json.dumps(LOGIN.message(int(time.time()))))
            assert json.loads(await recv(ws)) == {"op": "login", "success": True}
            assert "seq" in json.loads(await recv(ws))


def _login(**change: object) -> str:
    message = LOGIN.message()
    message.update(change)
    return json.dumps(message)


@pytest.mark.parametrize(("message", "reason"), [
    pytest.param(lambda: json.dumps(LOGIN.message(time.time() - 60)), "stale timestamp", id="stale"),
    pytest.param(lambda: json.dumps(LOGIN.message(time.time() + 60)), "stale timestamp", id="future"),
    pytest.param(lambda: _login(sig="0" * 64), "bad signature", id="bad-signature"),
    pytest.param(lambda: json.dumps(HmacLogin(LOGIN.api_key, "other").message()), "bad signature",
                 id="wrong-secret"),
    pytest.param(lambda: _login(key="someone-else"), "unknown key", id="unknown-key"),
    pytest.param(lambda: _login(ts="now"), "malformed login", id="malformed"),
    pytest.param(lambda: '{"op":"subscribe","channel":"x"}', "login required", id="subscribe-first"),
    pytest.param(lambda: "echo:hello", "login required", id="echo-first"),
    pytest.param(lambda: b"\x00binary", "login required", id="binary-first"),
])
async def test_a_bad_login_is_closed_with_1008_and_the_reason(message: Any, reason: str) -> None:
    async with FeedServer(interval=0.005, auth=LOGIN) as server:
        async with ws_connect(server.url) as ws:
            sent = message()
            await ws.send(sent)
            code, why = await closed_with(ws)
        assert (code, why) == (1008, reason)
        assert server.auth_log == [(1, f"rejected: {reason}")]
        assert server.sent == 0
        assert LOGIN.secret not in why
        if isinstance(sent, str) and sent.startswith("{"):
            assert str(json.loads(sent).get("sig")) not in why  # the signature is not echoed


async def test_a_replayed_login_is_refused() -> None:
    async with FeedServer(interval=None, auth=LOGIN) as server:
        login = json.dumps(LOGIN.message())
        async with ws_connect(server.url) as ws:
            await ws.send(login)
            assert json.loads(await recv(ws))["success"] is True
        async with ws_connect(server.url) as ws:
            await ws.send(login)
            assert await closed_with(ws) == (1008, "replayed signature")
        async with ws_connect(server.url) as ws:  # a fresh one still works
            await ws.send(json.dumps(LOGIN.message(time.time() + 0.5)))
            assert json.loads(await recv(ws))["success"] is True
        assert server.auth_log == [(1, "accepted"), (2, "rejected: replayed signature"), (3, "accepted")]


async def test_pings_are_answered_before_the_login() -> None:
    async with FeedServer(interval=None, auth=LOGIN) as server:
        async with ws_connect(server.url) as ws:
            with anyio.fail_after(LIMIT):
                pong = await ws.ping()
                await (pong.wait() if sniffio.current_async_library() == "trio" else pong)
            await ws.send(json.dumps(LOGIN.message()))
            assert json.loads(await recv(ws))["success"] is True
            assert server.broadcast("news") == 1
            assert await recv(ws) == "news"


# -- TokenSubscriptions ---------------------------------------------------------------------


def subscribe(token: str | None, channel: str = "orders") -> str:
    message: dict[str, object] = {"op": "subscribe", "channel": channel}
    if token is not None:
        message["token"] = token
    return json.dumps(message)


async def test_a_good_token_subscribes_and_may_be_used_again_on_its_connection() -> None:
    async with FeedServer(interval=None, auth=TOKENS) as server:
        token = TOKENS.mint()
        async with ws_connect(server.url) as ws:
            for channel in ("orders", "fills"):
                request = subscribe(token, channel)
                await ws.send(request)
                assert json.loads(await recv(ws)) == {"event": "subscribed", "request": request}
        assert server.auth_log == [(1, "accepted"), (1, "accepted")]
        assert [number for number, _ in server.subscriptions] == [1, 1]


async def test_a_token_is_refused_on_a_later_connection() -> None:
    async with FeedServer(interval=None, auth=TOKENS) as server:
        token = TOKENS.mint()
        async with ws_connect(server.url) as ws:
            await ws.send(subscribe(token))
            assert json.loads(await recv(ws))["event"] == "subscribed"
        async with ws_connect(server.url) as ws:
            request = subscribe(token)
            await ws.send(request)
            answer = json.loads(await recv(ws))
            assert answer == {"event": "error", "request": request, "reason": "token already used"}
            assert await closed_with(ws) == (1008, "token already used")
        assert server.auth_log == [(1, "accepted"), (2, "rejected: token already used")]
        assert server.subscriptions == [(1, subscribe(token))]


def _far_token() -> str:
    exp = int(time.time()) + 3600
    return f"{exp}.{hmac_sha256_hex(TOKENS.secret, str(exp))}"


@pytest.mark.parametrize(("token", "reason"), [
    pytest.param(lambda: TOKENS.mint(time.time() - 3600), "expired token", id="expired"),
    pytest.param(_far_token, "token too far ahead", id="too-far-ahead"),
    pytest.param(lambda: TokenSubscriptions("other").mint(), "bad token signature", id="bad-signature"),
    pytest.param(lambda: None, "missing token", id="missing"),
    pytest.param(lambda: "not-a-token", "malformed token", id="malformed"),
])
async def test_a_bad_token_gets_an_error_then_1008(token: Any, reason: str) -> None:
    async with FeedServer(interval=0.005, require_subscription=True, auth=TOKENS) as server:
        async with ws_connect(server.url) as ws:
            request = subscribe(token())
            await ws.send(request)
            assert json.loads(await recv(ws)) == {"event": "error", "request": request, "reason": reason}
            assert await closed_with(ws) == (1008, reason)
        assert server.auth_log == [(1, f"rejected: {reason}")]
        assert server.subscriptions == [] and server.sent == 0


# -- ListenKeys ---------------------------------------------------------------------------


async def test_a_listen_key_opens_one_connection() -> None:
    async with FeedServer(interval=0.005, auth=ListenKeys()) as server:
        key = await listen_key(server)
        assert server.listen_keys_issued == 1
        async with ws_connect(f"{server.url}ws/{key}?x=1") as ws:
            assert json.loads(await recv(ws))["seq"] == 1
        for url in (f"{server.url}ws/{key}", f"{server.url}ws/unknown", server.url):
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(url):
                    pass
            assert info.value.response.status_code == 401
            assert bytes(info.value.response.body or b"") == b"listen key unknown or used\n"
        rejected = (0, "rejected: listen key unknown or used")
        assert server.auth_log == [(1, "accepted"), rejected, rejected, rejected]
        assert server.connections == 1 and server.rejected == 3


async def test_the_listen_key_route_over_tls(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
    async with FeedServer(ssl_context=server_ssl, interval=0.005, auth=ListenKeys()) as server:
        assert server.http_url == f"https://localhost:{server.port}/"
        first, second = await listen_key(server, client_ssl), await listen_key(server, client_ssl)
        assert first != second and server.listen_keys_issued == 2
        async with ws_connect(f"{server.url}ws/{second}", ssl=client_ssl) as ws:
            assert json.loads(await recv(ws))["conn"] == 1
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(f"{server.url}ws/{second}", ssl=client_ssl):
                pass
        assert info.value.response.status_code == 401
        async with ws_connect(f"{server.url}ws/{first}", ssl=client_ssl) as ws:
            assert json.loads(await recv(ws))["conn"] == 2
        assert server.connection(1).tls
        status, _, body = await ahttp("GET", server.http_url + "listenKey", client_ssl)
        assert (status, body) == (405, b"use POST /listenKey\n")


async def test_injected_handshake_faults_come_before_the_key_check() -> None:
    async with FeedServer(interval=0.005, auth=ListenKeys()) as server:
        key = await listen_key(server)
        server.inject(Fault.REJECT, status=503, retry_after=1)
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(f"{server.url}ws/{key}"):
                pass
        assert info.value.response.status_code == 503
        async with ws_connect(f"{server.url}ws/{key}") as ws:  # the key was not used up
            assert json.loads(await recv(ws))["seq"] == 1
        assert server.auth_log == [(1, "accepted")]


async def test_a_silent_server_does_not_answer_a_listen_key_request() -> None:
    async with FeedServer(interval=None, auth=ListenKeys()) as server:
        with anyio.fail_after(LIMIT):
            async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
                await server.wait_for(lambda: server.accepted == 1)
                assert server.inject(Fault.SILENT) == 1
                await stream.send(b"POST /listenKey HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                await server.wait_for(lambda: server.stalled == 1)
                with anyio.move_on_after(0.1):
                    pytest.fail(f"a silent server answered: {await stream.receive()!r}")
        await server.wait_for(lambda: server.history[0].phase == "closed")
        assert server.listen_keys_issued == 0


async def test_other_http_requests_are_answered_as_before() -> None:
    async with FeedServer(interval=None, auth=ListenKeys()) as server:
        status, headers, _ = await ahttp("GET", server.http_url + "listenKey")
        assert status == 405 and headers["Allow"] == "POST"
        status, _, body = await ahttp("GET", server.http_url + "other")
        assert status == 400 and b"Connection: Upgrade" in body
        status, _, _ = await ahttp("POST", server.http_url + "other")
        assert status == 400
        assert server.listen_keys_issued == 0 and server.connections == 0
    async with FeedServer(interval=None) as plain:  # without ListenKeys there is no such route
        status, _, _ = await ahttp("POST", plain.http_url + "listenKey")
        assert status == 400 and plain.listen_keys_issued == 0


async def test_a_listen_key_request_in_pieces_with_a_chunked_body() -> None:
    async with FeedServer(interval=None, auth=ListenKeys()) as server:
        with anyio.fail_after(LIMIT):
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            async with stream:
                for piece in (b"POST /listen", b"Key HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n",
                              b"\r\n3\r\nabc\r\n", b"0\r\n\r\n"):
                    await stream.send(piece)
                    await anyio.sleep(0.01)
                response = b""
                while True:
                    try:
                        response += await stream.receive()
                    except anyio.EndOfStream:
                        break
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
        assert set(json.loads(body)) == {"listenKey"} and server.listen_keys_issued == 1
        assert server.history[0].ended_by == "answered POST /listenKey with 200"


# -- blocking use ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_auth_from_blocking_code(backend: str) -> None:
    with FeedServer(interval=0.005, auth=LOGIN).run_in_thread(backend=backend) as server:
        with websockets.sync.client.connect(server.url, compression=None, close_timeout=1) as ws:
            ws.send(json.dumps(LOGIN.message()))
            assert json.loads(ws.recv(timeout=LIMIT)) == {"op": "login", "success": True}
            assert json.loads(ws.recv(timeout=LIMIT))["seq"] == 1
        with websockets.sync.client.connect(server.url, compression=None, close_timeout=1) as ws:
            ws.send('{"op":"subscribe"}')
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=LIMIT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        server.wait_for(lambda: len(server.auth_log) == 2, timeout=LIMIT)
        assert server.auth_log == [(1, "accepted"), (2, "rejected: login required")]

    with FeedServer(interval=0.005, auth=ListenKeys()).run_in_thread(backend=backend) as server:
        status, _, body = http("POST", server.http_url + "listenKey")
        assert status == 200 and server.listen_keys_issued == 1
        url = f"{server.url}ws/{json.loads(body)['listenKey']}"
        with websockets.sync.client.connect(url, compression=None, close_timeout=1) as ws:
            assert json.loads(ws.recv(timeout=LIMIT))["seq"] == 1
        with pytest.raises(InvalidStatus) as refused:
            websockets.sync.client.connect(url, compression=None, open_timeout=LIMIT)
        assert refused.value.response.status_code == 401
        assert server.auth_log == [(1, "accepted"), (0, "rejected: listen key unknown or used")]


# -- the checks themselves (no sockets) --------------------------------------------------------


def test_the_login_helpers_and_the_gate_agree() -> None:
    gate = AuthGate(LOGIN, limit=10)
    ts = 1_700_000_000.25
    message = LOGIN.message(ts)
    assert message == {"op": "login", "key": "api-key-1", "ts": ts, "sig": LOGIN.sign(ts)}
    assert LOGIN.sign(ts) == hmac_sha256_hex("login-secret", "1700000000.25GET/realtime")
    assert LOGIN.sign(1_700_000_000) == hmac_sha256_hex("login-secret", "1700000000GET/realtime")
    text = json.dumps(message)
    assert gate.check_login(text, now=ts + 5.0) is None  # max_age is inclusive
    assert gate.check_login(text, now=ts + 1) == "replayed signature"
    later = json.dumps(LOGIN.message(ts + 20))
    assert gate.check_login(later, now=ts + 20) is None
    assert list(gate._signatures) == [LOGIN.sign(ts + 20)]  # the old one could no longer pass anyway
    for bad in ('{"op":"login","key":"api-key-1","ts":NaN,"sig":"x"}',
                '{"op":"login","key":"api-key-1","ts":1e999,"sig":"x"}',
                '{"op":"login","key":"api-key-1","ts":' + "9" * 400 + ',"sig":"x"}',
                '{"op":"login","key":"api-key-1","ts":true,"sig":"x"}'):
        assert gate.check_login(bad, now=ts) == "malformed login"
    assert gate.check_login("[]", now=ts) == "login required"
    assert "secret" not in repr(LOGIN) and "secret" not in repr(TOKENS)


def test_the_token_helpers_and_the_gate_agree() -> None:
    gate = AuthGate(TOKENS, limit=10)
    now = 1_700_000_000.5
    token = TOKENS.mint(now)
    assert token == f"1700000060.{hmac_sha256_hex('token-secret', '1700000060')}"
    assert gate.check_token(subscribe(token), 1, now) is None
    assert gate.check_token(subscribe(token), 1, now + 10) is None
    assert gate.check_token(subscribe(token), 2, now + 10) == "token already used"
    assert gate.check_token(subscribe(token), 2, now + 60) == "expired token"
    assert gate._tokens == {token: (1_700_000_060, 1)}
    assert gate.check_token(subscribe(TOKENS.mint(now + 60)), 3, now + 60) is None
    assert token not in gate._tokens  # expired tokens are forgotten
    assert gate.check_token("subscribe orders", 1, now) == "missing token"
    assert gate.check_token(subscribe("01." + "0" * 64), 1, now) == "malformed token"


def test_listen_keys_are_single_use_and_bounded() -> None:
    gate = AuthGate(ListenKeys(), limit=2)
    keys = [gate.issue_listen_key() for _ in range(3)]
    assert gate.listen_keys_issued == 3 and len(set(keys)) == 3
    assert not gate.use_listen_key(f"/ws/{keys[0]}")  # the oldest unused one was forgotten
    assert not gate.use_listen_key(f"/{keys[1]}")
    assert gate.use_listen_key(f"/ws/{keys[1]}")
    assert not gate.use_listen_key(f"/ws/{keys[1]}")


def test_bad_parameters_fail_at_the_call() -> None:
    with pytest.raises(TypeError):
        HmacLogin("", "secret")
    with pytest.raises(TypeError) as info:
        HmacLogin("key", "")
    assert "secret" in str(info.value)
    with pytest.raises(ValueError):
        HmacLogin("key", "secret", max_age=-1)
    with pytest.raises(ValueError):
        TokenSubscriptions("secret", ttl=0.5)
    with pytest.raises(TypeError):
        FeedServer(auth="login")  # type: ignore[arg-type]
    assert FeedServer(auth=ListenKeys()).auth == ListenKeys()


def test_a_server_without_auth_logs_nothing() -> None:
    with FeedServer(interval=0.005).run_in_thread() as server:
        assert server.http_url == f"http://127.0.0.1:{server.port}/"
        with websockets.sync.client.connect(server.url, compression=None, close_timeout=1) as ws:
            assert json.loads(ws.recv(timeout=LIMIT))["seq"] == 1
        assert server.auth_log == [] and server.listen_keys_issued == 0


def test_a_token_may_carry_a_nonce_so_two_in_one_second_differ() -> None:
    gate = AuthGate(TOKENS, 100)
    now = 1_700_000_000.0
    claims = "1700000060.n0nce-1"
    token = f"{claims}.{hmac_sha256_hex(TOKENS.secret, claims)}"
    subscribe = json.dumps({"op": "subscribe", "token": token})
    assert gate.check_token(subscribe, 1, now) is None
    forged = f"1700000060.n0nce-2.{hmac_sha256_hex(TOKENS.secret, claims)}"
    assert gate.check_token(json.dumps({"op": "subscribe", "token": forged}), 1, now) == (
        "bad token signature")
