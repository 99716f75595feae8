"""The feed server's listening sockets: binding, accepting, refusing, restoring.

Theory of operation
-------------------
:class:`Listening` owns the listening socket(s) of one server, on one port
for the server's whole life: ``port=0`` picks a free port on the first bind,
and every later bind (after REFUSE, or a restart of the server) reuses it, so
a client can reconnect to the URL it was given.  A host name may resolve to
several addresses (``localhost``: IPv4 and IPv6); each gets a socket and an
*accept task*, and on the first bind an address that cannot be bound (no
IPv6) is skipped as long as the first one works.

Accept tasks wait for readiness with anyio and hand every accepted socket to
the server's callback; an error from ``accept()`` other than "try again"
(e.g. ``EMFILE``) is logged and retried after a short pause rather than
ending the task, so a burst of connections cannot stop the server from
listening.

REFUSE closes the listening sockets (:meth:`Listening.refuse`): on Linux
``shutdown()`` makes a listening socket refuse new connections at once, so
the very next connect is refused before :meth:`~nonstop.testing.FeedServer.inject`
returns; elsewhere the accept task closes the socket as soon as it runs.
Open connections are not touched.  With a duration, a timer task binds again
later; RESTORE (:meth:`Listening.restore`) cancels that timer and binds again
at once.

Portability: raw sockets with anyio readiness waits need a selector-based
event loop (Linux and macOS; not asyncio's Proactor loop on Windows).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from ._wire import _wait_readable

__all__ = ["Listener", "Listening"]

logger = logging.getLogger("nonstop.testing")


class Listener:
    """One listening socket and the scope of its accept task."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.scope = anyio.CancelScope()
        self.closing = False


class Listening:
    """The listening sockets of one server; see the module docstring.

    ``accept(sock, peer)`` receives every accepted socket; ``changed()`` is
    called whenever the server starts or stops listening.
    """

    def __init__(
        self,
        host: str,
        port: int,
        accept: Callable[[socket.socket, tuple[str, int]], None],
        changed: Callable[[], None],
    ) -> None:
        self.host = host
        #: The port, 0 until the first bind picked one.
        self.port = port
        self.addresses: list[tuple[int, tuple[object, ...]]] = []
        self.listeners: list[Listener] = []
        self.refusing = False
        self.restore_scope: anyio.CancelScope | None = None
        self.tg: TaskGroup | None = None
        self._accept = accept
        self._changed = changed

    async def resolve(self) -> None:
        """Find the addresses to listen on; :class:`OSError` if there are none."""
        infos = await anyio.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses: list[tuple[int, tuple[object, ...]]] = []
        for family, _type, _proto, _name, sockaddr in infos:
            if (family, tuple(sockaddr)) not in addresses and family in (socket.AF_INET, socket.AF_INET6):
                addresses.append((int(family), tuple(sockaddr)))
        if not addresses:
            raise OSError(f"cannot resolve {self.host!r} to an IP address")
        self.addresses = addresses

    def open(self, tg: TaskGroup) -> None:
        """Bind every address and start the accept tasks in ``tg``."""
        self.tg = tg
        self.listen(initial=True)

    def close(self) -> None:
        """Close every listening socket and forget the task group; for the server's end."""
        for listener in self.listeners:  # normally closed by their tasks already
            listener.sock.close()
        self.listeners = []
        self.restore_scope = None
        self.refusing = False
        self.tg = None

    def listen(self, *, initial: bool = False) -> None:
        """Bind and listen on every address again (on the same port)."""
        tg = self.tg
        assert tg is not None
        sockets: list[socket.socket] = []
        try:
            for index, (family, sockaddr) in enumerate(self.addresses):
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    if hasattr(socket, "SO_REUSEADDR") and not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((sockaddr[0], self.port, *sockaddr[2:]))
                    sock.listen(128)
                    sock.setblocking(False)
                except OSError:
                    sock.close()
                    if initial and index > 0:  # e.g. "localhost" without IPv6: keep what works
                        continue
                    raise
                sockets.append(sock)
                if self.port == 0:
                    self.port = int(sock.getsockname()[1])
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        if initial:
            self.addresses = [
                (sock.family, tuple(sock.getsockname())) for sock in sockets
            ]
        for sock in sockets:
            listener = Listener(sock)
            self.listeners.append(listener)
            tg.start_soon(self._accept_loop, listener)
        self.refusing = False
        self._changed()

    def stop_listening(self) -> None:
        """Close the listening sockets; new connects are refused."""
        for listener in self.listeners:
            listener.closing = True
            # On Linux, shutdown() makes a listening socket refuse new
            # connections at once; elsewhere it may fail, and the accept task
            # closes the socket as soon as it runs.
            with contextlib.suppress(OSError):
                listener.sock.shutdown(socket.SHUT_RDWR)
            listener.scope.cancel()
        self.listeners = []
        self.refusing = True
        self._changed()

    async def _accept_loop(self, listener: Listener) -> None:
        try:
            with listener.scope:
                while not listener.closing:
                    await _wait_readable(listener.sock)
                    try:
                        sock, peer = listener.sock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        if listener.closing:
                            return
                        logger.warning("accept failed: %r", exc)  # e.g. EMFILE: back off
                        await anyio.sleep(0.05)
                        continue
                    self._accept(sock, (str(peer[0]), int(peer[1])))
        finally:
            listener.sock.close()

    # -- REFUSE and RESTORE ------------------------------------------------

    def refuse(self, duration: float | None) -> None:
        """Stop listening, and with ``duration`` listen again after that many seconds."""
        self.cancel_restore_timer()
        if not self.refusing:
            self.stop_listening()
        if duration is not None:
            assert self.tg is not None
            self.restore_scope = scope = anyio.CancelScope()
            self.tg.start_soon(self._restore_later, scope, duration)

    def restore(self) -> None:
        """Cancel a pending restore timer and listen again now if refusing."""
        self.cancel_restore_timer()
        if self.refusing:
            self.listen()

    def cancel_restore_timer(self) -> None:
        """Forget the timer a REFUSE with a duration started, if any."""
        if self.restore_scope is not None:
            self.restore_scope.cancel()
            self.restore_scope = None

    async def _restore_later(self, scope: anyio.CancelScope, duration: float) -> None:
        with scope:
            await anyio.sleep(duration)
            if self.restore_scope is scope:
                self.restore_scope = None
                if self.refusing:
                    try:
                        self.listen()
                    except OSError as exc:
                        logger.error("could not listen again on port %d: %r", self.port, exc)
