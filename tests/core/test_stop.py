"""Graceful stop from every state, and the application's reconnect().

While a connection is open, ``stop`` sends close 1000, keeps delivering what
the server sends until its close frame and EOF (or ``close_timeout``), then
closes the transport and emits ``Stopped``, always the last event.
"""

from __future__ import annotations

import pytest
from wsproto.events import CloseConnection, TextMessage

from nonstop.core import (
    INFO,
    Alert,
    AlertPolicy,
    Backoff,
    CloseTransport,
    Connected,
    Connecting,
    Disconnected,
    LocalProtocolError,
    Message,
    OpenTransport,
    Reason,
    State,
    Stopped,
)
from tests.helpers import Pair, frame

STOPPED = Stopped(reason=Reason.STOPPED, detail="stop requested")


def make_pair(**options: object) -> Pair:
    defaults: dict[str, object] = {"ping_interval": None, "silence_timeout": None,
                                   "backoff": Backoff(initial=1.0, jitter=0.0)}
    return Pair(**{**defaults, **options})


def stop_disconnected(*, code: int | None, connection: int | None, uptime: float,
                      failures: int = 0) -> Disconnected:
    return Disconnected(
        reason=Reason.STOPPED, code=code, status=None, detail="stop requested", level=INFO,
        connection=connection, uptime=uptime, failures=failures, retry_in=None, retry_at=None,
    )


def assert_finished(pair: Pair) -> None:
    """STOPPED for good: no deadline, no bytes, no events, even after a timer call."""
    core = pair.core
    assert core.state is State.STOPPED
    assert core.next_deadline() is None
    assert core.data_to_send() == b""
    assert core.next_event() is None
    assert pair.events[-1] == STOPPED
    assert pair.of(Stopped) == [STOPPED]


# ----------------------------------------------------------------------
# from each state


def test_stop_from_idle() -> None:
    pair = make_pair()
    pair.core.stop(pair.now)
    assert pair.drain() == [STOPPED]
    assert_finished(pair)


def test_stop_from_connecting() -> None:
    pair = make_pair()
    pair.start()
    pair.advance(0.25)
    pair.core.stop(pair.now)
    assert pair.drain() == [
        stop_disconnected(code=None, connection=None, uptime=0.0),
        CloseTransport(abort=True),
        STOPPED,
    ]
    assert_finished(pair)


def test_stop_from_handshaking_drops_the_upgrade() -> None:
    pair = make_pair()
    pair.start()
    pair.open()
    pair.core.stop(pair.now)
    assert pair.drain() == [
        stop_disconnected(code=None, connection=None, uptime=0.0),
        CloseTransport(abort=True),
        STOPPED,
    ]
    assert_finished(pair)


def test_stop_from_backoff() -> None:
    pair = make_pair()
    pair.start()
    pair.core.transport_failed(ConnectionRefusedError(), pair.now)
    pair.pump()
    assert pair.core.state is State.BACKOFF
    pair.advance(0.5)
    pair.core.stop(pair.now)
    assert pair.drain() == [STOPPED]  # already disconnected: no second Disconnected
    assert_finished(pair)
    pair.advance(10.0)  # the retry never happens
    assert pair.of(Connecting)[-1].total_attempts == 1


def test_stop_from_open_sends_close_1000_and_waits() -> None:
    pair = make_pair(close_timeout=5.0)
    pair.connect()
    pair.advance(2.0)
    pair.core.stop(pair.now)
    assert pair.core.state is State.STOPPING
    assert pair.drain() == [stop_disconnected(code=1000, connection=1, uptime=2.0)]
    assert pair.core.next_deadline() == 1007.0  # now + close_timeout
    pair.pump()  # the server reads our close and answers it
    assert [(c.code, c.reason) for c in pair.server_closes] == [(1000, "stopping")]
    assert pair.core.state is State.STOPPING  # the server's close alone is not the end: wait for EOF
    assert pair.drain() == []
    assert pair.eof() == [CloseTransport(abort=False), STOPPED]
    assert_finished(pair)


def test_stop_from_open_delivers_messages_that_arrive_before_the_servers_close() -> None:
    pair = make_pair()
    pair.connect()
    server = pair.server
    assert server is not None
    in_flight = server.send(TextMessage(data="one")) + server.send(TextMessage(data="two"))
    pair.core.stop(pair.now)
    our_close = pair.core.data_to_send()  # still on its way to the server
    assert pair.drain() == [stop_disconnected(code=1000, connection=1, uptime=0.0)]
    pair.advance(0.5)
    pair.feed(in_flight)
    pair.feed(frame(0x1, b"thr", fin=False) + frame(0x0, b"ee"))  # fragmented, finished after stop
    assert pair.pump() == [
        Message(data="one", connection=1, received_at=1000.5),
        Message(data="two", connection=1, received_at=1000.5),
        Message(data="three", connection=1, received_at=1000.5),
    ]
    server.receive_data(our_close)
    close = next(e for e in server.events() if isinstance(e, CloseConnection))
    pair.feed(server.send(close.response()))
    assert pair.pump() == []
    assert pair.eof() == [CloseTransport(abort=False), STOPPED]
    assert_finished(pair)


def test_stop_from_open_delivers_a_message_split_across_the_stop() -> None:
    """The message being received when stop is called is finished, not dropped."""
    pair = make_pair()
    pair.connect()
    pair.feed(frame(0x2, b"\x01\x02", fin=False))
    pair.core.stop(pair.now)
    pair.core.data_to_send()  # the server never reads our close in this test
    pair.feed(frame(0x0, b"\x03"))
    assert pair.of(Message, pair.pump()) == [Message(data=b"\x01\x02\x03", connection=1,
                                                     received_at=1000.0)]


def test_stop_from_open_close_timeout_aborts() -> None:
    pair = make_pair(close_timeout=3.0)
    pair.connect()
    pair.advance(1.0)
    pair.core.stop(pair.now)
    pair.core.data_to_send()  # the close frame is lost: the server never answers
    pair.drain()
    assert pair.core.next_deadline() == 1004.0
    pair.advance(2.999)
    assert pair.core.state is State.STOPPING
    assert pair.fire_next() == 1004.0
    assert pair.events[-2:] == [CloseTransport(abort=True), STOPPED]
    assert_finished(pair)


def test_stop_from_open_close_timeout_when_eof_never_comes() -> None:
    """The server answered the close but keeps the TCP connection: abort at the timeout."""
    pair = make_pair(close_timeout=3.0)
    pair.connect()
    pair.core.stop(pair.now)
    pair.pump()
    assert len(pair.server_closes) == 1
    assert pair.fire_next() == 1003.0
    assert pair.events[-2:] == [CloseTransport(abort=True), STOPPED]
    assert_finished(pair)


def test_stop_from_open_transport_failure_while_waiting() -> None:
    pair = make_pair()
    pair.connect()
    pair.core.stop(pair.now)
    pair.drain()
    pair.core.transport_failed(ConnectionResetError(), pair.now)
    assert pair.drain() == [CloseTransport(abort=True), STOPPED]
    assert_finished(pair)


def test_stop_from_open_garbage_while_waiting_aborts_at_once() -> None:
    """A protocol error during the close handshake: stop waiting, drop the socket."""
    pair = make_pair()
    pair.connect()
    pair.core.stop(pair.now)
    pair.core.data_to_send()
    pair.drain()
    pair.feed(b"\xff\xff\xff\xff")  # not a valid frame
    assert pair.drain() == [CloseTransport(abort=True), STOPPED]
    assert_finished(pair)


def test_stop_from_closing_keeps_the_close_deadline() -> None:
    pair = make_pair(close_timeout=5.0)
    pair.connect()
    pair.server_close(1001, "going away")
    assert pair.core.state is State.CLOSING
    assert pair.core.next_deadline() == 1005.0
    pair.advance(1.0)
    before = len(pair.events)
    pair.core.stop(pair.now)
    assert pair.core.state is State.STOPPING
    assert pair.drain() == []  # the Disconnected was already emitted for the server's close
    assert pair.core.next_deadline() == 1005.0
    assert pair.eof() == [CloseTransport(abort=False), STOPPED]
    assert len(pair.of(Disconnected, pair.events[before:])) == 0
    assert_finished(pair)


def test_stop_from_closing_then_close_timeout() -> None:
    pair = make_pair(close_timeout=5.0)
    pair.connect()
    pair.server_close(1000)
    pair.advance(1.0)
    pair.core.stop(pair.now)
    assert pair.fire_next() == 1005.0
    assert pair.events[-2:] == [CloseTransport(abort=True), STOPPED]
    assert_finished(pair)


@pytest.mark.parametrize("where", ["idle", "connecting", "open", "backoff"])
def test_stop_twice_is_a_no_op(where: str) -> None:
    pair = make_pair()
    if where != "idle":
        pair.start()
    if where == "open":
        pair.open()
        pair.accept()
    if where == "backoff":
        pair.core.transport_failed(ConnectionRefusedError(), pair.now)
    pair.core.stop(pair.now)
    pair.pump()
    state, deadline, events = pair.core.state, pair.core.next_deadline(), list(pair.events)
    pair.advance(0.5)
    pair.core.stop(pair.now)
    assert pair.core.state is state
    assert pair.core.next_deadline() == deadline
    assert pair.drain() == []
    assert pair.core.data_to_send() == b""
    assert pair.events == events


def test_stop_while_stopping_does_not_send_a_second_close() -> None:
    pair = make_pair()
    pair.connect()
    pair.core.stop(pair.now)
    pair.core.stop(pair.now)
    pair.pump()
    pair.core.stop(pair.now)
    assert len(pair.server_closes) == 1
    assert len(pair.of(Disconnected)) == 1
    pair.eof()
    pair.core.stop(pair.now)
    assert_finished(pair)


# ----------------------------------------------------------------------
# after Stopped


def stopped_pair() -> Pair:
    pair = make_pair(subscriptions=["sub"])
    pair.connect()
    pair.core.stop(pair.now)
    pair.pump()
    pair.eof()
    assert_finished(pair)
    return pair


@pytest.mark.parametrize(
    "call",
    [
        lambda core, now: core.start(now),
        lambda core, now: core.transport_opened(now),
        lambda core, now: core.transport_failed(ConnectionResetError(), now),
        lambda core, now: core.receive_data(b"\x81\x01a", now),
        lambda core, now: core.receive_eof(now),
        lambda core, now: core.subscribe("other", now),
        lambda core, now: core.unsubscribe("sub", now),
    ],
    ids=["start", "transport_opened", "transport_failed", "receive_data", "receive_eof",
         "subscribe", "unsubscribe"],
)
def test_inputs_after_stopped_raise(call) -> None:
    pair = stopped_pair()
    subs = pair.core.subscriptions
    with pytest.raises(LocalProtocolError):
        call(pair.core, pair.now + 1.0)
    assert pair.core.subscriptions == subs
    assert_finished(pair)


def test_timer_and_reconnect_after_stopped_do_nothing() -> None:
    pair = stopped_pair()
    pair.core.handle_timer(pair.now + 100.0)
    assert pair.core.reconnect(pair.now + 100.0) is False
    pair.core.stop(pair.now + 100.0)
    assert_finished(pair)


# ----------------------------------------------------------------------
# reconnect()


def test_reconnect_while_open_closes_with_1001_and_backs_off() -> None:
    pair = make_pair(close_timeout=5.0, subscriptions=["sub"])
    pair.connect()
    pair.advance(2.0)
    assert pair.core.reconnect(pair.now) is True
    assert pair.core.state is State.CLOSING
    assert pair.drain() == [
        Disconnected(reason=Reason.CLIENT_RECONNECT, code=1001, status=None,
                     detail="reconnect requested", level=INFO, connection=1, uptime=2.0,
                     failures=1, retry_in=1.0, retry_at=1003.0),
    ]
    assert pair.core.next_deadline() == 1007.0  # close_timeout first, then the retry
    pair.pump()
    assert [(c.code, c.reason) for c in pair.server_closes] == [(1001, "reconnecting")]
    assert pair.eof() == [CloseTransport(abort=False)]
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == 1003.0
    before = len(pair.events)
    pair.reconnect_after_backoff()
    assert pair.now == 1003.0
    assert [type(e) for e in pair.events[before:]][:3] == [Connecting, OpenTransport, Connected]
    assert pair.server_messages == ["sub", "sub"]  # replayed


def test_reconnect_with_a_slow_consumer_reason_is_an_error() -> None:
    pair = make_pair()
    pair.connect()
    assert pair.core.reconnect(pair.now, reason=Reason.SLOW_CONSUMER) is True
    (disconnected,) = pair.of(Disconnected, pair.drain())
    assert disconnected.reason is Reason.SLOW_CONSUMER
    assert disconnected.level == 40


@pytest.mark.parametrize("where", ["idle", "connecting", "handshaking", "closing", "backoff",
                                   "stopping", "stopped"])
def test_reconnect_returns_false_when_not_open(where: str) -> None:
    pair = make_pair()
    if where != "idle":
        pair.start()
    if where in ("handshaking", "closing", "stopping"):
        pair.open()
    if where in ("closing", "stopping"):
        pair.accept()
    if where == "closing":
        pair.server_close(1000)
    if where == "stopping":
        pair.core.stop(pair.now)
    if where == "backoff":
        pair.core.transport_failed(ConnectionRefusedError(), pair.now)
    if where == "stopped":
        pair.core.stop(pair.now)
    pair.pump()
    assert pair.core.state.value == where
    state, deadline = pair.core.state, pair.core.next_deadline()
    metrics = pair.core.metrics(pair.now)
    assert pair.core.reconnect(pair.now) is False
    assert pair.core.state is state
    assert pair.core.next_deadline() == deadline
    assert pair.core.metrics(pair.now) == metrics
    assert pair.drain() == []
    assert pair.core.data_to_send() == b""


# ----------------------------------------------------------------------
# giving up ends the feed the same way


def test_max_attempts_gives_up_with_stopped_last() -> None:
    pair = make_pair(max_attempts=2, alerts=AlertPolicy(consecutive_failures=2, down_for=None))
    pair.start()
    pair.core.transport_failed(ConnectionRefusedError(), pair.now)
    pair.pump()
    pair.fire_next()
    pair.core.transport_failed(ConnectionRefusedError(), pair.now)
    events = pair.drain()
    assert [type(e) for e in events] == [Disconnected, Alert, CloseTransport, Alert, Stopped]
    assert events[0].failures == 2
    assert events[0].retry_in is None and events[0].retry_at is None
    assert (events[1].active, events[3].active) == (True, False)
    assert events[-1] == Stopped(reason=Reason.GAVE_UP,
                                 detail="refused: 2 failures in a row (max_attempts)")
    assert pair.core.state is State.STOPPED
    assert pair.core.next_deadline() is None


def test_fatal_status_gives_up_at_once() -> None:
    pair = make_pair(fatal_statuses=frozenset({401}), alerts=AlertPolicy(auth=False))
    pair.start()
    pair.open()
    events = pair.reject(401)
    assert [type(e) for e in events] == [Disconnected, CloseTransport, Stopped]
    assert events[0].status == 401 and events[0].retry_in is None
    assert events[1] == CloseTransport(abort=False)
    assert events[2] == Stopped(reason=Reason.GAVE_UP, detail="rejected: fatal")
    assert pair.core.next_deadline() is None


def test_fatal_close_code_finishes_the_close_handshake_then_stops() -> None:
    pair = make_pair(fatal_close_codes=frozenset({4001}), close_timeout=5.0)
    pair.connect()
    events = pair.server_close(4001, "banned")
    (disconnected,) = events
    assert isinstance(disconnected, Disconnected)
    assert disconnected.code == 4001 and disconnected.retry_in is None
    assert pair.core.state is State.STOPPING
    assert pair.core.next_deadline() == 1005.0
    assert pair.eof() == [CloseTransport(abort=False),
                          Stopped(reason=Reason.GAVE_UP, detail="server_closed: fatal")]
    assert pair.core.next_deadline() is None
