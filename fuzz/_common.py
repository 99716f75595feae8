"""What the three fuzz harnesses share: the input reader, chunking, the
upgrade request's key, the driver's inner loop and the buffer bounds.

Theory of operation
-------------------
Each harness turns the fuzzer's bytes into a scenario with a :class:`Reader`
(front to back, zeros past the end, so every input is a valid scenario and
``make_corpus.py`` can write seeds by hand), plays the *driver* around one
:class:`~nonstop.core.FeedCore` exactly as ``nonstop/transports`` do -- feed
one input, run the timers due at ``now`` (a protocol failure found behind
some messages is deferred to a timer due at once), write ``data_to_send()``,
drain ``next_event()`` -- and checks invariants.  A broken invariant is an
``AssertionError``; any exception out of ``TestOneInput`` is a crash for
atheris and a failing test for ``tests/core/test_fuzz_regressions.py``,
which replays every committed corpus file through the harnesses without
atheris.

"Never an unbounded buffer" is measured in :func:`check_buffers` by reading
*private* attributes of the core and wsproto.  That is deliberate and
acceptable here: a fuzz harness exists to look inside.  If an upgrade of
wsproto renames them, the check says so instead of passing silently.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
from collections.abc import Iterator
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from nonstop.core import Config, FeedCore
from nonstop.core._handshake import MAX_HEAD

#: RFC 6455 1.3: the GUID appended to the key for Sec-WebSocket-Accept.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The longest frame header (2 + 8 length + 4 mask).
MAX_FRAME_HEADER = 14
#: The most wsproto keeps of a frame it cannot parse yet: a control frame
#: is only parsed whole (header and up to 125 bytes of payload).
MAX_UNPARSED = MAX_FRAME_HEADER + 125
#: The largest incomplete frame the fast path holds back (``_framing._TAIL_MAX``).
TAIL_MAX = 1 << 20
NOW = 1000.0


class Reader:
    """The fuzzer's bytes, read front to back; zeros (or ``b""``) past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def pick(self, options: Any) -> Any:
        return options[self.byte() % len(options)]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(len(self.data))

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def chunk_size(v: int) -> int:
    """A table byte as a chunk size: 1..192 one by one, then 128-byte steps to 8 KiB."""
    return v + 1 if v < 192 else (v - 191) * 128


def read_chunk_table(r: Reader) -> bytes:
    """One byte *n* (low 4 bits), then *n* chunk-size bytes, used cyclically."""
    return r.take(r.byte() & 0x0F)


def split(data: bytes, table: bytes) -> Iterator[bytes]:
    """Cut *data* by the sizes in *table* (cyclically); no table: one piece."""
    if not table:
        if data:
            yield data
        return
    pos, i = 0, 0
    while pos < len(data):
        n = chunk_size(table[i % len(table)])
        yield data[pos:pos + n]
        pos += n
        i += 1


def request_key(request: bytes) -> bytes:
    """The Sec-WebSocket-Key of the upgrade request the core wrote."""
    match = re.search(rb"\r\nsec-websocket-key: *([^\r\n]+)\r\n", request, re.I)
    assert match is not None, f"no Sec-WebSocket-Key in the upgrade request {request!r}"
    return match.group(1).strip()


def accept_for(key: bytes) -> bytes:
    """RFC 6455 4.2.2: base64(SHA-1(key + GUID)), computed here, not by wsproto."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def response_101(key: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n" + extra + b"\r\n")


def new_core(config: Config, seed: int = 0) -> FeedCore:
    return FeedCore(config, rng=random.Random(seed))


def run_due_timers(core: FeedCore, now: float) -> None:
    """What a driver does after every input: fire the timers due at *now*
    (for instance a protocol failure deferred behind the messages before it)."""
    for _ in range(1000):
        deadline = core.next_deadline()
        if deadline is None or deadline > now:
            return
        core.handle_timer(now)
        after = core.next_deadline()
        assert after is None or after > now, f"deadline {after} not after handle_timer({now})"
    raise AssertionError("timers due at now never settle")


def drain(core: FeedCore) -> list[Any]:
    """Every queued event, a run of messages (``Messages``) expanded into one
    ``Message`` per message, so the harnesses check messages one by one."""
    out: list[Any] = []
    while (event := core.next_event()) is not None:
        if type(event).__name__ == "Messages":
            out.extend(event)
        else:
            out.append(event)
    return out


def use_reference_framing(core: FeedCore) -> bool:
    """Swap the framing of the attempt just started (``start``, before
    ``transport_opened``) for the wsproto-only reference path
    (``Framing(fast=False)``), if the core has one.  A private poke, as in
    :func:`check_buffers`.  Returns whether it did."""
    framing = core._framing
    try:
        core._framing = type(framing)(core.config.max_message_size, fast=False)  # type: ignore[call-arg]
    except TypeError:  # no fast path to compare with
        return False
    return True


def check_buffers(core: FeedCore, chunk: int, overhead: int, largest: int) -> None:
    """Everything the core and its parsers buffer stays within the limits,
    measured right after an input of *chunk* bytes (the largest so far on
    this connection: *largest*), before draining.

    * output: at most 3 bytes per byte read (a 2-byte empty ping becomes a
      6-byte masked pong) plus *overhead* (subscriptions, a close frame);
    * the message being reassembled: never past ``max_message_size``;
    * the fast path's incomplete frame (``_tail``): one frame within
      ``max_message_size`` (and 1 MiB), or one control frame (after a
      rejection: what followed its head in the same chunk, never read);
    * an unfinished response head: at most ``MAX_HEAD`` (16 KiB; the chunk
      that goes past it fails the handshake and is not kept);
    * wsproto's frame buffer: while frames are parsed, the last chunk plus one
      incomplete control frame (``MAX_UNPARSED``); once parsing stopped (protocol error, the
      server's close) it is frozen and nothing is fed to it any more.

    Reads private attributes of the core and wsproto on purpose (see
    the module docstring).
    """
    assert core.pending_output <= 3 * chunk + overhead, (
        f"{core.pending_output} bytes queued after a {chunk}-byte input")
    framing = core._framing
    if framing is None:
        return
    limit = core.config.max_message_size
    if limit is not None:
        assert framing._size <= limit, f"reassembling {framing._size} bytes, limit {limit}"
    ws = framing._ws  # wsproto's frame reader: in use once the 101 is accepted
    reading = framing._accepted and ws.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING)
    tail = getattr(framing, "_tail", b"")  # the fast path's incomplete frame
    most = max(min(limit if limit is not None else TAIL_MAX, TAIL_MAX), 125) + MAX_FRAME_HEADER
    # (what followed a rejection's head in its read stays there, never read)
    assert len(tail) <= (most if reading else max(most, largest)), f"fast path holds {len(tail)}"
    head = getattr(framing, "_handshake", b"")  # the response head so far
    assert len(head) <= MAX_HEAD, f"handshake holds {len(head)} bytes"
    if framing._accepted:
        frames = ws._proto._frame_decoder.buffer
        parsing = not framing._dead and reading
        bound = (chunk if parsing else largest) + MAX_UNPARSED
        assert len(frames) <= bound, f"wsproto holds {len(frames)} bytes (parsing: {parsing})"


def subscription_overhead(core: FeedCore) -> int:
    """Room for the subscription frames queued on a 101 and one close frame."""
    return 256 + sum(len(s.payload) + MAX_FRAME_HEADER for s in core.subscriptions)


class ServerView:
    """A real wsproto *server* that reads what the core writes: the upgrade
    request, then frames.  It checks that the core writes only well-formed
    frames, at most one close frame, and nothing after it."""

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.requested = False
        self.messages: list[str | bytes] = []
        self._partial: list[Any] = []
        self.pings: list[bytes] = []
        self.close: CloseConnection | None = None

    def accept(self, subprotocol: str | None = None) -> bytes:
        """The server's 101 (call once the request was received)."""
        assert self.requested, "accept before the upgrade request arrived"
        return self.ws.send(AcceptConnection(subprotocol=subprotocol))

    def receive(self, data: bytes) -> None:
        assert self.close is None or self.ws.state is not ConnectionState.CLOSED, (
            f"the core wrote {data!r} after the close handshake completed")
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Request):
                self.requested = True
            elif isinstance(event, (TextMessage, BytesMessage)):
                self._partial.append(event.data)
                if event.message_finished:
                    parts, self._partial = self._partial, []
                    self.messages.append(
                        "".join(parts) if isinstance(parts[0], str) else b"".join(parts))
            elif isinstance(event, Ping):
                self.pings.append(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                assert self.ws.state is not ConnectionState.OPEN, (
                    f"the core wrote a malformed frame: the server saw {event}")
                assert self.close is None, "the core sent two close frames"
                self.close = event
