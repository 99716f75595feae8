"""Log lines: fixed keywords, key=value fields, levels, quoting, and no secrets."""

from __future__ import annotations

import pytest

from nonstop.core import (
    ERROR,
    INFO,
    KEYWORDS,
    WARNING,
    Alert,
    AlertKind,
    AlertPolicy,
    Backoff,
    CloseTransport,
    Connected,
    Connecting,
    Disconnected,
    Message,
    OpenTransport,
    Reason,
    State,
    Stopped,
    Subscribed,
    Subscription,
    format_event,
    redact_text,
)
from tests.helpers import Pair


def disconnected(**overrides: object) -> Disconnected:
    fields: dict[str, object] = {
        "reason": Reason.PING_TIMEOUT, "code": 1006, "status": None,
        "detail": "no pong or data within 10.0s of a ping", "level": ERROR, "connection": 3,
        "uptime": 63.2, "failures": 1, "retry_in": 0.31, "retry_at": 1063.51,
    }
    fields.update(overrides)
    return Disconnected(**fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------------
# one line per event type


def test_keywords() -> None:
    assert KEYWORDS == ("[CONNECTING]", "[CONNECTED]", "[LOGGED_IN]", "[SUBSCRIBED]", "[DISCONNECTED]",
                        "[GAP]", "[ROTATING]", "[RECONNECTING]", "[ALERT]", "[STOPPED]")


def test_first_attempt_is_connecting() -> None:
    event = Connecting(attempt=1, total_attempts=1, url="wss://feed.example/ws?token=***")
    assert format_event(event, "prices") == (
        INFO, "[CONNECTING] feed=prices url=wss://feed.example/ws?token=*** attempt=1")


@pytest.mark.parametrize(("attempt", "total"), [(1, 2), (2, 2), (5, 9)])
def test_later_attempts_are_reconnecting(attempt: int, total: int) -> None:
    """Every attempt after the feed's first, even attempt 1 after a stable connection."""
    event = Connecting(attempt=attempt, total_attempts=total, url="ws://h/")
    assert format_event(event, "f") == (
        INFO, f"[RECONNECTING] feed=f url=ws://h/ attempt={attempt} total={total}")


def test_connected_first_time() -> None:
    event = Connected(connection=1, attempt=1, subprotocol=None, handshake_time=0.041,
                      downtime=None)
    assert format_event(event, "prices") == (
        INFO, "[CONNECTED] feed=prices connection=1 attempt=1 handshake=0.041s")


def test_connected_after_a_reconnect_with_subprotocol() -> None:
    event = Connected(connection=4, attempt=2, subprotocol="chat.v2", handshake_time=0.25,
                      downtime=12.0)
    assert format_event(event, "prices") == (
        INFO,
        "[CONNECTED] feed=prices connection=4 attempt=2 handshake=0.250s downtime=12.000s "
        "subprotocol=chat.v2",
    )


def test_subscribed() -> None:
    sub = Subscription(message={"op": "subscribe", "ch": "trades"}, name="trades")
    assert format_event(Subscribed(subscription=sub, connection=1, acked=True), "prices") == (
        INFO, "[SUBSCRIBED] feed=prices connection=1 subscription=trades acked=true")
    assert format_event(Subscribed(subscription=sub, connection=2, acked=False), "prices") == (
        INFO, "[SUBSCRIBED] feed=prices connection=2 subscription=trades acked=false")


def test_subscribed_label_from_the_message() -> None:
    text = Subscription(message="x" * 50)
    assert format_event(Subscribed(subscription=text, connection=1, acked=False)) == (
        INFO, "[SUBSCRIBED] connection=1 subscription=" + "x" * 37 + "... acked=false")
    binary = Subscription(message=b"\x01\xab")
    assert format_event(Subscribed(subscription=binary, connection=1, acked=False)) == (
        INFO, "[SUBSCRIBED] connection=1 subscription=01ab acked=false")
    json_msg = Subscription(message={"op": "sub"})
    assert format_event(Subscribed(subscription=json_msg, connection=1, acked=False)) == (
        INFO, '[SUBSCRIBED] connection=1 subscription="{\\"op\\":\\"sub\\"}" acked=false')


def test_disconnected_error() -> None:
    assert format_event(disconnected(), "prices") == (
        ERROR,
        "[DISCONNECTED] feed=prices reason=ping_timeout code=1006 connection=3 uptime=63.200s "
        'failures=1 retry_in=0.310s detail="no pong or data within 10.0s of a ping"',
    )


def test_disconnected_rejected_attempt_omits_missing_fields() -> None:
    event = disconnected(reason=Reason.REJECTED, code=None, status=503, connection=None,
                         uptime=0.0, failures=4, retry_in=8.0,
                         detail="server answered the upgrade with HTTP 503")
    assert format_event(event, "prices") == (
        ERROR,
        "[DISCONNECTED] feed=prices reason=rejected status=503 uptime=0.000s failures=4 "
        'retry_in=8.000s detail="server answered the upgrade with HTTP 503"',
    )


def test_disconnected_level_comes_from_the_event() -> None:
    event = disconnected(reason=Reason.STOPPED, code=1000, level=INFO, retry_in=None,
                         retry_at=None, detail="stop requested", failures=0, uptime=5.0,
                         connection=1)
    assert format_event(event, "prices") == (
        INFO,
        "[DISCONNECTED] feed=prices reason=stopped code=1000 connection=1 uptime=5.000s "
        'failures=0 detail="stop requested"',
    )


def test_alert_lines() -> None:
    active = Alert(kind=AlertKind.DOWN, active=True, detail="no connection for 60.0s", level=ERROR)
    assert format_event(active, "prices") == (
        ERROR, '[ALERT] feed=prices kind=down active=true detail="no connection for 60.0s"')
    cleared = Alert(kind=AlertKind.RECONNECT_RATE, active=False, detail="reconnect_rate cleared",
                    level=INFO)
    assert format_event(cleared, "prices") == (
        INFO, '[ALERT] feed=prices kind=reconnect_rate active=false detail="reconnect_rate cleared"')


def test_stopped_on_request_is_info() -> None:
    assert format_event(Stopped(reason=Reason.STOPPED, detail="stop requested"), "prices") == (
        INFO, '[STOPPED] feed=prices reason=stopped detail="stop requested"')


def test_stopped_after_giving_up_is_an_error() -> None:
    """A feed that gave up is not a normal end: the strategy logs it at ERROR."""
    gave_up = Stopped(reason=Reason.GAVE_UP, detail="rejected: fatal")
    assert format_event(gave_up, "prices") == (
        ERROR, '[STOPPED] feed=prices reason=gave_up detail="rejected: fatal"')


@pytest.mark.parametrize(
    "event",
    [
        Message(data="hello", connection=1, received_at=1.0),
        Message(data=b"\x00", connection=1, received_at=1.0),
        OpenTransport(host="h", port=443, tls=True, server_hostname="h"),
        CloseTransport(abort=True),
        CloseTransport(abort=False),
    ],
    ids=lambda e: type(e).__name__,
)
def test_messages_and_effects_are_not_logged(event: object) -> None:
    assert format_event(event, "prices") is None  # type: ignore[arg-type]


def test_without_a_feed_name_there_is_no_feed_field() -> None:
    assert format_event(Stopped(reason=Reason.STOPPED, detail="x")) == (
        INFO, "[STOPPED] reason=stopped detail=x")


# ----------------------------------------------------------------------
# quoting


@pytest.mark.parametrize(
    ("feed", "field"),
    [
        ("prices", "feed=prices"),
        ("eu-west/btc.usd:1", "feed=eu-west/btc.usd:1"),
        ("my feed", 'feed="my feed"'),
        ('say "hi"', 'feed="say \\"hi\\""'),
        ("back\\slash", 'feed="back\\\\slash"'),
        ("tab\there", 'feed="tab\there"'),
        ("", 'feed=""'),
        ("é", 'feed="é"'),
    ],
)
def test_values_with_spaces_or_quotes_are_quoted(feed: str, field: str) -> None:
    result = format_event(Stopped(reason=Reason.STOPPED, detail="x"), feed)
    assert result == (INFO, f"[STOPPED] {field} reason=stopped detail=x")


def test_quoted_detail_stays_one_line_field() -> None:
    event = disconnected(detail='server closed the connection: "bye now" x=1')
    _, line = format_event(event, "f")  # type: ignore[misc]
    assert line.endswith(' detail="server closed the connection: \\"bye now\\" x=1"')


# ----------------------------------------------------------------------
# a whole lifecycle


def test_lifecycle_lines() -> None:
    pair = Pair(
        ping_interval=None,
        silence_timeout=None,
        subscriptions=[Subscription(message="trades", name="trades")],
        backoff=Backoff(initial=1.0, jitter=0.0),
        alerts=AlertPolicy(consecutive_failures=2, down_for=None, reconnects_per_minute=None),
    )
    pair.connect()
    pair.send_text("tick")
    pair.advance(2.0)
    pair.server_close(1001, "restart")
    pair.eof()
    pair.fire_next()
    pair.core.transport_failed(ConnectionRefusedError(111, "Connection refused"), pair.now)
    pair.pump()
    pair.fire_next()
    pair.open()
    pair.accept()
    pair.core.stop(pair.now)
    pair.pump()
    pair.eof()
    lines = [r for r in (format_event(e, "prices") for e in pair.events) if r is not None]
    assert lines == [
        (INFO, "[CONNECTING] feed=prices url=ws://feed.example/stream attempt=1"),
        (INFO, "[CONNECTED] feed=prices connection=1 attempt=1 handshake=0.000s"),
        (INFO, "[SUBSCRIBED] feed=prices connection=1 subscription=trades acked=false"),
        (INFO, "[DISCONNECTED] feed=prices reason=server_closed code=1001 connection=1 "
               'uptime=2.000s failures=1 retry_in=1.000s detail="server closed the connection: restart"'),
        (INFO, "[RECONNECTING] feed=prices url=ws://feed.example/stream attempt=2 total=2"),
        (ERROR, "[DISCONNECTED] feed=prices reason=refused uptime=0.000s failures=2 retry_in=2.000s "
                'detail="ConnectionRefusedError: [Errno 111] Connection refused '
                '(nothing accepts connections on feed.example:80; is the server up?)"'),
        (ERROR, '[ALERT] feed=prices kind=consecutive_failures active=true '
                'detail="2 failures in a row (threshold 2)"'),
        (INFO, "[RECONNECTING] feed=prices url=ws://feed.example/stream attempt=3 total=3"),
        (INFO, "[CONNECTED] feed=prices connection=2 attempt=3 handshake=0.000s downtime=3.000s"),
        (INFO, "[SUBSCRIBED] feed=prices connection=2 subscription=trades acked=false"),
        (WARNING, "[GAP] feed=prices reason=server_closed seconds=3.000s connection=2"),
        (INFO, "[DISCONNECTED] feed=prices reason=stopped code=1000 connection=2 uptime=0.000s "
               'failures=2 detail="stop requested"'),
        (INFO, '[ALERT] feed=prices kind=consecutive_failures active=false '
               'detail="consecutive_failures cleared"'),
        (INFO, '[STOPPED] feed=prices reason=stopped detail="stop requested"'),
    ]
    for _, line in lines:
        assert line.split(" ", 1)[0] in KEYWORDS
        assert "\n" not in line


# ----------------------------------------------------------------------
# secrets


def retry(pair: Pair) -> None:
    """Fire timers (alerts, then the retry) until the next attempt starts."""
    while pair.core.state is State.BACKOFF:
        pair.fire_next()


SECRET_URL = "wss://user:SECRET-PASS@feed.example/ws?token=SECRET&api_key=SECRET2&x=1"


def secret_lifecycle() -> Pair:
    """A whole lifecycle where secrets enter through every door we know of."""
    pair = Pair(
        SECRET_URL,
        headers=lambda: {"Authorization": "Bearer SECRET"},
        ping_interval=None,
        subscriptions=[Subscription(message="trades", name="trades")],
        backoff=Backoff(initial=1.0, jitter=0.0),
        alerts=AlertPolicy(consecutive_failures=1, down_for=0.5),
    )
    pair.start()
    pair.core.transport_failed(
        OSError("connect to wss://user:SECRET-PASS@feed.example failed: token=SECRET, "
                "Authorization: Bearer SECRET"),
        pair.now,
    )
    pair.pump()
    retry(pair)  # the down alert, then the retry
    pair.open()
    pair.reject(401)
    retry(pair)
    pair.open()
    pair.accept()
    pair.send_text("tick")
    pair.core.transport_failed(
        ConnectionResetError(104, "reset; session_token=SECRET Bearer SECRET"), pair.now)
    pair.pump()
    retry(pair)
    pair.open()
    pair.accept()
    pair.core.stop(pair.now)
    pair.pump()
    pair.eof()
    assert pair.requests, "the lifecycle really sent upgrade requests"
    assert (b"authorization", b"Bearer SECRET") in pair.requests[0].extra_headers
    assert "token=SECRET" in pair.requests[0].target
    return pair


def test_secrets_never_reach_a_log_line() -> None:
    pair = secret_lifecycle()
    lines = [r[1] for r in (format_event(e, "f") for e in pair.events) if r is not None]
    assert any(line.startswith("[STOPPED]") for line in lines)
    for line in lines:
        assert "SECRET" not in line, line
    for line in lines:
        if "url=" in line:
            assert "url=wss://***@feed.example/ws?token=***&api_key=***&x=1" in line


def test_secrets_never_reach_an_event() -> None:
    """Events are handed to the application and often logged with repr(): no
    secret in any of them (only the Config holds the URL and headers, and
    its repr does not show them)."""
    pair = secret_lifecycle()
    assert "SECRET" in str(pair.config.url) and "SECRET" not in repr(pair.config)
    for event in pair.events:
        assert "SECRET" not in repr(event), event


def test_secrets_in_disconnect_details_are_redacted() -> None:
    pair = secret_lifecycle()
    details = [e.detail for e in pair.of(Disconnected)]
    assert details[0].startswith("OSError: connect to wss://***@feed.example failed: token=***")
    assert details[2].startswith("ConnectionResetError: [Errno 104] reset; session_token=***")
    assert all("SECRET" not in d for d in details)


def test_secret_in_a_header_provider_error_is_redacted() -> None:
    def provider() -> dict[str, str]:
        raise RuntimeError("could not refresh: token=SECRET")

    pair = Pair(headers=provider, ping_interval=None)
    pair.start()
    pair.open()
    (event,) = pair.of(Disconnected)
    assert event.reason is Reason.CALLBACK_ERROR
    assert "SECRET" not in repr(event)
    assert "SECRET" not in format_event(event, "f")[1]  # type: ignore[index]


def test_secret_in_a_json_subscription_label_is_redacted() -> None:
    """Many feeds authenticate with a first message like {"op":"auth","token":...}."""
    sub = Subscription(message={"op": "auth", "token": "SECRET"})
    _, line = format_event(Subscribed(subscription=sub, connection=1, acked=True), "f")  # type: ignore[misc]
    assert "SECRET" not in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("token=SECRET", "token=***"),
        ("access_token=SECRET&x=1", "access_token=***&x=1"),
        ("api_key: SECRET", "api_key: ***"),
        ("password=SECRET;", "password=***;"),
        ("Authorization: Bearer SECRET", "Authorization: *** ***"),
        ("Bearer abc.def-ghi", "Bearer ***"),
        ("Basic dXNlcjpwYXNz", "Basic ***"),
        ("wss://user:SECRET@host/x", "wss://***@host/x"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_event_level_is_format_event_s_level_without_the_line() -> None:
    from nonstop.core import Alert as AlertEvent
    from nonstop.core import (
        AlertKind,
        CloseTransport,
        Connected,
        Connecting,
        Disconnected,
        Gap,
        LoggedIn,
        OpenTransport,
        Pong,
        Reason,
        Rotating,
        Stopped,
        event_level,
    )
    events = [
        Connecting(attempt=1, total_attempts=1, url="ws://x/"),
        Connected(connection=1, attempt=1, subprotocol=None, handshake_time=0.1, downtime=None),
        LoggedIn(connection=1, login_time=0.01),
        Disconnected(reason=Reason.EOF, code=1006, status=None, detail="", level=40, connection=1,
                     uptime=1.0, failures=1, retry_in=0.5, retry_at=2.0),
        Gap(start=1.0, end=2.0, reason="eof", connection=2),
        Rotating(connection=1, age=5.0, lifetime=10.0),
        AlertEvent(kind=AlertKind.DOWN, active=True, detail="x", level=40),
        Stopped(reason=Reason.STOPPED, detail="stop requested"),
        Stopped(reason=Reason.GAVE_UP, detail="x"),
        Pong(rtt=0.1, connection=1),
        OpenTransport(host="h", port=1, tls=False, server_hostname=None),
        CloseTransport(abort=True),
    ]
    for event in events:
        line = format_event(event, "f")
        assert event_level(event) == (None if line is None else line[0])
