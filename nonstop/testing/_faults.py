"""The faults the feed server can inject: their names, parameters and frame scripts.

Theory of operation
-------------------
Faults act at three levels: on the listening socket (REFUSE/RESTORE), on the
next upgrade requests (REJECT, STALL_HANDSHAKE: a FIFO of :class:`Pending`
decisions that connections take from the server one request at a time), and
on the connections open at the time of the call (CLOSE, RESET, SILENT,
GARBAGE, HALF_FRAME, CLOSE_CODE).  NO_ACK is a server-wide flag.

This module holds what a fault *is*, apart from the server that carries it
out: the :class:`Fault` enum, the parameters each fault accepts and their
checks (:func:`check_names`, :func:`connection_target`, :func:`frame_params`,
:func:`reject_spec`), so that a bad call fails before anything changes, and
the scripts of the three *frame faults* (:func:`play_frame_fault`), which
write something on one connection and then end it.  A frame fault runs as a
task of its connection; it builds its bytes under the connection's write lock
(:meth:`._wire.Wire.send`), so it sees the WebSocket state at the moment of
writing and writes nothing once that state has left OPEN.  It needs only a
few things from the connection (:class:`FaultTarget`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import anyio
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, TextMessage
from wsproto.frame_protocol import CloseReason

from ._checks import check_header, headers_param, int_param, seconds
from ._wire import Wire
from ._wire_format import half_frame_message, http_response

__all__ = [
    "DEFAULT_GARBAGE",
    "Fault",
    "FaultTarget",
    "Pending",
    "Reject",
    "check_names",
    "connection_target",
    "frame_params",
    "play_frame_fault",
    "reject_spec",
]

#: The default bytes of the GARBAGE fault: FIN + all three RSV bits + the
#: reserved opcode 0xF, a frame header no client may accept (RFC 6455 5.2).
DEFAULT_GARBAGE: Final = b"\xff\x00garbage"

_OPEN = ConnectionState.OPEN
_LOCAL_ONLY_CODES: Final = frozenset({1005, 1006, 1015})


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
    * ``MUTE``: from now on send no data message on the connection (no
      numbered message, no broadcast, no subscription ACK) while pings are
      still answered and a close is still echoed.  A zombie subscription:
      the WebSocket layer alive, the data gone.
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
    MUTE = "mute"
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
    Fault.MUTE: frozenset({"connection"}),
    Fault.GARBAGE: frozenset({"connection", "data"}),
    Fault.HALF_FRAME: frozenset({"connection"}),
    Fault.CLOSE_CODE: frozenset({"connection", "code", "reason"}),
    Fault.REJECT: frozenset({"status", "retry_after", "headers", "body", "count"}),
    Fault.STALL_HANDSHAKE: frozenset({"count"}),
    Fault.REFUSE: frozenset({"duration"}),
    Fault.NO_ACK: frozenset(),
    Fault.RESTORE: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Reject:
    """The HTTP answer a REJECT fault gives an upgrade request."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(slots=True)
class Pending:
    """``count`` more upgrade requests get this treatment (``None``: stall)."""

    reject: Reject | None
    count: int


# -- parameter checks ------------------------------------------------------


def check_names(fault: object, params: Mapping[str, object]) -> None:
    """Raise :class:`TypeError` unless ``fault`` is a :class:`Fault` taking ``params``."""
    if not isinstance(fault, Fault):
        raise TypeError(f"fault must be a nonstop.testing.Fault, got {fault!r}")
    unknown = set(params) - _PARAMS[fault]
    if unknown:
        allowed = ", ".join(sorted(_PARAMS[fault])) or "none"
        raise TypeError(f"{fault.name} got unexpected parameters {sorted(unknown)} (allowed: {allowed})")


def connection_target(params: Mapping[str, object]) -> int | None:
    """The ``connection=`` number a connection fault is limited to, or None for all."""
    target = params.get("connection")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int)):
        raise TypeError(f"connection must be a connection number (int), got {target!r}")
    return target


def frame_params(fault: Fault, params: Mapping[str, object]) -> Mapping[str, object]:
    """Check a connection fault's parameters; GARBAGE ``data`` comes back as bytes."""
    if fault is Fault.GARBAGE:
        data = params.get("data", DEFAULT_GARBAGE)
        if not isinstance(data, (bytes, bytearray, memoryview)) or not bytes(data):
            raise TypeError(f"GARBAGE data must be non-empty bytes, got {data!r}")
        params = {**params, "data": bytes(data)}
    if fault is Fault.CLOSE_CODE:
        code = params.get("code", 1000)
        reason = params.get("reason", "")
        if code is not None:
            int_param(params, "code", 1000, 1000, 4999)
            if code in _LOCAL_ONLY_CODES:
                raise ValueError(f"close code {code} must not be sent on the wire (RFC 6455 7.4.1)")
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, got {reason!r}")
        if code is None and reason:
            raise ValueError("a close frame without a code cannot carry a reason")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
    return params


def reject_spec(params: Mapping[str, object]) -> Reject:
    """The :class:`Reject` described by a REJECT fault's parameters."""
    status = int_param(params, "status", 503, 300, 599)
    headers = list(headers_param(params.get("headers")))
    retry_after = params.get("retry_after")
    if retry_after is not None:
        if isinstance(retry_after, str):
            value = retry_after
        else:
            delay = seconds("retry_after", retry_after)
            value = str(int(delay)) if delay == int(delay) else str(delay)
        headers.append(check_header("Retry-After", value))
    body = params.get("body")
    if body is None:
        body = http_response(status, (), b"").split(b"\r\n", 1)[0][len(b"HTTP/1.1 "):] + b"\n"
    elif isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, bytes):
        raise TypeError(f"body must be str or bytes, got {body!r}")
    return Reject(status, tuple(headers), body)


# -- frame fault scripts ---------------------------------------------------


class FaultTarget(Protocol):
    """What a frame fault script uses of the connection it runs on."""

    wire: Wire
    ws: WSConnection

    @property
    def close_timeout(self) -> float:
        """Seconds to wait for the client's side of a close."""
        ...

    def finish(self, end: Fault, why: str) -> None:
        """End the connection with ``end`` (CLOSE or RESET), recording ``why``."""
        ...


async def play_frame_fault(conn: FaultTarget, fault: Fault, params: Mapping[str, object]) -> None:
    """Carry out GARBAGE, HALF_FRAME or CLOSE_CODE on ``conn``, then end it.

    GARBAGE and CLOSE_CODE leave the client ``close_timeout`` seconds to hang
    up (the reader ends the connection sooner if it does); HALF_FRAME closes
    TCP right after the half frame.
    """
    if fault is Fault.GARBAGE:
        data = params.get("data", DEFAULT_GARBAGE)
        assert isinstance(data, bytes)
        await conn.wire.send(lambda: data)
    elif fault is Fault.HALF_FRAME:

        def half() -> bytes | None:
            if conn.ws.state is not _OPEN:
                return None
            frame = conn.ws.send(TextMessage(data=half_frame_message()))
            return frame[: len(frame) // 2]

        await conn.wire.send(half)
        conn.finish(Fault.CLOSE, "fault HALF_FRAME")
        return
    else:
        code = params.get("code", 1000)
        reason = params.get("reason", "")
        assert code is None or isinstance(code, int)
        assert isinstance(reason, str)

        def close_frame() -> bytes | None:
            if conn.ws.state is not _OPEN:
                return None
            if code is None:  # wsproto sends an empty close frame for exactly this member
                return conn.ws.send(CloseConnection(code=CloseReason.NO_STATUS_RCVD))
            return conn.ws.send(CloseConnection(code=code, reason=reason or None))

        await conn.wire.send(close_frame)
    await anyio.sleep(conn.close_timeout)
    conn.finish(Fault.CLOSE, f"fault {fault.name}: the client did not close in time")
