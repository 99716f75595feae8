"""A local WebSocket feed server with fault injection (anyio + wsproto).

Theory of operation
-------------------
:class:`FeedServer` plays the part of a streaming feed (market data,
telemetry) for tests of WebSocket *clients*.  It runs under asyncio and trio
(anyio), speaks the server side of RFC 6455 through ``wsproto``, and can
break in every way a real feed or network breaks, on command
(:meth:`FeedServer.inject` with a :class:`Fault`).

Tasks.  ``async with server`` binds the listening socket(s) and opens a task
group.  One *accept task* per listening socket accepts connections; each
accepted TCP connection gets one *connection task*, which runs a small task
group of its own:

* the *reader*: TLS handshake (if any), the HTTP upgrade, then every frame the
  client sends (text/binary messages, pings, close);
* the *streamer*, started once the upgrade is answered: a numbered message
  every ``interval`` seconds;
* the *handshake watchdog*: closes connections that do not finish the upgrade
  within ``handshake_timeout``;
* short-lived *fault tasks* for faults that write frames (GARBAGE, HALF_FRAME,
  CLOSE_CODE).

Every write on a connection goes through one lock (see :mod:`._wire`), so
frames never interleave, and the decision whether to write (silent? closing?
WebSocket state still OPEN?) is taken under that lock at the moment of
writing.  Each task body is wrapped so that any exception caused by the
client (a reset, junk bytes, a bad handshake) only ends that connection and is
recorded in :attr:`ConnectionInfo.ended_by`; the server task never sees it.

Ending a connection.  A connection ends by cancelling its task group (its
*scope*) with an *end* mode: ``CLOSE`` or ``RESET``.  Afterwards, outside the
task group, the connection task either sends a FIN (``shutdown(SHUT_WR)``),
reads and discards until the client's EOF for at most ``close_timeout``
seconds (so the kernel does not turn the close into an RST because of unread
bytes), and closes; or, for ``RESET``, sets ``SO_LINGER`` to 0 and closes at
once, which makes the kernel send an RST.  Sockets are always closed in a
``finally`` after every task that used them has finished, so nothing leaks
and no event loop keeps watching a closed descriptor.

Numbering.  Streamed messages are ``{"seq": N, "conn": C, "data": "..."}``.
``N`` is global across all connections and is assigned in the same
synchronous step in which the first byte of the frame is handed to the kernel
(:meth:`._wire.Wire.send_committed`): the sequence is gap-free, and the
server's :attr:`FeedServer.sent_log` says exactly which numbers went to which
connection.  ``C`` is the connection number: upgrades are numbered 1, 2, ...
in the order the server accepted them.

Faults act at three levels: on the listening socket (REFUSE/RESTORE), on the
next upgrade requests (REJECT, STALL_HANDSHAKE: a FIFO of pending decisions),
and on the connections open at the time of the call (CLOSE, RESET, SILENT,
GARBAGE, HALF_FRAME, CLOSE_CODE).  NO_ACK is a server-wide flag.
:meth:`FeedServer.inject` is synchronous: flags and listener changes take
effect before it returns (on Linux REFUSE shuts the listening socket down at
once, so the very next connect is refused); faults that write or close are
carried out by the connection tasks right after.

Pausing.  :meth:`FeedServer.pause_streaming` holds every streamer before its
next numbered message (decided at the moment of writing, so it is exact)
until :meth:`FeedServer.resume_streaming`.  A test can then wait until its
client has everything that was sent before it breaks a connection: frames in
flight on a TCP connection that breaks are lost in the network (an RST even
makes the receiving kernel discard what it has not handed over yet), which a
test of in-process loss must tell apart from its client losing messages.

Bounds.  Nothing grows with what a client does: received messages are capped
at ``max_message_size`` (close 1009), the upgrade request at h11's 16 KiB, the
number of simultaneous connections at ``max_connections`` (extra ones are
closed at once), and the records kept for tests (:attr:`FeedServer.received`,
:attr:`FeedServer.history`, :attr:`FeedServer.sent_log`, ...) at the most
recent ``record_limit`` entries; the counters stay exact.

Threads.  A :class:`FeedServer` belongs to the event loop that runs it; its
methods raise :class:`RuntimeError` when called from another thread.  For
blocking tests and scripts, :meth:`FeedServer.run_in_thread` runs it on its
own event loop in a daemon thread with thread-safe methods
(:class:`~nonstop.testing.ThreadedFeedServer`).

Portability: raw sockets with anyio readiness waits need a selector-based
event loop (Linux and macOS; not asyncio's Proactor loop on Windows).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import http
import json
import logging
import math
import socket
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
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
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from ._wire import Wire, _wait_readable

if TYPE_CHECKING:
    from types import TracebackType

    from ._thread import ThreadedFeedServer

__all__ = ["ConnectionInfo", "Fault", "FeedServer"]

logger = logging.getLogger("nonstop.testing")

#: The default bytes of the GARBAGE fault: FIN + all three RSV bits + the
#: reserved opcode 0xF, a frame header no client may accept (RFC 6455 5.2).
DEFAULT_GARBAGE: Final = b"\xff\x00garbage"

_OPEN = ConnectionState.OPEN
_LOCAL_ONLY_CODES: Final = frozenset({1005, 1006, 1015})
_JSON_SEPARATORS: Final = (",", ":")


class Fault(enum.Enum):
    """The faults :meth:`FeedServer.inject` can cause.

    Connection faults act on every connection open at the time of the call
    (or only on connection number ``connection=N``):

    * ``CLOSE``: close TCP with a FIN, without a WebSocket close frame (and,
      over TLS, without ``close_notify``).  Also hits connections still in
      the handshake.
    * ``RESET``: abort with an RST (``SO_LINGER`` 0); the client's next read
      fails with ``ConnectionResetError``.  Also hits connections still in the
      handshake.
    * ``SILENT``: from now on send nothing at all on the connection: no data,
      no pongs, no close frame, no handshake answer (a TLS handshake already
      under way still completes); TCP stays open and the server keeps
      reading, until the client hangs up.  A zombie.  Explicit frame faults
      (GARBAGE, HALF_FRAME, CLOSE_CODE) still write.
    * ``GARBAGE`` (``data=`` bytes, default :data:`DEFAULT_GARBAGE`): write
      bytes that are not a valid frame, stop streaming, and close TCP when the
      client closes or after ``close_timeout``.
    * ``HALF_FRAME``: write the first half of a valid text frame, then close
      TCP (FIN).
    * ``CLOSE_CODE`` (``code=`` int, default 1000, or ``None`` for an empty
      close frame; ``reason=`` str): start the closing handshake
      (RFC 6455 7.1.2), wait for the client's close frame (at most
      ``close_timeout``), then close TCP.

    Handshake faults act on the next upgrade requests, in the order injected:

    * ``REJECT`` (``status=`` 300-599, default 503; ``retry_after=`` seconds or
      an HTTP date string; ``headers=`` extra headers; ``body=``; ``count=``
      default 1): answer the upgrade with that HTTP status, then close.
    * ``STALL_HANDSHAKE`` (``count=`` default 1): never answer the upgrade;
      hold the socket open (reading and discarding) until the client closes.

    Server-wide faults:

    * ``REFUSE`` (``duration=`` seconds, optional): close the listening
      socket(s), so new connects get ``ConnectionRefusedError``; open
      connections are not touched.  With ``duration`` it listens again by
      itself after that many seconds.
    * ``NO_ACK``: stop acknowledging subscriptions, on current and future
      connections.
    * ``RESTORE``: listen again (on the same port), acknowledge again, and
      drop pending REJECT and STALL_HANDSHAKE counts.  Connections already
      made silent stay silent.
    """

    CLOSE = "close"
    RESET = "reset"
    SILENT = "silent"
    GARBAGE = "garbage"
    HALF_FRAME = "half_frame"
    CLOSE_CODE = "close_code"
    REJECT = "reject"
    STALL_HANDSHAKE = "stall_handshake"
    REFUSE = "refuse"
    NO_ACK = "no_ack"
    RESTORE = "restore"


_PARAMS: Final[Mapping[Fault, frozenset[str]]] = {
    Fault.CLOSE: frozenset({"connection"}),
    Fault.RESET: frozenset({"connection"}),
    Fault.SILENT: frozenset({"connection"}),
    Fault.GARBAGE: frozenset({"connection", "data"}),
    Fault.HALF_FRAME: frozenset({"connection"}),
    Fault.CLOSE_CODE: frozenset({"connection", "code", "reason"}),
    Fault.REJECT: frozenset({"status", "retry_after", "headers", "body", "count"}),
    Fault.STALL_HANDSHAKE: frozenset({"count"}),
    Fault.REFUSE: frozenset({"duration"}),
    Fault.NO_ACK: frozenset(),
    Fault.RESTORE: frozenset(),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionInfo:
    """A snapshot of what the server knows about one accepted TCP connection.

    ``phase`` is one of ``"tls"`` (TLS handshake), ``"handshake"`` (waiting for
    or answering the upgrade request), ``"open"``, ``"stalled"``,
    ``"rejected"`` or ``"closed"``.
    """

    #: Accept order of the TCP connection, from 1.
    tcp: int
    #: The connection number (upgrade order, from 1), or None if never upgraded.
    number: int | None
    #: The client's address.
    peer: tuple[str, int]
    #: Whether the connection used TLS.
    tls: bool
    #: See the class docstring.
    phase: str
    #: The request path (without the query), once the upgrade request arrived.
    path: str | None
    #: The query string, without the ``?``.
    query: str
    #: The request headers, names lower-cased: ``host``, ``sec-websocket-protocol``
    #: and ``sec-websocket-extensions`` first (wsproto parses them out), then
    #: the others in the order received.
    headers: tuple[tuple[str, str], ...]
    #: The subprotocols the client offered.
    subprotocols: tuple[str, ...]
    #: The subprotocol the server accepted, if any.
    subprotocol: str | None
    #: The HTTP status the upgrade was rejected with, if it was.
    rejected: int | None
    #: Streamed (numbered) messages sent on this connection.
    sent: int
    #: Messages received from the client.
    received: int
    #: The close code the client sent, if it sent a close frame.
    close_code: int | None
    #: Why the connection ended (``None`` while it is open).
    ended_by: str | None

    def header(self, name: str) -> str | None:
        """The first request header called ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class _Record:
    """The mutable state behind :class:`ConnectionInfo`."""

    tcp: int
    peer: tuple[str, int]
    tls: bool
    number: int | None = None
    phase: str = "handshake"
    path: str | None = None
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()
    subprotocol: str | None = None
    rejected: int | None = None
    sent: int = 0
    received: int = 0
    close_code: int | None = None
    ended_by: str | None = None

    def snapshot(self) -> ConnectionInfo:
        return ConnectionInfo(
            tcp=self.tcp,
            number=self.number,
            peer=self.peer,
            tls=self.tls,
            phase=self.phase,
            path=self.path,
            query=self.query,
            headers=self.headers,
            subprotocols=self.subprotocols,
            subprotocol=self.subprotocol,
            rejected=self.rejected,
            sent=self.sent,
            received=self.received,
            close_code=self.close_code,
            ended_by=self.ended_by,
        )


@dataclass(frozen=True, slots=True)
class _Reject:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(slots=True)
class _Pending:
    """``count`` more upgrade requests get this treatment (``None``: stall)."""

    reject: _Reject | None
    count: int


class _Listener:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.scope = anyio.CancelScope()
        self.closing = False


def _is_subscription(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return text.startswith("subscribe")
    return isinstance(value, dict) and value.get("op") == "subscribe"


def _http_response(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _check_header(name: str, value: str) -> tuple[str, str]:
    if not isinstance(name, str) or not isinstance(value, str):
        raise TypeError(f"header names and values must be str, got {name!r}: {value!r}")
    if not name or any(c in name for c in ":\r\n ") or any(c in value for c in "\r\n"):
        raise ValueError(f"invalid header {name!r}: {value!r}")
    return name, value


def _headers_param(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    items: list[object]
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = list(value)
    else:
        raise TypeError(f"headers must be a mapping or (name, value) pairs, got {value!r}")
    pairs = []
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"headers must be (name, value) pairs, got {item!r}")
        pairs.append(_check_header(item[0], item[1]))
    return tuple(pairs)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")
    return value


def _int_param(params: Mapping[str, object], name: str, default: int, low: int, high: int) -> int:
    return _check_int(name, params.get(name, default), low, high)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _opt_seconds(name: str, value: object) -> float | None:
    return None if value is None else _seconds(name, value)


class _Conn:
    """One accepted TCP connection and its tasks; see the module docstring."""

    def __init__(self, server: FeedServer, sock: socket.socket, peer: tuple[str, int], tcp: int) -> None:
        self.server = server
        self.wire = Wire(sock, server.ssl_context)
        self.ws = WSConnection(ConnectionType.SERVER)
        self.record = _Record(tcp=tcp, peer=peer, tls=self.wire.tls)
        if self.wire.tls:
            self.record.phase = "tls"
        self.silent = False
        self.closing = False  # a frame fault is under way: no more spontaneous frames
        self.end: Fault | None = None  # Fault.CLOSE or Fault.RESET once ending
        self.scope = anyio.CancelScope()
        self.watchdog = anyio.CancelScope()
        self.drain_scope: anyio.CancelScope | None = None
        self.tg: TaskGroup | None = None
        self.subscribed = anyio.Event()
        self._text: list[str] = []
        self._binary: list[bytes] = []
        self._size = 0

    @property
    def number(self) -> int | None:
        return self.record.number

    @property
    def phase(self) -> str:
        return self.record.phase

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
        # frame faults
        if self.record.phase != "open" or self.closing or self.tg is None or self.ws.state is not _OPEN:
            return False
        self.closing = True
        self.tg.start_soon(self._guard, lambda: self._frame_fault(fault, params), False)
        return True

    async def _frame_fault(self, fault: Fault, params: Mapping[str, object]) -> None:
        if fault is Fault.GARBAGE:
            data = params.get("data", DEFAULT_GARBAGE)
            assert isinstance(data, bytes)
            await self.wire.send(lambda: data)
        elif fault is Fault.HALF_FRAME:

            def half() -> bytes | None:
                if self.ws.state is not _OPEN:
                    return None
                text = json.dumps({"event": "half_frame", "data": "x" * 200}, separators=_JSON_SEPARATORS)
                frame = self.ws.send(TextMessage(data=text))
                return frame[: len(frame) // 2]

            await self.wire.send(half)
            self.finish(Fault.CLOSE, "fault HALF_FRAME")
            return
        else:
            code = params.get("code", 1000)
            reason = params.get("reason", "")
            assert code is None or isinstance(code, int)
            assert isinstance(reason, str)

            def close_frame() -> bytes | None:
                if self.ws.state is not _OPEN:
                    return None
                if code is None:  # wsproto sends an empty close frame for exactly this member
                    return self.ws.send(CloseConnection(code=CloseReason.NO_STATUS_RCVD))
                return self.ws.send(CloseConnection(code=code, reason=reason or None))

            await self.wire.send(close_frame)
        await anyio.sleep(self.server.close_timeout)
        self.finish(Fault.CLOSE, f"fault {fault.name}: the client did not close in time")

    # -- reading -----------------------------------------------------------

    async def _reader(self) -> None:
        if self.wire.tls:
            await self.wire.handshake()
            if self.record.phase == "tls":
                self.record.phase = "handshake"
        while True:
            data = await self.wire.recv()
            if not data:
                self.finish(Fault.CLOSE, "client closed the connection")
                return
            if self.record.phase == "stalled":
                continue
            try:
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if not await self._on_event(event):
                        return
            except RemoteProtocolError as exc:
                await self._bad_request(exc)
                return

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
        if self.silent or self.closing or self.ws.state is not _OPEN:
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

            def response() -> bytes | None:
                if self.silent:
                    return None
                return _http_response(reject.status, reject.headers, reject.body)

            if not await self.wire.send(response):
                self._stall()
                return True
            record.rejected = reject.status
            record.phase = "rejected"
            self.watchdog.cancel()
            server._rejected += 1
            server._notify()
            record.ended_by = f"rejected with {reject.status}"
            return False

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
        if self.tg is not None:
            self.tg.start_soon(self._guard, self._streamer, False)
        return True

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
            await self.wire.send(lambda: None if self.silent else _http_response(status, headers, body))
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
        await self._on_message(message)
        return True

    async def _on_message(self, message: str | bytes) -> None:
        server = self.server
        server._record_received(self, message)
        if isinstance(message, bytes):
            if message.startswith(b"echo:"):
                await self.wire.send(lambda: self._data(message))
            return
        if message.startswith("echo:"):
            await self.wire.send(lambda: self._data(message))
            return
        if not _is_subscription(message):
            return
        server._record_subscription(self, message)
        if server.ack:
            ack = json.dumps({"event": "subscribed", "request": message}, separators=_JSON_SEPARATORS)
            await self.wire.send(lambda: None if server._no_ack else self._data(ack))
        self.subscribed.set()

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

    def _next_message(self) -> tuple[bytes, Callable[[], None]] | None:
        # Decided at the moment of writing: once pause_streaming() has
        # returned, no further numbered message is committed.
        if self.silent or self.closing or self.ws.state is not _OPEN or self.server._paused:
            return None
        server = self.server
        seq = server._seq + 1
        text = json.dumps(
            {"seq": seq, "conn": self.record.number, "data": server._payload}, separators=_JSON_SEPARATORS
        )
        return self.ws.send(TextMessage(data=text)), lambda: server._commit(self, seq)


class FeedServer:
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
        ack: bool = True,
        require_subscription: bool = False,
        subprotocol: str | None = None,
        response_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        handshake_timeout: float | None = 10.0,
        close_timeout: float = 5.0,
        max_connections: int = 128,
        max_message_size: int = 1 << 20,
        record_limit: int = 10_000,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        _check_int("port", port, 0, 65535)
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, got {ssl_context!r}")
        #: The host to listen on.
        self.host = host
        #: The server-side TLS context, or None for plain ``ws://``.
        self.ssl_context = ssl_context
        #: The host name used in :attr:`url`.
        self.url_host = url_host or ("localhost" if ssl_context is not None else _loopback_for(host))
        #: Seconds between streamed messages, or None.
        self.interval = _opt_seconds("interval", interval)
        self._payload = "x" * _check_int("payload_size", payload_size, 0, 1 << 24)
        if max_messages is not None:
            _check_int("max_messages", max_messages, 0, 1 << 62)
        #: Streamed messages per connection at most, or None.
        self.max_messages = max_messages
        #: Whether subscriptions are acknowledged (see also Fault.NO_ACK).
        self.ack = bool(ack)
        #: Whether streaming waits for the first subscription.
        self.require_subscription = bool(require_subscription)
        #: The subprotocol accepted when offered.
        self.subprotocol = subprotocol
        self._accept_headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in _headers_param(response_headers)
        ]
        #: Seconds allowed for the upgrade, or None.
        self.handshake_timeout = _opt_seconds("handshake_timeout", handshake_timeout)
        #: Seconds allowed for the client's side of a close.
        self.close_timeout = _seconds("close_timeout", close_timeout)
        #: Simultaneous connections at most.
        self.max_connections = _check_int("max_connections", max_connections, 1, 1 << 20)
        #: Largest client message accepted, in bytes (characters for text).
        self.max_message_size = _check_int("max_message_size", max_message_size, 1, 1 << 40)
        self._record_limit = _check_int("record_limit", record_limit, 1, 1 << 30)

        self._port = port
        self._addresses: list[tuple[int, tuple[object, ...]]] = []
        self._listeners: list[_Listener] = []
        self._refusing = False
        self._restore_scope: anyio.CancelScope | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._thread_id: int | None = None
        self._changed: anyio.Event | None = None

        self._conns: set[_Conn] = set()
        self._history: deque[_Record] = deque(maxlen=self._record_limit)
        self._received: deque[tuple[int, str | bytes]] = deque(maxlen=self._record_limit)
        self._subscriptions: deque[tuple[int, str]] = deque(maxlen=self._record_limit)
        self._sent_log: deque[tuple[int, int]] = deque(maxlen=self._record_limit)
        self._pending: deque[_Pending] = deque()
        self._no_ack = False
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

    # -- running -----------------------------------------------------------

    async def __aenter__(self) -> FeedServer:
        """Bind and start serving; see :meth:`__aexit__` for the end."""
        if self._stack is not None:
            raise RuntimeError("this FeedServer is already running")
        infos = await anyio.getaddrinfo(
            self.host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses: list[tuple[int, tuple[object, ...]]] = []
        for family, _type, _proto, _name, sockaddr in infos:
            if (family, tuple(sockaddr)) not in addresses and family in (socket.AF_INET, socket.AF_INET6):
                addresses.append((int(family), tuple(sockaddr)))
        if not addresses:
            raise OSError(f"cannot resolve {self.host!r} to an IP address")
        self._addresses = addresses
        self._thread_id = threading.get_ident()
        self._changed = anyio.Event()
        stack = contextlib.AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        try:
            self._listen(initial=True)
        except BaseException:
            await self._shutdown(None, None, None)
            raise
        return self

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
            for listener in self._listeners:  # normally closed by their tasks already
                listener.sock.close()
            self._listeners = []
            for conn in list(self._conns):
                conn.wire.close()
            self._conns.clear()
            self._stack = self._tg = None
            self._restore_scope = None
            self._refusing = False
            self._thread_id = None
            self._changed = None

    def run_in_thread(self, *, backend: str = "asyncio") -> ThreadedFeedServer:
        """Return a context manager running this server in a daemon thread.

        ``with FeedServer().run_in_thread() as server: ...`` gives a
        :class:`~nonstop.testing.ThreadedFeedServer` with thread-safe,
        blocking versions of this class's methods, for synchronous tests and
        scripts.  ``backend`` is the anyio backend of the thread's loop.
        """
        from ._thread import ThreadedFeedServer

        return ThreadedFeedServer(self, backend=backend)

    # -- listening ---------------------------------------------------------

    def _listen(self, *, initial: bool = False) -> None:
        tg = self._tg
        assert tg is not None
        sockets: list[socket.socket] = []
        try:
            for index, (family, sockaddr) in enumerate(self._addresses):
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    if hasattr(socket, "SO_REUSEADDR") and not hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((sockaddr[0], self._port, *sockaddr[2:]))
                    sock.listen(128)
                    sock.setblocking(False)
                except OSError:
                    sock.close()
                    if initial and index > 0:  # e.g. "localhost" without IPv6: keep what works
                        continue
                    raise
                sockets.append(sock)
                if self._port == 0:
                    self._port = int(sock.getsockname()[1])
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        if initial:
            self._addresses = [
                (sock.family, tuple(sock.getsockname())) for sock in sockets
            ]
        for sock in sockets:
            listener = _Listener(sock)
            self._listeners.append(listener)
            tg.start_soon(self._accept_loop, listener)
        self._refusing = False
        self._notify()

    def _stop_listening(self) -> None:
        for listener in self._listeners:
            listener.closing = True
            # On Linux, shutdown() makes a listening socket refuse new
            # connections at once; elsewhere it may fail, and the accept task
            # closes the socket as soon as it runs.
            with contextlib.suppress(OSError):
                listener.sock.shutdown(socket.SHUT_RDWR)
            listener.scope.cancel()
        self._listeners = []
        self._refusing = True
        self._notify()

    async def _accept_loop(self, listener: _Listener) -> None:
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
                    self._start(sock, (str(peer[0]), int(peer[1])))
        finally:
            listener.sock.close()

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
        conn = _Conn(self, sock, peer, self._accepted)
        self._conns.add(conn)
        self._history.append(conn.record)
        tg.start_soon(self._run_conn, conn)
        self._notify()

    async def _run_conn(self, conn: _Conn) -> None:
        try:
            await conn.run()
        except Exception as exc:  # never let one connection take the server down
            logger.debug("connection %d failed: %r", conn.record.tcp, exc, exc_info=True)

    # -- bookkeeping (called by connections) -------------------------------

    def _notify(self) -> None:
        self._version += 1
        changed = self._changed
        if changed is not None:
            self._changed = anyio.Event()
            changed.set()

    def _forget(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        self._notify()

    def _register_upgrade(self, conn: _Conn) -> None:
        self._upgrades += 1
        conn.record.number = self._upgrades
        self._notify()

    def _take_pending(self) -> _Pending | None:
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

    def _record_received(self, conn: _Conn, message: str | bytes) -> None:
        conn.record.received += 1
        self._received_count += 1
        self._received.append((conn.record.number or 0, message))
        self._notify()

    def _record_subscription(self, conn: _Conn, message: str) -> None:
        self._subscriptions.append((conn.record.number or 0, message))

    def _commit(self, conn: _Conn, seq: int) -> None:
        assert seq == self._seq + 1
        self._seq = seq
        conn.record.sent += 1
        self._sent_log.append((seq, conn.record.number or 0))
        self._notify()

    def _check_thread(self) -> None:
        if self._thread_id is not None and threading.get_ident() != self._thread_id:
            raise RuntimeError(
                "FeedServer methods must be called from the thread running its event loop; "
                "use FeedServer.run_in_thread() for a thread-safe handle"
            )

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
        if not isinstance(fault, Fault):
            raise TypeError(f"fault must be a nonstop.testing.Fault, got {fault!r}")
        unknown = set(params) - _PARAMS[fault]
        if unknown:
            allowed = ", ".join(sorted(_PARAMS[fault])) or "none"
            raise TypeError(f"{fault.name} got unexpected parameters {sorted(unknown)} (allowed: {allowed})")

        if fault is Fault.REFUSE:
            duration = _opt_seconds("duration", params.get("duration"))
            self._require_running(fault)
            self._cancel_restore_timer()
            if not self._refusing:
                self._stop_listening()
            if duration is not None:
                assert self._tg is not None
                self._restore_scope = scope = anyio.CancelScope()
                self._tg.start_soon(self._restore_later, scope, duration)
            return 0
        if fault is Fault.RESTORE:
            self._no_ack = False
            self._pending.clear()
            if self._tg is not None:
                self._cancel_restore_timer()
                if self._refusing:
                    self._listen()
            self._notify()
            return 0
        if fault is Fault.NO_ACK:
            self._no_ack = True
            return 0
        if fault is Fault.REJECT:
            count = _int_param(params, "count", 1, 1, 1 << 30)
            self._pending.append(_Pending(self._reject_spec(params), count))
            return 0
        if fault is Fault.STALL_HANDSHAKE:
            self._pending.append(_Pending(None, _int_param(params, "count", 1, 1, 1 << 30)))
            return 0

        target = params.get("connection")
        if target is not None and (isinstance(target, bool) or not isinstance(target, int)):
            raise TypeError(f"connection must be a connection number (int), got {target!r}")
        if fault is Fault.GARBAGE:
            data = params.get("data", DEFAULT_GARBAGE)
            if not isinstance(data, (bytes, bytearray, memoryview)) or not bytes(data):
                raise TypeError(f"GARBAGE data must be non-empty bytes, got {data!r}")
            params = {**params, "data": bytes(data)}
        if fault is Fault.CLOSE_CODE:
            code = params.get("code", 1000)
            reason = params.get("reason", "")
            if code is not None:
                _int_param(params, "code", 1000, 1000, 4999)
                if code in _LOCAL_ONLY_CODES:
                    raise ValueError(f"close code {code} must not be sent on the wire (RFC 6455 7.4.1)")
            if not isinstance(reason, str):
                raise TypeError(f"reason must be a str, got {reason!r}")
            if code is None and reason:
                raise ValueError("a close frame without a code cannot carry a reason")
            if len(reason.encode("utf-8")) > 123:
                raise ValueError("a close reason is at most 123 bytes of UTF-8")
        acted = 0
        for conn in list(self._conns):
            if target is not None and conn.number != target:
                continue
            if conn.apply(fault, params):
                acted += 1
        return acted

    def restore(self) -> None:
        """Same as ``inject(Fault.RESTORE)``."""
        self.inject(Fault.RESTORE)

    def _require_running(self, fault: Fault) -> None:
        if self._tg is None:
            raise RuntimeError(f"{fault.name} needs a running server (inside `async with server`)")

    def _cancel_restore_timer(self) -> None:
        if self._restore_scope is not None:
            self._restore_scope.cancel()
            self._restore_scope = None

    async def _restore_later(self, scope: anyio.CancelScope, duration: float) -> None:
        with scope:
            await anyio.sleep(duration)
            if self._restore_scope is scope:
                self._restore_scope = None
                if self._refusing:
                    try:
                        self._listen()
                    except OSError as exc:
                        logger.error("could not listen again on port %d: %r", self._port, exc)

    @staticmethod
    def _reject_spec(params: Mapping[str, object]) -> _Reject:
        status = _int_param(params, "status", 503, 300, 599)
        headers = list(_headers_param(params.get("headers")))
        retry_after = params.get("retry_after")
        if retry_after is not None:
            if isinstance(retry_after, str):
                value = retry_after
            else:
                seconds = _seconds("retry_after", retry_after)
                value = str(int(seconds)) if seconds == int(seconds) else str(seconds)
            headers.append(_check_header("Retry-After", value))
        body = params.get("body")
        if body is None:
            body = _http_response(status, (), b"").split(b"\r\n", 1)[0][len(b"HTTP/1.1 "):] + b"\n"
        elif isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(body, bytes):
            raise TypeError(f"body must be str or bytes, got {body!r}")
        return _Reject(status, tuple(headers), body)

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

    def broadcast(self, message: str | bytes) -> int:
        """Send ``message`` (unnumbered) on every open connection; return how many.

        Silent and closing connections are skipped.  The sends happen as soon
        as the connection tasks run.
        """
        self._check_thread()
        if not isinstance(message, (str, bytes)):
            raise TypeError(f"message must be str or bytes, got {message!r}")
        count = 0
        for conn in list(self._conns):
            tg = conn.tg
            if conn.phase == "open" and not conn.silent and not conn.closing and tg is not None:
                tg.start_soon(conn._guard, functools.partial(conn.send_message, message), False)
                count += 1
        return count

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
    def port(self) -> int:
        """The TCP port; fixed once the server has started."""
        if self._port == 0:
            raise RuntimeError("the port is not known before the server has started")
        return self._port

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/`` (``wss://`` with TLS), HOST being :attr:`url_host`."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        host = f"[{self.url_host}]" if ":" in self.url_host else self.url_host
        return f"{scheme}://{host}:{self.port}/"

    @property
    def running(self) -> bool:
        """Whether the server is inside its ``async with`` block."""
        return self._tg is not None

    @property
    def listening(self) -> bool:
        """Whether the server accepts new connections (False while refusing)."""
        return self._tg is not None and not self._refusing

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
    def history(self) -> list[ConnectionInfo]:
        """A snapshot of every accepted TCP connection, oldest first (recent ones)."""
        return [record.snapshot() for record in self._history]

    def connection(self, number: int) -> ConnectionInfo:
        """The snapshot of connection number ``number``; :class:`KeyError` if unknown."""
        for record in reversed(self._history):
            if record.number == number:
                return record.snapshot()
        raise KeyError(f"no connection number {number} (known: 1..{self._upgrades}, recent ones only)")

    def __repr__(self) -> str:
        where = self.url if self._port else f"{self.host}:0"
        state = "listening" if self.listening else ("refusing" if self.running else "stopped")
        return f"<FeedServer {where} {state} connections={self._upgrades} sent={self._seq}>"


def _loopback_for(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host
