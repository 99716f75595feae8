"""Happy eyeballs (RFC 8305): which address to connect to, and when.

Theory of operation
-------------------
A host name resolves to several addresses, often one or more IPv6 and IPv4
ones.  Trying them one after another is slow when the first swallows the
SYN (a broken IPv6 route); trying them all at once floods the network.
RFC 8305 starts them in a staggered race, and :class:`Dial` makes every
decision of that race, without I/O, for any kind of address (for the
drivers: the tuples :func:`socket.getaddrinfo` returns).

* **Order** (RFC 8305 section 4): :func:`interleave` alternates the address
  families, the family of the first address first, each family keeping its
  own order: ``v6a v6b v4a v4b`` becomes ``v6a v4a v6b v4b``.
* **Start** (section 5): the first address is due at once.  The next one is
  due beside those in flight ``delay`` seconds after the latest one started,
  or at once when that latest one fails.  (An earlier attempt that fails
  changes nothing: the latest still has its ``delay``.)
* **Win**: the first attempt to connect wins; every other attempt in flight
  is to be closed and nothing more is started.
* **Lose**: when every address failed, the error is the last failure, with
  the first one as its ``__context__``: a ``localhost`` refused on ``::1``
  and on ``127.0.0.1`` is still a ``ConnectionRefusedError``, and
  :func:`~nonstop.core.classify_error`, which walks the context, sees the
  first address's error too.  No address at all is
  ``OSError("no address for <host>")``.

Every input takes ``now`` (the driver's monotonic clock) and every output is
pulled: after construction and after each input the driver pulls
:meth:`Dial.next_close` and :meth:`Dial.next_start` until they return
``None``, then waits until a socket is ready or :meth:`Dial.next_deadline`.
Each :class:`Attempt` handed out by ``next_start`` comes back exactly once:
as :attr:`Dial.winner`, or from ``next_close`` (failed attempts included, so
the driver closes sockets in one place).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, final

from ._errors import LocalProtocolError
from ._health import after

__all__ = ["NEXT_ADDRESS_DELAY", "KNOWN_ADDRESS_TIME", "LOOKUP_PATIENCE", "Attempt", "Dial", "interleave",
           "lookup_limit"]

T = TypeVar("T")

#: How long the latest attempt gets before the next address starts beside
#: it (RFC 8305 section 5 recommends 250 ms).
NEXT_ADDRESS_DELAY = 0.25

#: How long after a connection ended the address it used may stand in for a
#: name lookup that fails or is slow (:meth:`FeedCore.may_reuse_address`):
#: a resolver's blip right after a working connection is not a reason to
#: wait out a backoff, and five minutes is short enough that a server moved
#: on purpose is found again by the lookups after it.
KNOWN_ADDRESS_TIME = 300.0

#: How long a lookup may take when that address may stand in for it.
LOOKUP_PATIENCE = 1.0


def lookup_limit(connect_timeout: float) -> float:
    """How long a lookup may take when nothing may stand in for it: half the
    connect timeout (the rest is for TCP and TLS), so that a resolver that
    hangs is reported as a name-lookup failure, not as a connect timeout."""
    return connect_timeout / 2

def interleave(addresses: Iterable[T], family: Callable[[T], Hashable]) -> tuple[T, ...]:
    """*addresses* with their families alternated (RFC 8305 section 4).

    Families take turns in the order they first appear (so the first address
    stays first), and the addresses of one family keep their order.
    """
    by_family: dict[Hashable, list[T]] = {}
    for address in addresses:
        by_family.setdefault(family(address), []).append(address)
    columns = list(by_family.values())
    rows = max(map(len, columns), default=0)
    return tuple(column[row] for row in range(rows) for column in columns if row < len(column))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt(Generic[T]):
    """One connection attempt: open a socket to ``address`` and connect it.

    Report how it ended with :meth:`Dial.connected` or :meth:`Dial.failed`,
    passing this very object.
    """

    index: int
    """Position of ``address`` in :attr:`Dial.addresses`; unique in its dial."""
    address: T


class Dial(Generic[T]):
    """The decisions of one happy-eyeballs connect; see the module docstring.

    *addresses* in the resolver's order; *family* maps an address to its
    family (``operator.itemgetter(0)`` for :func:`socket.getaddrinfo`
    tuples); *host* names the host in the error when there is no address;
    *now* is the driver's monotonic clock.  Then pull :meth:`next_start`.
    """

    __slots__ = (
        "_order",
        "_delay",
        "_now",
        "_released",
        "_started",
        "_in_flight",
        "_closes",
        "_errors",
        "_next_at",
        "_winner",
        "_error",
    )

    def __init__(
        self,
        addresses: Sequence[T],
        *,
        family: Callable[[T], Hashable],
        host: str,
        now: float,
        delay: float = NEXT_ADDRESS_DELAY,
    ) -> None:
        _check_now(now)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay < math.inf:
            raise LocalProtocolError(f"delay must be finite seconds >= 0, got {delay!r}")
        self._order = interleave(addresses, family)
        self._delay = float(delay)
        self._now = now
        self._released = 0  # addresses due to start (a prefix of _order)
        self._started = 0  # addresses handed out by next_start (<= _released)
        self._in_flight: dict[int, Attempt[T]] = {}
        self._closes: deque[Attempt[T]] = deque()
        self._errors: list[OSError] = []
        self._next_at: float | None = None  # when the next address is due
        self._winner: Attempt[T] | None = None
        self._error: OSError | None = None
        if self._order:
            self._release(now)
        else:
            self._error = OSError(f"no address for {host}")

    # ------------------------------------------------------------------
    # queries
    @property
    def addresses(self) -> tuple[T, ...]:
        """Every address, in the order they are tried (see :func:`interleave`)."""
        return self._order

    @property
    def winner(self) -> Attempt[T] | None:
        """The attempt that connected first: use its socket.  ``None`` until then."""
        return self._winner

    @property
    def error(self) -> OSError | None:
        """Every address failed: raise (or report) this.  ``None`` until then."""
        return self._error

    @property
    def done(self) -> bool:
        """An attempt won or all failed; ``next_close`` may still have attempts."""
        return self._winner is not None or self._error is not None

    def is_in_flight(self, attempt: Attempt[T]) -> bool:
        """Whether *attempt* was started and its outcome is still wanted.

        ``False`` once it was reported or told to close: a driver that sees a
        socket ready after another won (the same ``select`` round, a task
        that woke late) checks this and reports nothing.
        """
        return self._in_flight.get(attempt.index) is attempt

    def next_deadline(self) -> float | None:
        """When the next address is due (call :meth:`handle_timer` then), or
        ``None``.  A pure query."""
        return self._next_at

    # ------------------------------------------------------------------
    # outputs
    def next_start(self) -> Attempt[T] | None:
        """The next attempt to start now (open a socket, connect without
        blocking, wait until it is writable), or ``None``.  Call until ``None``
        after construction and after every input."""
        if self._started == self._released:
            return None
        index = self._started
        attempt = Attempt(index=index, address=self._order[index])
        self._started += 1
        self._in_flight[index] = attempt
        return attempt

    def next_close(self) -> Attempt[T] | None:
        """The next attempt whose socket to close (it failed, or another won),
        or ``None``.  Call until ``None`` after every input."""
        return self._closes.popleft() if self._closes else None

    # ------------------------------------------------------------------
    # inputs
    def connected(self, attempt: Attempt[T], now: float) -> None:
        """*attempt*'s socket connected.  The first to connect wins
        (:attr:`winner`); the others in flight go to :meth:`next_close` and
        nothing more starts."""
        self._check(attempt, now, "connected")
        self._now = now
        del self._in_flight[attempt.index]
        self._winner = attempt
        self._closes.extend(self._in_flight.values())
        self._in_flight.clear()
        self._released = self._started  # due but not started: never started
        self._next_at = None

    def failed(self, attempt: Attempt[T], exc: OSError, now: float) -> None:
        """*attempt* could not connect (the socket could not be opened, or
        ``SO_ERROR`` said why).  Its socket goes to :meth:`next_close`; if it
        was the latest attempt, the next address is due at once; if it was
        the last one in flight and none is left, :attr:`error` is set."""
        if not isinstance(exc, OSError):
            raise LocalProtocolError(f"failed() takes an OSError, got {exc!r}")
        self._check(attempt, now, "failed")
        self._now = now
        del self._in_flight[attempt.index]
        self._closes.append(attempt)
        self._errors.append(exc)
        if attempt.index == self._released - 1 and self._released < len(self._order):
            self._release(now)
        if len(self._errors) == len(self._order):
            error = self._errors[-1]
            if self._errors[0] is not error:
                error.__context__ = self._errors[0]
            self._error = error

    def handle_timer(self, now: float) -> None:
        """Make the next address due if its time has come (then pull
        :meth:`next_start`).  Safe to call early, late or twice; afterwards
        :meth:`next_deadline` is ``None`` or later than *now*."""
        _check_now(now)
        if now < self._now:
            raise LocalProtocolError(_backwards(now, self._now))
        self._now = now
        if self._next_at is not None and now >= self._next_at:
            self._release(now)

    # ------------------------------------------------------------------
    def _release(self, now: float) -> None:
        """The next address is due at *now*; the one after it ``delay`` later."""
        self._released += 1
        more = self._released < len(self._order)
        self._next_at = after(now, self._delay) if more else None

    def _check(self, attempt: Attempt[T], now: float, what: str) -> None:
        _check_now(now)
        if now < self._now:
            raise LocalProtocolError(_backwards(now, self._now))
        if not self.is_in_flight(attempt):
            raise LocalProtocolError(f"can't report {what}() for {attempt!r}: it is not in flight")


def _check_now(now: float) -> None:
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise LocalProtocolError(f"now must be a finite number of seconds, got {now!r}")


def _backwards(now: float, last: float) -> str:
    return f"time went backwards: now={now!r} after {last!r}; pass a monotonic clock"
