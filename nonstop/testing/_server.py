"""A local WebSocket feed server with fault injection (anyio + wsproto).

Theory of operation
-------------------
:class:`FeedServer` plays the part of a streaming feed (market data,
telemetry) for tests of WebSocket *clients*.  It runs under asyncio and trio
(anyio), speaks the server side of RFC 6455 through ``wsproto``, and can
break in every way a real feed or network breaks, on command
(:meth:`FeedServer.inject` with a :class:`~._faults.Fault`).

This module is the server's frame: its parameters, its lifetime and its
commands.  The parts live beside it: :mod:`._listening` (listening sockets,
REFUSE/RESTORE), :mod:`._connection` (one task per connection: upgrade,
reading, streaming, ending), :mod:`._auth` (the optional authentication
checks: signed login, subscription tokens, listen keys), :mod:`._faults`
(what each fault is and the scripts of the frame faults), :mod:`._ledger`
(counters, records, waiting, the streaming pause, which :class:`FeedServer`
inherits), :mod:`._wire` and :mod:`._wire_format` (bytes on the socket).

Tasks.  ``async with server`` binds the listening socket(s) and opens a task
group, which holds the accept tasks and one task per accepted TCP
connection.  Leaving the block cancels that task group: every connection ends
with a FIN, every socket is closed once the tasks using it have finished, and
the body's own exception propagates unchanged.

Commands.  :meth:`FeedServer.inject` is synchronous: it checks its
parameters first, so a bad call changes nothing; flags and listener changes
take effect before it returns (on Linux REFUSE shuts the listening socket
down at once, so the very next connect is refused); faults that write or
close are carried out by the connection tasks right after.
:meth:`FeedServer.broadcast` likewise starts one short task per open
connection.

Bounds.  Nothing grows with what a client does: received messages are capped
at ``max_message_size`` (close 1009), the upgrade request at h11's 16 KiB, the
number of simultaneous connections at ``max_connections`` (extra ones are
closed at once), and the records kept for tests at the most recent
``record_limit`` entries.

Threads.  A :class:`FeedServer` belongs to the event loop that runs it; its
methods raise :class:`RuntimeError` when called from another thread.  For
blocking tests and scripts, :meth:`FeedServer.run_in_thread` runs it on its
own event loop in a daemon thread with thread-safe methods
(:class:`~nonstop.testing.ThreadedFeedServer`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from ._auth import AuthGate, AuthMode, HmacLogin, ListenKeys, TokenSubscriptions
from ._checks import check_int, headers_param, int_param, opt_seconds, seconds
from ._connection import Connection
from ._faults import Fault, Pending, check_names, connection_target, frame_params, reject_spec
from ._ledger import FeedLedger
from ._listening import Listening
from ._thread import ThreadedFeedServer

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["FeedServer"]

logger = logging.getLogger("nonstop.testing")


class FeedServer(FeedLedger):
    """A local WebSocket feed server with fault injection, for testing clients.

    ::

        server = FeedServer(interval=0.01)
        async with server:
            ...connect a client to server.url...
            await server.wait_connected()
            server.inject(Fault.RESET)
            await server.wait_connected(n=2)    # the client came back

    Every upgraded connection receives numbered text messages
    ``{"seq": N, "conn": C, "data": "..."}`` every ``interval`` seconds
    (``N`` global and gap-free, ``C`` the connection number).  The server
    records every connection (:attr:`history`), every message clients send
    (:attr:`received`), answers subscriptions (text whose JSON has
    ``"op": "subscribe"``, or non-JSON text starting with ``subscribe``) with
    ``{"event":"subscribed","request":<the message>}``, echoes messages
    starting with ``echo:`` back unchanged, and answers pings with pongs.

    Parameters:

    * ``host``, ``port``: where to listen; ``port=0`` picks a free port, which
      is then kept for the server's lifetime (REFUSE/RESTORE, restarts).
    * ``ssl_context``: a server-side :class:`ssl.SSLContext` to serve
      ``wss://``.
    * ``url_host``: the host name used in :attr:`url`; default ``host``
      (``"localhost"`` with TLS, so certificate checks pass).
    * ``interval``: seconds between streamed messages per connection; ``0``
      streams as fast as the client reads, ``None`` streams nothing.
    * ``payload_size``: length of each message's ``"data"`` string.
    * ``max_messages``: stop streaming on a connection after this many.
    * ``shared_stream``: one numbered stream for all connections, as an
      exchange's public feed: every ``interval`` the next number goes out
      on every open connection (the same ``seq``; ``conn`` says which
      connection carried it), so a client with several connections gets
      each number on each.  :attr:`sent_log` has one entry per connection
      that carried it; :attr:`sent` is the last number.
    * ``ack``: answer subscriptions.
    * ``require_subscription``: stream only after the first subscription.
    * ``subprotocol``: accept this subprotocol when the client offers it.
    * ``response_headers``: extra headers on the 101 response.
    * ``handshake_timeout``: close connections that have not completed the
      upgrade after this many seconds (``None``: never); stalled ones are
      exempt.
    * ``close_timeout``: how long to wait for the client's side of a close
      (close frame, EOF) before closing TCP regardless.
    * ``max_connections``: connections beyond this many are closed at once.
    * ``max_message_size``: larger client messages are closed with 1009.
    * ``record_limit``: how many entries each record list keeps.
    * ``auth``: an authentication check, as private feeds have them
      (:mod:`nonstop.testing._auth` has the exact wire formats):
      :class:`~nonstop.testing.HmacLogin` (the first message must be a signed
      login; nothing streams before it), :class:`~nonstop.testing.TokenSubscriptions`
      (each subscription carries a one-connection HMAC token) or
      :class:`~nonstop.testing.ListenKeys` (``POST /listenKey`` over plain
      HTTP gives a key, the upgrade must target ``/ws/KEY``, each key works
      once).  Refusals close with 1008 (HTTP 401 for listen keys); every
      decision is recorded in :attr:`auth_log`.  ``None``: no checks.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        url_host: str | None = None,
        interval: float | None = 0.01,
        payload_size: int = 16,
        max_messages: int | None = None,
        shared_stream: bool = False,
        ack: bool = True,
        require_subscription: bool = False,
        subprotocol: str | None = None,
        response_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        handshake_timeout: float | None = 10.0,
        close_timeout: float = 5.0,
        max_connections: int = 128,
        max_message_size: int = 1 << 20,
        record_limit: int = 10_000,
        auth: HmacLogin | TokenSubscriptions | ListenKeys | None = None,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        check_int("port", port, 0, 65535)
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, got {ssl_context!r}")
        #: The host to listen on.
        self.host = host
        #: The server-side TLS context, or None for plain ``ws://``.
        self.ssl_context = ssl_context
        #: The host name used in :attr:`url`.
        self.url_host = url_host or ("localhost" if ssl_context is not None else _loopback_for(host))
        #: Seconds between streamed messages, or None.
        self.interval = opt_seconds("interval", interval)
        self._payload = "x" * check_int("payload_size", payload_size, 0, 1 << 24)
        if max_messages is not None:
            check_int("max_messages", max_messages, 0, 1 << 62)
        #: Streamed messages per connection at most, or None.
        self.max_messages = max_messages
        #: One numbered stream for every connection (see the class doc).
        self.shared_stream = bool(shared_stream)
        #: Whether subscriptions are acknowledged (see also Fault.NO_ACK).
        self.ack = bool(ack)
        #: Whether streaming waits for the first subscription.
        self.require_subscription = bool(require_subscription)
        #: The subprotocol accepted when offered.
        self.subprotocol = subprotocol
        self._accept_headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in headers_param(response_headers)
        ]
        #: Seconds allowed for the upgrade, or None.
        self.handshake_timeout = opt_seconds("handshake_timeout", handshake_timeout)
        #: Seconds allowed for the client's side of a close.
        self.close_timeout = seconds("close_timeout", close_timeout)
        #: Simultaneous connections at most.
        self.max_connections = check_int("max_connections", max_connections, 1, 1 << 20)
        #: Largest client message accepted, in bytes (characters for text).
        self.max_message_size = check_int("max_message_size", max_message_size, 1, 1 << 40)
        self._record_limit = check_int("record_limit", record_limit, 1, 1 << 30)
        self._gate = AuthGate(auth, self._record_limit)
        #: The authentication check, or None.
        self.auth: AuthMode | None = auth

        FeedLedger.__init__(self, self._record_limit)
        self._listening = Listening(host, port, self._start, self._notify)
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._no_ack = False

    # -- running -----------------------------------------------------------

    async def __aenter__(self) -> FeedServer:
        """Bind and start serving; see :meth:`__aexit__` for the end."""
        if self._stack is not None:
            raise RuntimeError("this FeedServer is already running")
        await self._listening.resolve()
        self._thread_id = threading.get_ident()
        self._changed = anyio.Event()
        stack = contextlib.AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        try:
            self._listening.open(self._tg)
        except BaseException:
            await self._shutdown(None, None, None)
            raise
        if self.shared_stream and self.interval is not None:
            self._tg.start_soon(self._shared_streamer, self.interval)
        return self

    async def _shared_streamer(self, interval: float) -> None:
        """The one stream of ``shared_stream``: the next number on every
        connection that streams, in turn, every *interval* seconds (no
        number is used up while no connection streams)."""
        while True:
            if self._paused:
                await self._wait_resumed()
                continue
            targets = [conn for conn in self._conns if conn.streams]
            if targets:
                seq = self._seq + 1
                for conn in targets:
                    await conn.send_shared(seq)
            await anyio.sleep(interval)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop: close the listener and every connection (FIN), cancel every task."""
        return await self._shutdown(exc_type, exc, tb)

    async def _shutdown(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, tg = self._stack, self._tg
        if stack is None or tg is None:
            return None
        tg.cancel_scope.cancel()
        try:
            # The body's own exception is not handed to the task group: it
            # propagates unchanged (no ExceptionGroup wrapping) once we return.
            await stack.aclose()
            return None
        finally:
            self._listening.close()
            for conn in list(self._conns):
                conn.wire.close()
            self._conns.clear()
            self._stack = self._tg = None
            self._thread_id = None
            self._changed = None

    def run_in_thread(self, *, backend: str = "asyncio") -> ThreadedFeedServer:
        """Return a context manager running this server in a daemon thread.

        ``with FeedServer().run_in_thread() as server: ...`` gives a
        :class:`~nonstop.testing.ThreadedFeedServer` with thread-safe,
        blocking versions of this class's methods, for synchronous tests and
        scripts.  ``backend`` is the anyio backend of the thread's loop.
        """
        return ThreadedFeedServer(self, backend=backend)

    # -- accepting ---------------------------------------------------------

    def _start(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        tg = self._tg
        if tg is None or len(self._conns) >= self.max_connections:
            self._dropped += 1
            sock.close()
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            return
        self._accepted += 1
        conn = Connection(self, sock, peer, self._accepted)
        self._conns.add(conn)
        self._history.append(conn.record)
        tg.start_soon(self._run_conn, conn)
        self._notify()

    async def _run_conn(self, conn: Connection) -> None:
        try:
            await conn.run()
        except Exception as exc:  # never let one connection take the server down
            logger.debug("connection %d failed: %r", conn.record.tcp, exc, exc_info=True)

    # -- faults ------------------------------------------------------------

    def inject(self, fault: Fault, **params: object) -> int:
        """Cause ``fault`` now; return how many open connections it acted on.

        See :class:`Fault` for what each fault does and its parameters.
        Connection faults act on the connections open right now (``0`` if
        none), or only on ``connection=N``; handshake faults queue up for the
        next upgrade requests and return 0, as do server-wide faults.  Raises
        :class:`TypeError`/:class:`ValueError` for bad parameters and
        :class:`RuntimeError` for REFUSE while the server is not running (the
        other faults may be injected before it starts).  Flags and the
        listener change before this returns; writes and closes follow as soon
        as the connection tasks run.
        """
        self._check_thread()
        check_names(fault, params)

        if fault is Fault.REFUSE:
            duration = opt_seconds("duration", params.get("duration"))
            self._require_running(fault)
            self._listening.refuse(duration)
            return 0
        if fault is Fault.RESTORE:
            self._no_ack = False
            self._pending.clear()
            if self._tg is not None:
                self._listening.restore()
            self._notify()
            return 0
        if fault is Fault.NO_ACK:
            self._no_ack = True
            return 0
        if fault is Fault.REJECT:
            count = int_param(params, "count", 1, 1, 1 << 30)
            self._pending.append(Pending(reject_spec(params), count))
            return 0
        if fault is Fault.STALL_HANDSHAKE:
            self._pending.append(Pending(None, int_param(params, "count", 1, 1, 1 << 30)))
            return 0

        target = connection_target(params)
        checked = frame_params(fault, params)
        acted = 0
        for conn in list(self._conns):
            if target is not None and conn.number != target:
                continue
            if conn.apply(fault, checked):
                acted += 1
        return acted

    def restore(self) -> None:
        """Same as ``inject(Fault.RESTORE)``."""
        self.inject(Fault.RESTORE)

    def _require_running(self, fault: Fault) -> None:
        if self._tg is None:
            raise RuntimeError(f"{fault.name} needs a running server (inside `async with server`)")

    def broadcast(self, message: str | bytes) -> int:
        """Send ``message`` (unnumbered) on every open connection; return how many.

        Silent, muted, closing and ending connections are skipped, and so are
        connections that have not logged in yet (``auth=HmacLogin(...)``).
        The sends happen as soon as the connection tasks run.
        """
        self._check_thread()
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"message must be str or bytes, got {message!r}")
        count = 0
        for conn in list(self._conns):
            tg = conn.tg
            if conn.phase == "open" and conn.end is None and not conn.silent and not conn.muted \
                    and not conn.closing and conn.logged_in.is_set() and tg is not None:
                tg.start_soon(conn._guard, functools.partial(conn.send_message, message), False)
                count += 1
        return count

    # -- observing ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port; fixed once the server has started."""
        if self._listening.port == 0:
            raise RuntimeError("the port is not known before the server has started")
        return self._listening.port

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/`` (``wss://`` with TLS), HOST being :attr:`url_host`."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        host = f"[{self.url_host}]" if ":" in self.url_host else self.url_host
        return f"{scheme}://{host}:{self.port}/"

    @property
    def http_url(self) -> str:
        """``http://HOST:PORT/`` (``https://`` with TLS): :attr:`url` for plain
        HTTP, the base of ``POST /listenKey`` (:class:`ListenKeys`)."""
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.url_host}]" if ":" in self.url_host else self.url_host
        return f"{scheme}://{host}:{self.port}/"

    @property
    def listen_keys_issued(self) -> int:
        """Number of listen keys issued by ``POST /listenKey`` so far (:class:`ListenKeys`)."""
        return self._gate.listen_keys_issued

    @property
    def running(self) -> bool:
        """Whether the server is inside its ``async with`` block."""
        return self._tg is not None

    @property
    def listening(self) -> bool:
        """Whether the server accepts new connections (False while refusing)."""
        return self._tg is not None and not self._listening.refusing

    def __repr__(self) -> str:
        where = self.url if self._listening.port else f"{self.host}:0"
        state = "listening" if self.listening else ("refusing" if self.running else "stopped")
        return f"<FeedServer {where} {state} connections={self._upgrades} sent={self._seq}>"


def _loopback_for(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host
