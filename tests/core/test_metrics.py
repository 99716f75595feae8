"""Metrics: every field of the snapshot, with exact values over a scripted run.

All times in the script are binary fractions, so every value is exact.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest

from nonstop.core import (
    AlertPolicy,
    AppPing,
    Backoff,
    Connected,
    FeedCore,
    Message,
    Metrics,
    State,
    Subscription,
)
from tests.helpers import Pair


class CountingPair(Pair):
    """A pair that counts every byte it feeds to the core."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.fed = 0

    def feed(self, data: bytes) -> None:
        self.fed += len(data)
        super().feed(data)


def ack_a(message: str | bytes) -> bool:
    return message == "ack-a"


def scripted_pair() -> CountingPair:
    return CountingPair(
        ping_interval=5.0,
        ping_timeout=2.0,
        silence_timeout=None,
        stable_after=3.0,
        backoff=Backoff(initial=1.0, jitter=0.0),
        subscriptions=[Subscription(message="sub-a", ack=ack_a), "sub-b"],
        alerts=AlertPolicy(consecutive_failures=1, down_for=None, reconnects_per_minute=None, auth=False),
        auto_pong=False,
    )


def run_script(pair: CountingPair, probe: Callable[[str], None]) -> None:
    """The scripted lifecycle; *probe(label)* is called at each checkpoint."""
    core = pair.core
    pair.start()  # 1000: attempt 1
    probe("started")
    core.transport_failed(ConnectionRefusedError(111, "Connection refused"), pair.now)
    pair.pump()  # failure 1, retry at 1001
    probe("refused")
    assert pair.fire_next() == 1001.0  # attempt 2
    pair.open()
    pair.advance(0.5)
    pair.accept()  # 1001.5: connection 1, sub-a waits for its ACK
    probe("connected")
    pair.advance(0.5)
    pair.send_text("ack-a")  # 1002
    probe("acked")
    pair.advance(2.5)  # 1004.5: stable
    probe("stable")
    pair.advance(2.0)  # 1006.5: ping
    assert len(pair.server_pings) == 1
    pair.advance(0.25)
    pair.server_pong(pair.server_pings[0])  # 1006.75: rtt 0.25
    probe("pong")
    pair.advance(1.25)
    pair.send_text("hello")  # 1008
    probe("message")
    pair.advance(1.5)
    pair.eof()  # 1009.5: connection 1 lost after 8 s, retry at 1010.5
    probe("lost")
    pair.advance(1.0)  # 1010.5: attempt 3
    pair.open()
    pair.advance(0.5)
    pair.accept()  # 1011: connection 2, 1.5 s after the loss
    probe("reconnected")
    pair.advance(2.0)  # 1013
    probe("end")


def snapshots() -> tuple[CountingPair, dict[str, Metrics], dict[str, int]]:
    pair = scripted_pair()
    seen: dict[str, Metrics] = {}
    fed: dict[str, int] = {}

    def probe(label: str) -> None:
        seen[label] = pair.core.metrics(pair.now)
        fed[label] = pair.fed

    run_script(pair, probe)
    return pair, seen, fed


def test_metrics_before_start() -> None:
    core = FeedCore(scripted_pair().config, rng=random.Random(0))
    assert core.metrics(1234.0) == Metrics(
        state=State.IDLE, running_time=0.0, uptime=0.0, total_uptime=0.0, connected_ratio=0.0,
        connection=0, attempts=0, reconnects=0, reconnects_last_minute=0,
        last_time_to_reconnect=None, consecutive_failures=0, messages_received=0,
        bytes_received=0, last_message_age=None, last_ping_rtt=None, pending_acks=0,
        subscriptions=2, disconnects={}, last_disconnect_reason=None, alerts_active=(),
    )


def test_metrics_at_start() -> None:
    _, m, _ = snapshots()
    assert m["started"] == Metrics(
        state=State.CONNECTING, running_time=0.0, uptime=0.0, total_uptime=0.0, connected_ratio=0.0,
        connection=0, attempts=1, reconnects=0, reconnects_last_minute=0,
        last_time_to_reconnect=None, consecutive_failures=0, messages_received=0,
        bytes_received=0, last_message_age=None, last_ping_rtt=None, pending_acks=0,
        subscriptions=2, disconnects={}, last_disconnect_reason=None, alerts_active=(),
    )


def test_metrics_after_a_failed_attempt() -> None:
    _, m, _ = snapshots()
    snap = m["refused"]
    assert snap.state is State.BACKOFF
    assert snap.attempts == 1
    assert snap.consecutive_failures == 1
    assert snap.disconnects == {"refused": 1}
    assert snap.last_disconnect_reason == "refused"
    assert snap.alerts_active == ("consecutive_failures",)
    assert snap.connection == 0
    assert snap.last_time_to_reconnect is None


def test_metrics_first_connection() -> None:
    _, m, fed = snapshots()
    snap = m["connected"]
    assert snap.state is State.OPEN
    assert snap.running_time == 1.5
    assert snap.uptime == 0.0
    assert snap.connection == 1
    assert snap.attempts == 2
    assert snap.reconnects == 0
    assert snap.reconnects_last_minute == 0
    assert snap.last_time_to_reconnect is None  # the first connection is not a reconnect
    assert snap.pending_acks == 1
    assert snap.legs_live == 0  # not delivering: its subscription is not acknowledged yet
    assert snap.messages_received == 0
    assert snap.bytes_received == fed["connected"] > 0  # the 101 response


def test_metrics_ack_is_a_message_and_clears_pending() -> None:
    _, m, fed = snapshots()
    snap = m["acked"]
    assert snap.pending_acks == 0
    assert snap.legs_live == 1
    assert snap.messages_received == 1
    assert snap.last_message_age == 0.0
    assert snap.bytes_received == fed["acked"]
    assert fed["acked"] - fed["connected"] == 2 + len("ack-a")  # one unmasked frame


def test_metrics_stable_connection_resets_failures() -> None:
    _, m, _ = snapshots()
    snap = m["stable"]
    assert snap.consecutive_failures == 0
    assert snap.alerts_active == ()
    assert snap.uptime == 3.0
    assert snap.last_message_age == 2.5


def test_metrics_ping_round_trip() -> None:
    _, m, _ = snapshots()
    assert m["stable"].last_ping_rtt is None
    assert m["pong"].last_ping_rtt == 0.25


def test_metrics_while_open() -> None:
    _, m, fed = snapshots()
    assert m["message"] == Metrics(
        state=State.OPEN, running_time=8.0, uptime=6.5, total_uptime=6.5,
        connected_ratio=6.5 / 8.0, connection=1, attempts=2, reconnects=0,
        reconnects_last_minute=0, last_time_to_reconnect=None, consecutive_failures=0,
        messages_received=2, bytes_received=fed["message"], last_message_age=0.0,
        last_ping_rtt=0.25, pending_acks=0, subscriptions=2, disconnects={"refused": 1},
        last_disconnect_reason="refused", alerts_active=(), legs_live=1,
    )


def test_metrics_after_the_connection_is_lost() -> None:
    _, m, fed = snapshots()
    assert m["lost"] == Metrics(
        state=State.BACKOFF, running_time=9.5, uptime=0.0, total_uptime=8.0,
        connected_ratio=8.0 / 9.5, connection=1, attempts=2, reconnects=0,
        reconnects_last_minute=0, last_time_to_reconnect=None, consecutive_failures=1,
        messages_received=2, bytes_received=fed["lost"], last_message_age=1.5,
        last_ping_rtt=0.25, pending_acks=0, subscriptions=2,
        disconnects={"refused": 1, "eof": 1}, last_disconnect_reason="eof",
        alerts_active=("consecutive_failures",),
    )


def test_metrics_after_a_reconnect() -> None:
    pair, m, fed = snapshots()
    assert m["end"] == Metrics(
        state=State.OPEN, running_time=13.0, uptime=2.0, total_uptime=10.0,
        connected_ratio=10.0 / 13.0, connection=2, attempts=3, reconnects=1,
        reconnects_last_minute=1, last_time_to_reconnect=1.5, consecutive_failures=1,
        messages_received=2, bytes_received=fed["end"], last_message_age=5.0,
        last_ping_rtt=0.25, pending_acks=1, subscriptions=2,
        disconnects={"refused": 1, "eof": 1}, last_disconnect_reason="eof",
        alerts_active=("consecutive_failures",),
    )
    assert pair.of(Connected)[-1].downtime == 1.5
    assert pair.fed == fed["end"]


def test_reconnects_last_minute_is_a_sliding_window() -> None:
    pair, _, _ = snapshots()  # the reconnect happened at 1011
    core = pair.core
    assert core.metrics(1070.999).reconnects_last_minute == 1
    assert core.metrics(1071.0).reconnects_last_minute == 0
    assert core.metrics(1071.0).reconnects == 1


def test_metrics_ages_are_computed_at_read_time() -> None:
    pair, _, _ = snapshots()
    later = pair.core.metrics(1100.0)
    assert later.running_time == 100.0
    assert later.uptime == 89.0
    assert later.total_uptime == 97.0
    assert later.connected_ratio == 97.0 / 100.0
    assert later.last_message_age == 92.0


def test_metrics_changes_nothing() -> None:
    """The same script with metrics read at every step (at odd times, too)
    produces the same events, bytes and deadlines as without."""
    plain = scripted_pair()
    run_script(plain, lambda label: None)

    probed = scripted_pair()

    def probe(label: str) -> None:
        deadline = probed.core.next_deadline()
        state = probed.core.state
        for t in (probed.now, probed.now + 3600.0, 0.0, probed.now - 1.0):
            probed.core.metrics(t)
        assert probed.core.next_deadline() == deadline
        assert probed.core.state is state
        assert probed.core.next_event() is None
        assert probed.core.data_to_send() == b""

    run_script(probed, probe)
    assert probed.events == plain.events
    # (the bytes differ only by wsproto's random key and masks)
    assert len(probed.wire_to_server) == len(plain.wire_to_server)
    assert probed.server_messages == plain.server_messages
    assert probed.core.metrics(probed.now) == plain.core.metrics(plain.now)
    assert probed.core.next_deadline() == plain.core.next_deadline()


def test_metrics_snapshot_is_frozen_and_detached() -> None:
    pair, m, _ = snapshots()
    snap = m["end"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.messages_received = 0  # type: ignore[misc]
    snap.disconnects["eof"] = 99  # type: ignore[index]
    assert pair.core.metrics(pair.now).disconnects == {"refused": 1, "eof": 1}


COUNTERS = ("running_time", "total_uptime", "connection", "attempts", "reconnects",
            "messages_received", "bytes_received")


def test_counters_never_decrease() -> None:
    _, m, _ = snapshots()
    series = list(m.values())
    for name in COUNTERS:
        values = [getattr(s, name) for s in series]
        assert values == sorted(values), name
    reasons = {r for s in series for r in s.disconnects}
    for reason in reasons:
        values = [s.disconnects.get(reason, 0) for s in series]
        assert values == sorted(values), reason


def test_counters_never_decrease_across_stop() -> None:
    pair, m, _ = snapshots()
    before = m["end"]
    pair.core.stop(pair.now)
    pair.pump()
    pair.eof()
    after = pair.core.metrics(pair.now)
    assert after.state is State.STOPPED
    assert after.uptime == 0.0
    assert after.total_uptime == before.total_uptime  # stopped at 1013: uptime was accounted
    assert after.pending_acks == 0
    assert after.alerts_active == ()
    for reason, count in before.disconnects.items():
        assert after.disconnects[reason] >= count
    for name in COUNTERS:
        assert getattr(after, name) >= getattr(before, name), name


def test_subscriptions_count_follows_subscribe_and_unsubscribe() -> None:
    pair = Pair(ping_interval=None, subscriptions=["a"])
    assert pair.core.metrics(pair.now).subscriptions == 1
    pair.core.subscribe("b", pair.now)
    assert pair.core.metrics(pair.now).subscriptions == 2
    pair.core.unsubscribe("a", pair.now)
    pair.core.unsubscribe("b", pair.now)
    assert pair.core.metrics(pair.now).subscriptions == 0


def test_pending_acks_counts_each_unacknowledged_subscription() -> None:
    pair = Pair(
        ping_interval=None,
        subscriptions=[
            Subscription(message="a", ack=lambda m: m == "ok-a"),
            Subscription(message="b", ack=lambda m: m == "ok-b"),
            "c",
        ],
    )
    pair.connect()
    assert pair.core.metrics(pair.now).pending_acks == 2
    pair.send_text("ok-b")
    assert pair.core.metrics(pair.now).pending_acks == 1
    pair.eof()
    assert pair.core.metrics(pair.now).pending_acks == 0  # nothing is pending on a dead connection


def test_swallowed_app_pongs_count_as_bytes_but_not_messages() -> None:
    pair = CountingPair(
        ping_interval=None,
        app_ping=AppPing(message="ping", is_pong=lambda m: m == "pong", interval=5.0),
    )
    pair.connect()
    pair.advance(5.0)
    assert pair.server_messages == ["ping"]
    pair.send_text("pong")
    m = pair.core.metrics(pair.now)
    assert m.messages_received == 0
    assert m.last_message_age is None
    assert m.bytes_received == pair.fed
    assert pair.of(Message) == []


def test_unmatched_pong_does_not_set_rtt() -> None:
    pair = Pair(ping_interval=5.0, auto_pong=False)
    pair.connect()
    pair.server_pong(b"unsolicited")
    assert pair.core.metrics(pair.now).last_ping_rtt is None
    pair.advance(5.0)
    pair.advance(1.0)
    pair.server_pong(b"not-the-payload")
    assert pair.core.metrics(pair.now).last_ping_rtt is None
    pair.server_pong(pair.server_pings[0])
    assert pair.core.metrics(pair.now).last_ping_rtt == 1.0


def test_pending_output_counts_bytes_not_yet_taken() -> None:
    """What a driver uses to hold back a sender when the socket is slow."""
    pair = Pair(ping_interval=None)
    pair.start()
    pair.core.transport_opened(pair.now)
    queued = pair.core.pending_output
    assert queued > 0
    assert len(pair.core.data_to_send()) == queued
    assert pair.core.pending_output == 0


def test_running_time_stops_when_the_feed_stops() -> None:
    pair = Pair(ping_interval=None)
    pair.connect()
    pair.advance(10.0)
    pair.core.stop(pair.now)
    pair.pump()
    pair.eof()
    at_stop = pair.core.metrics(pair.now)
    pair.clock.advance(100.0)
    later = pair.core.metrics(pair.now)
    assert later.running_time == at_stop.running_time == 10.0
    assert later.connected_ratio == at_stop.connected_ratio == 1.0
