"""Backoff: the pure delay functions, and how the core schedules retries.

The pure functions are checked with exact values: with ``jitter=0`` the delay
is the ceiling; otherwise the expected value is computed from a
``random.Random`` with the same seed, the way ``Backoff`` documents it:
``ceiling * (1 - jitter * rng.random())``.  The core draws exactly one random
number per failure, so its delays are reproduced the same way.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core import (
    Backoff,
    CloseTransport,
    ConfigError,
    Connected,
    Connecting,
    Disconnected,
    OpenTransport,
    Reason,
    State,
    Stopped,
    ceiling,
    first_retry_delay,
    parse_retry_after,
    retry_delay,
)
from tests.helpers import Pair

T0 = 1000.0
EXACT = Backoff(initial=1, factor=2, cap=8, jitter=0)


# ---------------------------------------------------------------------------
# ceiling


def test_ceiling_doubles_per_failure_up_to_the_cap() -> None:
    assert [ceiling(n, EXACT) for n in range(1, 8)] == [1, 2, 4, 8, 8, 8, 8]


def test_ceiling_with_no_failures_is_the_initial_wait() -> None:
    assert ceiling(0, EXACT) == 1
    assert ceiling(-3, EXACT) == 1


def test_ceiling_with_factor_one_is_constant() -> None:
    policy = Backoff(initial=3, factor=1, cap=60)
    assert [ceiling(n, policy) for n in (1, 2, 50, 10**9)] == [3, 3, 3, 3]


def test_ceiling_with_fractional_factor() -> None:
    policy = Backoff(initial=0.5, factor=1.5, cap=60)
    assert ceiling(1, policy) == 0.5
    assert ceiling(2, policy) == 0.75
    assert ceiling(3, policy) == 1.125


@pytest.mark.parametrize("failures", [1025, 10**6, 10**18, 2**200])
def test_ceiling_of_huge_failure_counts_is_the_cap(failures: int) -> None:
    """``2.0 ** n`` overflows a float: the cap is returned, nothing raises."""
    assert ceiling(failures, EXACT) == 8
    assert ceiling(failures, Backoff(initial=0.5, factor=1.5, cap=60)) == 60
    assert ceiling(failures, Backoff(initial=0.001, factor=10, cap=1e300)) == 1e300


@pytest.mark.parametrize("failures", [5000, 10**18])
def test_ceiling_with_a_factor_close_to_one_still_reaches_the_cap(failures: int) -> None:
    """``1 * 1.001 ** 4999`` is about 148: past the cap of 60.  The documented
    ceiling is ``min(cap, initial * factor ** (n - 1))`` for every n."""
    assert ceiling(failures, Backoff(initial=1, factor=1.001, cap=60)) == 60


def test_ceiling_never_decreases_with_more_failures() -> None:
    policy = Backoff(initial=1, factor=1.001, cap=60)
    values = [ceiling(n, policy) for n in range(1, 6000, 7)]
    assert values == sorted(values)
    assert values[-1] == 60


def test_ceiling_defaults_are_half_a_second_doubling_to_a_minute() -> None:
    policy = Backoff()
    assert [ceiling(n, policy) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]


# ---------------------------------------------------------------------------
# retry_delay


def test_retry_delay_without_jitter_is_the_ceiling() -> None:
    rng = random.Random(1)
    assert [retry_delay(n, EXACT, rng) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 42])
def test_retry_delay_matches_the_documented_formula(jitter: float, seed: int) -> None:
    policy = Backoff(initial=1, factor=2, cap=8, jitter=jitter)
    rng, reference = random.Random(seed), random.Random(seed)
    for n in range(1, 8):
        expected = ceiling(n, policy) * (1.0 - jitter * reference.random())
        assert retry_delay(n, policy, rng) == expected


def test_full_jitter_spreads_over_the_whole_window() -> None:
    policy = Backoff(initial=1, factor=2, cap=8, jitter=1)
    rng = random.Random(7)
    delays = [retry_delay(4, policy, rng) for _ in range(2000)]
    assert min(delays) < 0.1 and max(delays) > 7.9
    assert all(0 < d <= 8 for d in delays)


def test_half_jitter_stays_in_the_upper_half() -> None:
    policy = Backoff(initial=1, factor=2, cap=8, jitter=0.5)
    rng = random.Random(7)
    delays = [retry_delay(4, policy, rng) for _ in range(2000)]
    assert all(4 < d <= 8 for d in delays)


def test_hint_longer_than_the_delay_wins() -> None:
    rng = random.Random(0)
    assert retry_delay(1, EXACT, rng, hint=5.0) == 5.0


def test_hint_shorter_than_the_delay_is_ignored() -> None:
    rng = random.Random(0)
    assert retry_delay(3, EXACT, rng, hint=0.5) == 4.0


def test_hint_never_exceeds_the_cap() -> None:
    rng = random.Random(0)
    assert retry_delay(1, EXACT, rng, hint=3600.0) == 8.0
    assert retry_delay(1, EXACT, rng, hint=float("inf")) == 8.0


def test_negative_hint_gives_the_plain_delay() -> None:
    rng, reference = random.Random(3), random.Random(3)
    policy = Backoff(initial=1, factor=2, cap=8, jitter=1)
    assert retry_delay(2, policy, rng, hint=-10.0) == 2 * (1.0 - reference.random())


def test_retry_delay_for_huge_failure_counts_is_within_the_cap() -> None:
    rng, reference = random.Random(5), random.Random(5)
    policy = Backoff(initial=1, factor=2, cap=8, jitter=1)
    assert retry_delay(10**12, policy, rng) == 8 * (1.0 - reference.random())


@given(
    failures=st.integers(min_value=0, max_value=10**6),
    initial=st.floats(min_value=1e-6, max_value=100),
    extra=st.floats(min_value=0, max_value=1000),
    factor=st.floats(min_value=1, max_value=10),
    jitter=st.floats(min_value=0, max_value=1),
    hint=st.none() | st.floats(min_value=-1e9, max_value=1e12),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_retry_delay_is_always_within_zero_and_cap(
    failures: int, initial: float, extra: float, factor: float, jitter: float,
    hint: float | None, seed: int,
) -> None:
    policy = Backoff(initial=initial, cap=initial + extra, factor=factor, jitter=jitter)
    delay = retry_delay(failures, policy, random.Random(seed), hint)
    assert 0.0 <= delay <= policy.cap
    if hint is not None:
        assert delay >= min(hint, policy.cap)


# ---------------------------------------------------------------------------
# parse_retry_after


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"content-type", b"text/plain")], None),
        ([(b"retry-after", b"120")], 120.0),
        ([(b"Retry-After", b"0")], 0.0),
        ([(b"RETRY-AFTER", b"  7 ")], 7.0),
    ],
)
def test_parse_retry_after_seconds(headers: list[tuple[bytes, bytes]], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date_against_the_response_date() -> None:
    headers = [
        (b"Date", b"Wed, 21 Oct 2015 07:28:00 GMT"),
        (b"Retry-After", b"Wed, 21 Oct 2015 07:29:30 GMT"),
    ]
    assert parse_retry_after(headers) == 90.0


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    headers = [
        (b"date", b"Wed, 21 Oct 2015 07:28:00 GMT"),
        (b"retry-after", b"Wed, 21 Oct 2015 07:00:00 GMT"),
    ]
    assert parse_retry_after(headers) == 0.0


def test_parse_retry_after_http_date_without_a_date_header_is_unusable() -> None:
    """The core has no wall clock: an absolute date needs the server's Date."""
    assert parse_retry_after([(b"retry-after", b"Wed, 21 Oct 2015 07:29:30 GMT")]) is None


@pytest.mark.parametrize(
    "headers",
    [
        [(b"retry-after", b"soon"), (b"date", b"Wed, 21 Oct 2015 07:28:00 GMT")],
        [(b"retry-after", b"-5"), (b"date", b"Wed, 21 Oct 2015 07:28:00 GMT")],
        [(b"retry-after", b"1.5"), (b"date", b"Wed, 21 Oct 2015 07:28:00 GMT")],
        [(b"retry-after", b""), (b"date", b"Wed, 21 Oct 2015 07:28:00 GMT")],
        [(b"retry-after", b"Wed, 21 Oct 2015 07:29:30 GMT"), (b"date", b"yesterday")],
        # a naive (-0000) and an aware date cannot be subtracted
        [(b"retry-after", b"Wed, 21 Oct 2015 07:29:30 -0000"),
         (b"date", b"Wed, 21 Oct 2015 07:28:00 GMT")],
    ],
)
def test_parse_retry_after_garbage_is_unusable(headers: list[tuple[bytes, bytes]]) -> None:
    assert parse_retry_after(headers) is None


@pytest.mark.parametrize(
    "value",
    [
        b"\xb2",  # latin-1 superscript two: str.isdigit() is true, int() refuses it
        b"9" * 400,  # an integer too large for a float
        b"9" * 5000,  # past Python's int-from-str digit limit
    ],
    ids=["superscript-digit", "too-big-for-float", "over-int-digit-limit"],
)
def test_parse_retry_after_never_raises_on_hostile_values(value: bytes) -> None:
    """Header bytes come from the peer: whatever they are, no exception.

    A number too large to use means "a long time" (the cap applies) or is
    ignored; both are acceptable, raising is not.
    """
    result = parse_retry_after([(b"retry-after", value)])
    assert result is None or result >= 0


# ---------------------------------------------------------------------------
# the core: retry scheduling


def refused(pair: Pair) -> Disconnected:
    """Fail the current attempt with a refused connection; return its Disconnected."""
    assert pair.core.state is State.CONNECTING
    pair.core.transport_failed(ConnectionRefusedError(111, "refused"), pair.now)
    new = pair.pump()
    assert pair.of(CloseTransport, new) == [CloseTransport(abort=True)]
    gone = [e for e in new if isinstance(e, Disconnected)]
    assert len(gone) == 1
    return gone[0]


def retry(pair: Pair) -> Connecting:
    """Fire the retry timer; return the new attempt's Connecting."""
    assert pair.core.state is State.BACKOFF
    pair.fire_next()
    new = pair.events[-2:]
    assert isinstance(new[0], Connecting) and isinstance(new[1], OpenTransport)
    return new[0]


def test_first_attempt_is_immediate() -> None:
    pair = Pair(now=T0, backoff=EXACT)
    new = pair.start()
    assert [type(e) for e in new] == [Connecting, OpenTransport]
    assert new[0] == Connecting(attempt=1, total_attempts=1, url="ws://feed.example/stream")
    assert pair.core.state is State.CONNECTING
    assert pair.core.next_deadline() == T0 + 10  # only the connect timeout


def test_retry_delays_grow_exponentially_with_failures_in_a_row() -> None:
    pair = Pair(now=T0, backoff=EXACT)
    pair.start()
    delays, attempts = [], []
    for _ in range(5):
        gone = refused(pair)
        assert gone.retry_at == pair.now + gone.retry_in
        assert pair.core.next_deadline() == gone.retry_at
        delays.append(gone.retry_in)
        attempts.append(retry(pair).attempt)
        assert pair.now == gone.retry_at
    assert delays == [1, 2, 4, 8, 8]
    assert attempts == [2, 3, 4, 5, 6]


def test_disconnected_reports_failures_and_retry_time() -> None:
    pair = Pair(now=T0, backoff=EXACT)
    pair.start()
    first = refused(pair)
    assert (first.reason, first.failures, first.retry_in, first.retry_at) == (
        Reason.REFUSED, 1, 1.0, T0 + 1)
    assert first.connection is None and first.uptime == 0.0
    retry(pair)
    pair.advance(0.5)
    second = refused(pair)
    assert (second.failures, second.retry_in, second.retry_at) == (2, 2.0, T0 + 3.5)


@pytest.mark.parametrize("seed", [0, 3, 99])
def test_jittered_retry_delays_come_from_the_injected_rng(seed: int) -> None:
    policy = Backoff(initial=1, factor=2, cap=8, jitter=1)
    pair = Pair(now=T0, seed=seed, backoff=policy)
    reference = random.Random(seed)
    pair.start()
    for n in range(1, 7):
        gone = refused(pair)
        expected = ceiling(n, policy) * (1.0 - 1.0 * reference.random())
        assert gone.retry_in == expected
        assert pair.core.next_deadline() == gone.retry_at == pair.now + expected
        retry(pair)


def test_retry_waits_exactly_until_retry_at() -> None:
    pair = Pair(now=T0, backoff=EXACT)
    pair.start()
    refused(pair)
    retry(pair)
    gone = refused(pair)  # 2 s
    pair.advance(1.999)
    assert pair.core.state is State.BACKOFF
    assert pair.fire_next() == gone.retry_at
    assert pair.core.state is State.CONNECTING


def test_accept_then_drop_at_once_never_resets_the_backoff() -> None:
    """A server that accepts and drops at once must not cause a reconnect storm."""
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None)
    pair.connect()
    delays, attempts = [], []
    for _ in range(5):
        pair.advance(1)  # up for 1 s, less than stable_after
        pair.eof()
        gone = pair.of(Disconnected)[-1]
        assert gone.reason is Reason.EOF and gone.connection is not None
        delays.append(gone.retry_in)
        pair.reconnect_after_backoff()
        attempts.append(pair.of(Connecting)[-1].attempt)
        assert pair.of(Connected)[-1].attempt == attempts[-1]
    assert delays == [1, 2, 4, 8, 8]
    assert attempts == [2, 3, 4, 5, 6]
    assert pair.core.metrics(pair.now).consecutive_failures == 5


def test_drop_just_before_stable_after_still_counts_as_a_failure_in_a_row() -> None:
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None)
    pair.connect()
    pair.advance(9.999)
    pair.eof()
    pair.reconnect_after_backoff()
    pair.advance(9.999)
    pair.eof()
    assert [d.retry_in for d in pair.of(Disconnected)] == [1, 2]
    assert pair.of(Disconnected)[-1].failures == 2


def stable_then_drop(pair: Pair) -> None:
    """Three refused attempts, then a connection that stays up past stable_after
    (10 s) and drops 5 s later."""
    pair.start()
    for _ in range(3):
        refused(pair)
        retry(pair)
    assert pair.of(Connecting)[-1].attempt == 4
    opened_at = pair.now
    pair.open()
    pair.accept()
    assert pair.core.next_deadline() == opened_at + 10
    assert pair.fire_next() == opened_at + 10
    assert pair.core.metrics(pair.now).consecutive_failures == 0
    pair.advance(5)
    pair.eof()


def test_the_first_retry_after_a_stable_connection_goes_at_once() -> None:
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None)
    stable_then_drop(pair)
    gone = pair.of(Disconnected)[-1]
    assert (gone.reason, gone.failures, gone.retry_in) == (Reason.EOF, 1, 0.0)
    assert gone.retry_at == pair.now
    assert pair.core.next_deadline() == pair.now
    assert pair.fire_next() == gone.retry_at
    assert pair.core.state is State.CONNECTING


def test_the_first_retry_after_a_stable_connection_waits_within_first() -> None:
    """``Backoff(first=...)`` spreads a fleet's returns: the wait is drawn
    like the others, from ``[first * (1 - jitter), first]``."""
    policy = Backoff(initial=1, factor=2, cap=8, jitter=1.0, first=0.4)
    seed = 7
    pair = Pair(now=T0, seed=seed, backoff=policy, stable_after=10, ping_interval=None,
                silence_timeout=None)
    pair.connect()
    pair.advance(12)
    pair.eof()
    gone = pair.of(Disconnected)[-1]
    assert gone.retry_in == pytest.approx(0.4 * (1 - random.Random(seed).random()))
    assert 0 <= gone.retry_in <= 0.4


def test_a_drop_right_at_stable_after_before_any_timer_call_counts_as_stable() -> None:
    """The driver may not have called ``handle_timer`` at ``stable_after``
    (busy with data): a connection lost after that moment was stable."""
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None)
    pair.start()
    refused(pair)
    retry(pair)
    pair.open()
    pair.accept()
    pair.clock.advance(11)  # no timer call in between
    pair.eof()
    gone = pair.of(Disconnected)[-1]
    assert (gone.failures, gone.retry_in) == (1, 0.0)


def test_after_a_connection_that_never_became_stable_the_series_goes_on() -> None:
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None)
    pair.connect()
    pair.advance(12)
    pair.eof()  # stable: at once
    retry(pair)
    pair.open()
    pair.accept()
    pair.advance(3)
    pair.eof()  # up 3 s only: the series, from initial
    retry(pair)
    pair.open()
    pair.accept()
    pair.advance(3)
    pair.eof()
    assert [d.retry_in for d in pair.of(Disconnected)] == [0, 1, 2]


def test_a_server_hint_after_a_stable_connection_still_lengthens_the_wait() -> None:
    """Close 1013 "try again later" on a stable connection: the full ceiling,
    not the immediate retry."""
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None)
    pair.connect()
    pair.advance(12)
    pair.server_close(1013, "busy")
    pair.settle()
    gone = pair.of(Disconnected)[-1]
    assert gone.code == 1013 and gone.retry_in == 1.0


def test_backoff_first_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"backoff\.first"):
        Backoff(first=-0.1)
    with pytest.raises(ConfigError, match=r"backoff\.first \(9\) must be <= backoff\.cap \(8\)"):
        Backoff(initial=1, cap=8, first=9)


def test_first_attempt_after_a_stable_connection_is_attempt_one() -> None:
    """``Connecting.attempt`` counts attempts since the last stable connection."""
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None)
    stable_then_drop(pair)
    assert retry(pair).attempt == 1


def test_after_a_failed_immediate_retry_delays_grow_again_from_initial() -> None:
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None)
    pair.connect()
    pair.advance(10)
    pair.eof()
    retry(pair)
    refused(pair)
    retry(pair)
    refused(pair)
    assert [d.retry_in for d in pair.of(Disconnected)] == [0, 1, 2]
    assert [d.failures for d in pair.of(Disconnected)] == [1, 2, 3]


def test_after_a_reset_attempts_count_again_from_one() -> None:
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None)
    pair.connect()
    pair.advance(10)
    pair.eof()
    retry(pair)
    refused(pair)
    retry(pair)
    assert [c.attempt for c in pair.of(Connecting)] == [1, 1, 2]


def test_stable_timer_is_armed_from_the_101_not_from_the_attempt() -> None:
    pair = Pair(now=T0, backoff=EXACT, stable_after=10, ping_interval=None, silence_timeout=None,
                handshake_timeout=30)
    pair.start()
    pair.open()
    pair.clock.advance(7)  # a slow handshake
    pair.accept()
    assert pair.core.next_deadline() == T0 + 17


def test_close_1013_waits_the_unjittered_ceiling() -> None:
    policy = Backoff(initial=1, factor=2, cap=8, jitter=1)
    pair = Pair(now=T0, backoff=policy, ping_interval=None, silence_timeout=None, stable_after=100)
    pair.start()
    refused(pair)
    retry(pair)
    refused(pair)
    retry(pair)
    pair.open()
    pair.accept()
    pair.advance(1)
    pair.server_close(1013, "try again later")
    gone = pair.of(Disconnected)[-1]
    assert (gone.reason, gone.code, gone.failures) == (Reason.SERVER_CLOSED, 1013, 3)
    assert gone.retry_in == ceiling(3, policy) == 4.0
    assert gone.retry_at == pair.now + 4.0
    assert pair.core.state is State.CLOSING
    pair.eof()
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == gone.retry_at


def test_close_1013_is_still_capped() -> None:
    policy = Backoff(initial=1, factor=2, cap=8, jitter=1)
    pair = Pair(now=T0, backoff=policy, ping_interval=None, silence_timeout=None, stable_after=100)
    pair.start()
    for _ in range(6):
        refused(pair)
        retry(pair)
    pair.open()
    pair.accept()
    pair.server_close(1013)
    assert pair.of(Disconnected)[-1].retry_in == 8.0


def test_normal_close_uses_the_jittered_delay() -> None:
    policy = Backoff(initial=4, factor=2, cap=8, jitter=1)
    pair = Pair(now=T0, seed=11, backoff=policy, ping_interval=None, silence_timeout=None,
                stable_after=100)
    pair.connect()
    pair.server_close(1000)
    expected = 4 * (1.0 - random.Random(11).random())
    assert expected < 4
    assert pair.of(Disconnected)[-1].retry_in == expected


def test_retry_after_on_429_lengthens_the_wait() -> None:
    pair = Pair(now=T0, backoff=EXACT)
    pair.start()
    pair.open()
    pair.reject(429, [(b"Retry-After", b"5")])
    gone = pair.of(Disconnected)[-1]
    assert (gone.reason, gone.status, gone.retry_in, gone.retry_at) == (
        Reason.REJECTED, 429, 5.0, T0 + 5)


def test_retry_after_is_capped() -> None:
    pair = Pair(now=T0, backoff=EXACT)
    pair.start()
    pair.open()
    pair.reject(503, [(b"Retry-After", b"3600")])
    assert pair.of(Disconnected)[-1].retry_in == 8.0


def test_503_without_retry_after_waits_the_unjittered_ceiling() -> None:
    policy = Backoff(initial=2, factor=2, cap=8, jitter=1)
    pair = Pair(now=T0, backoff=policy)
    pair.start()
    pair.open()
    pair.reject(503)
    assert pair.of(Disconnected)[-1].retry_in == 2.0


def test_hostile_retry_after_does_not_raise_out_of_receive_data() -> None:
    """Peer bytes never raise out of the core; the rejection is still classified."""
    pair = Pair(now=T0, backoff=EXACT)
    pair.start()
    pair.open()
    pair.reject(429, [(b"Retry-After", b"9" * 400)])
    gone = pair.of(Disconnected)[-1]
    assert (gone.reason, gone.status) == (Reason.REJECTED, 429)
    assert gone.retry_in is not None and 1.0 <= gone.retry_in <= 8.0


# ---------------------------------------------------------------------------
# giving up


def test_max_attempts_gives_up_after_n_failures_in_a_row() -> None:
    pair = Pair(now=T0, backoff=EXACT, max_attempts=3)
    pair.start()
    refused(pair)
    retry(pair)
    refused(pair)
    retry(pair)
    pair.core.transport_failed(ConnectionRefusedError(111, "refused"), pair.now)
    new = pair.pump()
    assert [type(e) for e in new] == [Disconnected, CloseTransport, Stopped]
    last = new[0]
    assert isinstance(last, Disconnected)
    assert (last.failures, last.retry_in, last.retry_at) == (3, None, None)
    assert new[1] == CloseTransport(abort=True)
    stopped = new[2]
    assert isinstance(stopped, Stopped) and stopped.reason is Reason.GAVE_UP
    assert "max_attempts" in stopped.detail
    assert pair.core.state is State.STOPPED
    assert pair.core.next_deadline() is None


def test_max_attempts_counts_only_failures_in_a_row() -> None:
    pair = Pair(now=T0, backoff=EXACT, max_attempts=2, stable_after=10, ping_interval=None,
                silence_timeout=None)
    pair.start()
    refused(pair)
    retry(pair)
    pair.open()
    pair.accept()
    pair.advance(10)  # stable: the count starts over
    pair.eof()
    retry(pair)
    assert pair.core.state is State.CONNECTING
    last = refused(pair)
    assert last.failures == 2 and last.retry_in is None
    assert pair.of(Stopped)[-1].reason is Reason.GAVE_UP


def test_max_attempts_one_gives_up_after_the_first_failure() -> None:
    pair = Pair(now=T0, max_attempts=1)
    pair.start()
    gone = refused(pair)
    assert gone.retry_in is None
    assert pair.core.state is State.STOPPED


def test_fatal_close_code_stops_through_the_close_handshake() -> None:
    pair = Pair(now=T0, backoff=EXACT, fatal_close_codes={4001}, ping_interval=None,
                silence_timeout=None)
    pair.connect()
    pair.advance(2)
    new = pair.server_close(4001, "banned")
    gone = pair.of(Disconnected, new)
    assert len(gone) == 1
    assert (gone[0].reason, gone[0].code, gone[0].retry_in, gone[0].retry_at) == (
        Reason.SERVER_CLOSED, 4001, None, None)
    assert pair.of(CloseTransport, new) == []  # the close handshake is under way
    assert pair.core.state is State.STOPPING
    assert [c.code for c in pair.server_closes] == [4001]  # our echo
    new = pair.eof()
    assert new[0] == CloseTransport(abort=False)
    assert isinstance(new[-1], Stopped) and new[-1].reason is Reason.GAVE_UP
    assert "fatal" in new[-1].detail
    assert pair.core.state is State.STOPPED
    assert pair.core.next_deadline() is None


def test_fatal_close_code_without_eof_stops_at_close_timeout() -> None:
    pair = Pair(now=T0, fatal_close_codes={4001}, ping_interval=None, silence_timeout=None,
                close_timeout=5)
    pair.connect()
    pair.server_close(4001)
    assert pair.core.next_deadline() == T0 + 5
    assert pair.fire_next() == T0 + 5
    assert pair.events[-2] == CloseTransport(abort=True)
    assert isinstance(pair.events[-1], Stopped) and pair.events[-1].reason is Reason.GAVE_UP


def test_non_fatal_close_code_retries() -> None:
    pair = Pair(now=T0, backoff=EXACT, fatal_close_codes={4001}, ping_interval=None,
                silence_timeout=None)
    pair.connect()
    pair.server_close(4002)
    pair.eof()
    assert pair.core.state is State.BACKOFF
    assert pair.of(Disconnected)[-1].retry_in == 1.0


def test_fatal_status_stops_without_retrying() -> None:
    pair = Pair(now=T0, backoff=EXACT, fatal_statuses={404})
    pair.start()
    pair.open()
    new = pair.reject(404)
    assert [type(e) for e in new] == [Disconnected, CloseTransport, Stopped]
    assert new[0].retry_in is None and new[0].status == 404
    assert new[2].reason is Reason.GAVE_UP
    assert pair.core.state is State.STOPPED


# ---------------------------------------------------------------------------
# HTTP-date forms of Retry-After (RFC 9110 5.6.7), parsed without email.utils


@pytest.mark.parametrize(
    "date",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime
    ],
)
def test_every_http_date_form_is_understood(date: str) -> None:
    headers = [(b"Retry-After", date.encode()), (b"Date", b"Sun, 06 Nov 1994 08:49:07 GMT")]
    assert parse_retry_after(headers) == 30.0


def test_two_digit_years_before_70_are_this_century() -> None:
    from nonstop.core._retry_after import parse_http_date

    assert parse_http_date("Monday, 01-Jan-24 00:00:00 GMT") == parse_http_date(
        "Mon, 01 Jan 2024 00:00:00 GMT"
    )


@pytest.mark.parametrize(
    "text",
    ["Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 31 Feb 1994 08:49:37 GMT", "yesterday", ""],
)
def test_unusable_http_dates_are_ignored(text: str) -> None:
    headers = [(b"Retry-After", text.encode()), (b"Date", b"Sun, 06 Nov 1994 08:49:07 GMT")]
    assert parse_retry_after(headers) is None


def test_first_retry_delay_is_zero_without_a_draw_or_drawn_within_first() -> None:
    rng = random.Random(3)
    assert first_retry_delay(Backoff(), rng) == 0.0
    assert rng.random() == random.Random(3).random()  # nothing was drawn
    expected = 0.5 * (1 - 0.5 * random.Random(4).random())
    assert first_retry_delay(Backoff(first=0.5, jitter=0.5), random.Random(4)) == expected
