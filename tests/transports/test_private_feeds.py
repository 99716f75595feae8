"""Private feeds on every driver, against the testing server's auth checks.

Each test runs once per back end (asyncio, uvloop, trio, blocking) with a
real :class:`~nonstop.testing.FeedServer` on 127.0.0.1 that checks what a
private exchange feed checks: an HMAC-signed login over a timestamp in a
short window (replays refused), subscription tokens good for one
connection, listen keys issued over HTTP and good for one upgrade.  The
client side is written the way the docs show (``docs/auth.md``): signing
here is the test's own code, not the server's helpers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
import urllib.request
from typing import Any

import anyio
import pytest

import nonstop
from nonstop import CredentialsRefused, Disconnected, LoggedIn, Login, Reason, Subscribed, Subscription
from nonstop.testing import Fault, FeedServer, HmacLogin, ListenKeys, TokenSubscriptions

from .backends import Backend
from .conftest import FAST, until_seen

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

API_KEY, SECRET = "key-1", "s3cret-of-the-account"


def sign_login(secret: str = SECRET) -> dict[str, object]:
    """The login message, signed now over ``f"{ts}GET/realtime"``."""
    ts = time.time()  # full precision: two legs signing in one millisecond still differ
    sig = hmac.new(secret.encode(), f"{ts}GET/realtime".encode(), hashlib.sha256).hexdigest()
    return {"op": "login", "key": API_KEY, "ts": ts, "sig": sig}


def login_accepted(message: str | bytes) -> bool:
    return isinstance(message, str) and '"op":"login"' in message and '"success":true' in message


def seq(message: str | bytes) -> int | None:
    try:
        value = json.loads(message)
    except ValueError:
        return None
    return value.get("seq") if isinstance(value, dict) else None


async def reset_after_each(server: FeedServer, feed: Any, events: list[Any], *, resets: int,
                           pause: float) -> None:
    """*resets* times: wait for a logged-in, streaming connection, then RST it."""
    for n in range(1, resets + 1):
        await until_seen(events, lambda e, n=n: isinstance(e, LoggedIn) and e.connection == n)
        await anyio.sleep(pause)
        server.inject(Fault.RESET)
    await until_seen(events, lambda e: isinstance(e, LoggedIn) and e.connection == resets + 1)


async def test_a_signed_login_is_made_afresh_on_every_connection(backend: Backend) -> None:
    """The server takes a signature no older than 1 s and never the same one
    twice; reconnects spread over more than that window all log in."""
    events: list[Any] = []
    built: list[dict[str, object]] = []

    def login_message() -> dict[str, object]:
        built.append(sign_login())
        return built[-1]

    server = FeedServer(interval=0.01, auth=HmacLogin(API_KEY, SECRET, max_age=1.0))
    async with server:
        async with backend.connect(
            server.url, login=Login(message=login_message, ack=login_accepted),
            subscribe=[{"op": "subscribe", "channel": "orders"}], on_event=events.append,
            **FAST,
        ) as feed:
            started = time.monotonic()
            await reset_after_each(server, feed, events, resets=4, pause=0.35)
            assert time.monotonic() - started > 1.0  # longer than the signature window
            await until_seen(events, lambda e: isinstance(e, Subscribed) and e.connection == 5)
            got = []
            async for message in feed:
                if seq(message) is not None:
                    got.append(message)
                if len(got) == 3:
                    break
    assert [outcome for _, outcome in server.auth_log] == ["accepted"] * 5
    assert len({b["sig"] for b in built}) == 5
    assert [e.connection for e in events if isinstance(e, LoggedIn)] == [1, 2, 3, 4, 5]
    subscribed = [e.connection for e in events if isinstance(e, Subscribed)]
    assert subscribed == [1, 2, 3, 4, 5]  # once per connection, after its login


async def test_a_wrong_secret_stops_the_feed_and_never_reaches_the_logs(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    built: list[str] = []

    def login_message() -> dict[str, object]:
        message = sign_login("not-the-secret")
        built.append(str(message["sig"]))
        return message

    caplog.set_level(logging.DEBUG, logger="nonstop")
    events: list[Any] = []
    server = FeedServer(interval=0.01, auth=HmacLogin(API_KEY, SECRET))
    async with server:
        async with backend.connect(
            server.url, login=Login(message=login_message, ack=login_accepted, max_rejections=3),
            on_event=events.append, **FAST,
        ) as feed:
            with anyio.fail_after(10), pytest.raises(CredentialsRefused) as raised:
                async for _ in feed:
                    pass
    assert [outcome for _, outcome in server.auth_log] == ["rejected: bad signature"] * 3
    assert "refused the login 3 times in a row" in str(raised.value)
    refusals = [e for e in events if isinstance(e, Disconnected)]
    assert [e.reason for e in refusals] == [Reason.LOGIN_REJECTED] * 3
    assert "bad signature" in refusals[0].detail
    assert "[ALERT]" in caplog.text and "kind=auth" in caplog.text
    for secret in ("not-the-secret", *built):
        assert secret not in caplog.text
        assert secret not in repr(events)


async def fetch_listen_key(http_url: str, context: ssl.SSLContext | None) -> str:
    """``POST /listenKey`` (in a worker thread: a real blocking HTTP call)."""
    def post() -> str:
        request = urllib.request.Request(http_url + "listenKey", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            return str(json.load(answer)["listenKey"])

    return await anyio.to_thread.run_sync(post)


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_a_url_provider_fetches_a_fresh_listen_key_before_every_attempt(
        backend: Backend, tls: bool, server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nonstop")
    server = FeedServer(interval=0.01, auth=ListenKeys(), ssl_context=server_ssl if tls else None)
    keys: list[str] = []
    async with server:
        ws_base = server.url.rstrip("/") + "/ws/"
        http_url = server.http_url
        context = client_ssl if tls else None

        if backend.blocking:
            def listen_url() -> str:  # the blocking API: a plain function
                request = urllib.request.Request(http_url + "listenKey", data=b"", method="POST")
                with urllib.request.urlopen(request, timeout=5, context=context) as answer:
                    keys.append(json.load(answer)["listenKey"])
                return ws_base + keys[-1]
            provider: Any = listen_url
        else:
            async def listen_url_async() -> str:  # the async API: a coroutine function
                keys.append(await fetch_listen_key(http_url, context))
                return ws_base + keys[-1]
            provider = listen_url_async

        events: list[Any] = []
        options = dict(FAST, ssl=client_ssl) if tls else FAST
        async with backend.connect(provider, on_event=events.append, **options) as feed:
            for n in range(1, 4):
                await until_seen(events, lambda e, n=n: getattr(e, "connection", 0) == n
                                 and type(e).__name__ == "Connected")
                await anyio.sleep(0.05)
                server.inject(Fault.RESET)
            await until_seen(events, lambda e: type(e).__name__ == "Connected" and e.connection == 4)
            with anyio.fail_after(5):
                async for message in feed:
                    if seq(message) is not None:
                        break
    assert server.listen_keys_issued == len(keys) >= 4
    assert [outcome for _, outcome in server.auth_log] == ["accepted"] * len(keys)
    assert not [e for e in events if isinstance(e, Disconnected) and e.status == 401]
    for key in keys:
        assert key not in caplog.text


async def test_a_failing_url_provider_is_retried_with_its_own_reason(backend: Backend) -> None:
    server = FeedServer(interval=0.01)
    calls = []
    async with server:
        url = server.url

        def flaky() -> str:
            calls.append(1)
            if len(calls) <= 2:
                raise ConnectionError("listen key service answered 503")
            return url

        events: list[Any] = []
        provider: Any = flaky
        if not backend.blocking:
            async def flaky_async() -> str:
                await anyio.sleep(0)
                return flaky()
            provider = flaky_async
        async with backend.connect(provider, on_event=events.append, **FAST) as feed:
            with anyio.fail_after(10):
                await feed.wait_connected()
    failures = [e for e in events if isinstance(e, Disconnected)]
    assert [e.reason for e in failures][:2] == [Reason.URL_PROVIDER] * 2
    assert "raised ConnectionError: listen key service answered 503" in failures[0].detail
    assert failures[0].retry_in is not None and failures[0].retry_in > 0


async def test_a_url_provider_that_hangs_counts_against_connect_timeout(backend: Backend) -> None:
    server = FeedServer(interval=0.01)
    release = threading.Event()
    calls = []
    async with server:
        url = server.url

        def slow() -> str:
            calls.append(1)
            if len(calls) == 1:
                release.wait(10)  # hangs past connect_timeout
            return url

        provider: Any = slow
        if not backend.blocking:
            async def slow_async() -> str:
                calls.append(1)
                if len(calls) == 1:
                    await anyio.sleep(10)
                return url
            provider = slow_async
        events: list[Any] = []
        try:
            async with backend.connect(provider, on_event=events.append, connect_timeout=0.3,
                                       **FAST) as feed:
                with anyio.fail_after(10):
                    await feed.wait_connected()
        finally:
            release.set()
    first = next(e for e in events if isinstance(e, Disconnected))
    assert first.reason is Reason.URL_PROVIDER
    assert "did not return within connect_timeout (0.3s)" in first.detail


async def test_subscription_tokens_are_minted_for_every_connection(backend: Backend) -> None:
    minted: list[str] = []

    def subscribe_with_token() -> dict[str, object]:
        claims = f"{int(time.time()) + 60}.{secrets.token_hex(8)}"  # expiry, nonce
        token = f"{claims}.{hmac.new(b'token-secret', claims.encode(), hashlib.sha256).hexdigest()}"
        minted.append(token)
        return {"op": "subscribe", "channel": "fills", "token": token}

    def acked(message: str | bytes) -> bool:
        return isinstance(message, str) and '"event":"subscribed"' in message

    server = FeedServer(interval=0.01, auth=TokenSubscriptions("token-secret", ttl=60))
    events: list[Any] = []
    async with server:
        async with backend.connect(
            server.url, subscribe=[Subscription(message=subscribe_with_token, ack=acked,
                                                name="fills")],
            on_event=events.append, **FAST,
        ):
            for n in range(1, 4):
                await until_seen(events, lambda e, n=n: isinstance(e, Subscribed) and e.connection == n)
                server.inject(Fault.RESET)
            await until_seen(events, lambda e: isinstance(e, Subscribed) and e.connection == 4)
    assert len(set(minted)) == len(minted) >= 4
    assert all(outcome == "accepted" for _, outcome in server.auth_log)
    assert all(e.acked and e.subscription.label == "fills" for e in events
               if isinstance(e, Subscribed))


async def test_a_login_function_that_fails_is_reported_and_retried(backend: Backend) -> None:
    calls = []

    def sign_login_flaky() -> dict[str, object]:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("key store locked")
        return sign_login()

    events: list[Any] = []
    server = FeedServer(interval=0.01, auth=HmacLogin(API_KEY, SECRET))
    async with server:
        async with backend.connect(
            server.url, login=Login(message=sign_login_flaky, ack=login_accepted),
            on_event=events.append, **FAST,
        ) as feed:
            await until_seen(events, lambda e: isinstance(e, LoggedIn))
            with anyio.fail_after(5):
                async for message in feed:
                    if seq(message) is not None:
                        break
    failures = [e for e in events if isinstance(e, Disconnected)]
    assert [e.reason for e in failures][:3] == [Reason.CALLBACK_ERROR] * 2 + [Reason.STOPPED]
    assert "sign_login_flaky() raised RuntimeError: key store locked" in failures[0].detail
    assert failures[0].code == 1011


async def test_every_leg_of_a_redundant_feed_logs_in_on_its_own(backend: Backend) -> None:
    built: list[dict[str, object]] = []

    def login_message() -> dict[str, object]:
        built.append(sign_login())
        return built[-1]

    events: list[Any] = []
    server = FeedServer(interval=0.01, shared_stream=True, auth=HmacLogin(API_KEY, SECRET))
    async with server:
        async with backend.connect(
            server.url, redundancy=2, sequence=seq,
            login=Login(message=login_message, ack=login_accepted), on_event=events.append,
            **FAST,
        ) as feed:
            await until_seen(events, lambda e: sum(isinstance(x, LoggedIn) for x in events) >= 2)
            got: list[int] = []
            with anyio.fail_after(5):
                async for message in feed:
                    number = seq(message)
                    if number is not None:
                        got.append(number)
                    if len(got) == 20:
                        break
    assert [outcome for _, outcome in server.auth_log][:2] == ["accepted", "accepted"]
    assert len({b["sig"] for b in built}) == len(built) >= 2
    assert got == sorted(set(got))  # each number once, in order


async def test_wait_connected_returns_once_the_login_is_accepted(backend: Backend) -> None:
    server = FeedServer(interval=0.01, auth=HmacLogin(API_KEY, SECRET))
    events: list[Any] = []
    async with server:
        async with backend.connect(server.url, login=Login(message=sign_login, ack=login_accepted),
                                   on_event=events.append, **FAST) as feed:
            with anyio.fail_after(5):
                await feed.wait_connected()
            assert feed.state is nonstop.State.OPEN  # (the blocking driver may log it a moment later)
            await feed.send("echo:after-login")  # the server takes it: no "login required"
            with anyio.fail_after(5):
                async for message in feed:
                    if message == "echo:after-login":
                        break
    assert [outcome for _, outcome in server.auth_log] == ["accepted"]
    assert [e.connection for e in events if isinstance(e, LoggedIn)] == [1]


async def test_credentials_refused_leaves_async_with_unwrapped(backend: Backend) -> None:
    """``except CredentialsRefused`` around the ``async with`` catches it (the
    feed's task group does not wrap the body's exception in a group)."""
    server = FeedServer(interval=0.01, auth=HmacLogin(API_KEY, SECRET))
    async with server:
        with anyio.fail_after(10), pytest.raises(CredentialsRefused):
            async with backend.connect(
                server.url, login=Login(message=lambda: sign_login("wrong"), ack=login_accepted,
                                        max_rejections=1), **FAST,
            ) as feed:
                async for _ in feed:
                    pass


async def test_the_body_s_own_exception_leaves_async_with_as_raised(backend: Backend) -> None:
    server = FeedServer(interval=0.01)
    async with server:
        with anyio.fail_after(10), pytest.raises(ValueError, match="the application's"):
            async with backend.connect(server.url, **FAST) as feed:
                await feed.wait_connected()
                raise ValueError("the application's")
