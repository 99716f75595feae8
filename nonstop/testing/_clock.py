"""A fake monotonic clock for driving the sans-IO core in tests.

Theory of operation
-------------------
The core never reads a clock: every input takes ``now``.  Tests therefore
need nothing more than a number that only moves forward when the test says
so.  :class:`FakeClock` is that number with two guard rails: it cannot go
backwards (a monotonic clock never does, and the core's deadline arithmetic
relies on it) and it refuses NaN and infinities.  Calling the clock returns
the current time, so it can also stand in wherever a ``Callable[[], float]``
time source is expected.
"""

from __future__ import annotations

import math

__all__ = ["FakeClock"]


class FakeClock:
    """Monotonic seconds that only move when told to.

    ``FakeClock(now=0.0)`` starts at ``now``; :attr:`now` reads the time,
    :meth:`advance` and :meth:`advance_to` move it forward, and calling the
    clock (``clock()``) returns :attr:`now`.  Typical use with the core::

        clock = FakeClock()
        core.start(clock.now)
        clock.advance(core.next_deadline() - clock.now)
        core.handle_timer(clock.now)
    """

    __slots__ = ("_now",)

    def __init__(self, now: float = 0.0) -> None:
        self._now = _check_time("now", now)

    @property
    def now(self) -> float:
        """The current fake time, in seconds."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0) and return the new time."""
        seconds = _check_time("seconds", seconds)
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go backwards: advance({seconds!r})")
        self._now += seconds
        return self._now

    def advance_to(self, when: float) -> float:
        """Move the clock forward to ``when`` (not before :attr:`now`) and return it.

        Handy with ``core.next_deadline()``: ``clock.advance_to(deadline)``.
        """
        when = _check_time("when", when)
        if when < self._now:
            raise ValueError(f"a monotonic clock cannot go backwards: {when!r} < now {self._now!r}")
        self._now = when
        return self._now

    def __call__(self) -> float:
        """Return :attr:`now`, so the clock can be used as a time function."""
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


def _check_time(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)
