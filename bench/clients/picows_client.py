"""picows (Cython): a ``WSListener`` whose ``on_ws_frame`` is called per frame.

Theory of operation
-------------------
picows has no message iterator: the listener callback gets each frame and
decides what to materialise.  To do the same work as the other clients, the
callback turns every data frame into the ``str`` (``get_payload_as_utf8_text``,
which validates UTF-8) or ``bytes`` the application would get.  The load
server never fragments, so a frame is a message.  The echo round trip sends
the next message from the callback, which is picows' idiomatic (and fastest)
style.
"""

from __future__ import annotations

import asyncio
import time

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

MAX_MESSAGE = 1 << 20


class _Receiver(WSListener):
    def __init__(self, count: int) -> None:
        self.count = count
        self.n = 0
        self.last: str | bytes = b""
        self.t1 = 0.0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT:
            data: str | bytes = frame.get_payload_as_utf8_text()
        elif msg_type == WSMsgType.BINARY:
            data = frame.get_payload_as_bytes()
        else:
            if msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            return
        self.n += 1
        if self.n == self.count:
            self.t1 = time.perf_counter()
            self.last = data
            transport.send_close()
            transport.disconnect()


class _Echo(WSListener):
    def __init__(self, rounds: int, message: str) -> None:
        self.rounds = rounds
        self.message = message
        self.payload = message.encode()
        self.times: list[float] = []
        self.t0 = 0.0
        self.error: str | None = None

    def start(self, transport: WSTransport) -> None:
        self.t0 = time.perf_counter()
        transport.send(WSMsgType.TEXT, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        reply = frame.get_payload_as_utf8_text()
        self.times.append(time.perf_counter() - self.t0)
        if reply != self.message:
            self.error = f"echo returned {reply!r}, sent {self.message!r}"
        if self.error or len(self.times) == self.rounds:
            transport.send_close()
            transport.disconnect()
        else:
            self.start(transport)


async def _receive(url: str, count: int, size: int) -> float:
    transport, listener = await ws_connect(lambda: _Receiver(count), url, max_frame_size=MAX_MESSAGE)
    assert isinstance(listener, _Receiver)
    t0 = time.perf_counter()
    transport.send(WSMsgType.TEXT, b"go")
    await transport.wait_disconnected()
    if listener.n != count or len(listener.last) != size:
        raise RuntimeError(
            f"got {listener.n} of {count} messages, last of {len(listener.last)} bytes (want {size})"
        )
    return listener.t1 - t0


async def _echo(url: str, rounds: int, message: str) -> list[float]:
    transport, listener = await ws_connect(lambda: _Echo(rounds, message), url, max_frame_size=MAX_MESSAGE)
    assert isinstance(listener, _Echo)
    listener.start(transport)
    await transport.wait_disconnected()
    if listener.error:
        raise RuntimeError(listener.error)
    if len(listener.times) != rounds:
        raise RuntimeError(f"only {len(listener.times)} of {rounds} echoes came back")
    return listener.times


def receive(url: str, count: int, size: int) -> float:
    return asyncio.run(_receive(url, count, size))


def echo(url: str, rounds: int, message: str) -> list[float]:
    return asyncio.run(_echo(url, rounds, message))
