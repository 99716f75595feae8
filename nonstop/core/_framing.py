"""The framing seam: bytes in, whole messages and control events out.

Theory of operation
-------------------
Everything RFC 6455 says about bytes on the wire lives behind this one class,
so the state machine never sees a frame, and a faster receive path can later
replace the hot loop without touching the state machine.  Today it is
wsproto (handshake via h11, frames via wsproto's frame protocol) plus three
things wsproto does not do for a client:

* **Reassembly with a size limit.**  wsproto hands out frame *pieces* as they
  arrive; we join them into whole messages and fail with 1009 as soon as a
  message grows past ``max_message_size`` -- before it is all buffered.
* **Failure detection.**  On a parse error wsproto yields a
  ``CloseConnection`` while its state stays ``OPEN``, which looks just like
  a peer's close (STYLE.md 5).  We tell them apart by the state, queue our own
  close frame with the right code (1002, 1007) and mark the parser dead: the
  bytes that follow are discarded, never buffered.
* **Automatic answers.**  Pings are answered with pongs and a peer's close is
  echoed (RFC 6455 5.5.1) inside :meth:`feed`; the bytes go to ``outgoing``.

:meth:`feed` returns a list whose items are either a message (``str`` for
text, ``bytes`` for binary) or one of the small control classes below; plain
payloads keep the per-message cost to one list append.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Union

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError as WsRemoteProtocolError

from ._config import Payload
from ._guard import Reason
from ._url import Endpoint

__all__ = ["Framing", "Accepted", "Rejected", "HandshakeFailed", "PeerClosed",
           "PongReceived", "Failed", "Item"]

MESSAGE_TOO_BIG: Final = 1009
PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007


class Accepted:
    __slots__ = ("subprotocol",)

    def __init__(self, subprotocol: str | None) -> None:
        self.subprotocol = subprotocol


class Rejected:
    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers


class HandshakeFailed:
    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


class PeerClosed:
    """The server's close frame (already answered if it started the close)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason


class PongReceived:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Failed:
    """The server's bytes broke the protocol; the core must close with ``code``."""

    __slots__ = ("code", "detail", "reason")

    def __init__(self, reason: Reason, code: int, detail: str) -> None:
        self.reason = reason
        self.code = code
        self.detail = detail


Item = Union[str, bytes, Accepted, Rejected, HandshakeFailed, PeerClosed, PongReceived, Failed]

# wsproto's own message names a byte offset within the chunk: not stable.
_INVALID_UTF8: Final = "invalid UTF-8 in a text message"

_REASON_FOR_CODE: Final = {
    INVALID_DATA: Reason.INVALID_DATA,
    MESSAGE_TOO_BIG: Reason.MESSAGE_TOO_BIG,
}


class Framing:
    """One connection's wire protocol.  Create a new one per connection."""

    __slots__ = ("_dead", "_max_size", "_parts", "_size", "_ws", "outgoing")

    def __init__(self, max_message_size: int | None) -> None:
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._max_size = max_message_size
        self._parts: list[str] | list[bytes] = []
        self._size = 0
        self._dead = False
        self.outgoing = bytearray()

    # -- handshake --------------------------------------------------------
    def request(
        self, endpoint: Endpoint, headers: Sequence[tuple[str, str]], subprotocols: Sequence[str]
    ) -> None:
        """Queue the HTTP upgrade request (RFC 6455 4.1).

        The headers were validated by the caller (RFC 9110 tokens, Latin-1
        values), so h11 accepts them.
        """
        self.outgoing += self._ws.send(
            Request(
                host=endpoint.host_header,
                target=endpoint.target,
                extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
                subprotocols=list(subprotocols),
            )
        )

    @property
    def is_open(self) -> bool:
        """True while we may send data frames (even if receiving has failed:
        the close frame is not sent yet)."""
        return self._ws.state is ConnectionState.OPEN

    # -- receiving --------------------------------------------------------
    def feed(self, data: bytes) -> list[Item]:
        """Parse *data*; return messages and control events in wire order."""
        if self._dead:
            return []
        state = self._ws.state
        if state in (ConnectionState.CLOSED, ConnectionState.REMOTE_CLOSING,
                     ConnectionState.REJECTING):
            return []  # after the peer's close frame nothing more is read
        try:
            self._ws.receive_data(data)
        except WsRemoteProtocolError as exc:
            self._dead = True
            return [HandshakeFailed(str(exc))]
        return self._drain()

    def resume(self) -> list[Item]:
        """Parse what arrived after the 101 in the same chunk (see :meth:`feed`)."""
        return self._drain()

    def feed_eof(self) -> None:
        """The peer closed TCP.  Nothing to parse any more."""
        self._dead = True

    def _drain(self) -> list[Item]:
        out: list[Item] = []
        ws = self._ws
        for event in ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._piece(event, out)
                if self._dead:
                    break
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:  # not once our close is out
                    self.outgoing += ws.send(event.response())
            elif isinstance(event, Pong):
                out.append(PongReceived(bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                self._close_event(event, out)
                break
            elif isinstance(event, AcceptConnection):
                # Stop here: frames after the 101 (same chunk) are parsed by
                # resume(), once the core has queued its subscriptions, so
                # what we write never depends on how the bytes were chunked.
                out.append(Accepted(event.subprotocol))
                break
            else:  # RejectConnection: its body (RejectData) is never read
                assert isinstance(event, RejectConnection)
                self._dead = True
                out.append(Rejected(event.status_code, list(event.headers)))
                break
        return out

    def _piece(self, event: TextMessage | BytesMessage, out: list[Item]) -> None:
        data: str | bytes | bytearray = event.data
        if isinstance(data, str):
            size = len(data) if data.isascii() else len(data.encode("utf-8"))
        else:
            size = len(data)
        if event.message_finished and not self._parts:
            if self._max_size is not None and size > self._max_size:
                self._fail(MESSAGE_TOO_BIG, self._too_big(), out)
                return
            out.append(data if isinstance(data, str) else bytes(data))
            return
        self._size += size
        if self._max_size is not None and self._size > self._max_size:
            self._fail(MESSAGE_TOO_BIG, self._too_big(), out)
            return
        self._parts.append(data)  # type: ignore[arg-type]
        if event.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(data, str):
                out.append("".join(parts))  # type: ignore[arg-type]
            else:
                out.append(b"".join(parts))  # type: ignore[arg-type]

    def _too_big(self) -> str:
        return f"message larger than max_message_size ({self._max_size} bytes)"

    def _close_event(self, event: CloseConnection, out: list[Item]) -> None:
        ws = self._ws
        code = int(event.code)
        if ws.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            # wsproto's parse failure: it looks like a peer's close, but a real
            # close frame would have moved the state on (to REMOTE_CLOSING or
            # CLOSED).  The close frame, if one can still be sent, is ours.
            detail = event.reason or "protocol error"
            if code == INVALID_DATA:  # drop the chunk-relative byte offset
                detail = _INVALID_UTF8 + ": " + detail.rpartition(": ")[2]
            self._fail(code, detail, out)
            return
        if ws.state is ConnectionState.REMOTE_CLOSING:
            # The server started the close: echo its code (RFC 6455 5.5.1).
            self.outgoing += ws.send(event.response())
        out.append(PeerClosed(None if code == 1005 else code, event.reason or ""))

    def _fail(self, code: int, detail: str, out: list[Item]) -> None:
        """Stop parsing for good.  Sending our close frame (with *code*) is
        the core's call: it may first let the application answer the
        messages that came before the bad bytes."""
        self._dead = True
        self._parts, self._size = [], 0
        out.append(Failed(_REASON_FOR_CODE.get(code, Reason.PROTOCOL_ERROR), code, detail))

    # -- sending ----------------------------------------------------------
    def send(self, payload: Payload) -> None:
        """Queue a text (``str``) or binary (``bytes``) message."""
        message: TextMessage | BytesMessage = (
            TextMessage(data=payload) if isinstance(payload, str) else BytesMessage(data=payload)
        )
        self.outgoing += self._ws.send(message)

    def ping(self, payload: bytes) -> None:
        self.outgoing += self._ws.send(Ping(payload=payload))

    def close(self, code: int, reason: str = "") -> None:
        """Queue our close frame (only while open: the core makes sure)."""
        self.outgoing += self._ws.send(CloseConnection(code=code, reason=reason))
