"""Test helpers: an in-memory client/server pair on :class:`nonstop.testing.FakeClock`.

``Pair`` connects a :class:`nonstop.core.FeedCore` to a real wsproto *server*
connection in memory, modelled on h11's ``ConnectionPair`` and aioquic's
``roundtrip``: bytes the core writes go to the server and vice versa, with no
socket, thread or sleep.  Time is whatever ``pair.now`` says.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

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

from nonstop.core import (
    CloseTransport,
    Config,
    Event,
    FeedCore,
    Message,
    Messages,
    OpenTransport,
    State,
)
from nonstop.testing import FakeClock


class PairClock(FakeClock):
    """:class:`nonstop.testing.FakeClock` whose ``now`` may also be assigned,
    forward only (``pair.clock.now = deadline``)."""

    __slots__ = ()

    @property
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, when: float) -> None:
        self.advance_to(when)


class Pair:
    """A core and an in-memory wsproto server, pumped by hand.

    ``events`` collects every event the core emitted, in order (effects too),
    with each ``Messages`` run expanded into one ``Message`` per message (the
    runs themselves are kept in ``batches``);
    ``server_messages`` every message the server received from the client.
    """

    def __init__(
        self,
        url: str = "ws://feed.example/stream",
        *,
        seed: int = 0,
        now: float = 1000.0,
        config: Config | None = None,
        auto_pong: bool = True,
        **options: Any,
    ) -> None:
        self.clock = PairClock(now)
        self.config = config if config is not None else Config(url=url, **options)
        self.core = FeedCore(self.config, rng=random.Random(seed))
        self.events: list[Event] = []
        self.server: WSConnection | None = None
        self.server_messages: list[str | bytes] = []
        self.server_pings: list[bytes] = []
        self.server_closes: list[CloseConnection] = []
        self.requests: list[Request] = []
        self.transport_open = False
        self.wire_to_server = bytearray()
        self.auto_pong = auto_pong
        self.opens: list[OpenTransport] = []
        self.batches: list[Messages] = []  # the Messages events as the core emitted them
        self.closes: list[CloseTransport] = []

    # -- time -----------------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.now

    def advance(self, seconds: float) -> None:
        """Move the clock; fire the core's timers that came due, in order."""
        target = self.clock.now + seconds
        while True:
            deadline = self.core.next_deadline()
            if deadline is None or deadline > target:
                break
            self.clock.now = max(deadline, self.clock.now)
            self.core.handle_timer(self.clock.now)
            self.pump()
        self.clock.now = target
        self.pump()

    def settle(self) -> list[Event]:
        """Run the timers already due at ``now``, as a driver's loop would
        right after an input (e.g. a protocol failure deferred behind the
        messages that preceded it).  Returns the new events."""
        out: list[Event] = []
        while (deadline := self.core.next_deadline()) is not None and deadline <= self.now:
            self.core.handle_timer(self.now)
            out += self.pump()
        return out

    def fire_next(self) -> float:
        """Jump to the next deadline exactly and fire it; return that time."""
        deadline = self.core.next_deadline()
        assert deadline is not None, "no deadline to fire"
        self.clock.now = max(deadline, self.clock.now)
        self.core.handle_timer(self.clock.now)
        self.pump()
        return self.clock.now

    # -- plumbing ---------------------------------------------------------
    def drain(self) -> list[Event]:
        new: list[Any] = []
        while (ev := self.core.next_event()) is not None:
            if isinstance(ev, Messages):
                self.batches.append(ev)
                new.extend(ev)  # one Message per message, for per-message assertions
                continue
            new.append(ev)
            if isinstance(ev, OpenTransport):
                self.opens.append(ev)
            elif isinstance(ev, CloseTransport):
                self.closes.append(ev)
                self.transport_open = False
                self.server = None
        self.events.extend(new)
        return new

    def pump(self) -> list[Event]:
        """Deliver the core's bytes to the server, answer pings, drain events."""
        data = self.core.data_to_send()
        if data and self.server is not None:
            self.wire_to_server += data
            self.server.receive_data(data)
            self._server_events()
        return self.drain()

    def _server_events(self) -> None:
        assert self.server is not None
        for ev in self.server.events():
            if isinstance(ev, Request):
                self.requests.append(ev)
            elif isinstance(ev, (TextMessage, BytesMessage)):
                assert ev.message_finished
                self.server_messages.append(ev.data)
            elif isinstance(ev, Ping):
                self.server_pings.append(bytes(ev.payload))
                if self.auto_pong:
                    self.feed(self.server.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                self.server_closes.append(ev)
                if self.server.state is ConnectionState.REMOTE_CLOSING:
                    self.feed(self.server.send(ev.response()))

    def feed(self, data: bytes) -> None:
        if data:
            self.core.receive_data(data, self.now)

    # -- lifecycle steps --------------------------------------------------
    def start(self) -> list[Event]:
        self.core.start(self.now)
        return self.pump()

    def open(self) -> list[Event]:
        """The driver opened TCP: the server sees the upgrade request."""
        self.server = WSConnection(ConnectionType.SERVER)
        self.transport_open = True
        self.core.transport_opened(self.now)
        return self.pump()

    def accept(self, subprotocol: str | None = None, extensions: list[Any] | None = None) -> list[Event]:
        """The server's 101 (with *extensions*, e.g. wsproto's
        ``PerMessageDeflate()``, if the request offered them)."""
        assert self.server is not None
        self.feed(self.server.send(AcceptConnection(subprotocol=subprotocol, extensions=extensions or [])))
        return self.pump()

    def reject(self, status: int, headers: Iterable[tuple[bytes, bytes]] = ()) -> list[Event]:
        assert self.server is not None
        self.feed(
            self.server.send(
                RejectConnection(status_code=status, headers=list(headers), has_body=False)
            )
        )
        return self.pump()

    def connect(self, subprotocol: str | None = None) -> list[Event]:
        """start (if idle) + open + accept; returns the new events."""
        out: list[Event] = []
        if self.core.state is State.IDLE:
            out += self.start()
        out += self.open()
        out += self.accept(subprotocol)
        return out

    def reconnect_after_backoff(self) -> list[Event]:
        """From BACKOFF: fire the retry timer, open and accept."""
        assert self.core.state is State.BACKOFF
        self.fire_next()
        out = self.open()
        out += self.accept()
        return out

    def send_text(self, text: str) -> list[Event]:
        assert self.server is not None
        self.feed(self.server.send(TextMessage(data=text)))
        return self.pump()

    def send_bytes(self, data: bytes) -> list[Event]:
        assert self.server is not None
        self.feed(self.server.send(BytesMessage(data=data)))
        return self.pump()

    def server_close(self, code: int = 1000, reason: str = "") -> list[Event]:
        assert self.server is not None
        self.feed(self.server.send(CloseConnection(code=code, reason=reason)))
        return self.pump()

    def server_pong(self, payload: bytes) -> list[Event]:
        assert self.server is not None
        self.feed(self.server.send(Pong(payload=payload)))
        return self.pump()

    def eof(self) -> list[Event]:
        self.core.receive_eof(self.now)
        return self.pump()

    # -- queries ------------------------------------------------------------
    def of(self, kind: type[Any], events: Iterable[Event] | None = None) -> list[Any]:
        return [e for e in (self.events if events is None else events) if isinstance(e, kind)]

    def messages(self) -> list[str | bytes]:
        return [e.data for e in self.of(Message)]


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
          mask: bytes | None = None) -> bytes:
    """Hand-build one frame (server-to-client frames are unmasked)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        header = bytes([first, mask_bit | n])
    elif n < 65536:
        header = bytes([first, mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([first, mask_bit | 127]) + n.to_bytes(8, "big")
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header += mask
    return header + payload


def pair_in(state: str, **options: Any) -> Pair:
    """A :class:`Pair` (keep-alive off) in the state named *state*, reached
    the same way every time."""
    pair = Pair(**{"ping_interval": None, **options})
    steps: dict[str, list[Callable[[], object]]] = {
        "connecting": [pair.start],
        "handshaking": [pair.start, pair.open],
        "open": [pair.connect],
        "closing": [pair.connect, lambda: pair.server_close(1000)],
        "backoff": [pair.connect, pair.eof],
        "stopping": [pair.connect, lambda: pair.core.stop(pair.now)],
        "stopped": [lambda: pair.core.stop(pair.now)],
    }
    for step in steps.get(state, []):
        step()
        pair.pump()
    assert pair.core.state.value == state
    return pair


def unframe(data: bytes, *, masked: bool) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split *data* into whole frames: ``([(first byte, unmasked payload)],
    the incomplete tail)``.  *masked*: client frames (each must carry a
    mask), else server frames (none may)."""
    frames: list[tuple[int, bytes]] = []
    i = 0
    while len(data) - i >= 2:
        first, second = data[i], data[i + 1]
        assert bool(second & 0x80) is masked, "client frames are masked, server frames are not"
        n, at = second & 0x7F, i + 2
        if n >= 126:
            width = 2 if n == 126 else 8
            if len(data) - at < width:
                break
            n, at = int.from_bytes(data[at:at + width], "big"), at + width
        mask = data[at:at + 4] if masked else b""
        at += len(mask)
        if len(mask) < (4 if masked else 0) or len(data) - at < n:
            break
        payload = data[at:at + n]
        if masked:
            payload = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
        frames.append((first, payload))
        i = at + n
    return frames, data[i:]


def client_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """The client's frames in *data* (all whole): ``(opcode, fin, payload)``."""
    frames, tail = unframe(data, masked=True)
    assert tail == b"", "truncated client frame"
    return [(first & 0x0F, bool(first & 0x80), payload) for first, payload in frames]


def collect(events: Iterable[Event], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


Matcher = Callable[[str | bytes], bool]
