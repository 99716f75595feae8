"""Operator alerts (the guard's second half), driven through the core with a fake clock.

Every condition raises exactly one ``Alert(active=True)`` when it starts and
one ``Alert(active=False)`` when it clears (hysteresis), never one per attempt.
Backoff has no jitter here, so every retry time is exact:
``Backoff(initial=1, jitter=0)`` waits 1, 2, 4, 8... seconds.
"""

from __future__ import annotations

import pytest

from nonstop.core import (
    ERROR,
    INFO,
    Alert,
    AlertKind,
    AlertPolicy,
    Backoff,
    CloseTransport,
    Connected,
    Disconnected,
    Gap,
    Reason,
    State,
    Stopped,
    Subscribed,
)
from tests.helpers import Pair

OFF = {"consecutive_failures": None, "down_for": None, "reconnects_per_minute": None, "auth": False}


def make_pair(**alerts: object) -> Pair:
    """A pair whose only alert conditions are the ones given; no pings, no silence."""
    return Pair(
        alerts=AlertPolicy(**{**OFF, **alerts}),
        backoff=Backoff(initial=1.0, factor=2.0, jitter=0.0),
        ping_interval=None,
        silence_timeout=None,
        stable_after=5.0,
    )


def refuse(pair: Pair) -> list:
    pair.core.transport_failed(ConnectionRefusedError(111, "Connection refused"), pair.now)
    return pair.pump()


def alerts(events: list) -> list[Alert]:
    return [e for e in events if isinstance(e, Alert)]


def on(kind: AlertKind, detail: str) -> Alert:
    return Alert(kind=kind, active=True, detail=detail, level=ERROR)


def off(kind: AlertKind) -> Alert:
    return Alert(kind=kind, active=False, detail=f"{kind.value} cleared", level=INFO)


# ----------------------------------------------------------------------
# consecutive failures


def test_consecutive_failures_alerts_once_at_the_nth_failure() -> None:
    pair = make_pair(consecutive_failures=3)
    pair.start()
    assert alerts(refuse(pair)) == []  # failure 1 at 1000, retry at 1001
    assert pair.fire_next() == 1001.0
    assert alerts(refuse(pair)) == []  # failure 2, retry at 1003
    assert pair.fire_next() == 1003.0
    events = refuse(pair)  # failure 3
    assert [type(e) for e in events] == [Disconnected, Alert, CloseTransport]
    assert events[0].failures == 3
    assert events[1] == on(AlertKind.CONSECUTIVE_FAILURES, "3 failures in a row (threshold 3)")
    assert pair.core.metrics(pair.now).alerts_active == ("consecutive_failures",)


def test_consecutive_failures_does_not_repeat_for_later_failures() -> None:
    pair = make_pair(consecutive_failures=2)
    pair.start()
    refuse(pair)
    pair.fire_next()
    assert len(alerts(refuse(pair))) == 1
    for _ in range(5):
        pair.fire_next()
        pair.open()
        assert alerts(pair.reject(500)) == []
    assert pair.core.metrics(pair.now).consecutive_failures == 7
    assert len(alerts(pair.events)) == 1


def test_consecutive_failures_clears_when_a_connection_becomes_stable() -> None:
    pair = make_pair(consecutive_failures=2)
    pair.start()
    refuse(pair)
    pair.fire_next()  # 1001
    refuse(pair)  # alert; retry at 1003
    assert pair.fire_next() == 1003.0
    pair.open()
    connected = pair.accept()
    assert alerts(connected) == []  # connected is not yet stable
    assert pair.core.next_deadline() == 1008.0  # 1003 + stable_after
    pair.advance(4.999)
    assert alerts(pair.events) == [on(AlertKind.CONSECUTIVE_FAILURES, "2 failures in a row (threshold 2)")]
    assert pair.fire_next() == 1008.0
    assert alerts(pair.events)[-1] == off(AlertKind.CONSECUTIVE_FAILURES)
    assert pair.core.metrics(pair.now).consecutive_failures == 0
    assert pair.core.metrics(pair.now).alerts_active == ()


def test_consecutive_failures_is_not_cleared_by_a_connection_that_drops_early() -> None:
    """Accept-then-drop is still a failure: no clear, no second alert."""
    pair = make_pair(consecutive_failures=2)
    pair.start()
    refuse(pair)
    pair.fire_next()
    refuse(pair)
    pair.fire_next()
    pair.open()
    pair.accept()
    pair.advance(4.0)  # 1 s short of stable_after
    pair.eof()
    assert alerts(pair.events) == [on(AlertKind.CONSECUTIVE_FAILURES, "2 failures in a row (threshold 2)")]
    assert pair.core.metrics(pair.now).alerts_active == ("consecutive_failures",)


def test_consecutive_failures_alerts_again_after_it_cleared() -> None:
    pair = make_pair(consecutive_failures=1)
    pair.start()
    refuse(pair)
    pair.fire_next()
    pair.open()
    pair.accept()
    pair.fire_next()  # stable: cleared
    events = pair.eof()
    assert alerts(events) == [on(AlertKind.CONSECUTIVE_FAILURES, "1 failures in a row (threshold 1)")]
    assert [(a.kind, a.active) for a in alerts(pair.events)] == [
        (AlertKind.CONSECUTIVE_FAILURES, True),
        (AlertKind.CONSECUTIVE_FAILURES, False),
        (AlertKind.CONSECUTIVE_FAILURES, True),
    ]


# ----------------------------------------------------------------------
# down for


def test_down_for_fires_from_start_when_the_first_connection_never_opens() -> None:
    pair = make_pair(down_for=5.0)
    pair.start()
    assert pair.core.state is State.CONNECTING
    assert pair.core.next_deadline() == 1005.0  # down_for, before connect_timeout (1010)
    pair.advance(4.999)
    assert alerts(pair.events) == []
    assert pair.fire_next() == 1005.0
    assert pair.events[-1] == on(AlertKind.DOWN, "no connection for 5.0s")
    assert pair.core.state is State.CONNECTING
    assert pair.core.next_deadline() == 1010.0  # the connect timeout is still running


def test_down_for_fires_while_attempts_keep_failing() -> None:
    pair = make_pair(down_for=5.0)
    pair.start()
    refuse(pair)  # retry 1001
    pair.fire_next()
    refuse(pair)  # retry 1003
    pair.fire_next()
    refuse(pair)  # retry 1007
    assert pair.core.next_deadline() == 1005.0
    assert pair.fire_next() == 1005.0
    assert pair.drain() == []
    assert pair.events[-1] == on(AlertKind.DOWN, "no connection for 5.0s")
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == 1007.0
    pair.fire_next()
    refuse(pair)  # retry at 1007 + 8: no second alert
    pair.fire_next()
    refuse(pair)
    assert len(alerts(pair.events)) == 1


def test_down_for_clears_on_connected() -> None:
    pair = make_pair(down_for=2.0)
    pair.start()
    refuse(pair)  # retry 1001
    pair.fire_next()
    refuse(pair)  # retry 1003
    assert pair.fire_next() == 1002.0  # the alert
    assert pair.fire_next() == 1003.0  # the retry
    pair.open()
    events = pair.accept()
    assert [type(e) for e in events] == [Connected, Alert]
    assert events[1] == off(AlertKind.DOWN)
    assert pair.core.metrics(pair.now).alerts_active == ()


def test_down_for_counts_from_the_moment_a_connection_is_lost() -> None:
    pair = make_pair(down_for=3.0)
    pair.connect()
    assert pair.core.next_deadline() == 1005.0  # only stable_after: no down timer while open
    pair.advance(10.0)
    pair.eof()  # lost at 1010; the first retry after a stable connection at once
    assert pair.core.next_deadline() == 1010.0
    pair.fire_next()
    refuse(pair)  # then the series from initial: retry at 1011
    assert pair.core.next_deadline() == 1011.0
    pair.fire_next()
    refuse(pair)  # retry at 1013
    assert pair.core.next_deadline() == 1013.0
    assert pair.fire_next() == 1013.0  # the down timer (1010 + 3) and the retry coincide
    assert alerts(pair.events) == [on(AlertKind.DOWN, "no connection for 3.0s")]
    assert pair.core.state is State.CONNECTING


def test_down_for_timer_restarts_after_it_cleared() -> None:
    pair = make_pair(down_for=2.0)
    pair.start()
    pair.advance(2.0)  # alert at 1002
    pair.open()
    pair.accept()  # cleared at 1002
    pair.advance(1.0)
    pair.eof()  # down again at 1003; retry 1004
    assert pair.core.next_deadline() == 1004.0
    pair.fire_next()
    assert pair.core.next_deadline() == 1005.0  # 1003 + down_for, before connect_timeout
    pair.fire_next()
    assert [(a.kind, a.active) for a in alerts(pair.events)] == [
        (AlertKind.DOWN, True), (AlertKind.DOWN, False), (AlertKind.DOWN, True),
    ]


# ----------------------------------------------------------------------
# reconnects per minute


def flapping_pair(limit: int) -> Pair:
    """A server that accepts and drops at once, retried every second exactly."""
    return Pair(
        alerts=AlertPolicy(**{**OFF, "reconnects_per_minute": limit}),
        backoff=Backoff(initial=1.0, factor=1.0, cap=1.0, jitter=0.0),
        stable_after=1000.0,
        ping_interval=None,
        silence_timeout=None,
    )


def flap(pair: Pair, times: int) -> None:
    """Connect, drop; *times* times.  The first connect of a feed is not a reconnect."""
    for _ in range(times):
        if pair.core.state is State.BACKOFF:
            pair.fire_next()
        pair.connect()
        pair.eof()


def test_reconnect_rate_alerts_when_more_than_r_reconnects_in_a_minute() -> None:
    pair = flapping_pair(2)
    flap(pair, 3)  # connections at 1000, 1001, 1002: two reconnects
    assert alerts(pair.events) == []
    pair.fire_next()  # 1003
    pair.open()
    events = pair.accept()  # third reconnect
    assert [type(e) for e in events] == [Connected, Alert, Gap]
    assert events[1] == on(AlertKind.RECONNECT_RATE, "3 reconnects in the last 60s (threshold 2)")
    assert pair.core.metrics(pair.now).reconnects_last_minute == 3


def test_reconnect_rate_clears_when_the_window_count_falls_back_to_r() -> None:
    pair = flapping_pair(2)
    flap(pair, 3)
    pair.fire_next()
    pair.connect()  # reconnects at 1001, 1002, 1003: alert; stays open
    assert pair.now == 1003.0
    # the count falls to 2 when the reconnect of 1001 leaves the window
    assert pair.core.next_deadline() == 1061.0
    pair.advance(57.999)
    assert len(alerts(pair.events)) == 1
    assert pair.core.metrics(pair.now).reconnects_last_minute == 3
    assert pair.fire_next() == 1061.0
    assert pair.events[-1] == off(AlertKind.RECONNECT_RATE)
    assert pair.core.metrics(pair.now).reconnects_last_minute == 2
    assert pair.core.state is State.OPEN
    assert pair.core.next_deadline() == 2003.0  # only stable_after is left


def test_reconnect_rate_does_not_repeat_and_clears_with_the_last_excess_reconnect() -> None:
    pair = flapping_pair(2)
    flap(pair, 4)  # reconnects at 1001, 1002, 1003: alert
    pair.fire_next()
    pair.connect()  # a fourth at 1004: no new alert
    assert alerts(pair.events) == [on(AlertKind.RECONNECT_RATE, "3 reconnects in the last 60s (threshold 2)")]
    assert pair.core.metrics(pair.now).reconnects_last_minute == 4
    # 1001 leaves at 1061 (3 left, still > 2); 1002 leaves at 1062 (2 left)
    assert pair.core.next_deadline() == 1062.0
    assert pair.fire_next() == 1062.0
    assert alerts(pair.events)[-1] == off(AlertKind.RECONNECT_RATE)
    assert len(alerts(pair.events)) == 2


def test_reconnect_rate_exactly_r_reconnects_is_fine() -> None:
    pair = flapping_pair(3)
    flap(pair, 4)  # three reconnects
    assert alerts(pair.events) == []
    assert pair.core.metrics(pair.now).reconnects_last_minute == 3


def test_reconnect_rate_window_is_sixty_seconds() -> None:
    """Reconnects exactly 60 s apart are never in the same window."""
    pair = Pair(
        alerts=AlertPolicy(**{**OFF, "reconnects_per_minute": 1}),
        backoff=Backoff(initial=60.0, factor=1.0, cap=60.0, jitter=0.0),
        stable_after=1000.0,
        ping_interval=None,
        silence_timeout=None,
    )
    pair.connect()
    pair.eof()
    for n in range(1, 5):
        pair.reconnect_after_backoff()
        assert pair.now == 1000.0 + 60.0 * n
        assert pair.core.metrics(pair.now).reconnects_last_minute == 1
        pair.eof()
    assert alerts(pair.events) == []


def test_the_alert_and_the_metric_count_reconnects_in_one_window() -> None:
    """One count, one window: the metric reads what the alert decides on,
    and reading it (even ahead of time) changes nothing."""
    from nonstop.core._guard import RATE_WINDOW

    assert RATE_WINDOW == 60.0
    pair = flapping_pair(2)
    flap(pair, 3)
    pair.fire_next()
    pair.connect()  # reconnects at 1001, 1002, 1003: alert
    assert pair.core.metrics(1061.0).reconnects_last_minute == 2
    assert pair.core.metrics(1063.0).reconnects_last_minute == 0
    assert pair.core.metrics(pair.now).reconnects_last_minute == 3
    assert pair.core.metrics(pair.now).alerts_active == ("reconnect_rate",)
    assert pair.fire_next() == 1061.0
    assert pair.core.metrics(pair.now).reconnects_last_minute == 2
    assert pair.core.metrics(pair.now).alerts_active == ()


def test_reconnect_rate_alerts_again_after_clearing() -> None:
    """Reconnects 30 s apart with R=1: each pair within a minute alerts, the
    timer clears it when the older one leaves the window, and so on."""
    pair = Pair(
        alerts=AlertPolicy(**{**OFF, "reconnects_per_minute": 1}),
        backoff=Backoff(initial=30.0, factor=1.0, cap=30.0, jitter=0.0),
        stable_after=1000.0,
        ping_interval=None,
        silence_timeout=None,
    )
    pair.connect()
    pair.eof()  # retry at 1030
    pair.reconnect_after_backoff()  # reconnect 1 at 1030
    pair.eof()
    pair.reconnect_after_backoff()  # reconnect 2 at 1060: alert
    assert alerts(pair.events) == [on(AlertKind.RECONNECT_RATE, "2 reconnects in the last 60s (threshold 1)")]
    pair.eof()  # retry at 1090, and 1030 leaves the window at 1090
    assert pair.core.next_deadline() == 1090.0
    assert pair.fire_next() == 1090.0  # clear first, then the retry, in one call
    assert pair.core.state is State.CONNECTING
    assert alerts(pair.events)[-1] == off(AlertKind.RECONNECT_RATE)
    pair.open()
    events = pair.accept()  # reconnect 3 at 1090 with 1060 in the window
    assert alerts(events) == [on(AlertKind.RECONNECT_RATE, "2 reconnects in the last 60s (threshold 1)")]


# ----------------------------------------------------------------------
# auth


@pytest.mark.parametrize("status", [401, 403])
def test_auth_rejection_alerts(status: int) -> None:
    pair = make_pair(auth=True)
    pair.start()
    pair.open()
    events = pair.reject(status)
    assert [type(e) for e in events] == [Disconnected, Alert, CloseTransport]
    assert events[0].status == status
    assert events[1] == on(AlertKind.AUTH, "server refused us (rejected)")


def test_auth_close_1008_alerts() -> None:
    pair = make_pair(auth=True)
    pair.connect()
    events = pair.server_close(1008, "policy violation")
    assert [type(e) for e in events] == [Disconnected, Alert]
    assert events[1] == on(AlertKind.AUTH, "server refused us (server_closed)")


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
def test_other_rejections_are_not_auth_alerts(status: int) -> None:
    pair = make_pair(auth=True)
    pair.start()
    pair.open()
    assert alerts(pair.reject(status)) == []


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1013, 4003])
def test_other_close_codes_are_not_auth_alerts(code: int) -> None:
    pair = make_pair(auth=True)
    pair.connect()
    assert alerts(pair.server_close(code)) == []


def test_auth_alert_is_raised_once_and_cleared_on_the_next_connected() -> None:
    pair = make_pair(auth=True)
    pair.start()
    pair.open()
    pair.reject(401)
    pair.fire_next()
    pair.open()
    assert alerts(pair.reject(403)) == []  # still active: no repeat
    pair.fire_next()
    pair.open()
    events = pair.accept()
    assert [type(e) for e in events] == [Connected, Alert]
    assert events[1] == off(AlertKind.AUTH)


def test_auth_alert_is_not_cleared_by_a_non_auth_failure() -> None:
    pair = make_pair(auth=True)
    pair.connect()
    pair.server_close(1008)
    pair.eof()
    pair.fire_next()
    refuse(pair)
    assert pair.core.metrics(pair.now).alerts_active == ("auth",)


# ----------------------------------------------------------------------
# disabled


def test_disabled_alerts_never_fire_and_add_no_timers() -> None:
    pair = Pair(
        alerts=AlertPolicy(consecutive_failures=None, down_for=None, reconnects_per_minute=None, auth=False),
        backoff=Backoff(initial=1.0, factor=1.0, cap=1.0, jitter=0.0),
        ping_interval=None,
        silence_timeout=None,
        stable_after=1000.0,
    )
    pair.start()
    for _ in range(20):
        refuse(pair)
        assert pair.core.next_deadline() == pair.now + 1.0  # the retry only
        pair.fire_next()
    pair.open()
    pair.reject(401)
    for _ in range(20):
        pair.fire_next()
        pair.connect()
        pair.server_close(1008)
        pair.eof()
    pair.advance(500.0)
    assert alerts(pair.events) == []
    assert pair.core.metrics(pair.now).alerts_active == ()


def test_default_policy_alerts_on_everything() -> None:
    policy = AlertPolicy()
    assert policy.consecutive_failures == 5
    assert policy.down_for == 60.0
    assert policy.reconnects_per_minute == 10
    assert policy.auth is True


# ----------------------------------------------------------------------
# stop clears


def test_stop_clears_active_alerts_before_stopped() -> None:
    pair = make_pair(consecutive_failures=1, down_for=1.0, auth=True)
    pair.start()
    pair.open()
    pair.reject(401)  # consecutive_failures and auth; retry at 1001
    assert pair.fire_next() == 1001.0  # down (1000 + 1) first, then the retry
    assert pair.core.metrics(pair.now).alerts_active == ("auth", "consecutive_failures", "down")
    assert pair.core.state is State.CONNECTING
    pair.core.stop(pair.now)
    events = pair.drain()
    assert [type(e) for e in events] == [Disconnected, CloseTransport, Alert, Alert, Alert, Stopped]
    assert events[2:5] == [off(AlertKind.AUTH), off(AlertKind.CONSECUTIVE_FAILURES), off(AlertKind.DOWN)]
    assert pair.core.metrics(pair.now).alerts_active == ()


def test_stop_while_open_clears_alerts_right_before_stopped() -> None:
    pair = flapping_pair(1)
    flap(pair, 2)
    pair.fire_next()
    pair.connect()  # 2 reconnects > 1: alert; open
    pair.core.stop(pair.now)
    pair.pump()  # our close 1000 and the server's answer
    assert pair.core.state is State.STOPPING
    assert pair.core.metrics(pair.now).alerts_active == ("reconnect_rate",)
    assert [type(e) for e in pair.eof()] == [CloseTransport, Alert, Stopped]
    assert pair.events[-2] == off(AlertKind.RECONNECT_RATE)


def test_stop_without_active_alerts_emits_no_alert() -> None:
    pair = make_pair(consecutive_failures=3, down_for=100.0, auth=True)
    pair.start()
    refuse(pair)
    pair.core.stop(pair.now)
    assert pair.drain() == [Stopped(reason=Reason.STOPPED, detail="stop requested")]


def test_no_alert_timer_after_stop() -> None:
    pair = make_pair(down_for=5.0)
    pair.start()
    pair.core.stop(pair.now)
    pair.drain()
    assert pair.core.next_deadline() is None


def test_alert_events_are_ordered_with_the_lifecycle() -> None:
    """Connected, then the clears, then the subscriptions."""
    pair = Pair(
        alerts=AlertPolicy(**{**OFF, "auth": True, "down_for": 0.5}),
        backoff=Backoff(initial=1.0, jitter=0.0),
        subscriptions=["sub"],
        ping_interval=None,
    )
    pair.start()
    pair.open()
    pair.reject(403)
    pair.fire_next()  # down alert at 1000.5
    pair.fire_next()  # retry at 1001
    pair.open()
    events = pair.accept()
    assert [type(e) for e in events] == [Connected, Alert, Alert, Subscribed]
    assert events[1:3] == [off(AlertKind.DOWN), off(AlertKind.AUTH)]
