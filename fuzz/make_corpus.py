"""Write the seed corpus, ``fuzz/corpus/<harness>/``, from real traffic.

Theory of operation
-------------------
The server side of test sessions is recorded: a ``tests.helpers.Pair`` (a
core and a real wsproto server in memory) runs scenarios like the tests do
-- messages whole and fragmented, pings and pongs, closes with various
codes, rejections with ``Retry-After``, frames the core must refuse -- and
every byte the server sends the core is kept.  Those bytes are then written
in each harness's input layout (see the harness docstrings): after a chosen
config byte and chunk table for ``server_bytes``, as responses with the
accept key replaced by ``$A`` (and as structured picks) for ``handshake``,
and as payloads of server messages inside op sequences for ``lifecycle``.

Run ``python fuzz/make_corpus.py`` from the repository root; it replaces
the ``seed-*`` files and leaves other files (crash reproducers) alone.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsproto.events import Ping, TextMessage  # noqa: E402

from tests.helpers import Pair, frame  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"


class RecordingPair(Pair):
    """A Pair that keeps every chunk its server sends to the core."""

    def __init__(self, **options: object) -> None:
        super().__init__(ping_interval=None, **options)  # type: ignore[arg-type]
        self.from_server: list[bytes] = []

    def feed(self, data: bytes) -> None:
        if data:
            self.from_server.append(bytes(data))
        super().feed(data)


def session_messages() -> list[bytes]:
    p = RecordingPair(subscriptions=["trades"])
    p.connect()
    p.send_text("hello")
    p.send_bytes(bytes(range(8)))
    p.send_text("x" * 200)  # a 16-bit length
    assert p.server is not None
    p.feed(p.server.send(TextMessage(data="frag", message_finished=False))
           + p.server.send(Ping(payload=b"in-between"))
           + p.server.send(TextMessage(data="mented", message_finished=True)))
    p.pump()
    p.server_pong(b"\x00\x00\x00\x01")
    p.server_close(1000, "bye")
    return p.from_server


def session_close(code: int) -> list[bytes]:
    p = RecordingPair()
    p.connect()
    p.send_text("caf\u00e9 \u2713")
    p.server_close(code, "maintenance")
    return p.from_server


def session_reject(status: int, headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    p = RecordingPair()
    p.start()
    p.open()
    p.reject(status, headers)
    return p.from_server


BAD_FRAMES = [frame(0x1, b"ok\xff"), frame(0x1, b"x", rsv=4), frame(0x1, b"x", mask=b"abcd"),
              frame(0x0, b"x"), frame(0x9, b"p" * 126), frame(0x3, b""),
              frame(0x2, b"b" * 300), frame(0x8, b"\x03")]


def write(harness: str, name: str, data: bytes) -> None:
    folder = CORPUS / harness
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def server_bytes(messages: list[bytes], closes: dict[int, list[bytes]],
                 rejects: list[list[bytes]]) -> None:
    body = b"".join(messages[1:])  # the 101 is the harness's own
    tables = {"whole": b"\x00", "bytewise": b"\x01\x00", "mixed": b"\x03\x06\x02\xc8"}
    for name, table in tables.items():
        write("server_bytes", f"messages-{name}", b"\x11\x00" + table + body)
        write("server_bytes", f"messages-glued-{name}", b"\x01\x02" + table + body)
    for code, wire in closes.items():
        write("server_bytes", f"close-{code}", b"\x93\x00\x00" + b"".join(wire[1:]))
    for i, bad in enumerate(BAD_FRAMES):
        write("server_bytes", f"bad-frame-{i}", b"\x09\x00\x02\x04\x00" + frame(0x1, b"ok") + bad)
    for i, wire in enumerate(rejects):
        write("server_bytes", f"raw-reject-{i}", b"\x00\x01\x02\x05\x40" + wire[0])
    write("server_bytes", "raw-101", b"\x00\x01\x00" + messages[0])


def handshake(messages: list[bytes], rejects: list[list[bytes]]) -> None:
    templated = re.sub(rb"(?i)(sec-websocket-accept: *)[^\r\n]+", rb"\1$A", messages[0])
    write("handshake", "raw-101", b"\x00\x01\x00" + templated)
    write("handshake", "raw-101-bytewise", b"\x00\x01\x01\x00" + templated)
    write("handshake", "raw-101-with-frames", b"\x01\x01\x00" + templated + b"".join(messages[1:3]))
    for i, wire in enumerate(rejects):
        write("handshake", f"raw-reject-{i}", b"\x04\x01\x00" + wire[0])
    # structured: status, version, phrase, k, picks (0 Upgrade, 3 Connection,
    # 6 right accept, 11 protocol chat, 8 wrong accept), then trailing bytes
    write("handshake", "valid", b"\x00\x00\x00" + bytes([0, 0, 0, 3, 0, 3, 6]) + messages[1])
    write("handshake", "valid-chat", b"\x01\x00\x00" + bytes([0, 0, 0, 4, 0, 3, 6, 11]))
    write("handshake", "wrong-accept", b"\x00\x00\x00" + bytes([0, 0, 0, 3, 0, 3, 8]))
    write("handshake", "retry-after", b"\x00\x00\x00" + bytes([14, 0, 4, 1, 200, 1]) + b"3")


def lifecycle(messages: list[bytes]) -> None:
    # config: ping 1 s, pong 3 s, silence 60 s, stable 2 s | close 1 s, timeouts
    # 10 s, backoff 0.5 s x2 | cap 5 s, full jitter | the first 3 subscriptions
    config = bytes([121, 93, 9, 28, 0])
    hello = messages[0][-40:]
    start_open_accept = bytes([3, 4, 6, 1])
    recv_ack = bytes([8, 0, 0, 0, 0])  # text "ack:ticker"
    recv_raw = bytes([8, 2, 0, 0, len(hello)]) + hello  # real server bytes, as binary
    healthy = bytes([0, 5, 9, 1, 0, 0, 5, 9, 1, 0])  # 1 s, pong, 1 s, pong
    restart = bytes([9, 2, 0, 11, 1, 0, 0])  # close 1000, EOF, +10 s
    sequences = {
        "restart": start_open_accept + recv_ack + recv_raw + healthy + restart
        + bytes([4, 6, 0, 12, 0, 13, 0, 4, 13, 1, 2, 15, 9, 0, 0, 11]),
        "zombie": start_open_accept + recv_ack + bytes([1, 1, 0, 2, 4, 6, 0, 1, 0, 1, 15]),
        "flaky-503": bytes([3, 4, 7, 6, 1, 1, 0, 0, 4, 7, 4, 0, 1, 0, 0, 4, 6, 0, 15, 0, 7]),
        "garbage": start_open_accept + recv_ack + bytes([10, len(BAD_FRAMES[0]) - 1])
        + BAD_FRAMES[0] + bytes([0, 4, 1, 0, 0, 4, 6, 0, 15]),
        "misuse": bytes([12, 0, 4, 11, 5, 0, 13, 0, 5, 15, 3, 12, 1, 0, 7]),
        "paused": start_open_accept + bytes([14, 1, 0, 7, 1, 0, 1, 14, 2, 0, 3, 15, 1, 2, 1]),
        "fail-and-reconnect": start_open_accept + bytes([5, 1, 0, 5, 4, 5, 3, 0, 6, 4, 6, 0, 14, 0,
                                                         9, 0, 0, 11, 1, 3, 0, 15]),
    }
    for name, ops in sequences.items():
        write("lifecycle", name, config + ops)
    app_ping = bytes([121, 93, 9 | 64 | 48, 28 | 2, 7])  # app ping, max_attempts=3, header provider
    write("lifecycle", "app-ping", app_ping + start_open_accept + bytes([0, 4, 8, 0, 0, 3, 0, 0, 6])
          + bytes([1, 0, 1, 15]))


def main() -> None:
    messages = session_messages()
    closes = {code: session_close(code) for code in (1000, 1001, 1008, 1013, 4001)}
    rejects = [session_reject(503, [(b"Retry-After", b"3")]), session_reject(401, []),
               session_reject(429, [(b"Retry-After", b"Wed, 21 Oct 2015 07:28:30 GMT"),
                                    (b"Date", b"Wed, 21 Oct 2015 07:28:00 GMT")])]
    for harness in ("server_bytes", "handshake", "lifecycle"):
        for old in (CORPUS / harness).glob("seed-*"):
            old.unlink()
    server_bytes(messages, closes, rejects)
    handshake(messages, rejects)
    lifecycle(messages)
    for harness in sorted(p.name for p in CORPUS.iterdir()):
        files = list((CORPUS / harness).iterdir())
        print(f"{harness}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
