"""A bare wsproto loop over a blocking socket: the floor of "sans-IO with wsproto".

Theory of operation
-------------------
No driver, no queue, no timers: ``sock.recv(256 KiB)``, ``receive_data``,
iterate ``events()``, join the ``TextMessage``/``BytesMessage`` parts of a
message (wsproto hands out whatever part of a frame has arrived) and count
the message at ``message_finished``.  This is what any wsproto-based client pays at least,
so it shows the cost of wsproto's own receive path.
"""

from __future__ import annotations

import socket
import time

from wire import dial
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Request, TextMessage

READ_SIZE = 256 * 1024


def _open(url: str) -> tuple[socket.socket, WSConnection]:
    sock, host, target = dial(url)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=host, target=target)))
    while True:
        ws.receive_data(sock.recv(READ_SIZE) or None)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return sock, ws
            raise ConnectionError(f"handshake failed: {event!r}")


def _close(sock: socket.socket, ws: WSConnection) -> None:
    try:
        sock.sendall(ws.send(CloseConnection(code=1000)))
    except Exception:
        pass
    sock.close()


def _join(parts: list[str | bytes | bytearray]) -> str | bytes:
    if isinstance(parts[0], str):
        return "".join(p for p in parts if isinstance(p, str))
    return b"".join(p for p in parts if not isinstance(p, str))


def receive(url: str, count: int, size: int) -> float:
    sock, ws = _open(url)
    n = 0
    last: str | bytes = b""
    try:
        t0 = time.perf_counter()
        sock.sendall(ws.send(Message(data="go")))
        recv = sock.recv
        feed = ws.receive_data
        events = ws.events
        parts: list[str | bytes | bytearray] = []
        while n < count:
            data = recv(READ_SIZE)
            if not data:
                break
            feed(data)
            for event in events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    # wsproto hands out the part of a message that has arrived; join the parts.
                    if not event.message_finished:
                        parts.append(event.data)
                        continue
                    message = event.data
                    if parts:
                        parts.append(message)
                        message = _join(parts)
                        parts = []
                    n += 1
                    if n == count:
                        last = message if isinstance(message, (str, bytes)) else bytes(message)
                        break
        t1 = time.perf_counter()
    finally:
        _close(sock, ws)
    if n != count or len(last) != size:
        raise RuntimeError(f"got {n} of {count} messages, last of {len(last)} bytes (want {size})")
    return t1 - t0


def echo(url: str, rounds: int, message: str) -> list[float]:
    sock, ws = _open(url)
    times: list[float] = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            sock.sendall(ws.send(Message(data=message)))
            reply: str | None = None
            while reply is None:
                data = sock.recv(READ_SIZE)
                if not data:
                    raise ConnectionError("EOF before the echo")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, TextMessage):
                        reply = event.data
            times.append(time.perf_counter() - t0)
            if reply != message:
                raise RuntimeError(f"echo returned {reply!r}, sent {message!r}")
    finally:
        _close(sock, ws)
    return times
