"""Minimal RFC 6455 helpers shared by the load server and the raw-socket client.

Theory of operation
-------------------
The benchmark must not measure its own server, so the server never uses a
WebSocket library: it computes the accept key (RFC 6455 section 4.2.2),
writes frames it encoded once (section 5.2) and reads the client's masked
frames (section 5.3) with the small incremental parser below.  The same
helpers let the raw-socket baseline do the handshake by hand and then read the
byte stream without parsing it.

Nothing here is fast or general on purpose beyond what the bench needs: no
extensions, no fragmentation on the sending side, payloads up to 2**63.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from urllib.parse import urlsplit

__all__ = [
    "GUID",
    "OP_CONT",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "accept_key",
    "encode_frame",
    "unmask",
    "FrameReader",
    "payload_for",
    "client_handshake",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def encode_frame(opcode: int, payload: bytes, *, mask: bytes | None = None, fin: bool = True,
                 rsv1: bool = False) -> bytes:
    """One frame: unmasked (server to client) or masked with the 4-byte *mask*
    (client to server); *rsv1*: a compressed message (permessage-deflate)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        header = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        header = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if mask is None:
        return header + payload
    return header + mask + unmask(payload, mask)


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR *payload* with the repeated 4-byte *mask* (masking is its own inverse)."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class FrameReader:
    """Incremental parser for the frames a client sends (masked, RFC 6455 5.2).

    ``feed(data)`` then ``frames()`` yields ``(fin, opcode, payload)`` with the
    payload already unmasked.  Unmasked client frames are accepted too: the
    server is a measuring instrument, not a conformance checker.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def frames(self) -> list[tuple[bool, int, bytes]]:
        out: list[tuple[bool, int, bytes]] = []
        buf = self._buf
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            masked = bool(b1 & 0x80)
            if masked:
                head += 4
            if end - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            if masked:
                payload = unmask(payload, bytes(buf[pos + head - 4 : pos + head]))
            out.append((bool(b0 & 0x80), b0 & 0x0F, payload))
            pos += head + n
        del buf[:pos]
        return out


def payload_for(kind: str, size: int) -> bytes:
    """The payload every stream of (*kind*, *size*) carries: ASCII JSON-like text or binary."""
    if kind == "text":
        unit = b'{"e":"trade","s":"BTCUSDT","p":"65000.12","q":"0.00100","T":1700000000000}'
        return (unit * (size // len(unit) + 1))[:size]
    if kind == "binary":
        return (bytes(range(256)) * (size // 256 + 1))[:size]
    raise ValueError(f"payload kind must be 'text' or 'binary', not {kind!r}")


def dial(url: str) -> tuple[socket.socket, str, str]:
    """A TCP connection (``TCP_NODELAY``) to a ``ws://`` *url*'s host and
    port: the socket, the ``Host`` value and the request target."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, parts.netloc, parts.path + (f"?{parts.query}" if parts.query else "")


def client_handshake(sock: socket.socket, host: str, target: str) -> bytes:
    """Send an HTTP upgrade on *sock* and read the 101; return bytes read past it.

    Raises :class:`ConnectionError` naming the status line if the server did
    not switch protocols or answered with a wrong accept key.
    """
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode("ascii"))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise ConnectionError(f"the server refused the upgrade: {lines[0]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise ConnectionError("the server answered with a wrong Sec-WebSocket-Accept")
    return rest
