"""A bare trio socket, no WebSocket parsing: trio's own floor.

Theory of operation
-------------------
The handshake is done by hand (:mod:`wire`), then one trio task does
``await sock.recv()`` (receive: until exactly the bytes of *count* frames
have arrived, reading 256 KiB at a time like ``raw-socket``) or ``await
sock.send(frame)`` then ``await sock.recv()`` until the echo's frame is
whole (echo).  No frame is parsed, no message materialised: it shows what
trio's scheduler and I/O cost on their own, the floor under any trio
client's echo (nonstop-trio's included).  Shown for information; no target
uses it.
"""

from __future__ import annotations

import os
import socket
import time
from urllib.parse import parse_qs, urlsplit

import trio
from wire import OP_BINARY, OP_TEXT, client_handshake, dial, encode_frame, payload_for

READ_SIZE = 256 * 1024


def _connect(url: str) -> tuple[socket.socket, bytes]:
    sock, host, target = dial(url)
    rest = client_handshake(sock, host, target)
    sock.setblocking(False)
    return sock, rest


async def _receive(url: str, count: int, size: int) -> float:
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    kind = query.get("kind", "text")
    frame_len = len(encode_frame(OP_TEXT if kind == "text" else OP_BINARY, payload_for(kind, size)))
    expected = count * frame_len
    raw, rest = _connect(url)
    got = len(rest)
    with trio.socket.from_stdlib_socket(raw) as sock:
        t0 = time.perf_counter()
        await sock.send(encode_frame(OP_TEXT, b"go", mask=os.urandom(4)))
        while got < expected:
            data = await sock.recv(READ_SIZE)
            if not data:
                break
            got += len(data)
        t1 = time.perf_counter()
    if got < expected:
        raise RuntimeError(f"read {got} of {expected} bytes")
    return t1 - t0


async def _echo(url: str, rounds: int, message: str) -> list[float]:
    payload = message.encode()
    want = len(encode_frame(OP_TEXT, payload))  # the server's frame: unmasked
    raw, _ = _connect(url)
    times: list[float] = []
    with trio.socket.from_stdlib_socket(raw) as sock:
        for _ in range(rounds):
            t0 = time.perf_counter()
            await sock.send(encode_frame(OP_TEXT, payload, mask=os.urandom(4)))
            got = b""
            while len(got) < want:
                data = await sock.recv(65536)
                if not data:
                    raise RuntimeError("the server closed the connection")
                got += data
            times.append(time.perf_counter() - t0)
            if got[-len(payload):] != payload:
                raise RuntimeError(f"echo returned {got!r}, sent {payload!r}")
    return times


def receive(url: str, count: int, size: int) -> float:
    return trio.run(_receive, url, count, size)


def echo(url: str, rounds: int, message: str) -> list[float]:
    return trio.run(_echo, url, rounds, message)
