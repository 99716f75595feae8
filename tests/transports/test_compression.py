"""permessage-deflate on every driver: against the ``websockets`` package's
server (which negotiates it by default), and against a bare socket server
that sends a decompression bomb.  Each test has a hard timeout."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import tracemalloc
import zlib
from typing import Any

import anyio
import pytest
from websockets.sync.server import ServerConnection

import nonstop
from nonstop import Disconnected

from .conftest import QUIET, Backend, until_seen
from .test_interop_websockets import websockets_server

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """The websockets server's side: what each connection negotiated and
    received; it sends *count* compressible JSON messages of about 1 KiB
    after the first message it gets."""

    def __init__(self, count: int = 50) -> None:
        self.count = count
        self.extensions: list[list[str]] = []
        self.received: list[str | bytes] = []

    def __call__(self, ws: ServerConnection) -> None:
        self.extensions.append([ext.name for ext in ws.protocol.extensions])
        for message in ws:
            self.received.append(message)
            for seq in range(self.count):
                ws.send(json.dumps({"seq": seq, "bids": [[100.25 + seq, 1.5]] * 40}))


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.anyio
async def test_messages_flow_compressed_both_ways_or_not_at_all(
        compression: str | None, backend: Backend) -> None:
    recorder = Recorder()
    with websockets_server(recorder) as port:
        got: list[Any] = []
        with anyio.fail_after(30):
            async with backend.connect(f"ws://127.0.0.1:{port}/", subscribe=[{"op": "subscribe"}],
                                       compression=compression, **QUIET) as feed:
                async for message in feed:
                    got.append(json.loads(message))
                    if len(got) == recorder.count:
                        break
    assert [m["seq"] for m in got] == list(range(recorder.count))
    assert recorder.received == ['{"op":"subscribe"}']
    assert recorder.extensions == [["permessage-deflate"] if compression else []]


@pytest.mark.anyio
async def test_compression_survives_a_reconnect(backend: Backend) -> None:
    """Each connection starts with a fresh decompressor: the context of the
    last one would corrupt the first message of the next."""
    connections: list[ServerConnection] = []

    def behaviour(ws: ServerConnection) -> None:
        connections.append(ws)
        number = len(connections)
        for _ in ws:
            for seq in range(5):
                ws.send(json.dumps({"conn": number, "seq": seq, "pad": "abc" * 200}))
            if number == 1:
                ws.close(1012, "restart")
                return

    with websockets_server(behaviour) as port:
        seen: list[tuple[int, int]] = []
        with anyio.fail_after(30):
            async with backend.connect(f"ws://127.0.0.1:{port}/", subscribe=["go"], **QUIET) as feed:
                async for message in feed:
                    body = json.loads(message)
                    seen.append((body["conn"], body["seq"]))
                    if seen[-1] == (2, 4):
                        break
    assert seen == [(1, i) for i in range(5)] + [(2, i) for i in range(5)]


def _bomb() -> bytes:
    """A compressed message of about 1 MiB that inflates to 1 GiB of
    zeros, in fragments of 64 KiB (the first with RSV1)."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    payload = b"".join([z.compress(chunk) for _ in range(1024)] + [z.flush(zlib.Z_SYNC_FLUSH)])[:-4]
    pieces = [payload[at:at + 65536] for at in range(0, len(payload), 65536)]
    out = []
    for i, piece in enumerate(pieces):
        first = (0x80 if i == len(pieces) - 1 else 0) | (0x42 if i == 0 else 0x00)
        n = len(piece)
        if n >= 65536:
            head = bytes([first, 127]) + n.to_bytes(8, "big")
        else:
            head = bytes([first, 126]) + n.to_bytes(2, "big")
        out.append(head + piece)
    return b"".join(out)


@pytest.mark.anyio
async def test_a_decompression_bomb_fails_1009_within_the_memory_limit(backend: Backend) -> None:
    """A server that negotiates deflate and sends a message of 1 MiB on the
    wire and 1 GiB inflated: the connection closes with 1009
    (``message_too_big``), the feed reconnects, and the memory the process
    allocated meanwhile peaks within a few MiB of ``max_message_size``."""
    bomb = _bomb()
    listener = socket.create_server(("127.0.0.1", 0))
    served = []

    def serve() -> None:
        for _ in range(2):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                assert b"permessage-deflate" in request
                key = re.search(rb"(?i)sec-websocket-key: *(\S+)", request)
                assert key is not None
                accept = base64.b64encode(hashlib.sha1(
                    key.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                served.append(True)
                try:
                    conn.sendall(bomb)
                    conn.settimeout(5)
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    events: list[Any] = []
    limit = 1 << 20
    tracemalloc.start()
    try:
        with anyio.fail_after(30):
            async with backend.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/",
                                       max_message_size=limit, close_timeout=0.5, on_event=events.append,
                                       **QUIET):
                down = await until_seen(events, lambda e: isinstance(e, Disconnected))
                _, peak = tracemalloc.get_traced_memory()
                await until_seen(events, lambda e: isinstance(e, nonstop.Connected) and e.connection == 2)
    finally:
        tracemalloc.stop()
        listener.close()
        thread.join(10)
    assert down.code == 1009 and down.reason is nonstop.Reason.MESSAGE_TOO_BIG
    assert "once inflated" in down.detail
    assert peak < limit + (6 << 20), peak
