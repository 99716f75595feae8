"""The load server: pre-encoded frames as fast as the socket takes them.

Theory of operation
-------------------
A receive benchmark is only honest if the server is never the bottleneck, so
this server does almost nothing per message.  It runs in its own process (its
own GIL, the other core), accepts on 127.0.0.1 and gives every connection a
thread with a blocking socket.  After a minimal but valid upgrade (the accept
key of RFC 6455 section 4.2.2; no extensions, no subprotocol) the request path
picks the mode:

``/stream?kind=text|binary&size=BYTES&count=N``
    waits for the client's first data frame ("go", so the client starts its
    clock just before sending it and the handshake is not timed), then writes
    *count* identical unfragmented frames and a close frame (1000).  The
    frames are encoded once into a block of about 1 MiB and written with
    ``sendall`` block after block: the kernel copy is all it costs.  Then it
    waits (at most 10 s) for the client's close frame or EOF.
``/stream?...&numbered=1``
    the same, but each frame's payload starts with its number (ten digits,
    from 1), so every message is distinct and a connection's *n*-th message
    is the same on every connection: the stream of a feed several clients,
    or several connections of one client (``bench/merge.py``), receive.  The
    frames are encoded once per (kind, size, count) and shared.
``/stream?kind=json&size=BYTES&count=N&deflate=1``
    a feed of distinct JSON messages of *size* bytes each (an order book's
    levels, pseudo-random digits, numbered), sent compressed
    (permessage-deflate, the context kept between messages as most servers
    do) when the client offered it, else plain.  1,000 messages are
    compressed once with one compressor and the block is sent again and
    again: a block made from an empty window is valid after any history.
``/echo`` (also ``/idle``)
    reads the client's masked frames and sends each data frame back unmasked
    with the same opcode; answers pings with pongs and a close with a close.
    Idle clients send nothing but pings, so the same handler serves the
    1,000-idle-connections test.

Run ``python bench/server.py [--port 0]``: it prints ``PORT <n>`` once
listening and serves until its standard input closes (so it never outlives
the runner that started it) or it is terminated.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import socket
import sys
import threading
import zlib
from urllib.parse import parse_qs, urlsplit

from wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    accept_key,
    encode_frame,
    payload_for,
)

BLOCK_BYTES = 1 << 20
CLOSE_1000 = encode_frame(OP_CLOSE, (1000).to_bytes(2, "big"))

_blocks: dict[tuple[str, int], tuple[bytes, int]] = {}
_blocks_lock = threading.Lock()
_numbered: dict[tuple[str, int, int], bytes] = {}


def _block(kind: str, size: int) -> tuple[bytes, int]:
    """About 1 MiB of identical frames for (*kind*, *size*), and how many frames it holds."""
    with _blocks_lock:
        cached = _blocks.get((kind, size))
        if cached is None:
            frame = encode_frame(OP_TEXT if kind == "text" else OP_BINARY, payload_for(kind, size))
            per_block = max(1, BLOCK_BYTES // len(frame))
            cached = _blocks[(kind, size)] = (frame * per_block, per_block)
        return cached


def _numbered_frames(kind: str, size: int, count: int) -> bytes:
    """*count* frames of (*kind*, *size*), each payload starting with its
    number in ten digits (a payload under ten bytes is the number cut short)."""
    with _blocks_lock:
        cached = _numbered.get((kind, size, count))
        if cached is None:
            opcode = OP_TEXT if kind == "text" else OP_BINARY
            tail = payload_for(kind, size)[10:]
            cached = _numbered[(kind, size, count)] = b"".join(
                encode_frame(opcode, (b"%010d" % i + tail)[:size]) for i in range(1, count + 1))
        return cached


_json_blocks: dict[tuple[int, bool], tuple[bytes, int]] = {}
JSON_BLOCK = 1000


def json_messages(size: int, count: int = JSON_BLOCK) -> list[bytes]:
    """*count* distinct JSON messages of exactly *size* bytes (an order
    book update: numbered, prices and quantities from a seeded generator;
    spaces before the last brace make up the size)."""
    rng = random.Random(size)
    out = []
    for i in range(count):
        head = b'{"e":"depthUpdate","s":"BTCUSDT","u":%d,"b":[' % (1_000_000_000 + i)
        levels: list[bytes] = []
        length = len(head) + 2
        while True:
            level = b'["%d.%02d","%d.%05d"]' % (rng.randrange(65000, 65100), rng.randrange(0, 100, 5),
                                               rng.randrange(3), rng.randrange(0, 100000, 250))
            extra = len(level) + (1 if levels else 0)
            if length + extra > size:
                break
            levels.append(level)
            length += extra
        body = head + b",".join(levels) + b"]"
        out.append(body + b" " * (size - len(body) - 1) + b"}")
    return out


def _json_block(size: int, deflate: bool) -> tuple[bytes, int]:
    """The frames of :data:`JSON_BLOCK` JSON messages, compressed in one
    stream (RSV1 set) or plain, and how many there are."""
    with _blocks_lock:
        cached = _json_blocks.get((size, deflate))
        if cached is None:
            frames = []
            z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            for message in json_messages(size):
                if deflate:
                    data = (z.compress(message) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
                    frames.append(encode_frame(OP_TEXT, data, rsv1=True))
                else:
                    frames.append(encode_frame(OP_TEXT, message))
            cached = _json_blocks[(size, deflate)] = (b"".join(frames), len(frames))
        return cached


def _read_request(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("EOF before the end of the upgrade request")
        data += chunk
        if len(data) > 65536:
            raise ConnectionError("upgrade request too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "GET":
        raise ConnectionError(f"not a GET request: {lines[0]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return parts[1], headers, rest


def _refuse(sock: socket.socket, why: str) -> None:
    body = why.encode()
    sock.sendall(
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader()

    def next_frames(self) -> list[tuple[bool, int, bytes]] | None:
        """Frames already buffered, else from one recv (possibly none yet); ``None`` at EOF."""
        frames = self.reader.frames()
        if frames:
            return frames
        data = self.sock.recv(65536)
        if not data:
            return None
        self.reader.feed(data)
        return self.reader.frames()

    def wait_for_data_frame(self) -> bool:
        """Answer control frames until the client sends a data frame (True) or leaves (False)."""
        while True:
            frames = self.next_frames()
            if frames is None:
                return False
            for _fin, opcode, payload in frames:
                if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                    return True
                if opcode == OP_PING:
                    self.sock.sendall(encode_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    self.sock.sendall(encode_frame(OP_CLOSE, payload[:2]))
                    return False

    def stream(self, kind: str, size: int, count: int, numbered: bool = False,
               deflate: bool = False) -> None:
        frames = _numbered_frames(kind, size, count) if numbered else b""
        if not self.wait_for_data_frame():
            return
        sock = self.sock
        if kind == "json":
            block, per_block = _json_block(size, deflate)
            full, rest = divmod(count, per_block)
            for _ in range(full):
                sock.sendall(block)
            if rest:  # the first *rest* frames of the block
                sock.sendall(_json_prefix(size, deflate, rest))
        elif numbered:
            view = memoryview(frames)
            for start in range(0, len(frames), BLOCK_BYTES):
                sock.sendall(view[start:start + BLOCK_BYTES])
        else:
            block, per_block = _block(kind, size)
            full, rest = divmod(count, per_block)
            for _ in range(full):
                sock.sendall(block)
            if rest:
                frame_len = len(block) // per_block
                sock.sendall(block[: rest * frame_len])
        sock.sendall(CLOSE_1000)
        # Wait for the client's close frame or EOF; don't hang on a silent client.
        sock.settimeout(10.0)
        with contextlib.suppress(OSError):
            while True:
                frames = self.next_frames()
                if frames is None or any(op == OP_CLOSE for _f, op, _p in frames):
                    return

    def echo(self) -> None:
        sock = self.sock
        while True:
            frames = self.next_frames()
            if frames is None:
                return
            out = []
            for fin, opcode, payload in frames:
                if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                    out.append(encode_frame(opcode, payload, fin=fin))
                elif opcode == OP_PING:
                    out.append(encode_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    out.append(encode_frame(OP_CLOSE, payload[:2]))
                    sock.sendall(b"".join(out))
                    return
            if out:
                sock.sendall(b"".join(out))


def _json_prefix(size: int, deflate: bool, n: int) -> bytes:
    block, _ = _json_block(size, deflate)
    reader = FrameReader()
    reader.feed(block)
    out = b""
    for _fin, _op, payload in reader.frames()[:n]:
        out += encode_frame(OP_TEXT, payload, rsv1=deflate)
    return out


def _serve(sock: socket.socket) -> None:
    try:
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            target, headers, rest = _read_request(sock)
            key = headers.get("sec-websocket-key")
            if headers.get("upgrade", "").lower() != "websocket" or not key:
                _refuse(sock, "this server only speaks WebSocket: send an Upgrade request\n")
                return
            url = urlsplit(target)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/stream":
                try:
                    kind = query.get("kind", "text")
                    size = int(query.get("size", "64"))
                    count = int(query.get("count", "1000"))
                    if kind != "json":
                        payload_for(kind, size)
                    elif size < 200:
                        raise ValueError("json messages are 200 bytes or more")
                    if size < 0 or count < 0:
                        raise ValueError("size and count must be >= 0")
                except ValueError as exc:
                    _refuse(sock, f"bad stream parameters ({exc}); use ?kind=text|binary&size=N&count=N\n")
                    return
            elif url.path not in ("/echo", "/idle"):
                _refuse(sock, f"unknown path {url.path!r}: use /stream, /echo or /idle\n")
                return
            deflate = (query.get("deflate") == "1"
                       and "permessage-deflate" in headers.get("sec-websocket-extensions", ""))
            if url.path == "/stream" and kind == "json":
                _json_block(size, deflate)  # made once, before the client's clock can start
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + (b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b"")
                + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode("ascii")
            )
            conn = _Conn(sock)
            conn.reader.feed(rest)
            if url.path == "/stream":
                conn.stream(kind, size, count, query.get("numbered") == "1", deflate)
            else:
                conn.echo()
    except (OSError, ConnectionError):
        pass  # a client that vanished mid-stream is the client's business


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _exit_when_stdin_closes() -> None:
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument(
        "--no-stdin-watch", action="store_true", help="keep serving when standard input closes"
    )
    args = parser.parse_args(argv)
    _raise_fd_limit()
    threading.stack_size(256 * 1024)  # 1,000+ idle connections, one thread each
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    if not args.no_stdin_watch:
        threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    while True:
        sock, _addr = listener.accept()
        threading.Thread(target=_serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
