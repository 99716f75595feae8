"""Gap events of one connection: the consumer always knows when it may have
lost messages.

A connection that was open breaks: from that moment until the next
connection delivers (its first message, or all its subscriptions
acknowledged, or its 101 when nothing is to be acknowledged), messages may
be lost.  The core reports that window as a ``Gap`` before the first message
after it, counts it in the metrics and logs it as ``[GAP]``.  Fake clock.
"""

from __future__ import annotations

from nonstop.core import (
    Backoff,
    Connected,
    Disconnected,
    Gap,
    Message,
    State,
    Stopped,
    Subscribed,
    Subscription,
)
from tests.helpers import Pair, frame

T0 = 1000.0


def acked_pair(**options: object) -> Pair:
    sub = Subscription(message="sub", ack=lambda m: m == "ack", ack_timeout=5)
    options.setdefault("ping_interval", None)
    options.setdefault("silence_timeout", None)
    return Pair(subscriptions=[sub], backoff=Backoff(jitter=0, first=0.0), stable_after=1.0,
                **options)


def broken_then_reopened(pair: Pair) -> None:
    """Subscribed and acknowledged, a break at T0 + 2 (retried at once),
    the new connection's 101: its subscription awaits the ACK."""
    pair.connect()
    pair.send_text("ack")
    pair.advance(2.0)
    pair.eof()
    pair.fire_next()
    pair.open()
    pair.accept()


def test_no_gap_on_the_first_connection() -> None:
    pair = acked_pair()
    pair.connect()
    pair.send_text("ack")
    pair.send_text("tick")
    assert pair.of(Gap) == [] and pair.core.metrics(pair.now).gaps == 0


def test_a_break_is_a_gap_until_the_next_subscription_is_acknowledged() -> None:
    pair = acked_pair()
    pair.connect()
    pair.send_text("ack")
    pair.advance(2.0)
    pair.eof()  # the break at T0 + 2, retried at once (a stable connection)
    assert pair.fire_next() == T0 + 2
    pair.advance(0.25)
    pair.open()
    assert pair.of(Gap, pair.accept()) == []  # the 101: the subscription awaits its ACK
    pair.advance(0.25)
    events = pair.send_text("ack")
    assert [type(e) for e in events] == [Subscribed, Gap, Message]
    assert events[1] == Gap(start=T0 + 2, end=T0 + 2.5, reason="eof", connection=2)
    assert events[1].seconds == 0.5  # type: ignore[union-attr]
    metrics = pair.core.metrics(pair.now)
    assert (metrics.gaps, metrics.gap_seconds) == (1, 0.5)


def test_a_message_before_the_ack_ends_the_gap_first() -> None:
    pair = acked_pair()
    broken_then_reopened(pair)
    pair.advance(0.1)
    events = pair.send_text("tick")
    assert [type(e) for e in events] == [Gap, Message]
    assert events[0] == Gap(start=T0 + 2, end=T0 + 2.1, reason="eof", connection=2)
    assert pair.of(Gap, pair.send_text("ack")) == []  # one gap, not two


def test_a_gap_spans_the_failed_attempts_in_between() -> None:
    pair = acked_pair()
    pair.connect()
    pair.send_text("ack")
    pair.advance(2.0)
    pair.eof()
    pair.fire_next()
    pair.core.transport_failed(ConnectionRefusedError(111, "refused"), pair.now)
    pair.pump()
    pair.fire_next()  # the series: 0.5 s later
    pair.open()
    pair.accept()
    [gap] = pair.of(Gap, pair.send_text("ack"))
    assert (gap.start, gap.end, gap.reason, gap.connection) == (T0 + 2, T0 + 2.5, "eof", 2)


def test_messages_of_the_connection_that_is_closing_end_no_gap() -> None:
    """reconnect() asks for a new connection: the old one closes cleanly
    and still delivers what arrives meanwhile; the gap waits for the new one."""
    pair = acked_pair()
    pair.connect()
    pair.send_text("ack")
    pair.advance(2.0)
    assert pair.core.reconnect(pair.now)
    pair.pump()
    assert pair.core.state is State.CLOSING
    pair.feed(frame(0x1, b"late, from connection 1"))
    assert pair.of(Gap, pair.pump()) == []
    assert pair.of(Message)[-1].connection == 1


def test_no_gap_when_the_feed_stops_or_gives_up() -> None:
    pair = acked_pair()
    pair.connect()
    pair.send_text("ack")
    pair.core.stop(pair.now)
    pair.pump()
    pair.eof()
    assert pair.of(Gap) == [] and pair.of(Stopped)

    pair = acked_pair(max_attempts=1)  # a break ends the feed: no next connection
    pair.connect()
    pair.send_text("ack")
    pair.advance(2.0)
    pair.eof()
    assert pair.of(Disconnected)[-1].retry_in is None and pair.of(Stopped)
    assert pair.of(Gap) == []


def test_without_an_ack_to_wait_for_the_gap_ends_at_the_101() -> None:
    pair = Pair(subscriptions=["sub"], ping_interval=None, silence_timeout=None,
                backoff=Backoff(jitter=0), stable_after=1.0)
    pair.connect()
    pair.advance(2.0)
    pair.eof()
    pair.fire_next()
    pair.open()
    events = pair.accept()
    assert [type(e) for e in events] == [Connected, Subscribed, Gap]
