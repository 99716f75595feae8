"""One connection of the feed server: its tasks, its reading loop, its end.

Theory of operation
-------------------
Each accepted TCP connection is one :class:`Connection`, whose
:meth:`~Connection.run` is the connection task.  It runs a small task group
of its own:

* the *reader*: TLS handshake (if any), the HTTP upgrade, then every frame the
  client sends (text/binary messages, pings, close);
* the *streamer*, started once the upgrade is answered: a numbered message
  every ``interval`` seconds (on an :class:`~._auth.HmacLogin` server, once
  the client has logged in);
* the *handshake watchdog*: closes connections that do not finish the upgrade
  within ``handshake_timeout``;
* short-lived *fault tasks* for faults that write frames (GARBAGE, HALF_FRAME,
  CLOSE_CODE; their scripts are in :mod:`._faults`) and for broadcasts.

Every write goes through one lock (see :mod:`._wire`), so frames never
interleave, and the decision whether to write (silent? closing? WebSocket
state still OPEN?) is taken under that lock at the moment of writing.  Each
task body is wrapped (:meth:`Connection._guard`) so that any exception caused
by the client (a reset, junk bytes, a bad handshake) only ends that
connection and is recorded in :attr:`ConnectionInfo.ended_by`; the server
never sees it.

Ending.  A connection ends by cancelling its task group (its *scope*) with an
*end* mode: ``CLOSE`` or ``RESET`` (:meth:`Connection.finish`).  Afterwards,
outside the task group, the connection task either sends a FIN
(``shutdown(SHUT_WR)``), reads and discards until the client's EOF for at
most ``close_timeout`` seconds (so the kernel does not turn the close into an
RST because of unread bytes), and closes; or, for ``RESET``, sets
``SO_LINGER`` to 0 and closes at once, which makes the kernel send an RST.
The socket is always closed in a ``finally`` after every task that used it
has finished, so nothing leaks and no event loop keeps watching a closed
descriptor.

Authentication (the server's ``auth``, :mod:`._auth`).  The checks are the
server's :class:`~._auth.AuthGate`'s; this module only routes messages to
them and writes the answers.  :class:`~._auth.HmacLogin`: the first message
of an upgraded connection goes to the gate, and until it passes nothing
streams and every other message closes the connection (1008).
:class:`~._auth.TokenSubscriptions`: each subscription's token goes to the
gate before the subscription is recorded and acknowledged.
:class:`~._auth.ListenKeys`: before wsproto sees anything, the reader peeks
at the request head with its own ``h11`` parser (:meth:`Connection._route`);
a request for ``/listenKey`` is answered there as plain HTTP, anything else
is handed to wsproto unchanged (same bytes, same errors as on any server),
and the upgrade itself must target ``/ws/KEY`` with a key the gate issued.

Numbering.  A streamed message's global sequence number is taken from the
server and committed back (:meth:`ConnectionOwner._commit`) in the same
synchronous step in which the first byte of its frame is handed to the kernel
(:meth:`._wire.Wire.send_committed`), so the sequence has no gaps.

A connection reads its settings from the server at the moment it needs them
and reports everything it records back to it; :class:`ConnectionOwner` lists
what it uses, so this module does not depend on the server's class.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Protocol

import anyio
import h11
from anyio.abc import TaskGroup
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from ._auth import AuthGate, AuthMode, ListenKeys, TokenSubscriptions, login_ack, token_error
from ._faults import Fault, Pending, play_frame_fault
from ._records import Record
from ._wire import Wire
from ._wire_format import ack_message, feed_message, http_response, is_subscription

__all__ = ["Connection", "ConnectionOwner"]

logger = logging.getLogger("nonstop.testing")

_OPEN = ConnectionState.OPEN
#: The largest body accepted on ``POST /listenKey``.
_MAX_HTTP_BODY: Final = 1 << 16


class ConnectionOwner(Protocol):
    """What a :class:`Connection` uses of its server (a :class:`~nonstop.testing.FeedServer`)."""

    ssl_context: ssl.SSLContext | None
    handshake_timeout: float | None
    close_timeout: float
    subprotocol: str | None
    max_message_size: int
    ack: bool
    require_subscription: bool
    interval: float | None
    max_messages: int | None
    shared_stream: bool
    auth: AuthMode | None
    _gate: AuthGate
    _accept_headers: list[tuple[bytes, bytes]]
    _payload: str
    _no_ack: bool
    _paused: bool
    _seq: int
    _rejected: int
    _stalled: int

    def _notify(self) -> None: ...
    def _forget(self, conn: Connection) -> None: ...
    def _take_pending(self) -> Pending | None: ...
    def _register_upgrade(self, conn: Connection) -> None: ...
    def _record_received(self, conn: Connection, message: str | bytes) -> None: ...
    def _record_subscription(self, conn: Connection, message: str) -> None: ...
    def _commit(self, conn: Connection, seq: int) -> None: ...
    def _commit_shared(self, conn: Connection, seq: int) -> None: ...
    def _record_auth(self, conn: Connection, outcome: str) -> None: ...
    async def _wait_resumed(self) -> None: ...


class Connection:
    """One accepted TCP connection and its tasks; see the module docstring."""

    def __init__(
        self, server: ConnectionOwner, sock: socket.socket, peer: tuple[str, int], tcp: int
    ) -> None:
        self.server = server
        self.wire = Wire(sock, server.ssl_context)
        self.ws = WSConnection(ConnectionType.SERVER)
        self.record = Record(tcp=tcp, peer=peer, tls=self.wire.tls)
        if self.wire.tls:
            self.record.phase = "tls"
        self.silent = False
        self.muted = False  # MUTE: no data messages, control frames as usual
        self.closing = False  # a frame fault is under way: no more spontaneous frames
        self.end: Fault | None = None  # Fault.CLOSE or Fault.RESET once ending
        self.scope = anyio.CancelScope()
        self.watchdog = anyio.CancelScope()
        self.drain_scope: anyio.CancelScope | None = None
        self.tg: TaskGroup | None = None
        self.subscribed = anyio.Event()
        #: Set once the client may receive data: at once, or after its login
        #: on an HmacLogin server.
        self.logged_in = anyio.Event()
        if not server._gate.needs_login:
            self.logged_in.set()
        self._text: list[str] = []
        self._binary: list[bytes] = []
        self._size = 0

    @property
    def number(self) -> int | None:
        return self.record.number

    @property
    def phase(self) -> str:
        return self.record.phase

    @property
    def close_timeout(self) -> float:
        return self.server.close_timeout

    # -- lifecycle ---------------------------------------------------------

    async def run(self) -> None:
        server = self.server
        try:
            with self.scope:
                async with anyio.create_task_group() as tg:
                    self.tg = tg
                    tg.start_soon(self._guard, self._reader, True)
                    if server.handshake_timeout is not None:
                        tg.start_soon(self._guard, self._watchdog, False)
            self._mark_closed()
            if self.end is not Fault.RESET:
                self.wire.shutdown_write()
                self.drain_scope = anyio.CancelScope(deadline=anyio.current_time() + server.close_timeout)
                with self.drain_scope:
                    await self.wire.drain()
        finally:
            self.tg = None
            self._mark_closed()
            self.wire.close(reset=self.end is Fault.RESET)
            server._forget(self)

    def _mark_closed(self) -> None:
        if self.record.phase != "closed":
            self.record.phase = "closed"
            if self.record.ended_by is None:
                self.record.ended_by = "server stopped"
            self.server._notify()

    def finish(self, end: Fault, why: str) -> None:
        """End the connection (``end`` is CLOSE or RESET); safe to call repeatedly."""
        if self.record.ended_by is None:
            self.record.ended_by = why
        if self.end is None or end is Fault.RESET:
            self.end = end
        self.scope.cancel()
        if end is Fault.RESET and self.drain_scope is not None:
            self.drain_scope.cancel()

    async def _guard(self, body: Callable[[], Awaitable[object]], ends: bool) -> None:
        try:
            await body()
        except Exception as exc:
            logger.debug("connection %d: %r", self.record.tcp, exc, exc_info=True)
            self.finish(Fault.CLOSE, f"error: {exc!r}")
        else:
            if ends:
                self.finish(Fault.CLOSE, "server closed the connection")

    async def _watchdog(self) -> None:
        timeout = self.server.handshake_timeout
        assert timeout is not None
        with self.watchdog:
            await anyio.sleep(timeout)
            if self.record.phase in ("tls", "handshake"):
                self.finish(Fault.CLOSE, "handshake timeout")

    # -- faults (called synchronously by FeedServer.inject) ----------------

    def apply(self, fault: Fault, params: Mapping[str, object]) -> bool:
        if self.end is not None and fault is not Fault.RESET:
            return False
        if fault is Fault.CLOSE or fault is Fault.RESET:
            if self.end is fault:
                return False
            self.finish(fault, f"fault {fault.name}")
            return True
        if fault is Fault.SILENT:
            if self.silent or self.record.phase not in ("tls", "handshake", "open"):
                return False
            self.silent = True
            return True
        if fault is Fault.MUTE:
            if self.muted or self.record.phase not in ("tls", "handshake", "open"):
                return False
            self.muted = True
            return True
        # frame faults
        if self.record.phase != "open" or self.closing or self.tg is None or self.ws.state is not _OPEN:
            return False
        self.closing = True
        self.tg.start_soon(self._guard, lambda: play_frame_fault(self, fault, params), False)
        return True

    # -- reading -----------------------------------------------------------

    async def _reader(self) -> None:
        if self.wire.tls:
            await self.wire.handshake()
            if self.record.phase == "tls":
                self.record.phase = "handshake"
        if isinstance(self.server.auth, ListenKeys):
            head = await self._route()
            if head is None:
                if self.record.phase != "stalled":
                    return  # answered, or the client left
            elif not await self._feed(head):
                return
        while True:
            data = await self.wire.recv()
            if not data:
                self.finish(Fault.CLOSE, "client closed the connection")
                return
            if self.record.phase == "stalled":
                continue
            if not await self._feed(data):
                return

    async def _feed(self, data: bytes) -> bool:
        """Hand received bytes to wsproto and handle its events; False ends the connection."""
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                if not await self._on_event(event):
                    return False
        except RemoteProtocolError as exc:
            await self._bad_request(exc)
            return False
        return True

    # -- plain HTTP (ListenKeys) -------------------------------------------

    async def _route(self) -> bytes | None:
        """Read the request head with a private h11 parser: answer ``/listenKey``
        here (None: done, or stalled if silent), or return every byte read so
        far, for wsproto."""
        peek = h11.Connection(h11.SERVER)
        head = bytearray()
        while True:
            data = await self.wire.recv()
            if not data:
                self.finish(Fault.CLOSE, "client closed the connection")
                return None
            head += data
            peek.receive_data(data)
            try:
                event = peek.next_event()
            except h11.RemoteProtocolError:
                return bytes(head)  # wsproto rejects it as on any server
            if event is h11.NEED_DATA:
                continue
            if isinstance(event, h11.Request):
                target = event.target.decode("ascii", "replace")
                path, _, query = target.partition("?")
                if path == ListenKeys.ISSUE_PATH:
                    self.record.path, self.record.query = path, query
                    self.record.headers = tuple(
                        (bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1"))
                        for k, v in event.headers
                    )
                    self.server._notify()
                    await self._issue_listen_key(peek, event)
                    return None
            return bytes(head)

    async def _issue_listen_key(self, peek: h11.Connection, request: h11.Request) -> None:
        """Answer a request for ``/listenKey``: 200 and a key for POST, 405 otherwise."""
        method = request.method.decode("ascii", "replace")
        if method != "POST":
            if not await self._http_answer(405, [("Allow", "POST")], b"use POST /listenKey\n"):
                return
            self.record.rejected = 405
            self.record.phase = "rejected"
            self.finish(Fault.CLOSE, f"answered {method} /listenKey with 405")
            return
        if peek.they_are_waiting_for_100_continue:
            await self.wire.send(lambda: None if self.silent else b"HTTP/1.1 100 Continue\r\n\r\n")
        size = 0
        while True:  # read the body (any), so that closing does not reset the connection
            try:
                event = peek.next_event()
            except h11.RemoteProtocolError as exc:
                if await self._http_answer(400, [], f"{exc}\n".encode()):
                    self.finish(Fault.CLOSE, f"bad request: {exc}")
                return
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > _MAX_HTTP_BODY:
                    if await self._http_answer(413, [], b"body too large\n"):
                        self.finish(Fault.CLOSE, "listen key request body too large")
                    return
            elif event is h11.NEED_DATA:
                data = await self.wire.recv()
                if not data:
                    self.finish(Fault.CLOSE, "client closed the connection")
                    return
                peek.receive_data(data)
            else:  # PAUSED: the message is over
                break
        if self.silent:
            self._stall()
            return
        key = self.server._gate.issue_listen_key()
        self.server._notify()
        body = json.dumps({"listenKey": key}, separators=(",", ":")).encode()
        if await self._http_answer(200, [], body, "application/json"):
            self.finish(Fault.CLOSE, "answered POST /listenKey with 200")

    async def _http_answer(
        self, status: int, headers: list[tuple[str, str]], body: bytes,
        content_type: str = "text/plain; charset=utf-8",
    ) -> bool:
        """Write one complete HTTP response (Connection: close); if silent,
        stall instead and return False."""
        self.watchdog.cancel()
        if await self.wire.send(
            lambda: None if self.silent else http_response(status, headers, body, content_type)
        ):
            return True
        self._stall()
        return False

    async def _on_event(self, event: Event) -> bool:
        """Handle one event; False ends the connection."""
        if isinstance(event, Request):
            return await self._on_request(event)
        if isinstance(event, (TextMessage, BytesMessage)):
            return await self._on_data(event)
        if isinstance(event, Ping):
            pong = event.response()
            await self.wire.send(lambda: self._control(pong))
        elif isinstance(event, CloseConnection):
            return await self._on_close(event)
        return True  # Pong: nothing to do

    async def send_message(self, message: str | bytes) -> None:
        """Send one unnumbered message, unless silent or closing."""
        await self.wire.send(lambda: self._data(message))

    def _control(self, event: Event) -> bytes | None:
        if self.silent or self.ws.state is not _OPEN:
            return None
        return self.ws.send(event)

    def _data(self, message: str | bytes) -> bytes | None:
        if self.silent or self.muted or self.closing or self.ws.state is not _OPEN:
            return None
        if isinstance(message, str):
            return self.ws.send(TextMessage(data=message))
        return self.ws.send(BytesMessage(data=message))

    async def _on_request(self, event: Request) -> bool:
        server = self.server
        record = self.record
        path, _, query = event.target.partition("?")
        record.path, record.query = path, query
        headers = [("host", event.host)]
        # wsproto parses these three out of the header list; put them back.
        if event.subprotocols:
            headers.append(("sec-websocket-protocol", ", ".join(event.subprotocols)))
        if event.extensions:
            names = [ext if isinstance(ext, str) else ext.name for ext in event.extensions]
            headers.append(("sec-websocket-extensions", ", ".join(names)))
        headers += [
            (bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1")) for k, v in event.extra_headers
        ]
        record.headers = tuple(headers)
        record.subprotocols = tuple(event.subprotocols)
        server._notify()

        pending = server._take_pending()
        if pending is not None and pending.reject is None:
            self._stall()
            return True
        if pending is not None and pending.reject is not None:
            reject = pending.reject
            return await self._reject(reject.status, reject.headers, reject.body)

        keyed = isinstance(server.auth, ListenKeys)
        if keyed and not server._gate.use_listen_key(path):
            refused = ListenKeys.REFUSED
            return await self._reject(401, (), f"{refused}\n".encode(), f"rejected: {refused}")

        subprotocol = server.subprotocol if server.subprotocol in event.subprotocols else None

        def accept() -> bytes | None:
            if self.silent:
                return None
            response = AcceptConnection(subprotocol=subprotocol, extra_headers=server._accept_headers)
            data = self.ws.send(response)
            record.subprotocol = subprotocol
            record.phase = "open"
            server._register_upgrade(self)
            return data

        if not await self.wire.send(accept):
            self._stall()
            return True
        self.watchdog.cancel()
        if keyed:
            server._record_auth(self, "accepted")
        if self.tg is not None and not server.shared_stream:
            self.tg.start_soon(self._guard, self._streamer, False)
        return True

    async def _reject(
        self, status: int, headers: Iterable[tuple[str, str]], body: bytes, outcome: str | None = None
    ) -> bool:
        """Answer the upgrade request with an HTTP error (``outcome``: for the
        auth log); if silent, stall instead.  False ends the connection."""
        server = self.server
        record = self.record
        if not await self.wire.send(lambda: None if self.silent else http_response(status, headers, body)):
            self._stall()
            return True
        record.rejected = status
        record.phase = "rejected"
        self.watchdog.cancel()
        server._rejected += 1
        if outcome is not None:
            server._record_auth(self, outcome)  # notifies
        else:
            server._notify()
        record.ended_by = f"rejected with {status}"
        return False

    def _stall(self) -> None:
        self.record.phase = "stalled"
        self.watchdog.cancel()
        self.server._stalled += 1
        self.server._notify()

    async def _bad_request(self, exc: RemoteProtocolError) -> None:
        hint = exc.event_hint
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        headers: list[tuple[str, str]] = []
        if isinstance(hint, RejectConnection):
            headers = [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in hint.headers]
        body = f"{exc}\n".encode("utf-8", "replace")
        if self.record.phase == "handshake":
            await self.wire.send(lambda: None if self.silent else http_response(status, headers, body))
            self.record.rejected = status
            self.record.phase = "rejected"
        self.finish(Fault.CLOSE, f"bad request: {exc}")

    async def _on_data(self, event: TextMessage | BytesMessage) -> bool:
        server = self.server
        self._size += len(event.data)
        if self._size > server.max_message_size:
            close = CloseConnection(code=1009, reason="message too big")
            await self.wire.send(lambda: self._control(close))
            self.finish(Fault.CLOSE, "client message too big")
            return False
        if isinstance(event, TextMessage):
            self._text.append(event.data)
        else:
            self._binary.append(bytes(event.data))
        if not event.message_finished:
            return True
        message: str | bytes
        if isinstance(event, TextMessage):
            message, self._text = "".join(self._text), []
        else:
            message, self._binary = b"".join(self._binary), []
        self._size = 0
        return await self._on_message(message)

    async def _on_message(self, message: str | bytes) -> bool:
        """Handle one whole client message; False ends the connection."""
        server = self.server
        server._record_received(self, message)
        if not self.logged_in.is_set():
            return await self._on_login(message)
        if isinstance(message, bytes):
            if message.startswith(b"echo:"):
                await self.wire.send(lambda: self._data(message))
            return True
        if message.startswith("echo:"):
            await self.wire.send(lambda: self._data(message))
            return True
        if not is_subscription(message):
            return True
        if isinstance(server.auth, TokenSubscriptions):
            reason = server._gate.check_token(message, self.record.tcp, time.time())
            if reason is not None:
                server._record_auth(self, f"rejected: {reason}")
                error = token_error(message, reason)
                await self.wire.send(lambda: self._data(error))
                await self._refuse(reason)
                return False
            server._record_auth(self, "accepted")
        server._record_subscription(self, message)
        if server.ack:
            ack = ack_message(message)
            await self.wire.send(lambda: None if server._no_ack else self._data(ack))
        self.subscribed.set()
        return True

    async def _on_login(self, message: str | bytes) -> bool:
        """The first message on an HmacLogin server: accept it or close with 1008."""
        server = self.server
        reason = server._gate.check_login(message, time.time())
        if reason is not None:
            server._record_auth(self, f"rejected: {reason}")
            await self._refuse(reason)
            return False
        server._record_auth(self, "accepted")
        ack = login_ack()
        await self.wire.send(lambda: self._data(ack))
        self.logged_in.set()  # after the answer: it comes before the first streamed message
        server._notify()
        return True

    async def _refuse(self, reason: str) -> None:
        """Close with 1008 (policy violation) and ``reason`` (RFC 6455 7.4.1)."""
        close = CloseConnection(code=1008, reason=reason)
        await self.wire.send(lambda: self._control(close))
        self.finish(Fault.CLOSE, f"auth refused: {reason}")

    async def _on_close(self, event: CloseConnection) -> bool:
        state = self.ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            self.record.close_code = int(event.code)
            if self.silent:
                return True  # a zombie does not answer; the client will hang up
            reply = event.response()
            await self.wire.send(
                lambda: self.ws.send(reply) if self.ws.state is ConnectionState.REMOTE_CLOSING else None
            )
            self.finish(Fault.CLOSE, f"client closed with {event.code}")
            return False
        if state is ConnectionState.CLOSED:
            self.record.close_code = int(event.code)
            self.finish(Fault.CLOSE, f"closing handshake completed (client replied {event.code})")
            return False
        # wsproto reports a frame it could not parse as a CloseConnection while
        # the state stays OPEN: answer with that close code and hang up.
        close = CloseConnection(code=event.code, reason=event.reason)
        await self.wire.send(lambda: self._control(close))
        self.finish(Fault.CLOSE, f"protocol error from the client: {event.code} {event.reason}")
        return False

    # -- streaming ---------------------------------------------------------

    async def _streamer(self) -> None:
        server = self.server
        await self.logged_in.wait()
        if server.require_subscription:
            await self.subscribed.wait()
        interval = server.interval
        if interval is None:
            return
        count = 0
        while server.max_messages is None or count < server.max_messages:
            if server._paused:
                await server._wait_resumed()
                continue
            if not await self.wire.send_committed(self._next_message):
                if server._paused:
                    continue  # paused while waiting to write: nothing was sent
                return
            count += 1
            await anyio.sleep(interval)

    @property
    def streams(self) -> bool:
        """Numbered messages may go out on this connection now."""
        return (self.record.phase == "open" and self.end is None and not self.silent
                and not self.muted and not self.closing and self.ws.state is _OPEN
                and self.logged_in.is_set()
                and (not self.server.require_subscription or self.subscribed.is_set()))

    async def send_shared(self, seq: int) -> None:
        """Send number *seq* of the server's one stream (``shared_stream``),
        committed as it goes out; a failure ends the connection."""
        def build() -> tuple[bytes, Callable[[], None]] | None:
            if not self.streams or self.server._paused:
                return None
            text = feed_message(seq, self.record.number, self.server._payload)
            return self.ws.send(TextMessage(data=text)), lambda: self.server._commit_shared(self, seq)

        await self._guard(lambda: self.wire.send_committed(build), False)

    def _next_message(self) -> tuple[bytes, Callable[[], None]] | None:
        # Decided at the moment of writing: once pause_streaming() has
        # returned, no further numbered message is committed.
        if self.silent or self.muted or self.closing or self.ws.state is not _OPEN or self.server._paused:
            return None
        server = self.server
        seq = server._seq + 1
        text = feed_message(seq, self.record.number, server._payload)
        return self.ws.send(TextMessage(data=text)), lambda: server._commit(self, seq)
