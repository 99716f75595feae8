"""The opening handshake: what the server sees, what the
core makes of every kind of answer, and its timeouts.

Times are exact: the fake clock starts at 1000.0 and only moves when told.
"""

from __future__ import annotations

import random
import re

import pytest
from wsproto.events import AcceptConnection, RejectConnection, RejectData, TextMessage
from wsproto.utilities import generate_accept_token

from nonstop.core import (
    ERROR,
    Alert,
    AlertKind,
    Backoff,
    CloseTransport,
    Connected,
    Connecting,
    Disconnected,
    Gap,
    Message,
    NotConnected,
    OpenTransport,
    Reason,
    State,
    Stopped,
    Subscribed,
)
from tests.helpers import Pair, frame

NOW = 1000.0


def first_delay(seed: int, ceiling: float, jitter: float = 1.0) -> float:
    """The documented backoff draw for the first failure: ``ceiling * (1 - jitter * r)``."""
    return ceiling * (1 - jitter * random.Random(seed).random())


def header(pair: Pair, name: str, request: int = -1) -> list[str]:
    """Values of one header in an upgrade request the server received."""
    wanted = name.lower().encode()
    return [v.decode() for k, v in pair.requests[request].extra_headers if k.lower() == wanted]


def request_key(pair: Pair) -> bytes:
    match = re.search(rb"\r\nSec-WebSocket-Key: (\S+)\r\n", bytes(pair.wire_to_server), re.I)
    assert match is not None
    return match.group(1)


def response_101(pair: Pair, *, upgrade: bool = True, connection: bool = True,
                 accept: bytes | None = None, extra: bytes = b"") -> bytes:
    """A hand-built upgrade answer, valid unless told otherwise."""
    lines = [b"HTTP/1.1 101 Switching Protocols"]
    if upgrade:
        lines.append(b"Upgrade: websocket")
    if connection:
        lines.append(b"Connection: Upgrade")
    token = generate_accept_token(request_key(pair)) if accept is None else accept
    lines.append(b"Sec-WebSocket-Accept: " + token)
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


def opened(url: str = "ws://feed.example/stream", **options: object) -> Pair:
    """A pair whose core has sent its upgrade request (state HANDSHAKING)."""
    options.setdefault("ping_interval", None)
    pair = Pair(url, **options)
    pair.start()
    pair.open()
    assert pair.core.state is State.HANDSHAKING
    return pair


# ---------------------------------------------------------------------------
# the upgrade request


def test_start_asks_for_a_transport_to_the_url_host_and_port() -> None:
    pair = Pair("wss://feed.example:8443/v1?token=T")
    assert pair.start() == [
        Connecting(attempt=1, total_attempts=1, url="wss://feed.example:8443/v1?token=***"),
        OpenTransport(host="feed.example", port=8443, tls=True, server_hostname="feed.example"),
    ]
    assert pair.core.state is State.CONNECTING


def test_plain_ws_transport_has_no_server_hostname() -> None:
    pair = Pair("ws://feed.example/")
    assert pair.start()[-1] == OpenTransport(host="feed.example", port=80, tls=False,
                                             server_hostname=None)


def test_server_hostname_overrides_the_tls_name() -> None:
    pair = Pair("wss://10.0.0.5/", server_hostname="feed.example")
    assert pair.start()[-1] == OpenTransport(host="10.0.0.5", port=443, tls=True,
                                             server_hostname="feed.example")


def test_ipv6_transport_uses_the_bare_address() -> None:
    pair = Pair("wss://[::1]:9000/x")
    assert pair.start()[-1] == OpenTransport(host="::1", port=9000, tls=True,
                                             server_hostname="::1")


def test_nothing_is_written_before_the_transport_opens() -> None:
    pair = Pair()
    pair.core.start(NOW)
    assert pair.core.data_to_send() == b""


def test_request_target_and_host_header() -> None:
    pair = opened("ws://feed.example:8080/v2/stream?symbols=BTC,ETH&d=\u00e9")
    [request] = pair.requests
    assert request.host == "feed.example:8080"
    assert request.target == "/v2/stream?symbols=BTC,ETH&d=%C3%A9"
    assert bytes(pair.wire_to_server).startswith(
        b"GET /v2/stream?symbols=BTC,ETH&d=%C3%A9 HTTP/1.1\r\nHost: feed.example:8080\r\n")


def test_host_header_of_default_port_has_no_port() -> None:
    pair = opened("wss://feed.example:443/")
    assert pair.requests[0].host == "feed.example"


def test_ipv6_host_header_keeps_brackets() -> None:
    pair = opened("ws://[::1]:9000/feed")
    assert pair.requests[0].host == "[::1]:9000"
    assert b"\r\nHost: [::1]:9000\r\n" in bytes(pair.wire_to_server)


def test_ipv6_host_header_with_default_port() -> None:
    assert opened("ws://[2001:db8::1]/").requests[0].host == "[2001:db8::1]"


def test_subprotocols_are_offered_in_order() -> None:
    pair = opened(subprotocols=["graphql-ws", "v2.example"])
    assert pair.requests[0].subprotocols == ["graphql-ws", "v2.example"]
    assert b"\r\nSec-WebSocket-Protocol: graphql-ws, v2.example\r\n" in bytes(pair.wire_to_server)


def test_no_subprotocol_header_without_subprotocols() -> None:
    pair = opened()
    assert pair.requests[0].subprotocols == []
    assert b"sec-websocket-protocol" not in bytes(pair.wire_to_server).lower()


def test_extra_headers_from_a_dict() -> None:
    pair = opened(headers={"X-Api-Key": "k1", "X-Client": "nonstop-test"})
    assert header(pair, "X-Api-Key") == ["k1"]
    assert header(pair, "X-Client") == ["nonstop-test"]


def test_extra_headers_from_a_list_keep_order_and_repeats() -> None:
    pair = opened(headers=[("X-Tag", "a"), ("X-Other", "o"), ("X-Tag", "b")])
    assert header(pair, "X-Tag") == ["a", "b"]
    wire = bytes(pair.wire_to_server)
    assert wire.index(b"X-Tag: a") < wire.index(b"X-Other: o") < wire.index(b"X-Tag: b")


def test_user_agent_defaults_to_nonstop() -> None:
    assert header(opened(), "User-Agent") == ["nonstop"]


def test_user_agent_can_be_overridden() -> None:
    assert header(opened(user_agent="prices-bot/2.1"), "User-Agent") == ["prices-bot/2.1"]


def test_user_agent_none_sends_no_user_agent() -> None:
    assert header(opened(user_agent=None), "User-Agent") == []


def test_user_agent_from_headers_wins_over_the_option() -> None:
    pair = opened(headers={"user-agent": "mine/1"}, user_agent="option/1")
    assert header(pair, "User-Agent") == ["mine/1"]


def test_url_userinfo_is_sent_as_basic_authorization() -> None:
    pair = opened("wss://alice:s3cret@feed.example/")
    assert header(pair, "Authorization") == ["Basic YWxpY2U6czNjcmV0"]
    assert pair.requests[0].host == "feed.example"


def test_explicit_authorization_header_wins_over_userinfo() -> None:
    pair = opened("wss://alice:s3cret@feed.example/", headers={"Authorization": "Bearer T"})
    assert header(pair, "Authorization") == ["Bearer T"]


def test_userinfo_never_reaches_the_connecting_event() -> None:
    pair = Pair("wss://alice:s3cret@feed.example/?api_key=K")
    connecting = pair.start()[0]
    assert isinstance(connecting, Connecting)
    assert connecting.url == "wss://***@feed.example/?api_key=***"


def test_header_provider_is_called_on_every_attempt_with_fresh_values() -> None:
    calls: list[int] = []

    def provider() -> dict[str, str]:
        calls.append(len(calls) + 1)
        return {"Authorization": f"Bearer token-{len(calls)}"}

    pair = opened(headers=provider, backoff=Backoff(jitter=0))
    assert calls == [1]
    assert header(pair, "Authorization") == ["Bearer token-1"]
    pair.reject(500)
    assert calls == [1]  # not called while waiting
    pair.fire_next()
    assert calls == [1]  # nor when the attempt starts: only once TCP is up
    pair.open()
    assert calls == [1, 2]
    assert header(pair, "Authorization") == ["Bearer token-2"]
    pair.accept()
    assert pair.core.state is State.OPEN


def test_header_provider_after_a_drop_of_an_open_connection() -> None:
    tokens = iter(["a", "b"])
    pair = opened(headers=lambda: [("X-Token", next(tokens))], backoff=Backoff(jitter=0))
    pair.accept()
    pair.eof()
    pair.reconnect_after_backoff()
    assert [header(pair, "X-Token", i) for i in (0, 1)] == [["a"], ["b"]]


def test_header_provider_authorization_wins_over_userinfo() -> None:
    pair = opened("ws://u:p@feed.example/", headers=lambda: {"authorization": "Bearer X"})
    assert header(pair, "Authorization") == ["Bearer X"]


def test_core_refuses_to_send_before_the_handshake_completes() -> None:
    pair = opened()
    with pytest.raises(NotConnected):
        pair.core.send("early", NOW)
    assert pair.core.data_to_send() == b""


# ---------------------------------------------------------------------------
# success


def test_connected_event_fields() -> None:
    pair = Pair(ping_interval=None)
    pair.start()
    pair.advance(0.25)
    pair.open()
    pair.advance(0.5)
    assert pair.accept() == [
        Connected(connection=1, attempt=1, subprotocol=None, handshake_time=0.75, downtime=None)
    ]
    assert pair.core.state is State.OPEN


def test_connected_reports_the_chosen_subprotocol() -> None:
    pair = opened(subprotocols=["v1", "v2"])
    [event] = pair.accept("v2")
    assert isinstance(event, Connected) and event.subprotocol == "v2"


def test_handshake_time_and_downtime_after_a_reconnect() -> None:
    pair = opened(backoff=Backoff(jitter=0, initial=2.0))
    pair.accept()
    pair.advance(3.0)
    pair.eof()  # lost at 1003.0; retry at 1005.0
    assert pair.fire_next() == 1005.0
    pair.advance(0.125)
    pair.open()
    pair.advance(0.25)
    assert pair.accept() == [
        Connected(connection=2, attempt=2, subprotocol=None, handshake_time=0.375,
                  downtime=2.375),
        Gap(start=1003.0, end=1005.375, reason="eof", connection=2),  # no ACK to wait for
    ]


def test_subscriptions_are_sent_right_after_the_101() -> None:
    pair = opened(subscriptions=["sub-a", b"sub-b"])
    events = pair.accept()
    assert [type(e) for e in events] == [Connected, Subscribed, Subscribed]
    assert pair.server_messages == ["sub-a", b"sub-b"]


def test_frames_in_the_same_chunk_as_the_101_are_delivered() -> None:
    pair = opened()
    assert pair.server is not None
    data = pair.server.send(AcceptConnection())
    data += pair.server.send(TextMessage(data="first")) + frame(0x2, b"\x00\x01")
    pair.feed(data)
    events = pair.pump()
    assert [type(e) for e in events] == [Connected, Message, Message]
    assert pair.messages() == ["first", b"\x00\x01"]
    assert all(m.received_at == NOW and m.connection == 1 for m in pair.of(Message))


def test_ping_in_the_same_chunk_as_the_101_is_answered() -> None:
    pair = opened()
    assert pair.server is not None
    pair.feed(pair.server.send(AcceptConnection()) + frame(0x9, b"hi"))
    pair.server.receive_data(pair.core.data_to_send())
    assert [(type(e).__name__, bytes(e.payload)) for e in pair.server.events()] == [
        ("Pong", b"hi")]


def test_101_split_byte_by_byte_connects_on_the_last_byte() -> None:
    pair = opened()
    data = response_101(pair)
    for i, byte in enumerate(data):
        pair.core.receive_data(bytes([byte]), NOW)
        events = pair.pump()
        assert (events != []) == (i == len(data) - 1)
    assert pair.core.state is State.OPEN


def test_hand_built_101_is_accepted() -> None:
    pair = opened()
    pair.feed(response_101(pair, extra=b"X-Server: test\r\n"))
    assert [type(e) for e in pair.pump()] == [Connected]


# ---------------------------------------------------------------------------
# timeouts


def test_connect_timeout_deadline_and_failure() -> None:
    pair = Pair(ping_interval=None, connect_timeout=3.0, backoff=Backoff(jitter=0))
    pair.start()
    assert pair.core.next_deadline() == NOW + 3.0
    assert pair.fire_next() == 1003.0
    assert pair.events[2:] == [
        Disconnected(reason=Reason.CONNECT_TIMEOUT, code=None, status=None,
                     detail="TCP/TLS not up within 3.0s", level=ERROR, connection=None,
                     uptime=0.0, failures=1, retry_in=0.5, retry_at=1003.5),
        CloseTransport(abort=True),
    ]
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == 1003.5


def test_connect_timeout_does_not_fire_early() -> None:
    pair = Pair(ping_interval=None, connect_timeout=3.0)
    pair.start()
    pair.core.handle_timer(1002.999)
    assert pair.core.state is State.CONNECTING
    assert pair.core.next_event() is None


def test_opening_in_time_replaces_the_connect_deadline_with_the_handshake_one() -> None:
    pair = Pair(ping_interval=None, connect_timeout=3.0, handshake_timeout=4.0)
    pair.start()
    pair.advance(2.0)
    pair.open()
    assert pair.core.next_deadline() == 1006.0


def test_handshake_timeout_deadline_and_failure() -> None:
    pair = Pair(ping_interval=None, handshake_timeout=4.0, backoff=Backoff(jitter=0))
    pair.start()
    pair.advance(2.0)
    pair.open()
    assert pair.core.next_deadline() == 1006.0
    pair.core.handle_timer(1005.5)
    assert pair.core.state is State.HANDSHAKING
    assert pair.fire_next() == 1006.0
    assert pair.events[2:] == [
        Disconnected(reason=Reason.HANDSHAKE_TIMEOUT, code=None, status=None,
                     detail="no upgrade response within 4.0s", level=ERROR, connection=None,
                     uptime=0.0, failures=1, retry_in=0.5, retry_at=1006.5),
        CloseTransport(abort=True),
    ]
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == 1006.5


def test_partial_response_does_not_extend_the_handshake_timeout() -> None:
    pair = opened(handshake_timeout=4.0)
    pair.advance(3.0)
    pair.feed(b"HTTP/1.1 101 Switching")
    assert pair.core.next_deadline() == 1004.0
    pair.fire_next()
    assert pair.of(Disconnected)[0].reason is Reason.HANDSHAKE_TIMEOUT


def test_next_attempt_after_a_timeout_gets_a_fresh_connect_deadline() -> None:
    pair = Pair(ping_interval=None, connect_timeout=3.0, backoff=Backoff(jitter=0))
    pair.start()
    pair.fire_next()
    assert pair.fire_next() == 1003.5
    assert pair.events[-2:] == [
        Connecting(attempt=2, total_attempts=2, url="ws://feed.example/stream"),
        OpenTransport(host="feed.example", port=80, tls=False, server_hostname=None),
    ]
    assert pair.core.next_deadline() == 1006.5


# ---------------------------------------------------------------------------
# HTTP rejections


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500, 503])
def test_rejection_is_classified_with_its_status(status: int) -> None:
    pair = opened()
    events = pair.reject(status)
    [disc] = pair.of(Disconnected, events)
    assert (disc.reason, disc.status, disc.code, disc.level, disc.connection) == (
        Reason.REJECTED, status, None, ERROR, None)
    assert disc.detail == f"server answered the upgrade with HTTP {status}"
    assert events[-1] == CloseTransport(abort=False)
    assert pair.core.state is State.BACKOFF


@pytest.mark.parametrize("status", [404, 500])
def test_rejection_retries_with_jittered_backoff(status: int) -> None:
    pair = opened(seed=7)
    [disc] = pair.of(Disconnected, pair.reject(status))
    expected = first_delay(7, 0.5)
    assert disc.retry_in == expected
    assert disc.retry_at == NOW + expected
    assert pair.core.next_deadline() == NOW + expected


@pytest.mark.parametrize("status", [401, 403])
def test_auth_rejection_raises_an_auth_alert(status: int) -> None:
    pair = opened()
    events = pair.reject(status)
    assert [type(e) for e in events] == [Disconnected, Alert, CloseTransport]
    alert = events[1]
    assert isinstance(alert, Alert)
    assert (alert.kind, alert.active, alert.level) == (AlertKind.AUTH, True, ERROR)


@pytest.mark.parametrize("status", [404, 429, 500, 503])
def test_other_rejections_raise_no_alert(status: int) -> None:
    pair = opened()
    assert pair.of(Alert, pair.reject(status)) == []


def test_auth_alert_is_raised_once_and_cleared_on_connect() -> None:
    pair = opened(backoff=Backoff(jitter=0))
    pair.reject(401)
    pair.fire_next()
    pair.open()
    pair.reject(401)
    assert len(pair.of(Alert)) == 1
    pair.fire_next()
    pair.open()
    pair.accept()
    assert [(a.kind, a.active) for a in pair.of(Alert)] == [
        (AlertKind.AUTH, True), (AlertKind.AUTH, False)]


def test_rejection_body_is_ignored() -> None:
    pair = opened()
    assert pair.server is not None
    data = pair.server.send(RejectConnection(status_code=404, has_body=True,
                                             headers=[(b"content-length", b"9")]))
    data += pair.server.send(RejectData(data=b"not found", body_finished=True))
    pair.feed(data)
    events = pair.pump()
    assert [type(e) for e in events] == [Disconnected, CloseTransport]
    assert pair.of(Message) == []


@pytest.mark.parametrize(("status", "seconds"), [(429, 30), (503, 7)])
def test_retry_after_seconds_lengthen_the_wait(status: int, seconds: int) -> None:
    pair = opened(backoff=Backoff(jitter=0))
    [disc] = pair.of(Disconnected, pair.reject(status, [(b"Retry-After", str(seconds).encode())]))
    assert (disc.retry_in, disc.retry_at) == (float(seconds), NOW + seconds)
    assert pair.core.next_deadline() == NOW + seconds
    assert pair.fire_next() == NOW + seconds
    assert isinstance(pair.events[-2], Connecting)


def test_retry_after_is_capped() -> None:
    pair = opened(backoff=Backoff(jitter=0, cap=20.0))
    [disc] = pair.of(Disconnected, pair.reject(429, [(b"retry-after", b"3600")]))
    assert disc.retry_in == 20.0
    assert pair.core.next_deadline() == 1020.0


def test_retry_after_never_shortens_the_backoff() -> None:
    pair = opened(backoff=Backoff(jitter=0, initial=10.0))
    [disc] = pair.of(Disconnected, pair.reject(503, [(b"retry-after", b"2")]))
    assert disc.retry_in == 10.0


def test_retry_after_http_date_is_read_against_the_date_header() -> None:
    pair = opened(backoff=Backoff(jitter=0))
    headers = [(b"Date", b"Wed, 21 Oct 2015 07:28:00 GMT"),
               (b"Retry-After", b"Wed, 21 Oct 2015 07:28:45 GMT")]
    [disc] = pair.of(Disconnected, pair.reject(503, headers))
    assert disc.retry_in == 45.0
    assert pair.core.next_deadline() == 1045.0


def test_retry_after_http_date_beyond_the_cap_is_capped() -> None:
    pair = opened(backoff=Backoff(jitter=0))
    headers = [(b"date", b"Wed, 21 Oct 2015 07:28:00 GMT"),
               (b"retry-after", b"Wed, 21 Oct 2015 09:00:00 GMT")]
    [disc] = pair.of(Disconnected, pair.reject(429, headers))
    assert disc.retry_in == 60.0


def test_retry_after_http_date_in_the_past_keeps_the_normal_backoff() -> None:
    pair = opened(seed=3)
    headers = [(b"date", b"Wed, 21 Oct 2015 07:28:00 GMT"),
               (b"retry-after", b"Wed, 21 Oct 2015 07:00:00 GMT")]
    [disc] = pair.of(Disconnected, pair.reject(503, headers))
    assert disc.retry_in == first_delay(3, 0.5)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"retry-after", b"Wed, 21 Oct 2015 07:28:45 GMT")],  # a date but no Date header
        [(b"retry-after", b"soon"), (b"date", b"Wed, 21 Oct 2015 07:28:00 GMT")],
        [(b"retry-after", b"-5")],
    ],
    ids=["absent", "date-without-date-header", "garbage", "negative"],
)
def test_429_without_usable_retry_after_waits_the_full_ceiling(
        headers: list[tuple[bytes, bytes]]) -> None:
    """Without a usable hint the un-jittered ceiling is used, even with full jitter."""
    pair = opened(backoff=Backoff(initial=4.0, jitter=1.0))
    [disc] = pair.of(Disconnected, pair.reject(429, headers))
    assert disc.retry_in == 4.0


def test_retry_after_is_ignored_on_other_statuses() -> None:
    pair = opened(seed=5)
    [disc] = pair.of(Disconnected, pair.reject(500, [(b"retry-after", b"30")]))
    assert disc.retry_in == first_delay(5, 0.5)


def test_retry_after_ceiling_grows_with_failures() -> None:
    pair = opened(backoff=Backoff(initial=1.0, jitter=0))
    pair.reject(503)
    pair.fire_next()
    pair.open()
    [_, disc] = pair.of(Disconnected) + pair.of(Disconnected, pair.reject(503))
    assert (disc.failures, disc.retry_in) == (2, 2.0)


def test_fatal_status_stops_the_feed() -> None:
    pair = opened(fatal_statuses={403})
    events = pair.reject(403)
    assert events == [
        Disconnected(reason=Reason.REJECTED, code=None, status=403,
                     detail="server answered the upgrade with HTTP 403", level=ERROR,
                     connection=None, uptime=0.0, failures=1, retry_in=None, retry_at=None),
        Alert(kind=AlertKind.AUTH, active=True, detail="server refused us (rejected)",
              level=ERROR),
        CloseTransport(abort=False),
        Alert(kind=AlertKind.AUTH, active=False, detail="auth cleared", level=20),
        Stopped(reason=Reason.GAVE_UP, detail="rejected: fatal"),
    ]
    assert pair.core.state is State.STOPPED
    assert pair.core.next_deadline() is None


def test_non_fatal_status_keeps_retrying_when_others_are_fatal() -> None:
    pair = opened(fatal_statuses={401})
    pair.reject(403)
    assert pair.core.state is State.BACKOFF
    assert pair.of(Stopped) == []


# ---------------------------------------------------------------------------
# invalid upgrade answers: HANDSHAKE_FAILED, never an exception


def assert_handshake_failed(pair: Pair, events: list[object], detail: str) -> None:
    assert [type(e) for e in events] == [Disconnected, CloseTransport]
    disc = events[0]
    assert isinstance(disc, Disconnected)
    assert (disc.reason, disc.code, disc.status, disc.connection, disc.level) == (
        Reason.HANDSHAKE_FAILED, None, None, None, ERROR)
    assert detail in disc.detail
    assert events[1] == CloseTransport(abort=True)
    assert pair.core.state is State.BACKOFF
    assert pair.core.data_to_send() == b""


def test_bad_accept_key_fails_the_handshake() -> None:
    pair = opened()
    pair.feed(response_101(pair, accept=b"c29tZXRoaW5nIGVsc2U="))
    assert_handshake_failed(pair, pair.pump(), "Bad accept token")


def test_missing_upgrade_header_fails_the_handshake() -> None:
    pair = opened()
    pair.feed(response_101(pair, upgrade=False))
    assert_handshake_failed(pair, pair.pump(), "Upgrade: websocket")


def test_missing_connection_header_fails_the_handshake() -> None:
    pair = opened()
    pair.feed(response_101(pair, connection=False))
    assert_handshake_failed(pair, pair.pump(), "Connection: Upgrade")


def test_wrong_upgrade_value_fails_the_handshake() -> None:
    pair = opened()
    pair.feed(response_101(pair, upgrade=False, extra=b"Upgrade: h2c\r\n"))
    assert_handshake_failed(pair, pair.pump(), "Upgrade: websocket")


@pytest.mark.parametrize(
    "junk",
    [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
     b"HTTP/1.1 abc Nope\r\n\r\n", b"\x00" * 10 + b"\r\n\r\n"],
    ids=["ssh", "tls", "bad-status", "nul"],
)
def test_junk_instead_of_http_fails_the_handshake(junk: bytes) -> None:
    pair = opened()
    pair.feed(junk)
    assert_handshake_failed(pair, pair.pump(), "Bad HTTP message")


@pytest.mark.parametrize(
    ("head", "detail"),
    [(b"HTTP/1.1 099 Nope\r\n\r\n", "Bad HTTP message: status 99 does not exist"),
     (b"HTTP/1.1 101 OK\r\n folded\r\nUpgrade: websocket\r\n\r\n",
      "Bad HTTP message: a continuation line before any header"),
     (b"HTTP/1.1 101 OK\r\nUpgrade websocket\r\n\r\n",
      "Bad HTTP message: b'Upgrade websocket' is not a header field"),
     (b"HTTP/1.1 101 OK\r\nX-Long : " + b"x" * 70 + b"\r\n\r\n",
      "Bad HTTP message: b'X-Long : " + "x" * 51 + "'... is not a header field"),
     (b"HTTP/1.1 101 OK\r\nX: a\rb\r\n\r\n", "is not a header field"),
     (b"HTTP/1.1 101 OK\r\nX: " + b"y" * 16400 + b"\r\n\r\n",
      "Bad HTTP message: the response head is longer than 16384 bytes")],
    ids=["status-below-100", "fold-first", "no-colon", "long-line-cut", "bare-cr", "head-too-long"],
)
def test_a_head_that_is_not_http_fails_the_handshake_and_says_why(head: bytes, detail: str) -> None:
    pair = opened()
    pair.feed(head)
    assert_handshake_failed(pair, pair.pump(), detail)


def test_a_head_without_an_end_fails_once_it_passes_16_kib() -> None:
    pair = opened()
    pair.feed(b"HTTP/1.1 101 OK\r\nX: " + b"z" * 16000)
    assert pair.pump() == [] and pair.core.state is State.HANDSHAKING
    pair.feed(b"z" * 400)
    assert_handshake_failed(pair, pair.pump(),
                            "Bad HTTP message: no end of the response head in 16384 bytes")


def test_an_extension_that_was_not_offered_fails_the_handshake() -> None:
    pair = opened(compression=None)
    pair.feed(response_101(pair, extra=b"Sec-WebSocket-Extensions: permessage-deflate; "
                                       b"server_no_context_takeover\r\n"))
    assert_handshake_failed(pair, pair.pump(),
                            "the server accepted an extension that was not offered: 'permessage-deflate'")


def test_an_extension_other_than_the_one_offered_fails_the_handshake() -> None:
    pair = opened()
    pair.feed(response_101(pair, extra=b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"))
    assert_handshake_failed(pair, pair.pump(),
                            "the server accepted an extension that was not offered: 'x-webkit-deflate-frame'")


def test_a_folded_connection_header_and_bare_lf_line_ends_still_open() -> None:
    """HTTP/1.1's obsolete line folding is unfolded (RFC 9112 5.2) and bare
    LF line ends are read (2.2), as h11 reads them: such a 101 opens."""
    pair = opened()
    accept = generate_accept_token(request_key(pair))
    pair.feed(b"HTTP/1.0 101\nUpgrade:WebSocket\nConnection: keep-alive,\n\t upgrade \n"
              b"Sec-WebSocket-Accept:   " + accept + b"  \n\n")
    assert [type(e) for e in pair.pump()] == [Connected]
    assert pair.core.state is State.OPEN


def test_junk_fed_byte_by_byte_fails_exactly_once() -> None:
    pair = opened()
    for byte in b"SSH-2.0-OpenSSH_9.6\r\n\r\n":
        if pair.core.state is not State.HANDSHAKING:
            break
        pair.core.receive_data(bytes([byte]), NOW)
        pair.pump()
    assert len(pair.of(Disconnected)) == 1
    assert pair.of(Disconnected)[0].reason is Reason.HANDSHAKE_FAILED


def test_unknown_subprotocol_fails_the_handshake() -> None:
    pair = opened(subprotocols=["v1"])
    pair.feed(response_101(pair, extra=b"Sec-WebSocket-Protocol: v9\r\n"))
    assert_handshake_failed(pair, pair.pump(), "unrecognized subprotocol v9")


def test_subprotocol_chosen_when_none_was_offered_fails_the_handshake() -> None:
    pair = opened()
    pair.feed(response_101(pair, extra=b"Sec-WebSocket-Protocol: chat\r\n"))
    assert_handshake_failed(pair, pair.pump(), "unrecognized subprotocol chat")


def test_bad_handshake_with_trailing_frames_delivers_nothing() -> None:
    pair = opened()
    pair.feed(response_101(pair, accept=b"bm9wZQ==") + frame(0x1, b"hello"))
    events = pair.pump()
    assert_handshake_failed(pair, events, "Bad accept token")
    assert pair.of(Message) == []


def test_handshake_failure_retries_with_backoff() -> None:
    pair = opened(seed=11)
    pair.feed(b"garbage\r\n\r\n")
    [disc] = pair.of(Disconnected, pair.pump())
    assert disc.retry_in == first_delay(11, 0.5)
    assert pair.core.next_deadline() == NOW + first_delay(11, 0.5)


def test_eof_during_the_handshake() -> None:
    pair = opened(backoff=Backoff(jitter=0))
    pair.feed(b"HTTP/1.1 101 Swi")
    events = pair.eof()
    assert events == [
        Disconnected(reason=Reason.EOF, code=None, status=None,
                     detail="connection closed during the handshake", level=ERROR,
                     connection=None, uptime=0.0, failures=1, retry_in=0.5, retry_at=1000.5),
        CloseTransport(abort=True),
    ]
    assert pair.core.state is State.BACKOFF


# ---------------------------------------------------------------------------
# header providers that fail: CALLBACK_ERROR, then a normal retry


def test_header_provider_that_raises_fails_the_attempt_and_is_retried() -> None:
    outcomes = iter([RuntimeError("token service down"), {"Authorization": "Bearer ok"}])

    def provider() -> dict[str, str]:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    pair = Pair(ping_interval=None, headers=provider, backoff=Backoff(jitter=0))
    pair.start()
    events = pair.open()
    assert events == [
        Disconnected(reason=Reason.CALLBACK_ERROR, code=None, status=None,
                     detail="header provider failed: token service down", level=ERROR,
                     connection=None, uptime=0.0, failures=1, retry_in=0.5, retry_at=1000.5),
        CloseTransport(abort=True),
    ]
    assert pair.requests == [] and pair.wire_to_server == b""
    assert pair.core.state is State.BACKOFF
    pair.fire_next()
    pair.open()
    assert header(pair, "Authorization") == ["Bearer ok"]
    assert [type(e) for e in pair.accept()] == [Connected]


@pytest.mark.parametrize(
    ("result", "detail"),
    [
        ({"Host": "evil.example"}, "'Host' is set by the WebSocket handshake itself"),
        ({"sec-websocket-key": "x"}, "'sec-websocket-key' is set by the WebSocket handshake"),
        ({"X-Token": "a\r\nX-Evil: 1"}, "the value of 'X-Token' contains a line break or NUL"),
        ({"Bad Name": "v"}, "'Bad Name' is not a valid header name"),
        ("X-Token: abc", "must be a mapping or a list of (name, value) pairs"),
        (None, "must be a mapping or a list of (name, value) pairs"),
        ([("X-Token", 5)], "header names and values must be str"),
    ],
)
def test_header_provider_returning_invalid_headers_is_a_callback_error(
        result: object, detail: str) -> None:
    pair = Pair(ping_interval=None, headers=lambda: result)
    pair.start()
    events = pair.open()
    [disc] = pair.of(Disconnected, events)
    assert disc.reason is Reason.CALLBACK_ERROR
    assert disc.detail.startswith("header provider failed: ")
    assert detail in disc.detail
    assert events[-1] == CloseTransport(abort=True)
    assert pair.requests == []
    assert pair.core.state is State.BACKOFF


@pytest.mark.parametrize(
    ("result", "name"),
    [({"X(Y)": "v"}, "X(Y)"), ({"X-Name": "\u20ac"}, "not Latin-1")],
    ids=["illegal-name", "non-latin1-value"],
)
def test_header_provider_headers_that_cannot_be_sent_are_a_callback_error(
        result: dict[str, str], name: str) -> None:
    """Headers h11 refuses to write fail the attempt; nothing reaches the wire."""
    pair = Pair(ping_interval=None, headers=lambda: result, backoff=Backoff(jitter=0))
    pair.start()
    events = pair.open()
    [disc] = pair.of(Disconnected, events)
    assert disc.reason is Reason.CALLBACK_ERROR
    assert name in disc.detail
    assert events[-1] == CloseTransport(abort=True)
    assert pair.wire_to_server == b""
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == 1000.5


def test_header_provider_failures_count_as_failures_in_a_row() -> None:
    def provider() -> dict[str, str]:
        raise KeyError("token")

    pair = Pair(ping_interval=None, headers=provider, backoff=Backoff(jitter=0))
    pair.start()
    pair.open()
    pair.fire_next()
    pair.open()
    assert [d.failures for d in pair.of(Disconnected)] == [1, 2]
    assert [d.retry_in for d in pair.of(Disconnected)] == [0.5, 1.0]
