"""Health (the watchdog): protocol pings, application pings, the silence timer.

Every test runs the core against the in-memory wsproto server of
``tests.helpers.Pair`` on a fake clock and asserts exact deadlines.  The
connection opens (the 101 arrives) at ``T0``; ``stable_after`` is set far out
so its timer does not interleave with the health timers under test.
"""

from __future__ import annotations

import pytest

from nonstop.core import (
    AppPing,
    Backoff,
    CloseTransport,
    Disconnected,
    Message,
    Pong,
    Reason,
    State,
)
from tests.helpers import Pair, frame

T0 = 1000.0
FAR = 10_000.0  # stable_after: out of the way


def ping_payload(n: int) -> bytes:
    """The payload of the n-th protocol ping of a connection (a 4-byte counter)."""
    return n.to_bytes(4, "big")


def open_pair(**options: object) -> Pair:
    options.setdefault("stable_after", FAR)
    pair = Pair(now=T0, **options)
    pair.connect()
    assert pair.core.state is State.OPEN
    return pair


def only(kind: type, events: list) -> object:
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, events
    return found[0]


# ---------------------------------------------------------------------------
# protocol pings


def test_first_ping_is_due_one_interval_after_the_101() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None)
    assert pair.core.next_deadline() == T0 + 20
    assert pair.server_pings == []


def test_pings_are_sent_every_interval_with_counting_payloads() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None)
    assert pair.fire_next() == T0 + 20
    assert pair.server_pings == [ping_payload(1)]
    # the server's pong arrived at once: the next job is the next ping
    assert pair.core.next_deadline() == T0 + 40
    assert pair.fire_next() == T0 + 40
    assert pair.fire_next() == T0 + 60
    assert pair.server_pings == [ping_payload(1), ping_payload(2), ping_payload(3)]
    assert pair.core.state is State.OPEN


def test_ping_interval_is_not_moved_by_received_data() -> None:
    """Pings go out on a fixed schedule from the 101, busy link or not."""
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None)
    pair.advance(15)
    pair.send_text("tick")
    assert pair.core.next_deadline() == T0 + 20


def test_ping_round_trip_comes_from_the_matching_pong() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    assert pair.core.metrics(pair.now).last_ping_rtt is None
    pair.fire_next()
    pair.advance(0.25)
    assert pair.server_pong(ping_payload(1)) == [Pong(rtt=0.25, connection=1)]
    assert pair.core.metrics(pair.now).last_ping_rtt == 0.25


def test_instant_pong_gives_zero_round_trip() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None)
    pair.fire_next()  # auto pong, same `now`
    assert pair.core.metrics(pair.now).last_ping_rtt == 0.0


def test_pong_with_another_payload_gives_no_round_trip() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()
    pair.advance(0.5)
    assert pair.server_pong(b"not-ours") == []  # no Pong event either
    assert pair.core.metrics(pair.now).last_ping_rtt is None


def test_pong_for_an_older_ping_does_not_update_round_trip() -> None:
    """Only the latest ping's pong is timed (payload 2 is outstanding)."""
    pair = open_pair(ping_interval=1, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()  # ping 1 at T0+1
    pair.fire_next()  # ping 2 at T0+2
    pair.advance(0.5)
    pair.server_pong(ping_payload(1))
    assert pair.core.metrics(pair.now).last_ping_rtt is None
    pair.server_pong(ping_payload(2))
    assert pair.core.metrics(pair.now).last_ping_rtt == 0.5


def test_unsolicited_empty_pong_before_any_ping_gives_no_round_trip() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None)
    pair.advance(3)
    pair.server_pong(b"")
    assert pair.core.metrics(pair.now).last_ping_rtt is None
    assert pair.core.state is State.OPEN


def test_unsolicited_pong_keeps_the_last_round_trip() -> None:
    """``last_ping_rtt`` is the latest *answered* ping; a stray pong on a new
    connection must not erase the value measured on the previous one."""
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()
    pair.advance(0.25)
    pair.server_pong(ping_payload(1))
    pair.eof()
    pair.reconnect_after_backoff()
    pair.server_pong(b"stray")
    assert pair.core.metrics(pair.now).last_ping_rtt == 0.25


def test_ping_timeout_aborts_when_no_byte_arrives() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()
    assert pair.core.next_deadline() == T0 + 30
    pair.clock.now = T0 + 30 - 0.001
    pair.core.handle_timer(pair.now)
    assert pair.pump() == []
    assert pair.fire_next() == T0 + 30
    new = pair.events[-2:]
    assert isinstance(new[1], CloseTransport) and new[1].abort is True
    gone = new[0]
    assert isinstance(gone, Disconnected)
    assert (gone.reason, gone.code, gone.connection, gone.uptime) == (Reason.PING_TIMEOUT, 1006, 1, 30.0)
    assert pair.core.state is State.BACKOFF


def test_ping_timeout_sends_no_close_frame() -> None:
    """A dead peer is aborted: no close handshake that can never complete."""
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()
    pair.clock.now = T0 + 30
    pair.core.handle_timer(pair.now)
    assert pair.core.data_to_send() == b""  # no close frame queued
    assert pair.core.next_event() is not None
    assert pair.core.state is State.BACKOFF


def test_data_message_satisfies_an_outstanding_ping() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()
    pair.advance(9)
    pair.send_text("busy link, pong queued behind data")
    assert pair.core.next_deadline() == T0 + 40  # the next ping, not a timeout
    pair.advance(15)
    assert pair.core.state is State.OPEN
    assert pair.of(Disconnected) == []


def test_pong_satisfies_an_outstanding_ping() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()
    pair.advance(9.5)
    pair.server_pong(ping_payload(1))
    assert pair.core.next_deadline() == T0 + 40


def test_a_single_byte_of_a_frame_satisfies_an_outstanding_ping() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()
    pair.advance(5)
    pair.feed(frame(0x1, b"partial")[:1])
    assert pair.core.next_deadline() == T0 + 40


def test_ping_timeout_runs_from_the_first_unanswered_ping() -> None:
    """With pings more frequent than the timeout, later pings don't extend it."""
    pair = open_pair(ping_interval=1, ping_timeout=2.5, silence_timeout=None, auto_pong=False)
    for k in range(1, 4):
        assert pair.fire_next() == T0 + k
    assert pair.server_pings == [ping_payload(1), ping_payload(2), ping_payload(3)]
    assert pair.core.next_deadline() == T0 + 3.5
    assert pair.fire_next() == T0 + 3.5
    assert only(Disconnected, pair.events).reason is Reason.PING_TIMEOUT


def test_ping_timeout_wins_over_a_ping_due_at_the_same_time() -> None:
    pair = open_pair(ping_interval=1, ping_timeout=2, silence_timeout=None, auto_pong=False)
    pair.fire_next()  # ping 1 at T0+1, pong due at T0+3
    pair.fire_next()  # ping 2 at T0+2
    assert pair.fire_next() == T0 + 3  # ping 3 and the timeout are both due
    assert pair.server_pings == [ping_payload(1), ping_payload(2)]
    assert only(Disconnected, pair.events).reason is Reason.PING_TIMEOUT


def test_data_after_a_timeout_is_rearmed_by_the_next_ping() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()
    pair.advance(1)
    pair.send_text("alive")
    assert pair.fire_next() == T0 + 40
    assert pair.core.next_deadline() == T0 + 50
    assert pair.fire_next() == T0 + 50
    assert only(Disconnected, pair.events).reason is Reason.PING_TIMEOUT


def test_ping_timeout_none_never_fails_the_connection() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=None, silence_timeout=None, auto_pong=False)
    for k in range(1, 5):
        assert pair.fire_next() == T0 + 20 * k
    assert len(pair.server_pings) == 4
    assert pair.core.state is State.OPEN
    assert pair.core.next_deadline() == T0 + 100


def test_ping_interval_none_sends_no_pings() -> None:
    pair = open_pair(ping_interval=None, ping_timeout=10, silence_timeout=None, stable_after=5)
    assert pair.fire_next() == T0 + 5  # the stable timer is the only job
    assert pair.core.next_deadline() is None
    pair.advance(1000)
    assert pair.server_pings == []
    assert pair.core.state is State.OPEN


# ---------------------------------------------------------------------------
# the silence watchdog


def test_silence_is_armed_from_the_101_before_any_message() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60)
    assert pair.core.next_deadline() == T0 + 60
    assert pair.fire_next() == T0 + 60
    gone = only(Disconnected, pair.events)
    assert (gone.reason, gone.code, gone.uptime) == (Reason.SILENCE, 1006, 60.0)
    assert pair.events[-1] == CloseTransport(abort=True)
    assert pair.core.state is State.BACKOFF


def test_silence_does_not_fire_a_moment_early() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.advance(59.999)
    assert pair.core.state is State.OPEN
    assert pair.of(Disconnected) == []


def test_silence_is_reset_by_every_message() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.advance(30)
    pair.send_text("a")
    assert pair.core.next_deadline() == T0 + 90
    pair.advance(50)
    pair.send_bytes(b"b")
    assert pair.core.next_deadline() == T0 + 140
    assert pair.fire_next() == T0 + 140
    assert only(Disconnected, pair.events).reason is Reason.SILENCE


def test_silence_is_reset_by_a_data_message_still_arriving() -> None:
    """A data frame that has begun to come is data, if slow: the bytes of a
    big message count before it is whole."""
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.advance(45)
    pair.feed(frame(0x1, b"slow")[:2])
    assert pair.core.next_deadline() == T0 + 105
    assert pair.messages() == []
    pair.advance(50)
    pair.feed(frame(0x1, b"slow")[2:])
    pair.pump()
    assert pair.messages() == ["slow"] and pair.core.next_deadline() == T0 + 155


@pytest.mark.parametrize("fragment", [b"", b"ab"], ids=["first-fragment-empty", "first-fragment"])
def test_silence_is_reset_by_a_fragmented_message_in_progress(fragment: bytes) -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.advance(45)
    pair.feed(frame(0x1, fragment, fin=False))
    assert pair.core.next_deadline() == T0 + 105


def test_a_pong_does_not_reset_the_silence_watchdog() -> None:
    """Pongs keep the keep-alive satisfied; the watchdog counts data."""
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.advance(20)
    pair.server_pong(b"")
    assert pair.core.next_deadline() == T0 + 60


def test_a_server_ping_does_not_reset_the_silence_watchdog() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.advance(20)
    pair.feed(frame(0x9, b"are you there"))
    assert pair.core.next_deadline() == T0 + 60
    pair.advance(20)
    pair.feed(frame(0x9, b"are you there")[:3])  # a control frame arriving: not data either
    assert pair.core.next_deadline() == T0 + 60


def test_a_server_that_answers_pings_but_sends_no_data_is_dropped() -> None:
    """The zombie subscription: the socket and the server's WebSocket layer
    are alive, the data stopped.  Dropped at ``silence_timeout`` after the
    last message, and the detail says the bytes still came."""
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=90)
    pair.advance(30)
    pair.send_text("last")
    pair.advance(89.999)  # to T0 + 119.999
    assert pair.core.state is State.OPEN and len(pair.server_pings) == 5
    pair.advance(0.001)
    gone = only(Disconnected, pair.events)
    assert (gone.reason, gone.uptime) == (Reason.SILENCE, 120.0)
    assert gone.detail == "no data message for 90s; bytes came (pongs, control frames)"


def test_silence_none_never_fires() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=None, stable_after=5)
    pair.advance(10_000)
    assert pair.core.state is State.OPEN
    assert pair.core.next_deadline() is None


def test_silence_and_pings_together_keep_a_healthy_link_open() -> None:
    """Data every 25 s and pings answered: neither watchdog fires."""
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=30)
    for _ in range(8):
        pair.advance(25)
        pair.send_text("tick")
    assert pair.core.state is State.OPEN
    assert len(pair.server_pings) == 10
    assert pair.core.next_deadline() == T0 + 220


def test_silence_fires_when_pings_are_unanswered_and_timeout_is_longer() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=None, silence_timeout=30, auto_pong=False)
    assert pair.fire_next() == T0 + 20
    assert pair.fire_next() == T0 + 30
    assert only(Disconnected, pair.events).reason is Reason.SILENCE


def test_silence_timer_restarts_on_a_new_connection() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.fire_next()  # silence at T0+60
    retry_at = pair.core.next_deadline()
    assert retry_at is not None
    pair.reconnect_after_backoff()
    assert pair.now == retry_at
    assert pair.core.next_deadline() == retry_at + 60


# ---------------------------------------------------------------------------
# application-level pings

PING = {"op": "ping"}
PONG = '{"op":"pong"}'


def is_pong(message: str | bytes) -> bool:
    return message == PONG


def app_pair(**app_options: object) -> Pair:
    app = AppPing(message=PING, is_pong=is_pong, **app_options)
    return open_pair(ping_interval=None, silence_timeout=None, app_ping=app)


def test_app_ping_message_is_sent_every_interval() -> None:
    pair = app_pair(interval=5, timeout=2)
    assert pair.core.next_deadline() == T0 + 5
    assert pair.fire_next() == T0 + 5
    assert pair.server_messages == ['{"op":"ping"}']
    pair.advance(1)
    pair.send_text(PONG)
    assert pair.core.next_deadline() == T0 + 10
    assert pair.fire_next() == T0 + 10
    assert pair.server_messages == ['{"op":"ping"}', '{"op":"ping"}']


def test_app_pong_is_swallowed_by_default() -> None:
    pair = app_pair(interval=5, timeout=2)
    pair.fire_next()
    pair.send_text(PONG)
    pair.send_text("data")
    assert pair.messages() == ["data"]
    assert pair.core.metrics(pair.now).messages_received == 1


def test_a_swallowed_app_pong_is_not_data_for_the_silence_watchdog() -> None:
    """It answers the application ping; it is not data the feed delivers."""
    app = AppPing(message=PING, is_pong=is_pong, interval=20, timeout=10)
    pair = open_pair(ping_interval=None, silence_timeout=60, app_ping=app)
    pair.fire_next()  # the app ping at T0 + 20
    pair.send_text(PONG)
    assert pair.core.next_deadline() == T0 + 40  # the next app ping
    pair.fire_next()
    pair.send_text(PONG)
    assert pair.core.next_deadline() == T0 + 60  # silence: set by no message since the 101
    pair.fire_next()
    assert only(Disconnected, pair.events).reason is Reason.SILENCE


def test_app_pong_is_delivered_when_deliver_pongs() -> None:
    pair = app_pair(interval=5, timeout=2, deliver_pongs=True)
    pair.fire_next()
    pair.send_text(PONG)
    assert pair.messages() == [PONG]
    assert pair.core.next_deadline() == T0 + 10  # still counted as the pong


def test_app_ping_timeout_even_when_other_data_arrives() -> None:
    """An app ping checks the server's application: data does not satisfy it."""
    pair = app_pair(interval=5, timeout=2)
    pair.fire_next()
    pair.advance(1)
    pair.send_text("data, not a pong")
    assert pair.core.next_deadline() == T0 + 7
    assert pair.fire_next() == T0 + 7
    gone = only(Disconnected, pair.events)
    assert (gone.reason, gone.code) == (Reason.PING_TIMEOUT, 1006)
    assert pair.events[-1] == CloseTransport(abort=True)
    assert pair.messages() == ["data, not a pong"]


def test_app_ping_timeout_runs_from_the_first_unanswered_ping() -> None:
    pair = app_pair(interval=1, timeout=2.5)
    assert pair.fire_next() == T0 + 1
    assert pair.fire_next() == T0 + 2
    assert pair.core.next_deadline() == T0 + 3  # the third ping comes first
    assert pair.fire_next() == T0 + 3
    assert pair.fire_next() == T0 + 3.5
    assert pair.server_messages == ['{"op":"ping"}'] * 3
    assert only(Disconnected, pair.events).reason is Reason.PING_TIMEOUT


def test_app_pong_without_an_outstanding_ping_is_harmless() -> None:
    pair = app_pair(interval=5, timeout=2)
    pair.send_text(PONG)
    assert pair.messages() == []
    assert pair.core.next_deadline() == T0 + 5


def test_is_pong_raising_fails_the_connection_with_1011() -> None:
    def broken(message: str | bytes) -> bool:
        raise ValueError("bad pong matcher")

    app = AppPing(message=PING, is_pong=broken, interval=5, timeout=2)
    pair = open_pair(ping_interval=None, silence_timeout=None, app_ping=app)
    new = pair.send_text("hello")
    kinds = [type(e) for e in new]
    assert kinds == [Message, Disconnected]
    gone = new[1]
    assert isinstance(gone, Disconnected)
    assert (gone.reason, gone.code) == (Reason.CALLBACK_ERROR, 1011)
    assert "ValueError" in gone.detail and "bad pong matcher" in gone.detail
    assert [c.code for c in pair.server_closes] == [1011]
    assert pair.core.state is State.CLOSING


def test_is_pong_is_consulted_only_while_open() -> None:
    calls: list[str | bytes] = []

    def spy(message: str | bytes) -> bool:
        calls.append(message)
        return False

    app = AppPing(message=PING, is_pong=spy, interval=5, timeout=2)
    pair = open_pair(ping_interval=None, silence_timeout=None, app_ping=app)
    pair.send_text("one")
    pair.core.stop(pair.now)
    assert pair.core.state is State.STOPPING
    # a message the server sent before it saw our close frame
    pair.feed(frame(0x1, b"late"))
    pair.pump()
    assert calls == ["one"]
    assert pair.messages() == ["one", "late"]


# ---------------------------------------------------------------------------
# the deadline invariant


def drive(pair: Pair, steps: int) -> None:
    """Run the feed through connects, failures and retries by firing each
    deadline exactly; check ``next_deadline() > now`` after every timer."""
    for _ in range(steps):
        state = pair.core.state
        if state is State.CONNECTING:
            pair.open()
            continue
        if state is State.HANDSHAKING:
            pair.accept()
            continue
        if state is State.CLOSING:
            pair.eof()
            continue
        deadline = pair.core.next_deadline()
        assert deadline is not None
        assert deadline >= pair.now
        pair.clock.now = deadline
        pair.core.handle_timer(deadline)
        after = pair.core.next_deadline()
        assert after is None or after > deadline, (deadline, after, pair.core.state)
        pair.pump()


@pytest.mark.parametrize("start", [1000.0, 1e15, 1e300])
@pytest.mark.parametrize("auto_pong", [True, False])
def test_deadline_is_strictly_later_after_every_timer(start: float, auto_pong: bool) -> None:
    tiny = 0.001
    pair = Pair(
        now=start,
        auto_pong=auto_pong,
        ping_interval=tiny,
        ping_timeout=tiny,
        silence_timeout=tiny,
        stable_after=tiny,
        connect_timeout=tiny,
        handshake_timeout=tiny,
        close_timeout=tiny,
        backoff=Backoff(initial=tiny, cap=tiny),
        app_ping=AppPing(message="ping", is_pong=lambda m: m == "pong", interval=tiny, timeout=tiny),
        subscriptions=[{"sub": 1}],
    )
    pair.start()
    drive(pair, 300)
    assert pair.of(Disconnected), "the scenario must go through failures"
    assert pair.core.connection >= 2


@pytest.mark.parametrize("start", [1e15, 1e300])
def test_ping_timers_move_forward_at_huge_times(start: float) -> None:
    """``now + 0.001 == now`` at these magnitudes: deadlines still advance."""
    tiny = 0.001
    pair = Pair(now=start, ping_interval=tiny, ping_timeout=tiny, silence_timeout=None,
                stable_after=FAR)
    pair.connect()
    seen = [pair.now]
    for _ in range(5):
        seen.append(pair.fire_next())
    assert seen == sorted(set(seen))
    assert len(pair.server_pings) == 5
    assert pair.core.state is State.OPEN


@pytest.mark.parametrize("start", [1e15, 1e300])
def test_handle_timer_is_safe_early_late_and_twice(start: float) -> None:
    pair = Pair(now=start, ping_interval=0.001, ping_timeout=None, silence_timeout=None,
                stable_after=FAR)
    pair.connect()
    pair.core.handle_timer(pair.now)  # early: nothing due
    assert pair.pump() == []
    assert pair.server_pings == []
    deadline = pair.fire_next()
    pair.core.handle_timer(deadline)  # twice
    pair.pump()
    assert len(pair.server_pings) == 1
    nxt = pair.core.next_deadline()
    assert nxt is not None and nxt > deadline


# ---------------------------------------------------------------------------
# reading paused by the driver (backpressure)


def test_paused_reading_suspends_the_ping_timeout_but_pings_go_on() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.advance(5)
    pair.core.pause_reading(pair.now)
    assert pair.core.reading_paused
    assert pair.core.metrics(pair.now).reading_paused is True
    for k in (1, 2, 3):
        assert pair.fire_next() == T0 + 20 * k  # never T0+30: no verdict while paused
    assert pair.server_pings == [ping_payload(1), ping_payload(2), ping_payload(3)]
    assert pair.core.state is State.OPEN


def test_paused_reading_suspends_the_silence_watchdog() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60, stable_after=5)
    pair.core.pause_reading(pair.now)
    assert pair.fire_next() == T0 + 5  # the stable timer only
    assert pair.core.next_deadline() is None
    pair.advance(500)
    assert pair.core.state is State.OPEN


def test_resume_reading_restarts_the_liveness_clocks_from_now() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=60, auto_pong=False)
    pair.core.pause_reading(pair.now)
    pair.fire_next()  # ping 1 at T0+20, pong due would be T0+30
    pair.advance(25)  # T0+45
    pair.core.resume_reading(pair.now)
    assert not pair.core.reading_paused
    # the outstanding ping is forgiven; silence counts from the resume
    assert pair.core.next_deadline() == T0 + 60  # ping 3
    pair.fire_next()
    assert pair.core.next_deadline() == T0 + 70  # ping 3's timeout
    assert pair.fire_next() == T0 + 70
    assert only(Disconnected, pair.events).reason is Reason.PING_TIMEOUT


def test_resume_reading_then_silence_fires_one_timeout_after_the_resume() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.advance(30)
    pair.core.pause_reading(pair.now)
    pair.advance(100)
    pair.core.resume_reading(pair.now)
    assert pair.core.next_deadline() == T0 + 190
    assert pair.fire_next() == T0 + 190
    assert only(Disconnected, pair.events).reason is Reason.SILENCE


def test_resume_reading_forgives_an_outstanding_app_ping() -> None:
    app = AppPing(message=PING, is_pong=is_pong, interval=5, timeout=2)
    pair = open_pair(ping_interval=None, silence_timeout=None, app_ping=app)
    pair.core.pause_reading(pair.now)
    assert pair.fire_next() == T0 + 5
    assert pair.fire_next() == T0 + 10  # no app-pong verdict at T0+7 while paused
    assert pair.server_messages == ['{"op":"ping"}'] * 2
    pair.advance(1)
    pair.core.resume_reading(pair.now)
    assert pair.core.next_deadline() == T0 + 15
    assert pair.fire_next() == T0 + 15
    assert pair.core.next_deadline() == T0 + 17
    assert pair.fire_next() == T0 + 17
    assert only(Disconnected, pair.events).reason is Reason.PING_TIMEOUT


def test_pause_and_resume_are_idempotent() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.advance(10)
    pair.core.pause_reading(pair.now)
    pair.advance(10)
    pair.core.pause_reading(pair.now)  # the pause still counts from T0+10
    pair.advance(10)
    pair.core.resume_reading(pair.now)
    pair.core.resume_reading(pair.now + 5)
    assert pair.core.next_deadline() == T0 + 90
    assert pair.core.metrics(pair.now).reading_paused is False


def test_reading_paused_before_the_101_applies_to_the_new_connection() -> None:
    pair = Pair(now=T0, ping_interval=None, silence_timeout=60, stable_after=FAR)
    pair.start()
    pair.open()
    pair.core.pause_reading(pair.now)
    pair.accept()
    assert pair.core.state is State.OPEN
    assert pair.core.next_deadline() == T0 + FAR  # no silence deadline while paused
    pair.advance(10)
    pair.core.resume_reading(pair.now)
    assert pair.core.next_deadline() == T0 + 70


def test_pause_after_stop_is_ignored() -> None:
    pair = Pair(now=T0)
    pair.core.stop(T0)
    pair.core.pause_reading(T0)
    assert not pair.core.reading_paused


def test_resume_reading_after_the_connection_dropped_is_harmless() -> None:
    pair = open_pair(ping_interval=None, silence_timeout=60)
    pair.core.pause_reading(pair.now)
    pair.advance(5)
    pair.eof()
    assert pair.core.state is State.BACKOFF
    pair.core.resume_reading(pair.now)
    assert not pair.core.reading_paused
    pair.reconnect_after_backoff()
    assert pair.core.next_deadline() == pair.now + 60  # the new connection is watched


def test_pong_arriving_while_closing_is_ignored() -> None:
    pair = open_pair(ping_interval=20, ping_timeout=10, silence_timeout=None, auto_pong=False)
    pair.fire_next()  # ping 1 at T0+20
    pair.core.reconnect(pair.now)  # our close 1001 is queued, not yet delivered
    assert pair.core.state is State.CLOSING
    pair.clock.advance(0.5)  # no pump: the server has not seen our close yet
    pair.feed(frame(0xA, ping_payload(1)))
    assert pair.core.metrics(pair.now).last_ping_rtt is None
    assert pair.core.state is State.CLOSING
