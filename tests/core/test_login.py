"""Private feeds: a login built on every connection, messages built at each
send, a URL asked of a provider before every attempt, secrets kept out of
what is emitted.

The fake clock is the only clock: a login callable that returns the
clock's ``now`` shows when it was built.
"""

from __future__ import annotations

import json

import pytest

from nonstop.core import (
    Alert,
    AlertKind,
    Backoff,
    Config,
    ConfigError,
    Connected,
    Connecting,
    Disconnected,
    FetchUrl,
    LocalProtocolError,
    LoggedIn,
    Login,
    Message,
    OpenTransport,
    Reason,
    State,
    Stopped,
    Subscribed,
    Subscription,
    redact_url,
)
from tests.helpers import Pair

T0 = 1000.0
QUIET = {
    "ping_interval": None,
    "silence_timeout": None,
    "stable_after": 10_000.0,
    "backoff": Backoff(initial=1, factor=2, cap=8, jitter=0),
}
ACCEPTED = '{"op":"login","success":true}'
REFUSED = '{"op":"login","success":false,"error":"bad signature"}'


def is_accepted(message: str | bytes) -> bool:
    return message == ACCEPTED


def is_refused(message: str | bytes) -> bool:
    return isinstance(message, str) and '"success":false' in message


def make_pair(*, login: Login | None = None, subscriptions: list[object] | None = None,
              url: object = "ws://feed.example/private", **options: object) -> Pair:
    config = Config(url=url, login=login, subscriptions=subscriptions or [],  # type: ignore[arg-type]
                    **{**QUIET, **options})  # type: ignore[arg-type]
    return Pair(now=T0, config=config)


class Signer:
    """A login callable signing over the (fake) clock it is given."""

    def __init__(self, pair_box: list[Pair]) -> None:
        self.box = pair_box
        self.calls = 0

    def __call__(self) -> dict[str, object]:
        self.calls += 1
        now = self.box[0].now
        return {"op": "login", "ts": now, "sig": f"signature{int(now * 1000):020d}"}


def signed_pair(**login_options: object) -> tuple[Pair, Signer]:
    box: list[Pair] = []
    signer = Signer(box)
    login = Login(message=signer, ack=is_accepted, reject=is_refused, **login_options)  # type: ignore[arg-type]
    sub_b = Subscription(message="sub-b", ack=lambda m: m == "ok-b")
    pair = make_pair(login=login, subscriptions=["sub-a", sub_b])
    box.append(pair)
    return pair, signer


def test_the_login_is_built_when_sent_and_subscriptions_wait_for_its_ack() -> None:
    pair, signer = signed_pair()
    pair.start()
    pair.clock.now = T0 + 0.25
    pair.open()
    assert signer.calls == 0  # not before the 101
    pair.clock.now = T0 + 0.5
    pair.accept()
    assert signer.calls == 1
    assert [json.loads(m)["ts"] for m in pair.server_messages] == [T0 + 0.5]
    pair.advance(0.1)
    pair.send_text('{"early":1}')  # data before the ACK is delivered, subscriptions still wait
    assert len(pair.server_messages) == 1
    assert pair.core.metrics(pair.now).legs_live == 0  # not delivering before the login
    events = pair.send_text(ACCEPTED)
    assert pair.server_messages[1:] == ["sub-a", "sub-b"]
    kinds = [type(e) for e in events]
    assert kinds.index(LoggedIn) < kinds.index(Message) < kinds.index(Subscribed)  # the ACK, then
    logged = pair.of(LoggedIn)[0]
    assert logged.connection == 1 and logged.login_time == pytest.approx(0.1)
    assert pair.messages() == ['{"early":1}', ACCEPTED]
    assert pair.core.metrics(pair.now).pending_acks == 1
    assert not pair.core.delivering  # the login's ACK is not the feed's data
    pair.send_text("ok-b")
    assert pair.core.delivering


def test_the_login_is_built_afresh_on_every_connection() -> None:
    pair, signer = signed_pair()
    pair.connect()
    pair.send_text(ACCEPTED)
    pair.send_text("ok-b")
    stamps = [json.loads(pair.server_messages[0])["ts"]]
    for _ in range(3):
        pair.advance(7.0)  # more than a 5 s signature window apart
        pair.eof()
        pair.server_messages.clear()
        pair.reconnect_after_backoff()
        assert pair.server_messages and json.loads(pair.server_messages[0])["op"] == "login"
        assert len(pair.server_messages) == 1  # subscriptions wait again
        stamps.append(json.loads(pair.server_messages[0])["ts"])
        pair.send_text(ACCEPTED)
        assert pair.server_messages[1:] == ["sub-a", "sub-b"]  # replayed after the ACK
        pair.send_text("ok-b")
    assert signer.calls == 4
    assert len(set(stamps)) == 4 and stamps == sorted(stamps)


def test_a_refusal_alerts_closes_and_retries_then_stops_after_max_rejections() -> None:
    pair, _ = signed_pair(max_rejections=3)
    pair.connect()
    pair.send_text(REFUSED)
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.LOGIN_REJECTED and gone.retry_in is not None
    assert "bad signature" in gone.detail and "signature0" not in gone.detail
    assert pair.server_closes[-1].code == 1000  # we close after a refusal
    alerts = [a for a in pair.of(Alert) if a.kind is AlertKind.AUTH]
    assert alerts and alerts[-1].active
    assert pair.server_messages[1:] == []  # no subscription ever went out
    pair.eof()
    for _ in range(2):
        pair.reconnect_after_backoff()
        pair.send_text(REFUSED)
        pair.eof()
    assert pair.core.state is State.STOPPED
    stopped = pair.of(Stopped)[-1]
    assert stopped.reason is Reason.LOGIN_REJECTED
    assert "refused the login 3 times in a row" in stopped.detail
    assert "check the credentials" in stopped.detail
    assert not pair.core.metrics(pair.now).alerts_active  # cleared at the stop


def test_an_accepted_login_resets_the_refusal_count_and_clears_the_alert() -> None:
    pair, _ = signed_pair(max_rejections=2)
    pair.connect()
    pair.send_text(REFUSED)
    pair.eof()
    events = pair.reconnect_after_backoff()
    assert not [e for e in events if isinstance(e, Alert) and not e.active]  # not at the 101
    events = pair.send_text(ACCEPTED)
    cleared = [e for e in events if isinstance(e, Alert)]
    assert cleared and cleared[0].kind is AlertKind.AUTH and not cleared[0].active
    pair.advance(1.0)
    pair.eof()
    pair.reconnect_after_backoff()
    pair.send_text(REFUSED)  # the first refusal in a row again: no stop
    assert pair.core.state is not State.STOPPED
    assert pair.of(Disconnected)[-1].retry_in is not None


def test_a_close_with_a_reject_code_before_the_ack_is_a_refusal() -> None:
    pair, _ = signed_pair()
    pair.connect()
    pair.server_close(1008, "stale timestamp")
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.LOGIN_REJECTED and gone.code == 1008
    assert "stale timestamp" in gone.detail
    pair.eof()
    pair.reconnect_after_backoff()
    pair.send_text(ACCEPTED)
    pair.server_close(1008, "later")  # after the login: an ordinary close
    assert pair.of(Disconnected)[-1].reason is Reason.SERVER_CLOSED


def test_reject_codes_are_configurable() -> None:
    login = Login(message="login", ack=is_accepted, reject_codes=frozenset({4003}))
    pair = make_pair(login=login)
    pair.connect()
    pair.server_close(4003)
    assert pair.of(Disconnected)[-1].reason is Reason.LOGIN_REJECTED
    pair.eof()
    pair.reconnect_after_backoff()
    pair.server_close(1008)  # not one of its codes
    assert pair.of(Disconnected)[-1].reason is Reason.SERVER_CLOSED
    assert pair.server_messages == ["login", "login"]  # a fixed login is sent as given


def test_without_max_rejections_it_retries_forever() -> None:
    login = Login(message="login", ack=is_accepted, reject=is_refused, max_rejections=None)
    pair = make_pair(login=login)
    pair.connect()
    for _ in range(10):
        pair.send_text(REFUSED)
        pair.eof()
        pair.reconnect_after_backoff()
    assert pair.core.state is State.OPEN


def test_a_login_not_acknowledged_in_time_is_a_timeout_retried_like_any_failure() -> None:
    pair, _ = signed_pair(timeout=2.0)
    pair.connect()
    assert pair.core.next_deadline() == pytest.approx(T0 + 2.0)
    pair.advance(2.0)
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.LOGIN_TIMEOUT and gone.code == 1001
    assert "not acknowledged within 2.0s" in gone.detail
    assert not [a for a in pair.of(Alert) if a.kind is AlertKind.AUTH]  # not a refusal
    pair.eof()
    pair.reconnect_after_backoff()
    assert json.loads(pair.server_messages[-1])["op"] == "login"


def test_the_login_deadline_waits_while_reading_is_paused() -> None:
    pair, _ = signed_pair(timeout=2.0)
    pair.connect()
    pair.core.pause_reading(pair.now)
    assert pair.core.next_deadline() == T0 + 10_000.0  # only the stable timer
    pair.advance(5.0)
    assert pair.core.state is State.OPEN
    pair.core.resume_reading(pair.now)
    assert pair.core.next_deadline() == pytest.approx(T0 + 7.0)


def test_subscribe_and_unsubscribe_while_the_login_is_awaited() -> None:
    pair, _ = signed_pair()
    pair.connect()
    pair.core.subscribe(Subscription(message="late", unsubscribe="unlate"), pair.now)
    pair.core.subscribe("gone", pair.now)
    pair.core.unsubscribe("gone", pair.now)
    pair.pump()
    assert len(pair.server_messages) == 1  # only the login
    pair.send_text(ACCEPTED)
    assert pair.server_messages[1:] == ["sub-a", "sub-b", "late"]


def test_a_login_callable_that_fails_is_a_callback_error_naming_it() -> None:
    def sign_login() -> object:
        raise RuntimeError("no key loaded")

    pair = make_pair(login=Login(message=sign_login, ack=is_accepted))
    pair.connect()
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.CALLBACK_ERROR and gone.code == 1011
    assert "login message" in gone.detail and "sign_login()" in gone.detail
    assert "RuntimeError: no key loaded" in gone.detail
    assert gone.retry_in is not None  # retried with backoff


@pytest.mark.parametrize(("result", "words"), [
    (None, "returned None"),
    (object(), "not str, bytes or a JSON-serialisable value"),
])
def test_a_login_callable_that_returns_no_message_is_a_callback_error(result: object,
                                                                       words: str) -> None:
    pair = make_pair(login=Login(message=lambda: result, ack=is_accepted))
    pair.connect()
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.CALLBACK_ERROR and words in gone.detail
    assert "<lambda>()" in gone.detail


def test_a_login_callable_that_returns_an_awaitable_says_so() -> None:
    async def sign() -> str:  # pragma: no cover - never awaited
        return "x"

    def calls_it() -> object:
        coro = sign()
        coro.close()
        return coro

    pair = make_pair(login=Login(message=calls_it, ack=is_accepted))
    pair.connect()
    assert "returned an awaitable" in pair.of(Disconnected)[-1].detail


def test_a_login_matcher_that_raises_is_a_callback_error() -> None:
    def ack(message: str | bytes) -> bool:
        raise KeyError("op")

    pair = make_pair(login=Login(message="login", ack=ack))
    pair.connect()
    pair.send_text("anything")
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.CALLBACK_ERROR and "login matcher of login raised" in gone.detail


def test_a_binary_refusal_is_reported_as_text() -> None:
    login = Login(message=b"\x01login", ack=lambda m: m == b"ok",
                  reject=lambda m: isinstance(m, bytes) and m.startswith(b"no"), name="binlogin")
    pair = make_pair(login=login)
    pair.connect()
    pair.send_bytes(b"no: wrong key \xff")
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.LOGIN_REJECTED and "binlogin" in gone.detail
    assert "wrong key" in gone.detail


def test_messages_after_a_refusal_in_the_same_read_are_delivered() -> None:
    pair, _ = signed_pair()
    pair.connect()
    assert pair.server is not None
    from wsproto.events import TextMessage
    data = pair.server.send(TextMessage(data=REFUSED)) + pair.server.send(TextMessage(data="after"))
    pair.feed(data)
    pair.pump()
    assert pair.messages()[-2:] == [REFUSED, "after"]


def test_the_rotation_lead_counts_the_login_timeout() -> None:
    base = Config(url="ws://h/", connect_timeout=1, handshake_timeout=1)
    with_login = Config(url="ws://h/", connect_timeout=1, handshake_timeout=1,
                        login=Login(message="x", ack=is_accepted, timeout=3))
    assert with_login.rotation_lead == base.rotation_lead + 3


@pytest.mark.parametrize(("options", "words"), [
    ({"ack": None}, "login ack must be callable"),
    ({"reject": "no"}, "login reject must be callable"),
    ({"timeout": 0}, "login timeout"),
    ({"reject_codes": frozenset({999})}, "not a close code"),
    ({"reject_codes": frozenset({True})}, "not a close code"),
    ({"max_rejections": 0}, "login max_rejections"),
    ({"message": {1, 2}}, "login message must be str, bytes or JSON-serialisable"),
])
def test_bad_login_options_are_refused(options: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Login(**{"message": "x", "ack": is_accepted, **options})  # type: ignore[arg-type]


def test_login_must_be_a_login() -> None:
    with pytest.raises(ConfigError, match=r"login must be a nonstop\.Login"):
        Config(url="ws://h/", login="login")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# subscriptions built at each send


def test_a_subscription_built_by_a_callable_is_built_at_every_send() -> None:
    tokens = iter(["t1", "t2", "t3"])

    def with_token() -> dict[str, str]:
        return {"op": "subscribe", "token": next(tokens)}

    sub = Subscription(message=with_token, ack=lambda m: m == "ok")
    assert sub.payload is None and sub.label.endswith("<locals>.with_token()")
    pair = make_pair(subscriptions=[sub])
    pair.connect()
    pair.send_text("ok")
    pair.eof()
    pair.reconnect_after_backoff()
    assert [json.loads(m)["token"] for m in pair.server_messages] == ["t1", "t2"]
    assert [s.acked for s in pair.of(Subscribed)] == [True]  # the second still waits
    pair.send_text("ok")
    assert len(pair.of(Subscribed)) == 2


def test_a_callable_subscription_is_removed_by_its_callable_and_builds_its_unsubscribe() -> None:
    def token_sub() -> str:
        return "sub:secret-token-0123456789abcdef"

    def token_unsub() -> str:
        return "unsub:secret-token-0123456789abcdef"

    pair = make_pair(subscriptions=[Subscription(message=token_sub, unsubscribe=token_unsub)])
    pair.connect()
    removed = pair.core.unsubscribe(token_sub, pair.now)
    pair.pump()
    assert removed.label.endswith("token_sub()")
    assert pair.server_messages == ["sub:secret-token-0123456789abcdef",
                                    "unsub:secret-token-0123456789abcdef"]
    with pytest.raises(LocalProtocolError, match=r"not subscribed: .*token_sub"):
        pair.core.unsubscribe(token_sub, pair.now)


def test_a_callable_unsubscribe_that_fails_raises_and_the_subscription_is_gone() -> None:
    def bad() -> str:
        raise ValueError("expired")

    pair = make_pair(subscriptions=[Subscription(message="s", unsubscribe=bad)])
    pair.connect()
    with pytest.raises(LocalProtocolError, match=r"unsubscribe message .*bad.* raised ValueError"):
        pair.core.unsubscribe("s", pair.now)
    assert pair.core.subscriptions == ()


def test_subscribing_at_run_time_with_a_failing_callable_changes_nothing() -> None:
    def broken() -> str:
        raise OSError("token service down")

    pair = make_pair()
    pair.connect()
    with pytest.raises(LocalProtocolError, match=r"broken.* raised OSError: token service down"):
        pair.core.subscribe(Subscription(message=broken), pair.now)
    assert pair.core.subscriptions == ()
    pair.core.subscribe(Subscription(message=lambda: "fresh"), pair.now)
    pair.pump()
    assert pair.server_messages == ["fresh"]


def test_a_subscription_callable_failing_at_replay_fails_the_connection() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("signing failed")
        return "sub"

    pair = make_pair(subscriptions=[Subscription(message=flaky), "after"])
    pair.connect()
    pair.eof()
    pair.reconnect_after_backoff()
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.CALLBACK_ERROR and "flaky()" in gone.detail
    assert pair.server_messages == ["sub", "after"]  # the second connection sent nothing
    pair.eof()
    pair.reconnect_after_backoff()
    assert pair.server_messages[-2:] == ["sub", "after"]


def test_the_same_callable_twice_is_refused() -> None:
    def make() -> str:
        return "x"

    with pytest.raises(ConfigError, match="same message twice"):
        Config(url="ws://h/", subscriptions=[Subscription(message=make), Subscription(message=make)])
    pair = make_pair(subscriptions=[Subscription(message=make)])
    with pytest.raises(LocalProtocolError, match="already subscribed"):
        pair.core.subscribe(Subscription(message=make), pair.now)


# ---------------------------------------------------------------------------
# the URL provider


def provided_pair(**options: object) -> Pair:
    def listen_key_url() -> str:  # pragma: no cover - the driver calls it, not the core
        return "unused"

    return make_pair(url=listen_key_url, **options)


def test_a_url_provider_is_asked_before_every_attempt() -> None:
    pair = provided_pair(subscriptions=["s"])
    events = pair.start()
    assert isinstance(events[-1], FetchUrl)
    connecting = pair.of(Connecting)[0]
    assert connecting.url == pair.config.label == "provided_pair.<locals>.listen_key_url()"
    assert pair.core.state is State.CONNECTING and not pair.opens
    key = "k" * 20 + "0123456789"
    pair.core.url_fetched(f"wss://user:pw@stream.example:9443/ws/{key}", pair.now)
    pair.pump()
    opened = pair.opens[-1]
    assert (opened.host, opened.port, opened.tls) == ("stream.example", 9443, True)
    pair.open()
    assert pair.requests[-1].target == f"/ws/{key}"
    assert dict(pair.requests[-1].extra_headers)[b"authorization"].startswith(b"Basic ")
    pair.accept()
    pair.server_close(1011, f"key {key} expired")
    assert key not in pair.of(Disconnected)[-1].detail
    pair.eof()
    pair.fire_next()
    assert isinstance(pair.events[-1], FetchUrl)
    pair.core.url_fetched("ws://other.example/ws/x", pair.now)
    pair.pump()
    assert pair.opens[-1].host == "other.example" and not pair.opens[-1].tls


def test_a_provider_that_raises_is_a_url_provider_failure_retried_with_backoff() -> None:
    pair = provided_pair()
    pair.start()
    pair.core.url_failed(ConnectionError("GET https://api.example/listenKey?apiKey=abc123 failed"),
                         pair.now)
    pair.pump()
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.URL_PROVIDER and gone.retry_in == 1.0
    assert "listen_key_url() raised ConnectionError" in gone.detail
    assert "abc123" not in gone.detail
    pair.fire_next()
    assert isinstance(pair.events[-1], FetchUrl)


@pytest.mark.parametrize(("url", "words"), [
    ("http://x/", "gave a bad URL"),
    (b"ws://x/", "returned a bytes, not a str"),
])
def test_a_provider_that_returns_a_bad_url_is_a_url_provider_failure(url: object,
                                                                     words: str) -> None:
    pair = provided_pair()
    pair.start()
    pair.core.url_fetched(url, pair.now)
    pair.pump()
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.URL_PROVIDER and words in gone.detail


def test_a_provider_that_does_not_return_in_time_fails_the_attempt() -> None:
    pair = provided_pair(connect_timeout=3.0)
    pair.start()
    pair.advance(3.0)
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.URL_PROVIDER and "did not return within connect_timeout" in gone.detail
    with pytest.raises(LocalProtocolError, match="no FetchUrl is outstanding"):
        pair.core.url_fetched("ws://late/", pair.now)
    with pytest.raises(LocalProtocolError, match="no FetchUrl is outstanding"):
        pair.core.url_failed(OSError(), pair.now)


def test_url_answers_without_a_provider_are_refused() -> None:
    pair = make_pair()
    pair.start()
    with pytest.raises(LocalProtocolError, match="no FetchUrl"):
        pair.core.url_fetched("ws://x/", pair.now)


def test_a_connect_failure_after_the_provider_names_the_provided_host() -> None:
    pair = provided_pair()
    pair.start()
    pair.core.url_fetched("ws://provided.example:81/", pair.now)
    pair.pump()
    pair.core.transport_failed(ConnectionRefusedError(111, "refused"), pair.now)
    pair.pump()
    assert "provided.example:81" in pair.of(Disconnected)[-1].detail


def test_url_must_be_a_string_or_a_callable() -> None:
    with pytest.raises(ConfigError, match="url must be a ws:// or wss:// URL or a callable"):
        Config(url=42)  # type: ignore[arg-type]


def test_a_named_feed_with_a_provider_keeps_its_name() -> None:
    assert Config(url=lambda: "ws://x/", name="private").label == "private"


# ---------------------------------------------------------------------------
# secrets


def test_secrets_of_the_login_never_reach_the_events() -> None:
    pair, _ = signed_pair()
    pair.connect()
    signature = json.loads(pair.server_messages[0])["sig"]
    pair.server_close(1008, f"signature {signature} is stale")
    gone = pair.of(Disconnected)[-1]
    assert signature not in gone.detail and "***" in gone.detail
    assert signature not in repr(pair.core.config.login)
    assert signature not in repr(pair.events)


def test_token_like_path_segments_are_redacted_in_urls() -> None:
    key = "pqkW4mT9xYz2Lr8vBn3Cd6Fg1Hj5Kl7Mn0Op"
    assert redact_url(f"wss://stream.example/ws/{key}") == "wss://stream.example/ws/***"
    assert redact_url("wss://stream.example/ws/btcusdt@depth20@100ms") == (
        "wss://stream.example/ws/btcusdt@depth20@100ms")
    assert redact_url("wss://x/" + "a" * 30) == "wss://x/" + "a" * 30  # letters only: a name


def test_login_repr_and_label_never_show_a_built_message() -> None:
    def sign() -> str:  # pragma: no cover - never called here
        return "secret"

    login = Login(message=sign, ack=is_accepted)
    assert login.label.endswith("sign()") and login.payload is None
    assert Login(message="fixed", ack=is_accepted).label == "login"
    assert Login(message="fixed", ack=is_accepted, name="auth").label == "auth"


def test_connected_then_logged_in_then_subscribed_in_the_event_order() -> None:
    pair, _ = signed_pair()
    pair.connect()
    pair.send_text(ACCEPTED)
    order = [type(e) for e in pair.events
             if isinstance(e, (Connected, LoggedIn, Subscribed, OpenTransport, Message))]
    assert order == [OpenTransport, Connected, LoggedIn, Message, Subscribed]


def test_data_and_the_ack_in_one_read_keep_their_order_around_logged_in() -> None:
    pair, _ = signed_pair()
    pair.connect()
    assert pair.server is not None
    from wsproto.events import TextMessage
    pair.feed(pair.server.send(TextMessage(data="before")) + pair.server.send(TextMessage(data=ACCEPTED)))
    events = pair.pump()
    kinds = [(type(e).__name__, getattr(e, "data", None)) for e in events
             if isinstance(e, (Message, LoggedIn))]
    assert kinds == [("Message", "before"), ("LoggedIn", None), ("Message", ACCEPTED)]


def test_the_logged_in_line() -> None:
    from nonstop.core import format_event
    assert format_event(LoggedIn(connection=2, login_time=0.0125), "private") == (
        20, "[LOGGED_IN] feed=private connection=2 time=0.013s")


def test_url_provider_is_the_callable_or_none() -> None:
    def provider() -> str:  # pragma: no cover - not called
        return "ws://x/"

    assert Config(url=provider).url_provider is provider
    assert Config(url="ws://x/").url_provider is None


def test_ready_means_open_and_logged_in() -> None:
    pair, _ = signed_pair()
    pair.start()
    assert not pair.core.ready
    pair.open()
    pair.accept()
    assert pair.core.state is State.OPEN and not pair.core.ready  # the login is awaited
    pair.send_text(ACCEPTED)
    assert pair.core.ready
    plain = make_pair()
    plain.connect()
    assert plain.core.ready


def test_a_bad_url_from_the_provider_does_not_show_its_key() -> None:
    key = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg"
    pair = provided_pair()
    pair.start()
    pair.core.url_fetched(f"http://stream.example/ws/{key}", pair.now)
    pair.pump()
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.URL_PROVIDER and "scheme" in gone.detail
    assert key not in gone.detail and "stream.example/ws/***" in gone.detail


def test_a_fixed_login_message_is_scrubbed_too() -> None:
    login = Login(message='{"op":"auth","apiKey":"AKIA0123456789ABCDEFGH"}', ack=is_accepted)
    pair = make_pair(login=login)
    pair.connect()
    pair.server_close(1008, "unknown key AKIA0123456789ABCDEFGH")
    gone = pair.of(Disconnected)[-1]
    assert "AKIA0123456789ABCDEFGH" not in gone.detail


def test_the_repr_of_a_config_shows_no_secret() -> None:
    config = Config(url="wss://user:pw@feed.example/ws/pqkW4mT9xYz2Lr8vBn3Cd6Fg1Hj5?token=tk123",
                    headers={"X-Api-Key": "hdr-secret"},
                    login=Login(message='{"apiKey":"AKIA-fixed-key"}', ack=is_accepted))
    text = repr(config)
    for secret in ("pw", "pqkW4mT9xYz2Lr8vBn3Cd6Fg1Hj5", "tk123", "hdr-secret", "AKIA-fixed-key"):
        assert secret not in text
    assert "X-Api-Key" in text and "message=<hidden>" in text and "connect_timeout=10.0" in text

    def headers() -> dict[str, str]:  # pragma: no cover - not called
        return {}

    def sign() -> str:  # pragma: no cover - not called
        return ""

    built = repr(Config(url=lambda: "ws://x/", headers=headers, login=Login(message=sign, ack=is_accepted)))
    assert "headers=<built by" in built and "headers()>" in built
    assert "url='" in built and "<lambda>()" in built and "message=<built by" in built
    assert "headers=None" in repr(Config(url="ws://x/"))
