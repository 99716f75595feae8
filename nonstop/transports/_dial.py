"""Happy eyeballs, the I/O: TCP connects driven by :class:`nonstop.core._dial.Dial`.

Theory of operation
-------------------
:class:`~nonstop.core._dial.Dial` decides which address to try when, which
attempt won and which sockets to close.  This module does the I/O for it,
once per kind of driver, with the same steps for one attempt:

1. :func:`_open`: a non-blocking socket for the address, ``TCP_NODELAY``
   on, ``connect_ex`` started.  An error here (no IPv6 on this machine, an
   unreachable network) fails the attempt at once.
2. wait until the socket is writable;
3. :func:`_outcome`: ``SO_ERROR`` says whether it connected.

Errors are the ones the drivers always reported, so
:func:`~nonstop.core.classify_error` gives the same reasons: the
:class:`socket.gaierror` of the name lookup (``dns``), ``OSError(errno, ...)``
built from ``connect_ex`` or ``SO_ERROR`` (``ConnectionRefusedError`` for a
refused port: ``refused``; others ``network``), and when every address
failed, the last error with the first as its ``__context__``.

* :func:`dial` (the anyio driver, on asyncio and on trio): one task per
  attempt waits in :func:`anyio.wait_writable` and reports to the dial; the
  calling task starts attempts and runs the timer.  All of them live in one
  task group, so a cancelled dial stops every wait, and every socket it
  opened and did not return is closed once the tasks have stopped waiting
  on them (trio must not see a descriptor closed under a waiting task).
* :class:`SelectorDial` (the blocking driver): no thread and no blocking
  call besides the name lookup; it registers its sockets on the driver's
  selector and the driver's loop feeds it readiness and time, so a
  ``stop()`` is handled at the driver's next turn, mid-connect or not.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from ..core._dial import LOOKUP_PATIENCE, NEXT_ADDRESS_DELAY, Attempt, Dial
from ..core._errors import LocalProtocolError
from ._common import LOGGER

__all__ = ["AddrInfo", "Lookup", "Resolver", "dial", "dial_addresses", "numeric", "SelectorDial"]

#: One entry of :func:`socket.getaddrinfo`: family, type, proto, canonname, address.
AddrInfo = tuple[int, int, int, str, Any]
#: Called before a dial waits (see :func:`dial`); ``None``: nothing to call.
Waiting = Callable[[], None] | None

#: ``connect_ex`` results that mean "under way" (0: connected already; the
#: socket is writable at once and ``SO_ERROR`` confirms it).
_UNDER_WAY = frozenset({0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN})


def _family(info: AddrInfo) -> int:
    return info[0]


def _open(info: AddrInfo) -> socket.socket:
    """A non-blocking TCP socket with ``TCP_NODELAY``, its connect to
    *info*'s address under way; raises :class:`OSError` (socket closed)."""
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
        if err not in _UNDER_WAY:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock


def _writable_now(sock: socket.socket) -> bool:
    """Is *sock* writable (its connect over, either way) without waiting?"""
    if not hasattr(select, "poll"):  # pragma: no cover - Windows: wait as usual
        return False
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))


def _outcome(sock: socket.socket) -> OSError | None:
    """How the connect of a socket that became writable ended: ``None`` for
    connected, else the error (``OSError(errno, strerror)``)."""
    try:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as exc:
        return exc
    return OSError(err, os.strerror(err)) if err else None


# ---------------------------------------------------------------------------
# the anyio driver
def carry_out(d: Dial[AddrInfo], now: float, close: Callable[[Attempt[AddrInfo]], None],
              start: Callable[[Attempt[AddrInfo], socket.socket], None]) -> None:
    """Do what *d* says until it says nothing: *close* each attempt it lets
    go, open a socket for each it starts (a socket that cannot even be made
    is that attempt's failure) and hand it to *start*."""
    while True:
        while (gone := d.next_close()) is not None:
            close(gone)
        attempt = d.next_start()
        if attempt is None:
            return
        try:
            sock = _open(attempt.address)
        except OSError as exc:
            d.failed(attempt, exc, now)
            continue
        start(attempt, sock)


#: A resolver: ``(host, port)`` -> ``getaddrinfo`` tuples (``SOCK_STREAM``).
Resolver = Callable[[str, int], Sequence[AddrInfo]]


class Lookup:
    """How one feed finds its host's addresses, and the one that last worked.

    Every attempt looks the name up (a server that moved is found); the
    address of the last connection stands in when the lookup fails, or
    gives no answer within :data:`~nonstop.core._dial.LOOKUP_PATIENCE`, if
    the core allows it (:meth:`FeedCore.may_reuse_address`: within
    ``KNOWN_ADDRESS_TIME`` of that connection's end).  Without a stand-in a
    lookup that gives no answer within its limit fails as a
    :class:`socket.gaierror` (reason ``dns``).  The lookup runs in a worker
    thread (the ``resolver`` option, else :func:`anyio.getaddrinfo` or, in
    the blocking driver, :func:`socket.getaddrinfo`); an IP address needs
    none.
    """

    __slots__ = ("resolver", "known")

    def __init__(self, resolver: Resolver | None = None) -> None:
        self.resolver = resolver
        #: The address of the last connection (one ``getaddrinfo`` tuple).
        self.known: list[AddrInfo] | None = None

    def worked(self, sock: socket.socket) -> None:
        """*sock* connected: its address is the one to fall back on."""
        with contextlib.suppress(OSError):
            self.known = [(sock.family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sock.getpeername())]

    def _call(self, host: str, port: int) -> list[AddrInfo]:
        """The resolver's lookup (in a worker thread): its failure of any
        kind is a lookup failure, named."""
        assert self.resolver is not None
        try:
            return list(self.resolver(host, port))
        except OSError:
            raise
        except Exception as exc:
            raise socket.gaierror(socket.EAI_FAIL,
                                  f"the resolver {self.resolver!r} raised {exc!r}") from exc

    def _plan(self, reuse: bool, limit: float) -> tuple[list[AddrInfo] | None, float]:
        """What may stand in for the lookup, and so how long it may take."""
        known = self.known if reuse else None
        return known, LOOKUP_PATIENCE if known is not None else limit

    def _outcome(self, host: str, known: list[AddrInfo] | None, wait: float,
                 result: list[AddrInfo] | BaseException | None) -> list[AddrInfo]:
        """The addresses to dial after the lookup gave *result* (``None``:
        no answer within *wait*), or the lookup's error."""
        if isinstance(result, list):
            return result
        if known is not None and (result is None or isinstance(result, OSError)):
            why = f"gave no answer within {wait:g}s" if result is None else f"failed ({result})"
            LOGGER.warning("name lookup of %s %s: dialing %s, the address of the last connection",
                           host, why, known[0][4][0])
            return known
        if result is None:
            raise socket.gaierror(socket.EAI_AGAIN,
                                  f"the name lookup of {host} gave no answer within {wait:g}s")
        raise result

    async def resolve(self, host: str, port: int, *, reuse: bool, limit: float,
                      waiting: Waiting = None) -> list[AddrInfo]:
        """*host*'s addresses (see the class doc); *reuse*: the core's
        :meth:`~nonstop.core.FeedCore.may_reuse_address`; *limit*: how long
        a lookup may take with no stand-in; *waiting*: called before a
        lookup (not for an IP address).  The default lookup is
        :func:`anyio.getaddrinfo` (IDNA 2008 names)."""
        infos = numeric(host, port)
        if infos is not None:
            return infos
        if waiting is not None:
            waiting()
        known, wait = self._plan(reuse, limit)
        result: list[AddrInfo] | BaseException | None = None
        with anyio.move_on_after(wait):
            try:
                if self.resolver is None:
                    result = list(await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM))
                else:
                    result = await anyio.to_thread.run_sync(self._call, host, port,
                                                            abandon_on_cancel=True)
            except OSError as exc:
                result = exc
        return self._outcome(host, known, wait, result)

    def resolve_blocking(self, host: str, port: int, *, reuse: bool, limit: float,
                         waiting: Waiting = None) -> list[AddrInfo]:
        """:meth:`resolve` for the blocking driver: the lookup (the resolver,
        else :func:`socket.getaddrinfo`) in a worker thread, waited for in
        this one."""
        infos = numeric(host, port)
        if infos is not None:
            return infos
        if waiting is not None:
            waiting()
        known, wait = self._plan(reuse, limit)
        outcome: list[list[AddrInfo] | BaseException] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append(self._call(host, port) if self.resolver is not None
                               else list(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))
            except BaseException as exc:
                outcome.append(exc)
            done.set()

        threading.Thread(target=run, name=f"nonstop lookup {host}", daemon=True).start()
        done.wait(None if wait == math.inf else wait)
        return self._outcome(host, known, wait, outcome[0] if outcome else None)


async def dial(host: str, port: int, *, lookup: Lookup | None = None, reuse: bool = False,
               limit: float = math.inf, delay: float = NEXT_ADDRESS_DELAY,
               waiting: Waiting = None) -> socket.socket:
    """A connected non-blocking TCP socket (``TCP_NODELAY`` on) to *host*:*port*.

    Finds the addresses with *lookup* (:meth:`Lookup.resolve`; a
    :class:`socket.gaierror` goes through), then :func:`dial_addresses`,
    and tells *lookup* which one worked.  Runs on any anyio backend.  The
    caller owns the socket; on cancellation or error every socket opened
    is closed.  *waiting* is called before each step that waits (a lookup,
    a connect that is not over at once): the caller's work that can wait
    goes there.
    """
    lookup = lookup if lookup is not None else Lookup()
    infos = await lookup.resolve(host, port, reuse=reuse, limit=limit, waiting=waiting)
    # A lookup whose answer came in the same loop turn as the caller's
    # cancellation returns without raising it (asyncio before 3.11); a
    # cancelled dial opens no socket.
    await anyio.lowlevel.checkpoint_if_cancelled()
    sock = await dial_addresses(infos, host=host, delay=delay, waiting=waiting)
    lookup.worked(sock)
    return sock


def numeric(host: str, port: int) -> list[AddrInfo] | None:
    """*host*'s address if it is an IP address already (no name lookup, no
    trip to the resolver's thread: a reconnect to ``127.0.0.1`` starts at
    once), else ``None``."""
    try:
        return list(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST))
    except (OSError, UnicodeError):
        return None


async def dial_addresses(
    infos: Sequence[AddrInfo], *, host: str, delay: float = NEXT_ADDRESS_DELAY,
    waiting: Waiting = None,
) -> socket.socket:
    """:func:`dial` on addresses already resolved (``getaddrinfo`` tuples).

    Raises the dial's error (an :class:`OSError`) when every address failed,
    ``OSError("no address for <host>")`` when *infos* is empty.  One
    address (an IP in the URL, most names) needs no race: its socket is
    waited on in this task, without the race's task group.
    """
    if len(infos) == 1:
        sock = _open(infos[0])
        try:
            if not _writable_now(sock):  # (a connect on this host or LAN often is, at once)
                if waiting is not None:
                    waiting()
                await anyio.wait_writable(sock)
            error = _outcome(sock)
            if error is not None:
                raise error
        except BaseException:
            sock.close()
            raise
        return sock
    if waiting is not None:
        waiting()
    return await _AsyncDial(Dial(infos, family=_family, host=host, now=anyio.current_time(),
                                 delay=delay)).run()


class _AsyncDial:
    """One :func:`dial`: the calling task starts attempts and runs the timer,
    one task per attempt waits for its socket and reports to the dial."""

    __slots__ = ("_dial", "_open", "_waiting", "_wake")

    def __init__(self, dial: Dial[AddrInfo]) -> None:
        self._dial = dial
        self._open: dict[int, socket.socket] = {}  # attempt index -> socket not closed yet
        self._waiting: dict[int, anyio.CancelScope] = {}  # attempts whose task waits
        self._wake = anyio.Event()  # set by a task that reported

    async def run(self) -> socket.socket:
        d = self._dial
        try:
            async with anyio.create_task_group() as tg:
                self._step(tg)
                while not d.done:
                    deadline = d.next_deadline()
                    with anyio.CancelScope(deadline=math.inf if deadline is None else deadline):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                    # The current time, not max(deadline, now): a task reports
                    # with current_time() next, and the dial's clock must not
                    # run ahead of it.  An early wake-up only loops once more.
                    d.handle_timer(anyio.current_time())
                    self._step(tg)
                tg.cancel_scope.cancel()  # the losers' tasks stop waiting
            if d.winner is not None:
                return self._open.pop(d.winner.index)
        finally:
            # Every task has ended here: no socket is waited on any more.
            for sock in self._open.values():
                sock.close()
            self._open.clear()
        assert d.error is not None
        raise d.error

    def _step(self, tg: anyio.abc.TaskGroup) -> None:
        """Close what the dial says, start what it says, until it says nothing."""
        def close(gone: Attempt[AddrInfo]) -> None:
            scope = self._waiting.pop(gone.index, None)
            if scope is not None:
                scope.cancel()  # its socket is closed when the task group ends
            elif (sock := self._open.pop(gone.index, None)) is not None:
                sock.close()

        def start(attempt: Attempt[AddrInfo], sock: socket.socket) -> None:
            self._open[attempt.index] = sock
            self._waiting[attempt.index] = scope = anyio.CancelScope()
            tg.start_soon(self._watch, attempt, sock, scope)

        carry_out(self._dial, anyio.current_time(), close, start)

    async def _watch(self, attempt: Attempt[AddrInfo], sock: socket.socket,
                     scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await anyio.wait_writable(sock)
        finally:
            self._waiting.pop(attempt.index, None)
        d = self._dial
        if not d.is_in_flight(attempt):
            return  # told to close meanwhile (another won)
        error = _outcome(sock)
        if error is None:
            d.connected(attempt, anyio.current_time())
        else:
            d.failed(attempt, error, anyio.current_time())
        self._wake.set()


# ---------------------------------------------------------------------------
# the blocking driver
class SelectorDial:
    """A happy-eyeballs connect run by the caller's ``selectors`` loop.

    It registers each socket it is connecting on *selector* for
    ``EVENT_WRITE`` with itself as the key's ``data``.  The driver's loop:

    * waits with ``selector.select(timeout)``, the timeout no later than
      :meth:`next_deadline`;
    * for each ready key whose ``data is`` this dial, calls
      :meth:`on_ready` ``(key.fileobj, now)``; if the deadline passed, calls
      :meth:`handle_timer` ``(now)``;
    * then checks :attr:`done`: :meth:`take` the connected socket
      (unregistered, non-blocking, ``TCP_NODELAY`` on; the caller owns it),
      or report :attr:`error`.

    :meth:`close` (a stop, a connect timeout) closes every socket it holds.
    Nothing here blocks; only :meth:`open` does, for the name lookup.
    """

    __slots__ = ("_dial", "_selector", "_attempts", "_winner", "_lookup_error", "_closed", "_lookup")

    def __init__(
        self,
        infos: Sequence[AddrInfo],
        selector: selectors.BaseSelector,
        *,
        host: str,
        now: float,
        delay: float = NEXT_ADDRESS_DELAY,
    ) -> None:
        """Start connecting to *infos* (``getaddrinfo`` tuples) at once."""
        self._dial = Dial(infos, family=_family, host=host, now=now, delay=delay)
        self._selector = selector
        self._attempts: dict[socket.socket, Attempt[AddrInfo]] = {}  # registered, in flight
        self._winner: socket.socket | None = None  # connected, not taken yet
        self._lookup_error: OSError | None = None
        self._lookup: Lookup | None = None  # told which address worked (take)
        self._closed = False
        self._step(now)

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        selector: selectors.BaseSelector,
        *,
        clock: Callable[[], float] = time.monotonic,
        delay: float = NEXT_ADDRESS_DELAY,
        lookup: Lookup | None = None,
        reuse: bool = False,
        limit: float = math.inf,
        waiting: Waiting = None,
    ) -> SelectorDial:
        """Find *host*'s addresses (:meth:`Lookup.resolve_blocking`: the one
        call that waits), then start as the constructor does, at ``clock()``
        read after the lookup.  A failed lookup gives a dial that is already
        :attr:`done`, its :attr:`error` the :class:`socket.gaierror`."""
        try:
            infos = (lookup if lookup is not None else Lookup()).resolve_blocking(
                host, port, reuse=reuse, limit=limit, waiting=waiting)
        except OSError as exc:
            failed = cls((), selector, host=host, now=clock(), delay=delay)
            failed._lookup_error = exc
            return failed
        dial = cls(infos, selector, host=host, now=clock(), delay=delay)
        dial._lookup = lookup
        return dial

    # -- queries --
    @property
    def done(self) -> bool:
        """A socket connected (:meth:`take` it) or all failed (:attr:`error`)."""
        return self._dial.done

    @property
    def error(self) -> OSError | None:
        """Why the connect failed, once :attr:`done` without a winner."""
        return self._lookup_error if self._lookup_error is not None else self._dial.error

    def next_deadline(self) -> float | None:
        """When to call :meth:`handle_timer` (the next address is due), or ``None``."""
        return None if self._closed else self._dial.next_deadline()

    # -- inputs --
    def on_ready(self, fileobj: object, now: float) -> None:
        """A key of this dial's was writable.  Sockets it no longer holds
        (closed earlier in the same ``select`` round) are ignored."""
        attempt = self._attempts.get(fileobj) if isinstance(fileobj, socket.socket) else None
        if attempt is None or self._closed:
            return
        assert isinstance(fileobj, socket.socket)
        error = _outcome(fileobj)
        if error is None:
            del self._attempts[fileobj]
            self._selector.unregister(fileobj)
            self._winner = fileobj
            self._dial.connected(attempt, now)
        else:
            self._dial.failed(attempt, error, now)
        self._step(now)

    def handle_timer(self, now: float) -> None:
        """Start the next address if it is due; safe to call early or twice."""
        if self._closed:
            return
        self._dial.handle_timer(now)
        self._step(now)

    # -- outputs --
    def take(self) -> socket.socket:
        """The connected socket, now the caller's (this dial forgets it)."""
        sock, self._winner = self._winner, None
        if sock is None:
            raise LocalProtocolError("no connected socket to take")
        if self._lookup is not None:  # its address stands in for a failing lookup
            self._lookup.worked(sock)
        return sock

    def close(self) -> None:
        """Unregister and close every socket still held (an untaken winner
        too); the dial does nothing more.  Idempotent."""
        self._closed = True
        held = [*self._attempts, *([self._winner] if self._winner is not None else [])]
        self._attempts.clear()
        self._winner = None
        for sock in held:
            self._forget(sock)

    # -- internals --
    def _step(self, now: float) -> None:
        def close(gone: Attempt[AddrInfo]) -> None:
            for sock, held in list(self._attempts.items()):
                if held is gone:
                    del self._attempts[sock]
                    self._forget(sock)

        def start(attempt: Attempt[AddrInfo], sock: socket.socket) -> None:
            try:
                self._selector.register(sock, selectors.EVENT_WRITE, self)
            except BaseException:
                sock.close()
                raise
            self._attempts[sock] = attempt

        carry_out(self._dial, now, close, start)

    def _forget(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()
