"""Fuzz harness 4: the fast receive path against the wsproto reference path.

Theory of operation
-------------------
``Framing`` cuts simple data frames out of each read itself and hands every
other frame to wsproto (the fast path).  ``Framing(fast=False)`` sends
every byte through wsproto: the reference.  This harness opens one of each
with a real wsproto server (the 101 may share the first read with frames),
then feeds both the same server bytes, cut into the same reads by the
fuzzer's size table, and requires the *same*:

* messages, in order, with their types (``str`` / ``bytes``);
* pongs and close answers written back (compared unmasked: our masking
  keys are random);
* failures: the same close code (1002, 1007, 1009), at the same point in the
  message stream;
* and that the fast path never holds more than one incomplete frame back
  (``_tail`` bounded by 1 MiB plus a header, or ``max_message_size``).

Input layout::

    byte 0   bits 0-1: max_message_size (None, 100, 65536, 1 MiB);
             bit 2: the 101 and the first chunk arrive as one read
    byte 1   n (low 4 bits), then n chunk-size bytes (``_common.chunk_size``)
    rest     the server's bytes after the 101
"""

from __future__ import annotations

import sys

import _instrument  # noqa: F401  (first: instruments the code under test)
from _common import Reader, read_chunk_table, split
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from nonstop.core._framing import Failed, Framing, PeerClosed, PongReceived
from nonstop.core._url import parse_url

LIMITS = (None, 100, 65_536, 1 << 20)
TAIL_BOUND = (1 << 20) + 14


def opened(limit: int | None, fast: bool, first: bytes) -> tuple[Framing, list[object]]:
    """A framing past its 101; *first* arrives in the same read as the 101."""
    framing = Framing(limit, fast=fast)
    framing.request(parse_url("ws://feed.example/"), [], [])
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(bytes(framing.outgoing))
    framing.outgoing.clear()
    assert isinstance(next(server.events()), Request)
    items = framing.feed(server.send(AcceptConnection()) + first)
    assert type(items[-1]).__name__ == "Accepted", items
    return framing, framing.resume()


def outcome(items: list[object]) -> list[object]:
    flat: list[object] = []
    for item in items:
        if isinstance(item, list):
            flat.extend((type(m).__name__, m) for m in item)
        elif isinstance(item, (str, bytes)):
            flat.append((type(item).__name__, item))
        elif isinstance(item, PongReceived):
            flat.append(("pong", item.payload))
        elif isinstance(item, PeerClosed):
            flat.append(("close", item.code))
        elif isinstance(item, Failed):
            flat.append(("failed", item.code, item.reason.value))
        else:
            raise AssertionError(f"unexpected item after the 101: {item!r}")
    return flat


def unmasked(data: bytes) -> list[tuple[int, bytes]]:
    """The frames we wrote, without their (random) masks."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        length = data[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            length, start = int.from_bytes(data[pos + 2:pos + 4], "big"), pos + 4
        elif length == 127:
            length, start = int.from_bytes(data[pos + 2:pos + 10], "big"), pos + 10
        key = data[start:start + 4]
        body = data[start + 4:start + 4 + length]
        frames.append((data[pos], bytes(b ^ key[i % 4] for i, b in enumerate(body))))
        pos = start + 4 + length
    return frames


def TestOneInput(data: bytes) -> None:
    r = Reader(data)
    flags = r.byte()
    limit = LIMITS[flags & 3]
    glued = bool(flags & 4)
    table = read_chunk_table(r)
    stream = r.rest()

    chunks = list(split(stream, table))
    first = chunks.pop(0) if glued and chunks else b""
    fast, items = opened(limit, True, first)
    for chunk in chunks:
        items += fast.feed(chunk)
        assert len(fast._tail) <= max(TAIL_BOUND, (limit or 0) + 14), len(fast._tail)

    # The reference gets the same reads: even wsproto alone reports a message
    # that is both too big and not UTF-8 as 1009 or 1007 depending on how much
    # of it has arrived, so "the same bytes" means the same reads.
    ref_chunks = list(split(stream, table))
    ref_first = ref_chunks.pop(0) if glued and ref_chunks else b""
    reference, ref_items = opened(limit, False, ref_first)
    for chunk in ref_chunks:
        ref_items += reference.feed(chunk)

    assert outcome(items) == outcome(ref_items), (outcome(items), outcome(ref_items))
    assert unmasked(bytes(fast.outgoing)) == unmasked(bytes(reference.outgoing))


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
