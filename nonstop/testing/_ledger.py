"""The feed server's bookkeeping: counters, records, change notices, the pause.

Theory of operation
-------------------
:class:`FeedLedger` is the part of :class:`~nonstop.testing.FeedServer` that
its connections report into and that tests read and wait on.  Connections
call its private methods (:meth:`~FeedLedger._register_upgrade`,
:meth:`~FeedLedger._record_received`, :meth:`~FeedLedger._commit`, ...) as
things happen; tests read the public properties and wait with
:meth:`~FeedLedger.wait_for`.

Change notices.  Every change a test may wait for calls :meth:`_notify`,
which bumps :attr:`_version` and sets the current :class:`anyio.Event`
(replacing it with a fresh one).  A waiter re-checks its predicate after
each notice, so it never misses a change and never polls; a thread-side
waiter compares :attr:`_version` numbers instead (:meth:`_wait_change`),
because it cannot hold on to an event across portal calls.

Numbering.  ``N`` in ``{"seq": N, ...}`` is global across all connections:
a connection proposes ``_seq + 1`` and :meth:`_commit` takes it once the
frame's first byte has reached the kernel, so the sequence is gap-free and
:attr:`sent_log` says exactly which numbers went to which connection.
Connection numbers (``C``) are given out in upgrade order by
:meth:`_register_upgrade`.

Pausing.  :meth:`pause_streaming` holds every streamer before its next
numbered message (decided at the moment of writing, so it is exact) until
:meth:`resume_streaming`.  A test can then wait until its client has
everything that was sent before it breaks a connection: frames in flight on a
TCP connection that breaks are lost in the network (an RST even makes the
receiving kernel discard what it has not handed over yet), which a test of
in-process loss must tell apart from its client losing messages.

Bounds.  The record lists (:attr:`received`, :attr:`history`,
:attr:`sent_log`, :attr:`subscriptions`, :attr:`auth_log`) keep the most recent
``record_limit`` entries; the counters stay exact.

Threads.  The ledger belongs to the event loop that runs the server;
:meth:`_check_thread` makes the methods that change or wait on it raise
:class:`RuntimeError` when called from another thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import anyio

from ._connection import Connection
from ._faults import Pending
from ._records import ConnectionInfo, Record

__all__ = ["FeedLedger"]


class FeedLedger:
    """Counters, records and change notices of a feed server; see the module docstring."""

    def __init__(self, record_limit: int) -> None:
        self._thread_id: int | None = None
        self._changed: anyio.Event | None = None
        self._conns: set[Connection] = set()
        self._history: deque[Record] = deque(maxlen=record_limit)
        self._received: deque[tuple[int, str | bytes]] = deque(maxlen=record_limit)
        self._subscriptions: deque[tuple[int, str]] = deque(maxlen=record_limit)
        self._sent_log: deque[tuple[int, int]] = deque(maxlen=record_limit)
        self._auth_log: deque[tuple[int, str]] = deque(maxlen=record_limit)
        self._pending: deque[Pending] = deque()
        self._paused = False  # pause_streaming() in effect
        self._resumed: anyio.Event | None = None  # streamers waiting for resume_streaming()
        self._seq = 0
        self._accepted = 0
        self._upgrades = 0
        self._rejected = 0
        self._stalled = 0
        self._dropped = 0
        self._received_count = 0
        self._version = 0  # bumped by every _notify()

    # -- bookkeeping (called by connections) -------------------------------

    def _notify(self) -> None:
        self._version += 1
        changed = self._changed
        if changed is not None:
            self._changed = anyio.Event()
            changed.set()

    def _forget(self, conn: Connection) -> None:
        self._conns.discard(conn)
        self._notify()

    def _register_upgrade(self, conn: Connection) -> None:
        self._upgrades += 1
        conn.record.number = self._upgrades
        self._notify()

    def _take_pending(self) -> Pending | None:
        while self._pending:
            pending = self._pending[0]
            if pending.count <= 0:
                self._pending.popleft()
                continue
            pending.count -= 1
            if pending.count == 0:
                self._pending.popleft()
            return pending
        return None

    def _record_received(self, conn: Connection, message: str | bytes) -> None:
        conn.record.received += 1
        self._received_count += 1
        self._received.append((conn.record.number or 0, message))
        self._notify()

    def _record_subscription(self, conn: Connection, message: str) -> None:
        self._subscriptions.append((conn.record.number or 0, message))

    def _record_auth(self, conn: Connection, outcome: str) -> None:
        self._auth_log.append((conn.record.number or 0, outcome))
        self._notify()

    def _commit(self, conn: Connection, seq: int) -> None:
        assert seq == self._seq + 1
        self._seq = seq
        conn.record.sent += 1
        self._sent_log.append((seq, conn.record.number or 0))
        self._notify()

    def _commit_shared(self, conn: Connection, seq: int) -> None:
        """Number *seq* of the one stream went out on *conn* (the same
        number goes out on every connection: ``shared_stream``)."""
        self._seq = max(self._seq, seq)
        conn.record.sent += 1
        self._sent_log.append((seq, conn.record.number or 0))
        self._notify()

    def _check_thread(self) -> None:
        if self._thread_id is not None and threading.get_ident() != self._thread_id:
            raise RuntimeError(
                "FeedServer methods must be called from the thread running its event loop; "
                "use FeedServer.run_in_thread() for a thread-safe handle"
            )

    # -- streaming -------------------------------------------------------

    def pause_streaming(self) -> None:
        """Stop streaming numbered messages, on every connection, until
        :meth:`resume_streaming`; idempotent.

        Exact: once this returns, no further numbered message is committed
        (:attr:`sent` stays put), so a test can wait until its client has
        received everything sent -- nothing left in flight in the network --
        before it breaks a connection.  Connections stay open; pings, ACKs,
        echoes and faults work as usual, and connections opened meanwhile
        start streaming only on resume.  Not a :class:`Fault`: RESTORE does
        not resume.
        """
        self._check_thread()
        self._paused = True

    def resume_streaming(self) -> None:
        """Resume streaming after :meth:`pause_streaming`; idempotent."""
        self._check_thread()
        self._paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.set()

    @property
    def streaming_paused(self) -> bool:
        """Whether :meth:`pause_streaming` is in effect."""
        return self._paused

    async def _wait_resumed(self) -> None:
        if self._resumed is None:
            self._resumed = anyio.Event()
        await self._resumed.wait()

    # -- waiting -----------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = 10.0) -> None:
        """Wait until ``predicate()`` is true; it is re-checked on every change.

        Changes are: a connection accepted, upgraded or closed, a message
        received or streamed, the listener refused or restored.  Raises
        :class:`TimeoutError` after ``timeout`` seconds (None: no limit).
        """
        self._check_thread()
        if self._changed is None:
            raise RuntimeError("the server is not running")
        try:
            with anyio.fail_after(timeout):
                while not predicate():
                    assert self._changed is not None
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"condition not met within {timeout} s (connections={self._upgrades}, "
                f"open={self.open_connections}, sent={self._seq}, received={self._received_count})"
            ) from None

    async def _wait_change(self, version: int, timeout: float | None) -> None:
        """Return once :attr:`_version` differs from ``version`` or ``timeout`` passed."""
        with anyio.move_on_after(timeout):
            while self._version == version and self._changed is not None:
                await self._changed.wait()

    async def wait_connected(self, n: int = 1, timeout: float | None = 10.0) -> None:
        """Wait until ``n`` connections in total have completed the upgrade."""
        await self.wait_for(lambda: self._upgrades >= n, timeout)

    # -- observing ---------------------------------------------------------

    @property
    def connections(self) -> int:
        """Number of upgrades completed so far (the last connection number)."""
        return self._upgrades

    @property
    def accepted(self) -> int:
        """Number of TCP connections accepted so far (upgraded or not)."""
        return self._accepted

    @property
    def rejected(self) -> int:
        """Number of upgrade requests answered with an HTTP error (REJECT or bad request)."""
        return self._rejected

    @property
    def stalled(self) -> int:
        """Number of upgrade requests never answered (STALL_HANDSHAKE, SILENT)."""
        return self._stalled

    @property
    def dropped(self) -> int:
        """Number of TCP connections closed at once because of ``max_connections``."""
        return self._dropped

    @property
    def open_connections(self) -> int:
        """Number of upgraded connections open right now."""
        return sum(1 for conn in self._conns if conn.phase == "open")

    @property
    def sent(self) -> int:
        """Number of streamed (numbered) messages sent in total: the last ``seq``."""
        return self._seq

    def sent_to(self, connection: int) -> int:
        """Number of streamed messages sent on connection number ``connection``."""
        return self.connection(connection).sent

    @property
    def sent_log(self) -> list[tuple[int, int]]:
        """``(seq, connection_number)`` of the streamed messages, in send order (recent ones)."""
        return list(self._sent_log)

    @property
    def received(self) -> list[tuple[int, str | bytes]]:
        """``(connection_number, message)`` for every message clients sent (recent ones)."""
        return list(self._received)

    @property
    def received_count(self) -> int:
        """Number of messages clients sent, in total (exact, unlike :attr:`received`)."""
        return self._received_count

    @property
    def subscriptions(self) -> list[tuple[int, str]]:
        """``(connection_number, message)`` for every subscription received (recent ones)."""
        return list(self._subscriptions)

    @property
    def auth_log(self) -> list[tuple[int, str]]:
        """``(connection_number, outcome)`` for every authentication decision (recent ones).

        ``outcome`` is ``"accepted"`` or ``"rejected: REASON"`` (e.g.
        ``"rejected: stale timestamp"``); see the server's ``auth`` parameter.
        The number is 0 for a connection that was never upgraded (a listen
        key refused with 401).
        """
        return list(self._auth_log)

    @property
    def history(self) -> list[ConnectionInfo]:
        """A snapshot of every accepted TCP connection, oldest first (recent ones)."""
        return [record.snapshot() for record in self._history]

    def connection(self, number: int) -> ConnectionInfo:
        """The snapshot of connection number ``number``; :class:`KeyError` if unknown."""
        for record in reversed(self._history):
            if record.number == number:
                return record.snapshot()
        raise KeyError(f"no connection number {number} (known: 1..{self._upgrades}, recent ones only)")
