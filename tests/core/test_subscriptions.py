"""Subscriptions: remembered by the core, replayed in order after every connect.

The connection opens at ``T0``; pings, the silence watchdog and the stable
timer are moved out of the way unless a test is about them, so the only
deadlines left are the ACK timers under test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from wsproto.events import AcceptConnection, BytesMessage, TextMessage

from nonstop.core import (
    Backoff,
    CloseTransport,
    ConfigError,
    Connected,
    Disconnected,
    LocalProtocolError,
    Message,
    Reason,
    State,
    Subscribed,
    Subscription,
)
from tests.helpers import Pair, frame

T0 = 1000.0
QUIET = {
    "ping_interval": None,
    "silence_timeout": None,
    "stable_after": 10_000.0,
    "backoff": Backoff(initial=1, factor=2, cap=8, jitter=0),
}


def make_pair(subscriptions: Sequence[object] = (), **options: object) -> Pair:
    merged = {**QUIET, **options}
    return Pair(now=T0, subscriptions=list(subscriptions), **merged)


def acked_by(expected: str) -> Callable[[str | bytes], bool]:
    def matcher(message: str | bytes) -> bool:
        return message == expected

    return matcher


def drop_and_reconnect(pair: Pair) -> list:
    """EOF from the server, then the retry: returns the new connection's events."""
    pair.eof()
    before = len(pair.server_messages)
    events = pair.reconnect_after_backoff()
    pair.server_messages[:] = pair.server_messages[before:]
    return events


# ---------------------------------------------------------------------------
# sending and replaying


def test_subscriptions_are_sent_in_order_right_after_the_101() -> None:
    pair = make_pair(["a", b"\x01\x02", {"op": "sub", "ch": ["x", "y"]}, Subscription(message="d")])
    pair.start()
    pair.open()
    assert pair.server_messages == []  # nothing before the 101
    pair.accept()
    assert pair.server_messages == ["a", b"\x01\x02", '{"op":"sub","ch":["x","y"]}', "d"]


def test_str_is_text_and_bytes_is_binary() -> None:
    pair = make_pair(["text", b"binary"])
    pair.connect()
    assert pair.server_messages == ["text", b"binary"]
    assert [type(m) for m in pair.server_messages] == [str, bytes]


def test_json_subscriptions_use_compact_encoding_without_ascii_escapes() -> None:
    pair = make_pair([{"op": "subscribe", "args": ["trade:BTC", 1, None, True], "name": "café"}])
    pair.connect()
    assert pair.server_messages == ['{"op":"subscribe","args":["trade:BTC",1,null,true],"name":"café"}']


def test_subscription_payloads_come_before_anything_else() -> None:
    """The first frames after the upgrade are the subscriptions, in order,
    and they go out in the same ``data_to_send`` as the 101 is processed."""
    pair = make_pair(["one", "two"], ping_interval=0.5)
    pair.connect()
    assert pair.server_messages == ["one", "two"]
    assert pair.server_pings == []


def test_every_subscription_goes_out_in_one_write_right_after_the_101() -> None:
    """One ``data_to_send`` after the upgrade response holds every
    subscription frame, in order: the driver writes them in one go."""
    pair = make_pair(["one", {"op": "two"}, b"three"])
    pair.start()
    pair.open()
    assert pair.server is not None
    pair.core.receive_data(pair.server.send(AcceptConnection()), pair.now)
    written = pair.core.data_to_send()
    assert pair.core.data_to_send() == b""
    pair.server.receive_data(written)
    got = [e.data for e in pair.server.events() if isinstance(e, (TextMessage, BytesMessage))]
    assert got == ["one", '{"op":"two"}', b"three"]


def test_subscribed_events_follow_connected_in_order() -> None:
    pair = make_pair(["a", "b"])
    new = pair.connect()
    tail = new[-3:]
    assert isinstance(tail[0], Connected)
    subs = pair.core.subscriptions
    assert tail[1:] == [
        Subscribed(subscription=subs[0], connection=1, acked=False),
        Subscribed(subscription=subs[1], connection=1, acked=False),
    ]


def test_subscriptions_are_replayed_identically_after_reconnects() -> None:
    subscriptions = ["a", b"\x00\xff", {"op": "sub", "n": 1}]
    pair = make_pair(subscriptions)
    pair.connect()
    first = list(pair.server_messages)
    for connection in (2, 3):
        new = drop_and_reconnect(pair)
        assert pair.server_messages == first
        assert [e.connection for e in pair.of(Subscribed, new)] == [connection] * 3
        assert [e.subscription for e in pair.of(Subscribed, new)] == list(pair.core.subscriptions)


def test_subscriptions_property_lists_what_is_replayed() -> None:
    pair = make_pair(["a", {"b": 2}])
    assert [s.payload for s in pair.core.subscriptions] == ["a", '{"b":2}']
    assert pair.core.metrics(T0).subscriptions == 2


def test_no_subscriptions_means_nothing_is_sent() -> None:
    pair = make_pair()
    new = pair.connect()
    assert pair.server_messages == []
    assert pair.of(Subscribed, new) == []


def test_duplicate_subscriptions_in_config_are_rejected() -> None:
    with pytest.raises(ConfigError, match="same message twice"):
        make_pair(["a", Subscription(message="a")])
    with pytest.raises(ConfigError, match="same message twice"):
        make_pair([{"x": 1}, '{"x":1}'])


def test_a_single_string_is_not_a_list_of_subscriptions() -> None:
    with pytest.raises(ConfigError, match="list of messages"):
        Pair(subscriptions="abc")


# ---------------------------------------------------------------------------
# acknowledgements


def test_ack_in_time_gives_subscribed_acked_and_the_ack_is_delivered() -> None:
    sub = Subscription(message="sub", ack=acked_by("ack"), ack_timeout=5)
    pair = make_pair([sub])
    new = pair.connect()
    assert pair.of(Subscribed, new) == []
    assert pair.core.metrics(pair.now).pending_acks == 1
    assert pair.core.next_deadline() == T0 + 5
    pair.advance(2)
    new = pair.send_text("ack")
    assert new == [
        Subscribed(subscription=sub, connection=1, acked=True),
        Message(data="ack", connection=1, received_at=T0 + 2),
    ]
    assert pair.core.metrics(pair.now).pending_acks == 0
    assert pair.core.next_deadline() == T0 + 10_000


def test_other_messages_before_the_ack_are_delivered_and_do_not_ack() -> None:
    sub = Subscription(message="sub", ack=acked_by("ack"), ack_timeout=5)
    pair = make_pair([sub])
    pair.connect()
    pair.send_text("snapshot")
    pair.send_bytes(b"ack")  # bytes, not the text "ack"
    assert pair.of(Subscribed) == []
    assert pair.messages() == ["snapshot", b"ack"]
    assert pair.core.metrics(pair.now).pending_acks == 1


def test_a_message_acks_at_most_once() -> None:
    sub = Subscription(message="sub", ack=acked_by("ack"), ack_timeout=5)
    pair = make_pair([sub])
    pair.connect()
    pair.send_text("ack")
    pair.send_text("ack")
    assert len(pair.of(Subscribed)) == 1
    assert pair.messages() == ["ack", "ack"]


def test_missing_ack_fails_the_connection_at_exactly_the_timeout() -> None:
    sub = Subscription(message="sub", ack=acked_by("ack"), ack_timeout=5)
    pair = make_pair([sub], close_timeout=3)
    pair.connect()
    pair.advance(4.999)
    assert pair.core.state is State.OPEN
    assert pair.fire_next() == T0 + 5
    gone = pair.of(Disconnected)
    assert len(gone) == 1
    assert (gone[0].reason, gone[0].code, gone[0].connection, gone[0].retry_in) == (
        Reason.ACK_TIMEOUT, 1001, 1, 1.0)
    assert "not acknowledged within 5" in gone[0].detail
    assert [(c.code, c.reason) for c in pair.server_closes] == [(1001, "subscription not acknowledged")]
    assert pair.core.state is State.CLOSING
    assert pair.of(CloseTransport) == []
    assert pair.core.metrics(pair.now).pending_acks == 0
    # the server answered our close (helpers do); EOF ends it cleanly
    new = pair.eof()
    assert new == [CloseTransport(abort=False)]
    assert pair.core.state is State.BACKOFF


def test_missing_ack_close_times_out_if_the_server_never_hangs_up() -> None:
    sub = Subscription(message="sub", ack=acked_by("ack"), ack_timeout=5)
    pair = make_pair([sub], close_timeout=3)
    pair.connect()
    pair.fire_next()
    retry_at = pair.of(Disconnected)[-1].retry_at
    assert retry_at == T0 + 6
    assert pair.core.next_deadline() == T0 + 8
    assert pair.fire_next() == T0 + 8
    # the transport is aborted; the retry, already due at T0+6, starts at once
    assert [type(e).__name__ for e in pair.events[-3:]] == ["CloseTransport", "Connecting", "OpenTransport"]
    assert pair.events[-3] == CloseTransport(abort=True)
    assert pair.core.state is State.CONNECTING


def test_each_subscription_has_its_own_ack_deadline() -> None:
    first = Subscription(message="s1", ack=acked_by("ack1"), ack_timeout=5)
    plain = Subscription(message="s2")
    second = Subscription(message="s3", ack=acked_by("ack3"), ack_timeout=8)
    pair = make_pair([first, plain, second])
    new = pair.connect()
    assert pair.of(Subscribed, new) == [Subscribed(subscription=plain, connection=1, acked=False)]
    assert pair.core.metrics(pair.now).pending_acks == 2
    assert pair.core.next_deadline() == T0 + 5
    pair.advance(1)
    new = pair.send_text("ack3")  # the second pending one acks first
    assert pair.of(Subscribed, new) == [Subscribed(subscription=second, connection=1, acked=True)]
    assert pair.core.next_deadline() == T0 + 5
    pair.send_text("ack1")
    assert pair.core.metrics(pair.now).pending_acks == 0
    assert pair.core.next_deadline() == T0 + 10_000


def test_the_later_ack_deadline_fires_when_only_it_is_missing() -> None:
    first = Subscription(message="s1", ack=acked_by("ack1"), ack_timeout=5)
    second = Subscription(message="s2", ack=acked_by("ack2"), ack_timeout=8)
    pair = make_pair([first, second])
    pair.connect()
    pair.send_text("ack1")
    assert pair.core.next_deadline() == T0 + 8
    assert pair.fire_next() == T0 + 8
    gone = pair.of(Disconnected)[-1]
    assert gone.reason is Reason.ACK_TIMEOUT
    assert "s2" in gone.detail


def test_acks_are_required_again_after_every_reconnect() -> None:
    sub = Subscription(message="sub", ack=acked_by("ack"), ack_timeout=5)
    pair = make_pair([sub])
    pair.connect()
    pair.send_text("ack")
    new = drop_and_reconnect(pair)
    assert pair.server_messages == ["sub"]
    assert pair.of(Subscribed, new) == []
    assert pair.core.metrics(pair.now).pending_acks == 1
    assert pair.core.next_deadline() == pair.now + 5
    new = pair.send_text("ack")
    assert pair.of(Subscribed, new) == [Subscribed(subscription=sub, connection=2, acked=True)]


def test_ack_in_the_same_chunk_as_the_101() -> None:
    """The server may send its ACK right behind the handshake response."""
    sub = Subscription(message="sub", ack=acked_by("ack"), ack_timeout=5)
    pair = make_pair([sub])
    pair.start()
    pair.open()
    assert pair.server is not None
    data = pair.server.send(AcceptConnection()) + frame(0x1, b"ack")
    pair.feed(data)
    new = pair.pump()
    assert [type(e) for e in new] == [Connected, Subscribed, Message]
    assert new[1] == Subscribed(subscription=sub, connection=1, acked=True)


def test_late_ack_after_the_timeout_is_not_matched() -> None:
    calls: list[str | bytes] = []

    def spy(message: str | bytes) -> bool:
        calls.append(message)
        return message == "ack"

    sub = Subscription(message="sub", ack=spy, ack_timeout=5)
    pair = make_pair([sub])
    pair.connect()
    pair.core.handle_timer(T0 + 5)  # sends our close 1001, not yet pumped to the server
    pair.clock.now = T0 + 5
    pair.feed(frame(0x1, b"ack"))  # the server sent it before seeing our close
    pair.pump()
    assert calls == []
    assert pair.of(Subscribed) == []
    assert pair.messages() == ["ack"]


def test_ack_matcher_raising_fails_the_connection_with_1011() -> None:
    def broken(message: str | bytes) -> bool:
        raise KeyError("boom")

    sub = Subscription(message="sub", ack=broken, ack_timeout=5)
    pair = make_pair([sub])
    pair.connect()
    new = pair.send_text("anything")
    assert [type(e) for e in new] == [Message, Disconnected]
    gone = new[1]
    assert (gone.reason, gone.code) == (Reason.CALLBACK_ERROR, 1011)
    assert "ack matcher" in gone.detail and "KeyError" in gone.detail
    assert [c.code for c in pair.server_closes] == [1011]
    assert pair.core.state is State.CLOSING
    assert pair.core.metrics(pair.now).pending_acks == 0


def test_after_a_matcher_raised_the_rest_of_the_chunk_is_not_matched() -> None:
    calls: list[str | bytes] = []

    def flaky(message: str | bytes) -> bool:
        calls.append(message)
        if message == "boom":
            raise RuntimeError("boom")
        return message == "ack"

    sub = Subscription(message="sub", ack=flaky, ack_timeout=5)
    pair = make_pair([sub])
    pair.connect()
    pair.feed(frame(0x1, b"boom") + frame(0x1, b"ack"))
    pair.pump()
    assert calls == ["boom"]
    assert pair.of(Subscribed) == []
    assert pair.of(Disconnected)[-1].reason is Reason.CALLBACK_ERROR


def test_ack_matcher_is_not_called_once_everything_is_acked() -> None:
    calls: list[str | bytes] = []

    def spy(message: str | bytes) -> bool:
        calls.append(message)
        return message == "ack"

    pair = make_pair([Subscription(message="sub", ack=spy, ack_timeout=5)])
    pair.connect()
    pair.send_text("ack")
    pair.send_text("data")
    assert calls == ["ack"]


# ---------------------------------------------------------------------------
# subscribe at run time


def test_subscribe_while_open_sends_at_once_and_is_replayed() -> None:
    pair = make_pair(["a"])
    pair.connect()
    pair.advance(3)
    sub = pair.core.subscribe({"op": "sub", "ch": "b"}, pair.now)
    assert sub.payload == '{"op":"sub","ch":"b"}'
    new = pair.pump()
    assert new == [Subscribed(subscription=sub, connection=1, acked=False)]
    assert pair.server_messages == ["a", '{"op":"sub","ch":"b"}']
    assert pair.core.subscriptions[-1] is sub
    drop_and_reconnect(pair)
    assert pair.server_messages == ["a", '{"op":"sub","ch":"b"}']


def test_subscribe_with_ack_while_open_arms_the_timer_from_now() -> None:
    pair = make_pair()
    pair.connect()
    pair.advance(3)
    sub = pair.core.subscribe(Subscription(message="s", ack=acked_by("ok"), ack_timeout=2), pair.now)
    assert pair.pump() == []
    assert pair.core.metrics(pair.now).pending_acks == 1
    assert pair.core.next_deadline() == T0 + 5
    assert pair.send_text("ok")[0] == Subscribed(subscription=sub, connection=1, acked=True)


def test_subscribe_while_disconnected_is_sent_after_the_next_connect() -> None:
    pair = make_pair(["a"])
    pair.connect()
    pair.eof()
    assert pair.core.state is State.BACKOFF
    before = len(pair.server_messages)
    pair.core.subscribe("b", pair.now)
    assert pair.core.data_to_send() == b""
    assert pair.drain() == []
    pair.reconnect_after_backoff()
    assert pair.server_messages[before:] == ["a", "b"]


@pytest.mark.parametrize("when", ["idle", "connecting", "handshaking"])
def test_subscribe_before_the_connection_opens(when: str) -> None:
    pair = make_pair(["a"])
    if when != "idle":
        pair.start()
    if when == "handshaking":
        pair.open()
    pair.core.subscribe(b"b", pair.now)
    assert pair.core.data_to_send() == b""
    if when == "idle":
        pair.start()
    if when != "handshaking":
        pair.open()
    pair.accept()
    assert pair.server_messages == ["a", b"b"]


def test_subscribe_while_closing_waits_for_the_next_connect() -> None:
    pair = make_pair(["a"])
    pair.connect()
    pair.server_close(1001)
    assert pair.core.state is State.CLOSING
    pair.core.subscribe("b", pair.now)
    assert pair.core.data_to_send() == b""
    pair.eof()
    before = len(pair.server_messages)
    pair.reconnect_after_backoff()
    assert pair.server_messages[before:] == ["a", "b"]


@pytest.mark.parametrize("duplicate", ["a", Subscription(message="a"), {"k": 1}, '{"k":1}'])
def test_duplicate_subscribe_raises_and_changes_nothing(duplicate: object) -> None:
    pair = make_pair(["a", {"k": 1}])
    pair.connect()
    before = pair.core.subscriptions
    with pytest.raises(LocalProtocolError, match="already subscribed"):
        pair.core.subscribe(duplicate, pair.now)
    assert pair.core.subscriptions == before
    assert pair.core.data_to_send() == b""
    assert pair.drain() == []


def test_subscribe_after_stop_raises() -> None:
    pair = make_pair()
    pair.connect()
    pair.core.stop(pair.now)
    assert pair.core.state is State.STOPPING
    with pytest.raises(LocalProtocolError):
        pair.core.subscribe("a", pair.now)
    pair.pump()
    pair.eof()
    assert pair.core.state is State.STOPPED
    with pytest.raises(LocalProtocolError):
        pair.core.subscribe("a", pair.now)
    assert pair.core.subscriptions == ()


def test_subscribe_with_an_unencodable_message_raises_and_changes_nothing() -> None:
    pair = make_pair(["a"])
    pair.connect()
    with pytest.raises(ConfigError):
        pair.core.subscribe(object(), pair.now)
    assert [s.payload for s in pair.core.subscriptions] == ["a"]


def test_subscribe_with_time_going_backwards_raises() -> None:
    pair = make_pair()
    pair.connect()
    with pytest.raises(LocalProtocolError, match="backwards"):
        pair.core.subscribe("a", pair.now - 1)
    assert pair.core.subscriptions == ()


# ---------------------------------------------------------------------------
# unsubscribe


def test_unsubscribe_by_value_removes_it_from_the_replay() -> None:
    pair = make_pair(["a", {"ch": "b"}, "c"])
    pair.connect()
    removed = pair.core.unsubscribe({"ch": "b"}, pair.now)
    assert removed.payload == '{"ch":"b"}'
    assert pair.core.data_to_send() == b""  # no unsubscribe message configured
    drop_and_reconnect(pair)
    assert pair.server_messages == ["a", "c"]
    assert pair.core.metrics(pair.now).subscriptions == 2


def test_unsubscribe_by_object_sends_its_unsubscribe_message_while_open() -> None:
    sub = Subscription(message={"op": "sub", "ch": "x"}, unsubscribe={"op": "unsub", "ch": "x"})
    pair = make_pair([sub])
    pair.connect()
    assert pair.core.unsubscribe(sub, pair.now) is sub
    pair.pump()
    assert pair.server_messages == ['{"op":"sub","ch":"x"}', '{"op":"unsub","ch":"x"}']
    assert pair.core.subscriptions == ()


def test_unsubscribe_by_an_equal_value_sends_the_stored_unsubscribe_message() -> None:
    """Matched by value: the remembered subscription's unsubscribe is used."""
    sub = Subscription(message="sub:x", unsubscribe=b"unsub:x")
    pair = make_pair([sub])
    pair.connect()
    assert pair.core.unsubscribe("sub:x", pair.now) is sub
    pair.pump()
    assert pair.server_messages == ["sub:x", b"unsub:x"]


def test_unsubscribe_while_disconnected_sends_nothing() -> None:
    sub = Subscription(message="sub:x", unsubscribe="unsub:x")
    pair = make_pair([sub, "other"])
    pair.connect()
    pair.eof()
    pair.core.unsubscribe(sub, pair.now)
    assert pair.core.data_to_send() == b""
    drop_count = len(pair.server_messages)
    pair.reconnect_after_backoff()
    assert pair.server_messages[drop_count:] == ["other"]


def test_unsubscribe_drops_a_pending_ack() -> None:
    sub = Subscription(message="sub", ack=acked_by("ack"), ack_timeout=5)
    pair = make_pair([sub])
    pair.connect()
    assert pair.core.next_deadline() == T0 + 5
    pair.core.unsubscribe(sub, pair.now)
    assert pair.core.metrics(pair.now).pending_acks == 0
    assert pair.core.next_deadline() == T0 + 10_000
    pair.advance(6)
    assert pair.core.state is State.OPEN
    assert pair.of(Disconnected) == []


def test_unsubscribe_unknown_raises_and_changes_nothing() -> None:
    pair = make_pair(["a"])
    pair.connect()
    with pytest.raises(LocalProtocolError, match="not subscribed"):
        pair.core.unsubscribe("b", pair.now)
    with pytest.raises(LocalProtocolError, match="not subscribed"):
        pair.core.unsubscribe(Subscription(message="b"), pair.now)
    with pytest.raises(LocalProtocolError, match="not subscribed"):
        pair.core.unsubscribe(b"a", pair.now)  # bytes are not the text "a"
    assert [s.payload for s in pair.core.subscriptions] == ["a"]
    assert pair.core.data_to_send() == b""


def test_unsubscribe_twice_raises_the_second_time() -> None:
    pair = make_pair(["a"])
    pair.core.unsubscribe("a", T0)
    with pytest.raises(LocalProtocolError):
        pair.core.unsubscribe("a", T0)


def test_resubscribe_after_unsubscribe_is_allowed() -> None:
    pair = make_pair(["a", "b"])
    pair.connect()
    pair.core.unsubscribe("a", pair.now)
    pair.core.subscribe("a", pair.now)
    pair.pump()
    assert [s.payload for s in pair.core.subscriptions] == ["b", "a"]
    drop_and_reconnect(pair)
    assert pair.server_messages == ["b", "a"]


# ---------------------------------------------------------------------------
# metrics


def test_metrics_pending_acks_follow_the_acks() -> None:
    subs = [Subscription(message=f"s{i}", ack=acked_by(f"ok{i}"), ack_timeout=5) for i in range(3)]
    pair = make_pair(subs)
    assert pair.core.metrics(T0).pending_acks == 0
    pair.connect()
    assert pair.core.metrics(pair.now).pending_acks == 3
    pair.send_text("ok1")
    assert pair.core.metrics(pair.now).pending_acks == 2
    pair.send_text("ok0")
    pair.send_text("ok2")
    assert pair.core.metrics(pair.now).pending_acks == 0


def test_pending_acks_are_cleared_when_the_connection_drops() -> None:
    pair = make_pair([Subscription(message="s", ack=acked_by("ok"), ack_timeout=5)])
    pair.connect()
    pair.eof()
    assert pair.core.metrics(pair.now).pending_acks == 0
    assert pair.core.next_deadline() == T0 + 1  # only the retry


# ---------------------------------------------------------------------------
# reading paused by the driver


def test_ack_timeout_is_suspended_while_reading_is_paused() -> None:
    pair = make_pair([Subscription(message="s", ack=acked_by("ok"), ack_timeout=5)])
    pair.connect()
    pair.advance(2)
    pair.core.pause_reading(pair.now)
    assert pair.core.next_deadline() == T0 + 10_000  # only the stable timer
    pair.advance(20)
    assert pair.core.state is State.OPEN
    assert pair.core.metrics(pair.now).pending_acks == 1


def test_resume_moves_the_ack_deadline_by_the_time_spent_paused() -> None:
    pair = make_pair([Subscription(message="s", ack=acked_by("ok"), ack_timeout=5)])
    pair.connect()
    pair.advance(2)
    pair.core.pause_reading(pair.now)
    pair.advance(20)
    pair.core.resume_reading(pair.now)
    assert pair.core.next_deadline() == T0 + 25
    assert pair.fire_next() == T0 + 25
    assert pair.of(Disconnected)[-1].reason is Reason.ACK_TIMEOUT
