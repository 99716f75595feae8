"""The merge of redundant legs: each message once, every possible loss reported.

Fake time only.  The properties run arbitrary interleavings of N legs'
arrivals, drops and reconnects (Hypothesis); the examples pin the rules.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core import ConfigError, Gap, Merge

T0 = 1000.0


def seq(message: str | bytes) -> int:
    value: int = json.loads(message)["seq"]
    return value


def msg(n: int) -> str:
    return json.dumps({"seq": n})


def numbers(out: list[object]) -> list[int]:
    return [seq(m) for m in out if isinstance(m, str)]


def gaps(out: list[object]) -> list[Gap]:
    return [g for g in out if isinstance(g, Gap)]


# ---------------------------------------------------------------------------
# by sequence number

def test_first_arrival_wins_and_duplicates_are_counted() -> None:
    m = Merge(2, sequence=seq)
    m.leg_up(0, T0)
    m.leg_up(1, T0)
    assert m.offer(0, [msg(1), msg(2)], T0) == [msg(1), msg(2)]
    assert m.offer(1, [msg(1), msg(2), msg(3)], T0) == [msg(3)]
    assert m.offer(0, [msg(3)], T0) == []
    assert (m.delivered, m.duplicates, m.gaps) == (3, 3, 0)
    assert m.leg_duplicates == [1, 2]  # by the leg that brought them late


def test_a_hole_another_leg_fills_in_time_is_no_gap() -> None:
    m = Merge(2, sequence=seq, reorder_window=0.05)
    m.leg_up(0, T0)
    m.leg_up(1, T0)
    assert m.offer(0, [msg(1)], T0) == [msg(1)]
    assert m.offer(0, [msg(4), msg(5)], T0 + 0.01) == []  # 2 and 3 missing: held
    assert m.held == 2 and m.next_deadline() == pytest.approx(T0 + 0.06)
    assert m.offer(1, [msg(2)], T0 + 0.02) == [msg(2)]
    assert m.offer(1, [msg(3)], T0 + 0.03) == [msg(3), msg(4), msg(5)]
    assert m.held == 0 and m.next_deadline() is None and m.gaps == 0


def test_a_hole_nobody_fills_becomes_a_gap_after_the_window() -> None:
    m = Merge(2, sequence=seq, reorder_window=0.05)
    m.leg_up(0, T0)
    m.leg_up(1, T0)
    m.offer(0, [msg(1)], T0)
    assert m.offer(0, [msg(5), msg(6)], T0 + 0.01) == []
    assert m.handle_timer(T0 + 0.0599) == []
    out = m.handle_timer(T0 + 0.06)
    assert out == [Gap(start=T0, end=T0 + 0.01, reason="sequence", first_missing=2,
                       last_missing=4), msg(5), msg(6)]
    assert out[0].missing == 3  # type: ignore[union-attr]
    assert (m.gaps, m.missing) == (1, 3) and m.gap_seconds == pytest.approx(0.01)
    assert m.offer(1, [msg(3)], T0 + 0.07) == []  # too late: older than what went out


def test_with_no_other_leg_up_a_hole_is_a_gap_at_once() -> None:
    """One connection: nobody can fill the hole, so no waiting."""
    m = Merge(1, sequence=seq)
    m.leg_up(0, T0)
    m.offer(0, [msg(1), msg(2)], T0)
    m.leg_down(0, T0 + 1)
    m.leg_up(0, T0 + 1.2)
    out = m.offer(0, [msg(9), msg(10)], T0 + 1.3)
    assert numbers(out) == [9, 10]
    assert gaps(out) == [Gap(start=T0, end=T0 + 1.3, reason="sequence", first_missing=3,
                             last_missing=8, legs_down=())]


def test_the_last_leg_going_down_gives_up_on_held_holes() -> None:
    m = Merge(2, sequence=seq)
    m.leg_up(0, T0)
    m.leg_up(1, T0)
    m.offer(0, [msg(1), msg(3)], T0)
    assert m.leg_down(1, T0 + 0.01) == []  # leg 0 is still up: it may bring 2
    out = m.leg_down(0, T0 + 0.02)
    assert numbers(out) == [3] and [(g.first_missing, g.legs_down) for g in gaps(out)] == [(2, (0, 1))]


def test_a_window_with_no_leg_but_no_lost_number_is_no_gap() -> None:
    m = Merge(1, sequence=seq)
    m.leg_up(0, T0)
    m.offer(0, [msg(1)], T0)
    m.leg_down(0, T0 + 1)
    assert m.leg_up(0, T0 + 2) == []
    assert m.offer(0, [msg(2)], T0 + 2) == [msg(2)] and m.gaps == 0


@pytest.mark.parametrize(("function", "kind"), [
    (lambda m: int("x"), "raised ValueError"),
    (lambda m: "7", "returned str"),
    (lambda m: True, "returned bool"),
])
def test_an_unreadable_number_delivers_the_message_and_counts_the_kind(function: object,
                                                                        kind: str) -> None:
    m = Merge(2, sequence=function)  # type: ignore[arg-type]
    assert m.offer(0, ["a", "b"], T0) == ["a", "b"]
    assert m.offer(1, ["a", "b", "c"], T0) == ["c"]  # told apart by payload: once each
    assert m.unreadable == {kind: 5} and m.delivered == 3 and m.leg_duplicates == [0, 2]


def test_unreadable_payloads_are_remembered_within_the_count() -> None:
    m = Merge(1, sequence=lambda m: int("x"), dedupe_count=4)
    m.offer(0, [str(i) for i in range(10)], T0)
    assert m.keys <= 4 and m.delivered == 10


# ---------------------------------------------------------------------------
# by key

def test_keys_first_arrival_wins_in_each_legs_order() -> None:
    m = Merge(2)
    assert m.offer(0, ["a", "b"], T0) == ["a", "b"]
    assert m.offer(1, ["a", "c", "b", "d"], T0) == ["c", "d"]
    assert m.duplicates == 2
    assert m.leg_duplicates == [0, 2]


def test_a_key_function_picks_what_counts_as_the_same_message() -> None:
    m = Merge(2, dedupe=lambda p: json.loads(p)["id"])
    assert m.offer(0, ['{"id":1,"leg":0}'], T0) == ['{"id":1,"leg":0}']
    assert m.offer(1, ['{"id":1,"leg":1}', '{"id":2,"leg":1}'], T0) == ['{"id":2,"leg":1}']


def test_keys_are_forgotten_after_the_window_and_past_the_count() -> None:
    m = Merge(1, dedupe_window=10.0, dedupe_count=4)
    m.offer(0, ["a"], T0)
    assert m.offer(0, ["a"], T0 + 9.9) == []
    assert m.offer(0, ["a"], T0 + 10.1) == ["a"]  # older than the window: new again
    m.offer(0, ["b", "c", "d", "e"], T0 + 10.2)
    assert m.keys <= 4
    assert m.offer(0, ["a", "e"], T0 + 10.3) == ["a"]  # "a" pushed out by the count


def test_keys_are_remembered_at_least_half_the_window_and_half_the_count() -> None:
    m = Merge(1, dedupe_window=10.0, dedupe_count=100)
    m.offer(0, ["a"], T0)
    m.offer(0, [str(i) for i in range(49)], T0 + 4.9)
    assert m.offer(0, ["a"], T0 + 4.9) == []
    assert m.offer(0, ["a"], T0 + 5.1) == []  # (a new generation began: still remembered)


def test_a_million_distinct_keys_stay_within_the_count() -> None:
    m = Merge(2, dedupe_count=1000)
    for i in range(0, 1_000_000, 1000):
        m.offer(i % 2, [str(k) for k in range(i, i + 1000)], T0)
        assert m.keys <= 1000
    assert m.delivered == 1_000_000


def test_a_window_with_no_leg_subscribed_is_a_gap_before_the_next_message() -> None:
    m = Merge(2)
    assert m.leg_up(0, T0) == []  # before any leg was up nothing was promised
    m.leg_up(1, T0)
    m.leg_down(0, T0 + 1)
    assert m.leg_down(1, T0 + 2) == []
    assert m.leg_up(1, T0 + 2.5) == [Gap(start=T0 + 2, end=T0 + 2.5, reason="no_leg",
                                         legs_down=(0,))]
    assert m.gap_seconds == pytest.approx(0.5)
    assert m.leg_up(0, T0 + 3) == []
    assert m.leg_down(0, T0 + 3) == [] and m.leg_down(0, T0 + 3) == []  # twice: once


# ---------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize(("kwargs", "text"), [
    ({"legs": 0}, "legs must be an int >= 1"),
    ({"legs": 2, "sequence": seq, "dedupe": str}, "not both"),
    ({"legs": 1, "reorder_window": -1}, "reorder_window must be"),
    ({"legs": 1, "dedupe_window": float("inf")}, "dedupe_window must be"),
    ({"legs": 1, "dedupe_count": 0}, "dedupe_count must be"),
])
def test_bad_options_are_a_config_error(kwargs: dict[str, object], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        Merge(**kwargs)  # type: ignore[arg-type]


def test_a_leg_out_of_range_is_an_error() -> None:
    m = Merge(2)
    with pytest.raises(ValueError, match=r"leg must be an int in 0\.\.1"):
        m.leg_up(2, T0)


# ---------------------------------------------------------------------------
# properties over arbitrary interleavings

# One step: (leg, what, dt): what = -1 leg down, -2 leg up, -3 timers, n >= 0:
# the leg receives the next n numbers of the feed it has not skipped.
STEPS = st.lists(st.tuples(st.integers(0, 2), st.integers(-3, 4), st.sampled_from([0.0, 0.01, 0.1])),
                 max_size=80)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, skips=st.lists(st.integers(0, 60), max_size=30), window=st.sampled_from([0.0, 0.05]))
def test_property_sequence(steps: list[tuple[int, int, float]], skips: list[int],
                           window: float) -> None:
    """Nothing twice; numbers strictly increasing; every number a leg
    brought is delivered or inside a reported gap; every number missing
    between the first and the last delivered is inside a reported gap."""
    m = Merge(3, sequence=seq, reorder_window=window)
    cursor = [1, 1, 1]  # the next number each leg's server sends
    skipped = set(skips)  # numbers lost on every leg (never sent)
    now, out, offered = T0, [], set()
    up = set()
    for leg, what, dt in steps:
        now += dt
        if what == -1:
            out += m.leg_down(leg, now)
            up.discard(leg)
        elif what == -2:
            out += m.leg_up(leg, now)
            up.add(leg)
        elif what == -3:
            out += m.handle_timer(now)
        else:
            batch = []
            for _ in range(what):
                n = cursor[leg]
                cursor[leg] += 1
                if n not in skipped:
                    batch.append(msg(n))
            if leg not in up:  # a leg down brings nothing: its numbers are lost on it
                continue
            offered.update(seq(b) for b in batch)
            out += m.offer(leg, batch, now)
    out += m.handle_timer(now + 10)
    got = numbers(out)
    assert got == sorted(set(got)), "delivered twice or out of order"
    covered = set()
    for g in gaps(out):
        assert g.first_missing is not None and g.last_missing is not None
        covered |= set(range(g.first_missing, g.last_missing + 1))
    delivered = set(got)
    if got:
        for n in range(got[0], got[-1] + 1):
            assert n in delivered or n in covered, f"{n} missing and in no gap"
        for n in offered:  # nothing a leg brought is withheld (before the start: not promised)
            assert n < got[0] or n in delivered or n in covered, f"{n} withheld"
    assert m.held == 0


@settings(max_examples=300, deadline=None)
@given(steps=STEPS)
def test_property_keys(steps: list[tuple[int, int, float]]) -> None:
    """Without numbers: each key once, first arrival wins, and every window
    with no leg up (after one was) lies inside a reported gap."""
    m = Merge(3)
    cursor = [0, 0, 0]
    now, out, first_seen = T0, [], {}
    up: set[int] = set()
    ever_up = False
    uncovered: list[tuple[float, float]] = []
    down_since = None
    for leg, what, dt in steps:
        now += dt
        if what == -1:
            out += m.leg_down(leg, now)
            if leg in up:
                up.discard(leg)
                if not up:
                    down_since = now
        elif what == -2:
            out += m.leg_up(leg, now)
            if not up and ever_up and down_since is not None:
                uncovered.append((down_since, now))
            up.add(leg)
            ever_up = True
            down_since = None
        elif what == -3:
            out += m.handle_timer(now)
        else:
            batch = [str(cursor[leg] + i) for i in range(what)]
            cursor[leg] += what
            for key in batch:
                first_seen.setdefault(key, len(first_seen))
            out += m.offer(leg, batch, now)
    got = [p for p in out if isinstance(p, str)]
    assert len(got) == len(set(got)) == len(first_seen)
    assert got == sorted(got, key=first_seen.__getitem__)
    reported = [(g.start, g.end) for g in gaps(out)]
    for start, end in uncovered:
        assert any(s <= start and end <= e for s, e in reported), (start, end, reported)


# ---------------------------------------------------------------------------
# lagging legs: nothing fresh while another leg delivers

LAG = 5.0


def two_up(**options: object) -> Merge:
    m = Merge(2, lag=LAG, **options)  # type: ignore[arg-type]
    m.leg_up(0, T0)
    m.leg_up(1, T0)
    return m


def test_a_leg_a_moment_behind_keeps_up() -> None:
    m = two_up()
    m.offer(0, ["a"], T0)
    assert m.next_deadline() == T0 + LAG  # leg 1 owes a fresh arrival from now
    m.offer(1, ["a"], T0 + 0.001)  # a duplicate, but fresh
    assert m.next_deadline() is None
    assert m.lagging(T0 + 100) == []


def test_a_silent_leg_is_lagging_once_and_named_once() -> None:
    m = two_up()
    m.offer(0, ["a"], T0)
    m.offer(0, ["b"], T0 + 3)  # still owed since T0
    assert m.lagging(T0 + LAG - 0.1) == []
    assert m.lagging(T0 + LAG + 0.1) == [1]
    assert m.lagging(T0 + LAG + 0.2) == [] and m.next_deadline() is None


def test_a_leg_whose_duplicates_come_too_late_is_lagging() -> None:
    m = two_up()
    m.offer(0, ["a"], T0)
    m.offer(1, ["a"], T0 + LAG + 1)  # the same message, LAG + 1 s late
    assert m.lagging(T0 + LAG + 1) == [1]


def test_a_leg_that_brings_something_new_owes_nothing() -> None:
    m = two_up()
    m.offer(0, ["a"], T0)
    m.offer(1, ["z"], T0 + 1)
    assert m.lagging(T0 + 100) == [0]  # now leg 0 owes one since T0 + 1


def test_by_number_the_lateness_of_a_duplicate_counts() -> None:
    m = two_up(sequence=seq)
    m.offer(0, [msg(1), msg(2)], T0)
    m.offer(1, [msg(1), msg(2)], T0 + 0.01)
    assert m.next_deadline() is None and m.lagging(T0 + 100) == []
    m.offer(0, [msg(3)], T0 + 1)
    m.offer(1, [msg(3)], T0 + 1 + LAG + 0.5)  # too late
    assert m.lagging(T0 + 1 + LAG + 0.5) == [1]


def test_by_number_an_unreadable_message_is_delivered_so_its_leg_keeps_up() -> None:
    m = two_up(sequence=seq)
    m.offer(0, [msg(1)], T0)
    m.offer(1, ["not json"], T0 + 0.1)
    assert m.lagging(T0 + LAG + 0.2) == [0]  # leg 0 owes since then


def test_many_runs_keep_the_lateness_table_bounded() -> None:
    m = two_up(sequence=seq)
    for n in range(1, 6001):
        m.offer(0, [msg(n)], T0 + n * 0.01)
    assert len(m._delivered_at[0]) <= 4096
    m.offer(1, [msg(1)], T0 + 61)  # older than the table: at least as late as its oldest entry
    assert m.lagging(T0 + 61) == [1]


def test_legs_down_or_alone_owe_nothing() -> None:
    m = two_up()
    m.offer(0, ["a"], T0)
    m.leg_down(1, T0 + 1)
    assert m.lagging(T0 + 100) == [] and m.next_deadline() is None
    alone = Merge(1, lag=LAG)
    alone.leg_up(0, T0)
    alone.offer(0, ["a"], T0)
    assert alone.lagging(T0 + 100) == []
    off = Merge(2)
    off.leg_up(0, T0)
    off.leg_up(1, T0)
    off.offer(0, ["a"], T0)
    assert off.lag is None and off.lagging(T0 + 100) == [] and off.next_deadline() is None


def test_a_hole_and_a_lagging_leg_the_earlier_deadline_first() -> None:
    m = two_up(sequence=seq)
    m.offer(0, [msg(1)], T0)  # leg 1 owes since T0
    m.offer(0, [msg(3)], T0 + 1)  # a hole: held for the reorder window
    assert m.next_deadline() == pytest.approx(T0 + 1 + 0.05)
    m.handle_timer(T0 + 1.1)
    assert m.next_deadline() == pytest.approx(T0 + LAG)


@pytest.mark.parametrize("lag", [0, -1, float("inf"), "5"])
def test_a_bad_lag_is_refused(lag: object) -> None:
    with pytest.raises(ConfigError, match="leg_lag"):
        Merge(2, lag=lag)  # type: ignore[arg-type]


def test_a_run_mixing_the_next_numbers_a_hole_and_late_ones() -> None:
    m = two_up(sequence=seq)
    assert numbers(m.offer(0, [msg(1), msg(2), msg(4)], T0)) == [1, 2]  # 4 waits for 3
    assert m.held == 1
    out = m.offer(1, [msg(2), msg(1), msg(4), msg(3)], T0 + 0.01)
    assert numbers(out) == [3, 4] and gaps(out) == []
    assert m.leg_duplicates == [0, 3] and m.lagging(T0 + 100) == [0]
    assert numbers(m.offer(0, [msg(4), msg(3)], T0 + 0.02)) == []  # late, in any order
