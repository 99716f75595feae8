"""Merging redundant legs: every message once, and every possible loss reported.

Theory of operation
-------------------
A feed run over N connections ("legs") to the same data gets each message
up to N times.  :class:`Merge` takes every leg's messages as they arrive and
decides, message by message, what the application sees: the first arrival
of each message, in an order that keeps each leg's own order, and a
:class:`Gap` record wherever messages may have been lost.  It is sans-IO
like the rest of the core: the caller gives it ``now`` and asks for its
next deadline.

Two ways to tell messages apart:

* **Sequence numbers** (``sequence=fn``: the feed's own number of a
  message).  A message numbered above the last one delivered is new; at or
  below it, a duplicate (dropped, counted).  A number that jumps leaves a
  hole another leg may still fill: while another leg is subscribed, what
  came after the hole is held for ``reorder_window`` seconds from its
  arrival; filled in time, everything goes out in order; not, the hole is a
  gap (its numbers reported) and the held messages go out.  With no other
  leg up nothing can fill the hole, so it is a gap at once.  A message whose
  number cannot be read (the function raised or gave something that is not
  an ``int``) is delivered as it is (once: such messages are told apart by
  their payload, as without numbers) and counted by kind; it moves nothing.
  Gaps come from the numbers alone: a window with no leg up that lost no
  number is no gap.
* **Keys** (``dedupe=fn``; by default the payload itself).  The first
  arrival of a key is delivered; later ones are dropped while it is
  remembered: at least half of ``dedupe_window`` seconds and half of
  ``dedupe_count`` keys, at most the whole of both.  Memory is bounded by
  ``dedupe_count`` keys.  Keys cannot show a hole, so gaps come
  from coverage: each leg says when it is subscribed (:meth:`leg_up`) and
  when it stops (:meth:`leg_down`); from the moment the last leg went down
  until one is up again is a gap, reported before the first message after
  it.  (Before the first leg was ever up nothing was promised: no gap.)

Lagging legs.  A leg that stays connected but brings nothing fresh while
another delivers is a zombie too: with ``lag`` set, once another leg
delivered a new message, this leg owes one fresh arrival (a new message, or
a duplicate at most ``lag`` seconds after its first arrival) within ``lag``
seconds; :meth:`lagging` names the legs that did not (the driver replaces
them).  A leg that is always a millisecond behind is never lagging; one
that went silent, or fell ``lag`` seconds behind, is.

Every method returns what to hand out now, in order: payloads and
:class:`Gap` records.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Hashable
from typing import Final, Union

from ._config import Payload
from ._errors import ConfigError
from ._events import Gap

__all__ = ["Gap", "Merge", "Out"]

#: How long numbers after a hole wait for another leg to fill it, by default.
REORDER_WINDOW: Final = 0.05
#: How long a leg may go without a fresh arrival while another delivers, by default.
LEG_LAG: Final = 5.0
#: How long a key is remembered, and how many at most, by default.
DEDUPE_WINDOW: Final = 60.0
DEDUPE_COUNT: Final = 100_000


Out = Union[Payload, Gap]


class Merge:
    """The arbitration of *legs* legs' messages into one stream."""

    __slots__ = ("_dedupe", "_dedupe_count", "_dedupe_window", "_delivered_at", "_down_since",
                 "_held", "_lag", "_last", "_last_at", "_legs", "_owed", "_reorder", "_keys",
                 "_old_keys", "_keys_since", "_old_since",
                 "_sequence", "_up",
                 "delivered", "duplicates", "gap_seconds", "gaps", "leg_duplicates", "missing",
                 "unreadable")

    def __init__(
        self,
        legs: int,
        *,
        sequence: Callable[[Payload], int] | None = None,
        dedupe: Callable[[Payload], Hashable] | None = None,
        reorder_window: float = REORDER_WINDOW,
        dedupe_window: float = DEDUPE_WINDOW,
        dedupe_count: int = DEDUPE_COUNT,
        lag: float | None = None,
    ) -> None:
        if type(legs) is not int or legs < 1:
            raise ConfigError(f"legs must be an int >= 1, got {legs!r}")
        if sequence is not None and dedupe is not None:
            raise ConfigError("give sequence= or dedupe=, not both: sequence numbers already "
                              "tell duplicates apart")
        for name, value in (("reorder_window", reorder_window), ("dedupe_window", dedupe_window)):
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ConfigError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if type(dedupe_count) is not int or dedupe_count < 1:
            raise ConfigError(f"dedupe_count must be an int >= 1, got {dedupe_count!r}")
        if lag is not None and (not isinstance(lag, (int, float)) or not 0 < lag < float("inf")):
            raise ConfigError(f"leg_lag must be a finite number of seconds > 0 or None, got {lag!r}")
        self._legs = legs
        self._sequence = sequence
        self._dedupe = dedupe
        self._reorder = float(reorder_window)
        self._dedupe_window = float(dedupe_window)
        self._dedupe_count = dedupe_count
        self._up: set[int] = set()
        self._down_since: float | None = None  # no leg up since then (after one was)
        self._last: int | None = None  # the last number delivered
        self._last_at = 0.0  # when it arrived
        self._held: dict[int, tuple[Payload, float]] = {}  # number -> (payload, arrival), after a hole
        # The keys seen, in two generations (see _by_key): key -> first arrival.
        self._keys: dict[Hashable, float] = {}
        self._old_keys: dict[Hashable, float] = {}
        self._keys_since = -math.inf
        self._old_since = -math.inf
        self._lag = lag
        #: Per leg: since when it owes a fresh arrival (another leg delivered
        #: a new message after its last one), or None.
        self._owed: list[float | None] = [None] * legs
        #: (last number delivered, when) after each run, for the lateness of
        #: a duplicate number; bounded.
        self._delivered_at: tuple[list[int], list[float]] = ([], [])
        #: Messages handed out, duplicates dropped, gaps reported, their
        #: seconds, the numbers they miss, unreadable numbers by kind.
        self.delivered = 0
        self.duplicates = 0
        #: Duplicates by the leg that brought them: a leg whose messages the
        #: others delivered first overlaps them (or lags).
        self.leg_duplicates = [0] * legs
        self.gaps = 0
        self.gap_seconds = 0.0
        self.missing = 0
        self.unreadable: dict[str, int] = {}

    # -- legs ------------------------------------------------------------
    def leg_up(self, leg: int, now: float) -> list[Out]:
        """Leg *leg* is subscribed (its subscriptions sent and acknowledged):
        a gap of coverage ends here."""
        self._check_leg(leg)
        self._up.add(leg)
        self._owed[leg] = None
        since, self._down_since = self._down_since, None
        if since is None or self._sequence is not None:
            return []
        return [self._gap(Gap(start=since, end=now, reason="no_leg",
                              legs_down=tuple(i for i in range(self._legs) if i != leg)))]

    def leg_down(self, leg: int, now: float) -> list[Out]:
        """Leg *leg* stopped (broken, closing, or not subscribed any more).
        With no other leg up, held messages can no longer be completed:
        their holes are gaps now."""
        self._check_leg(leg)
        if leg not in self._up:
            return []
        self._up.discard(leg)
        self._owed[leg] = None
        if self._up:
            return []
        self._down_since = now
        out: list[Out] = []
        self._release(now, out, force=True)
        return out

    def _check_leg(self, leg: int) -> None:
        if type(leg) is not int or not 0 <= leg < self._legs:
            raise ValueError(f"leg must be an int in 0..{self._legs - 1}, got {leg!r}")

    # -- messages ----------------------------------------------------------
    def offer(self, leg: int, payloads: list[Payload], now: float) -> list[Out]:
        """Messages of leg *leg*, in its order: what to hand out now."""
        out: list[Out] = []
        delivered = self.delivered
        if self._sequence is None:
            fresh = self._by_key(leg, payloads, now, out)
        else:
            latest = self._by_numbers(leg, payloads, now, out)  # the freshest duplicate
            fresh = latest >= 0 and self._lateness(latest, now) <= (self._lag or 0.0)
            if self.delivered > delivered and self._last is not None:
                self._note_delivered(self._last, now)
        if self._lag is not None:
            self._owe(leg, now, new=self.delivered > delivered, fresh=fresh)
        return out

    # -- lagging legs --------------------------------------------------------
    def _owe(self, leg: int, now: float, *, new: bool, fresh: bool) -> None:
        owed = self._owed
        if new or fresh:
            owed[leg] = None
        if new:
            for other in self._up:
                if other != leg and owed[other] is None:
                    owed[other] = now

    def _note_delivered(self, number: int, now: float) -> None:
        numbers, times = self._delivered_at
        numbers.append(number)
        times.append(now)
        if len(numbers) > 4096:
            del numbers[:2048], times[:2048]

    def _lateness(self, number: int, now: float) -> float:
        """How long after its first delivery a duplicate *number* came
        (from the run it was delivered in, or the oldest one remembered)."""
        numbers, times = self._delivered_at
        assert numbers  # a duplicate: something was delivered
        return now - times[min(bisect.bisect_left(numbers, number), len(times) - 1)]

    def lagging(self, now: float) -> list[int]:
        """The legs up that owed a fresh arrival for more than ``lag``
        seconds: replace them.  Each is named once (it owes nothing more)."""
        if self._lag is None:
            return []
        out = [leg for leg in sorted(self._up)
               if (since := self._owed[leg]) is not None and now - since > self._lag]
        for leg in out:
            self._owed[leg] = None
        return out

    def _by_key(self, leg: int, payloads: list[Payload], now: float, out: list[Out]) -> bool:
        """Deliver the keys not seen; True if the leg keeps up (its last
        message was new, or a duplicate at most ``lag`` late).

        The keys seen are kept in two generations of plain dicts (key ->
        first arrival).  A new generation starts when the current one is
        half of ``dedupe_window`` old or holds half of ``dedupe_count``
        keys; the one before it is forgotten then, or once it is older
        than the window.  So a key is remembered for at least half the
        window and half the count, at most the window and the count, in
        bounded memory; and a run is sorted out with C-speed membership
        tests instead of a Python step per message.
        """
        window = self._dedupe_window
        if now - self._keys_since >= window / 2:
            self._rotate_keys(now)
        if now - self._old_since > window:
            self._old_keys = {}
        keys, old = self._keys, self._old_keys
        key_of = self._dedupe
        if key_of is None:
            new: dict[Hashable, Payload] = {p: p for p in payloads if p not in keys and p not in old}
            last_key: Hashable = payloads[-1] if payloads else None
        else:
            pairs = [(key_of(p), p) for p in payloads]
            new = {}
            for key, payload in pairs:
                if key not in keys and key not in old and key not in new:
                    new[key] = payload
            last_key = pairs[-1][0] if pairs else None
        half = max(1, self._dedupe_count // 2)
        if len(keys) + len(new) <= half:
            keys.update(dict.fromkeys(new, now))
        elif len(new) < half:
            self._rotate_keys(now).update(dict.fromkeys(new, now))
        else:  # a run of half the count or more: its last keys are the ones remembered
            fresh_keys = list(new)
            self._old_keys = dict.fromkeys(fresh_keys[-2 * half:-half], now)
            self._keys = dict.fromkeys(fresh_keys[-half:], now)
            self._old_since = self._keys_since = now
        out.extend(new.values())
        dups = len(payloads) - len(new)
        self.delivered += len(new)
        if not dups:
            return True
        self.duplicates += dups
        self.leg_duplicates[leg] += dups
        if last_key in new:
            return True
        arrived = keys.get(last_key)
        if arrived is None:
            arrived = old.get(last_key, now)
        return now - arrived <= (self._lag or 0.0)

    def _rotate_keys(self, now: float) -> dict[Hashable, float]:
        """Start a new generation of keys; forget the one before the last."""
        self._old_keys, self._old_since = self._keys, self._keys_since
        self._keys, self._keys_since = {}, now
        return self._keys

    def _by_numbers(self, leg: int, payloads: list[Payload], now: float, out: list[Out]) -> int:
        """Take a run of messages by number; the highest duplicate number
        (-1: none).  The usual message (the next number, nothing held) is
        handled inline; the rest by :meth:`_by_number`."""
        number_of = self._sequence
        assert number_of is not None
        held = self._held  # (mutated in place, never replaced)
        append = out.append
        last = self._last
        delivered = dups = 0
        latest = -1
        for payload in payloads:
            try:
                number = number_of(payload)
            except Exception as exc:
                self._unreadable(f"raised {type(exc).__name__}", leg, payload, now, out)
                continue
            if type(number) is not int:
                self._unreadable(f"returned {type(number).__name__}", leg, payload, now, out)
                continue
            if last is not None and not held:
                if number == last + 1:
                    append(payload)
                    last = number
                    delivered += 1
                    continue
                if number <= last:
                    dups += 1
                    if number > latest:
                        latest = number
                    continue
            if delivered:
                self._last, self._last_at = last, now
                self.delivered += delivered
                delivered = 0
            if self._by_number(leg, payload, number, now, out) and number > latest:
                latest = number
            last = self._last
        if delivered:
            self._last, self._last_at = last, now
            self.delivered += delivered
        if dups:
            self.duplicates += dups
            self.leg_duplicates[leg] += dups
        return latest

    def _by_number(self, leg: int, payload: Payload, number: int, now: float,
                   out: list[Out]) -> bool:
        """Take one message numbered *number*; True if it was a duplicate."""
        last = self._last
        if (last is not None and number <= last) or number in self._held:
            self.duplicates += 1
            self.leg_duplicates[leg] += 1
            return True
        if last is None or number == last + 1:
            self._deliver(number, payload, now, out)
            self._drain(out)
            return False
        self._held[number] = (payload, now)
        if not self._up - {leg}:  # nobody else can fill the hole
            self._release(now, out, force=True)
        return False

    def _unreadable(self, kind: str, leg: int, payload: Payload, now: float,
                    out: list[Out]) -> None:
        """A message without a readable number: counted by kind, and
        delivered unless its payload came already (by key, as without
        ``sequence``: the other legs bring it too)."""
        self.unreadable[kind] = self.unreadable.get(kind, 0) + 1
        keys = self._keys
        if payload in keys or payload in self._old_keys:
            self.duplicates += 1
            self.leg_duplicates[leg] += 1
            return
        if len(keys) >= max(1, self._dedupe_count // 2):
            keys = self._rotate_keys(now)
        keys[payload] = now
        out.append(payload)
        self.delivered += 1

    def _deliver(self, number: int, payload: Payload, arrived: float, out: list[Out]) -> None:
        self._last, self._last_at = number, arrived
        out.append(payload)
        self.delivered += 1

    def _drain(self, out: list[Out]) -> None:
        """Deliver what was held and now follows the last number."""
        held = self._held
        while held:
            assert self._last is not None
            entry = held.pop(self._last + 1, None)
            if entry is None:
                return
            self._deliver(self._last + 1, entry[0], entry[1], out)

    def _release(self, now: float, out: list[Out], *, force: bool) -> None:
        """Give up on the holes whose wait is over (all of them if *force*):
        report each as a gap, deliver what follows it."""
        held = self._held
        while held:
            first = min(held)
            payload, arrived = held[first]
            if not force and min(at for _, at in held.values()) + self._reorder > now:
                return
            del held[first]
            assert self._last is not None
            self._gap(Gap(start=self._last_at, end=arrived, reason="sequence",
                          first_missing=self._last + 1, last_missing=first - 1,
                          legs_down=tuple(i for i in range(self._legs) if i not in self._up)),
                      out)
            self._deliver(first, payload, arrived, out)
            self._drain(out)

    def _gap(self, gap: Gap, out: list[Out] | None = None) -> Gap:
        self.gaps += 1
        self.gap_seconds += max(0.0, gap.end - gap.start)
        self.missing += gap.missing or 0
        if out is not None:
            out.append(gap)
        return gap

    # -- time --------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When held messages stop waiting for their hole to be filled, or
        a leg that owes a fresh arrival is lagging."""
        best: float | None = None
        if self._held:
            best = min(at for _, at in self._held.values()) + self._reorder
        if self._lag is not None:
            for leg in self._up:
                since = self._owed[leg]
                if since is not None and (best is None or since + self._lag < best):
                    best = since + self._lag
        return best

    def handle_timer(self, now: float) -> list[Out]:
        """The reorder window of a hole passed: what to hand out now."""
        out: list[Out] = []
        self._release(now, out, force=False)
        return out

    @property
    def lag(self) -> float | None:
        """How long a leg may go without a fresh arrival while another
        delivers (``None``: not watched)."""
        return self._lag

    @property
    def held(self) -> int:
        """Messages waiting for a hole before them to be filled."""
        return len(self._held)

    @property
    def keys(self) -> int:
        """Keys remembered for de-duplication."""
        return len(self._keys) + len(self._old_keys)
