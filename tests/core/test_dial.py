"""Happy eyeballs, the decisions: :class:`nonstop.core._dial.Dial` on a fake clock.

Addresses are plain strings whose first character is their family
(``"6a"`` is an IPv6 address, ``"4a"`` an IPv4 one), so every expected
order and deadline is written out exactly.  No socket, no sleep: time is
what the :class:`~nonstop.testing.FakeClock` says.
"""

from __future__ import annotations

import errno
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core import Config, Reason, classify_error
from nonstop.core._dial import (
    KNOWN_ADDRESS_TIME,
    NEXT_ADDRESS_DELAY,
    Attempt,
    Dial,
    interleave,
    lookup_limit,
)
from nonstop.core._errors import LocalProtocolError
from nonstop.testing import FakeClock
from tests.helpers import Pair

T0 = 1000.0
D = NEXT_ADDRESS_DELAY


def fam(address: str) -> str:
    return address[0]


def make(addresses: list[str], now: float = T0, **kwargs: Any) -> Dial[str]:
    return Dial(addresses, family=fam, host="feed.example", now=now, **kwargs)


def starts(dial: Dial[str]) -> list[Attempt[str]]:
    out = []
    while (attempt := dial.next_start()) is not None:
        out.append(attempt)
    return out


def closes(dial: Dial[str]) -> list[Attempt[str]]:
    out = []
    while (attempt := dial.next_close()) is not None:
        out.append(attempt)
    return out


def refused() -> OSError:
    return OSError(errno.ECONNREFUSED, "Connection refused")


# ---------------------------------------------------------------------------
# order (RFC 8305 section 4)
@pytest.mark.parametrize(
    ("given_order", "tried"),
    [
        ([], []),
        (["6a"], ["6a"]),
        (["4a", "4b", "4c"], ["4a", "4b", "4c"]),
        (["6a", "6b", "4a", "4b"], ["6a", "4a", "6b", "4b"]),
        (["4a", "6a", "6b", "6c"], ["4a", "6a", "6b", "6c"]),
        (["6a", "6b", "6c", "4a"], ["6a", "4a", "6b", "6c"]),
        (["4a", "4b", "6a", "xa", "6b"], ["4a", "6a", "xa", "4b", "6b"]),
    ],
)
def test_interleave_alternates_families_first_family_first(
    given_order: list[str], tried: list[str]
) -> None:
    assert interleave(given_order, fam) == tuple(tried)
    assert make(given_order).addresses == tuple(tried)


def test_interleave_keeps_duplicates_and_unhashable_addresses() -> None:
    a, b = ["6", 1], ["4", 2]
    assert interleave([a, a, b], lambda x: str(x[0])) == (a, b, a)


# ---------------------------------------------------------------------------
# start, timer, win
def test_no_address_fails_at_once() -> None:
    dial = make([])
    assert dial.done and dial.winner is None
    assert isinstance(dial.error, OSError) and str(dial.error) == "no address for feed.example"
    assert dial.error.__context__ is None
    assert dial.next_start() is None and dial.next_close() is None
    assert dial.next_deadline() is None
    dial.handle_timer(T0 + 10)
    assert dial.next_start() is None


def test_one_address_starts_at_once_and_wins() -> None:
    clock = FakeClock(T0)
    dial = make(["4a"], now=clock.now)
    assert not dial.done
    (attempt,) = starts(dial)
    assert attempt == Attempt(index=0, address="4a")
    assert dial.is_in_flight(attempt)
    assert dial.next_deadline() is None  # nothing else to start
    dial.connected(attempt, clock.advance(0.01))
    assert dial.winner is attempt and dial.error is None and dial.done
    assert not dial.is_in_flight(attempt)
    assert closes(dial) == [] and starts(dial) == []


def test_one_address_fails_with_its_own_error() -> None:
    dial = make(["4a"])
    (attempt,) = starts(dial)
    exc = refused()
    dial.failed(attempt, exc, T0 + 0.001)
    assert dial.error is exc and exc.__context__ is None
    assert dial.done and dial.winner is None
    assert closes(dial) == [attempt]


def test_next_address_starts_after_delay_beside_the_first() -> None:
    clock = FakeClock(T0)
    dial = make(["6a", "6b", "4a"], now=clock.now)
    (first,) = starts(dial)
    assert first.address == "6a"
    assert dial.next_deadline() == T0 + D
    dial.handle_timer(clock.advance(D / 2))  # early: nothing to do
    assert starts(dial) == [] and dial.next_deadline() == T0 + D
    dial.handle_timer(clock.advance_to(T0 + D))
    (second,) = starts(dial)
    assert second == Attempt(index=1, address="4a")
    assert dial.next_deadline() == T0 + 2 * D
    dial.handle_timer(clock.now)  # twice at the same time: nothing more
    assert starts(dial) == []
    dial.handle_timer(clock.advance(D))
    (third,) = starts(dial)
    assert third.address == "6b"
    assert dial.next_deadline() is None  # none left to start
    dial.handle_timer(clock.advance(10))
    assert starts(dial) == []
    assert all(dial.is_in_flight(a) for a in (first, second, third))


def test_a_late_timer_starts_one_address_and_schedules_from_now() -> None:
    dial = make(["4a", "4b", "4c"])
    starts(dial)
    late = T0 + 5 * D
    dial.handle_timer(late)
    assert [a.address for a in starts(dial)] == ["4b"]
    deadline = dial.next_deadline()
    assert deadline is not None and deadline == late + D and deadline > late


def test_timers_before_pulling_queue_the_addresses_in_order() -> None:
    dial = make(["4a", "4b", "4c"])
    dial.handle_timer(T0 + D)
    dial.handle_timer(T0 + 2 * D)
    assert [a.index for a in starts(dial)] == [0, 1, 2]


def test_latest_failing_starts_the_next_at_once() -> None:
    clock = FakeClock(T0)
    dial = make(["6a", "4a", "6b"], now=clock.now)
    (first,) = starts(dial)
    dial.failed(first, refused(), clock.advance(0.01))
    assert closes(dial) == [first]
    (second,) = starts(dial)
    assert second.address == "4a"
    assert dial.next_deadline() == clock.now + D  # the delay counts from this start
    dial.failed(second, refused(), clock.advance(0.02))
    (third,) = starts(dial)
    assert third.address == "6b"
    assert dial.next_deadline() is None
    assert not dial.done


def test_an_earlier_attempt_failing_leaves_the_latest_its_delay() -> None:
    clock = FakeClock(T0)
    dial = make(["6a", "4a", "6b"], now=clock.now)
    (first,) = starts(dial)
    dial.handle_timer(clock.advance_to(T0 + D))
    (second,) = starts(dial)
    dial.failed(first, refused(), clock.advance(0.1))
    assert closes(dial) == [first]
    assert starts(dial) == []
    assert dial.next_deadline() == T0 + 2 * D
    assert dial.is_in_flight(second) and not dial.done


def test_first_to_connect_wins_and_the_others_are_closed() -> None:
    clock = FakeClock(T0)
    dial = make(["6a", "4a", "6b", "4b"], now=clock.now)
    (a,) = starts(dial)
    dial.handle_timer(clock.advance(D))
    (b,) = starts(dial)
    dial.handle_timer(clock.advance(D))
    (c,) = starts(dial)
    dial.handle_timer(clock.advance(D))  # "4b" is due, but not pulled yet
    dial.connected(b, clock.advance(0.01))
    assert dial.winner is b and dial.done and dial.error is None
    assert closes(dial) == [a, c]
    assert starts(dial) == []  # the due "4b" is never started
    assert dial.next_deadline() is None
    assert not any(dial.is_in_flight(x) for x in (a, b, c))
    dial.handle_timer(clock.advance(10))
    assert starts(dial) == [] and closes(dial) == []


def test_win_after_failures_closes_the_failures_first() -> None:
    dial = make(["6a", "4a"])
    (a,) = starts(dial)
    dial.failed(a, refused(), T0)
    (b,) = starts(dial)
    dial.connected(b, T0)
    assert closes(dial) == [a]
    assert dial.winner is b


# ---------------------------------------------------------------------------
# the error when all fail
def test_all_failed_raises_the_last_with_the_first_as_context() -> None:
    clock = FakeClock(T0)
    dial = make(["6a", "4a", "6b"], now=clock.now)
    (a,) = starts(dial)
    dial.handle_timer(clock.advance(D))
    (b,) = starts(dial)
    dial.handle_timer(clock.advance(D))
    (c,) = starts(dial)
    first = OSError(errno.ENETUNREACH, "Network is unreachable")
    middle = OSError(errno.EHOSTUNREACH, "No route to host")
    last = OSError(errno.ETIMEDOUT, "Connection timed out")
    dial.failed(b, first, clock.advance(0.01))
    dial.failed(a, middle, clock.advance(0.01))
    assert not dial.done
    dial.failed(c, last, clock.advance(0.01))
    assert dial.error is last and last.__context__ is first
    assert dial.done and dial.winner is None
    assert closes(dial) == [b, a, c]
    assert dial.next_deadline() is None


def test_refused_on_both_families_is_still_refused() -> None:
    dial = make(["6a", "4a"])  # localhost: ::1 and 127.0.0.1, nobody listening
    (v6,) = starts(dial)
    dial.failed(v6, refused(), T0)
    (v4,) = starts(dial)
    dial.failed(v4, refused(), T0)
    assert isinstance(dial.error, ConnectionRefusedError)
    assert isinstance(dial.error.__context__, ConnectionRefusedError)
    assert classify_error(dial.error) is Reason.REFUSED


def test_one_error_object_for_every_address_gets_no_context_loop() -> None:
    dial = make(["6a", "4a"])
    exc = refused()
    for _ in range(2):
        (attempt,) = starts(dial)
        dial.failed(attempt, exc, T0)
    assert dial.error is exc and exc.__context__ is None


# ---------------------------------------------------------------------------
# delay
def test_zero_delay_still_gives_a_deadline_after_now() -> None:
    dial = make(["4a", "4b", "4c"], delay=0)
    starts(dial)
    deadline = dial.next_deadline()
    assert deadline == math.nextafter(T0, math.inf)
    dial.handle_timer(deadline)
    assert [a.address for a in starts(dial)] == ["4b"]
    later = dial.next_deadline()
    assert later is not None and later > deadline


def test_custom_delay() -> None:
    dial = make(["4a", "4b"], delay=2)
    assert dial.next_deadline() == T0 + 2.0


@pytest.mark.parametrize("delay", [-0.1, math.inf, math.nan, True, "0.25", None])
def test_bad_delay_is_refused(delay: Any) -> None:
    with pytest.raises(LocalProtocolError, match="delay"):
        make(["4a"], delay=delay)


# ---------------------------------------------------------------------------
# misuse: raises, changes nothing
@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf, True, "1000", None])
def test_bad_now_is_refused_everywhere(now: Any) -> None:
    with pytest.raises(LocalProtocolError, match="finite"):
        make(["4a"], now=now)
    dial = make(["4a", "4b"])
    (attempt,) = starts(dial)
    with pytest.raises(LocalProtocolError, match="finite"):
        dial.handle_timer(now)
    with pytest.raises(LocalProtocolError, match="finite"):
        dial.connected(attempt, now)
    with pytest.raises(LocalProtocolError, match="finite"):
        dial.failed(attempt, refused(), now)
    assert dial.is_in_flight(attempt) and not dial.done


def test_time_going_backwards_is_refused() -> None:
    dial = make(["4a", "4b"])
    (attempt,) = starts(dial)
    dial.handle_timer(T0 + 0.1)
    with pytest.raises(LocalProtocolError, match="backwards"):
        dial.handle_timer(T0)
    with pytest.raises(LocalProtocolError, match="backwards"):
        dial.connected(attempt, T0)
    with pytest.raises(LocalProtocolError, match="backwards"):
        dial.failed(attempt, refused(), T0)
    assert dial.is_in_flight(attempt) and not dial.done
    assert dial.next_deadline() == T0 + D


def test_failed_needs_an_oserror() -> None:
    dial = make(["4a"])
    (attempt,) = starts(dial)
    with pytest.raises(LocalProtocolError, match="OSError"):
        dial.failed(attempt, ValueError("nope"), T0)  # type: ignore[arg-type]
    assert dial.is_in_flight(attempt) and not dial.done


def test_reporting_an_attempt_not_in_flight_is_refused() -> None:
    dial = make(["6a", "4a", "6b"])
    (a,) = starts(dial)
    dial.failed(a, refused(), T0)
    with pytest.raises(LocalProtocolError, match="not in flight"):
        dial.failed(a, refused(), T0)  # twice
    (b,) = starts(dial)
    never_started = Attempt(index=2, address="6b")
    with pytest.raises(LocalProtocolError, match="not in flight"):
        dial.connected(never_started, T0)
    lookalike = Attempt(index=b.index, address=b.address)  # equal, but not this dial's
    with pytest.raises(LocalProtocolError, match="not in flight"):
        dial.connected(lookalike, T0)
    assert dial.is_in_flight(b) and not dial.is_in_flight(lookalike)
    dial.connected(b, T0)
    with pytest.raises(LocalProtocolError, match="not in flight"):
        dial.connected(b, T0)  # already the winner
    assert dial.winner is b


def test_a_loser_connecting_after_the_win_is_refused() -> None:
    dial = make(["6a", "4a"])
    (a,) = starts(dial)
    dial.handle_timer(T0 + D)
    (b,) = starts(dial)
    dial.connected(b, T0 + D)
    assert not dial.is_in_flight(a)  # what a driver checks before reporting
    with pytest.raises(LocalProtocolError, match="not in flight"):
        dial.connected(a, T0 + D)
    assert dial.winner is b and closes(dial) == [a]


# ---------------------------------------------------------------------------
# property: any interleaving of failures, successes and timer ticks
ERRNOS = [errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ETIMEDOUT]


@settings(max_examples=400, deadline=None)
@given(
    families=st.lists(st.sampled_from("46x"), max_size=7),
    delay=st.sampled_from([0.0, 0.1, D, 3.0]),
    data=st.data(),
)
def test_any_interleaving_keeps_the_invariants(
    families: list[str], delay: float, data: st.DataObject
) -> None:
    addresses = [f"{f}{i}" for i, f in enumerate(families)]
    clock = FakeClock(T0)
    dial = make(addresses, now=clock.now, delay=delay)
    order = dial.addresses
    assert sorted(order) == sorted(addresses)
    started: list[Attempt[str]] = []
    closed: list[Attempt[str]] = []
    reported: list[OSError] = []
    live: list[Attempt[str]] = []  # started, not yet closed, not the winner

    def pull() -> list[Attempt[str]]:
        for attempt in closes(dial):
            assert attempt in started and attempt not in closed and attempt is not dial.winner
            closed.append(attempt)
            live.remove(attempt)
        new = starts(dial)
        started.extend(new)
        live.extend(new)
        assert [a.address for a in started] == list(order[: len(started)])
        assert [a.index for a in started] == list(range(len(started)))
        assert set(map(id, live)) == {id(a) for a in started if dial.is_in_flight(a)}
        return new

    assert len(pull()) == (1 if addresses else 0)  # the first starts at once
    for _ in range(60):
        if dial.done:
            break
        actions = ["tick", "tick_to_deadline"] + (["fail", "connect"] if live else [])
        action = data.draw(st.sampled_from(actions))
        latest = started[-1] if started else None
        if action == "tick" or action == "tick_to_deadline":
            deadline = dial.next_deadline()
            if action == "tick_to_deadline" and deadline is not None:
                clock.advance_to(max(deadline, clock.now))
            else:
                clock.advance(data.draw(st.floats(0, 2 * delay + 0.1)))
            dial.handle_timer(clock.now)
            after = dial.next_deadline()
            assert after is None or after > clock.now
            new = pull()
            due = deadline is not None and clock.now >= deadline
            assert len(new) == (1 if due else 0)
        else:
            attempt = data.draw(st.sampled_from(live))
            clock.advance(data.draw(st.floats(0, 0.5)))
            if action == "fail":
                exc = OSError(e := data.draw(st.sampled_from(ERRNOS)), f"errno {e}")
                reported.append(exc)
                dial.failed(attempt, exc, clock.now)
                new = pull()
                assert attempt in closed
                more = len(started) - len(new) < len(order)
                assert len(new) == (1 if attempt is latest and more else 0)
            else:
                dial.connected(attempt, clock.now)
                live.remove(attempt)
                pull()
                assert dial.winner is attempt and live == []
        # anything reported for an attempt no longer in flight is refused
        for gone in closed[-1:]:
            with pytest.raises(LocalProtocolError):
                dial.connected(gone, clock.now)
    # finish: every attempt still in flight fails, as a driver's timeout would
    while not dial.done:
        if not live:
            clock.advance_to(max(dial.next_deadline() or clock.now, clock.now))
            dial.handle_timer(clock.now)
        else:
            exc = OSError(errno.ETIMEDOUT, "timed out")
            reported.append(exc)
            dial.failed(live[0], exc, clock.now)
        pull()
    pull()
    winners = [a for a in started if a is dial.winner]
    assert len(winners) == (1 if dial.winner is not None else 0)
    # every started attempt is the winner or was told to close, exactly once
    assert sorted(a.index for a in closed + winners) == list(range(len(started)))
    assert live == [] and dial.next_deadline() is None
    if dial.winner is not None:
        assert dial.error is None
    else:
        assert len(started) == len(order)
        if not addresses:
            assert str(dial.error) == "no address for feed.example"
        else:
            assert dial.error is reported[-1]
            if len(reported) > 1:
                assert dial.error.__context__ is reported[0]
    assert dial.next_start() is None and dial.next_close() is None


def test_the_last_connections_address_may_stand_in_for_a_lookup_for_a_while() -> None:
    """Never before a first connection; from the moment one ends, for
    KNOWN_ADDRESS_TIME."""
    pair = Pair(now=1000.0, ping_interval=None, silence_timeout=None, stable_after=1.0)
    assert not pair.core.may_reuse_address(pair.now)
    pair.start()
    pair.core.transport_failed(ConnectionRefusedError(111, "refused"), pair.now)
    pair.pump()
    assert not pair.core.may_reuse_address(pair.now)  # no connection yet
    pair.fire_next()
    pair.open()
    pair.accept()
    assert not pair.core.may_reuse_address(pair.now)  # open: nothing lost yet
    pair.advance(2.0)
    pair.eof()  # lost at 1002 + ...
    lost = pair.now
    assert pair.core.may_reuse_address(lost)
    assert pair.core.may_reuse_address(lost + KNOWN_ADDRESS_TIME)
    assert not pair.core.may_reuse_address(lost + KNOWN_ADDRESS_TIME + 0.001)


def test_a_lookup_without_a_stand_in_gets_half_the_connect_timeout() -> None:
    assert lookup_limit(10.0) == 5.0
    assert lookup_limit(Config(url="ws://h/").connect_timeout) == 5.0
