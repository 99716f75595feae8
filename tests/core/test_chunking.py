"""Chunking never changes what the core decides.

A scripted server byte stream (the 101 response, then text and binary
messages, some fragmented, pings and pongs, optionally a bad frame and a close
frame) is fed to fresh cores in one chunk, byte by byte and split at arbitrary
boundaries.  Every run must produce the same events and write the same frames
and the one-chunk run must
match what the script says should happen.

Client frames are masked with a random key, so the bytes the core writes are
compared after unmasking, close reasons included: the reason text of a 1007 or
1009 must not depend on where the chunk boundaries fell.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.utilities import generate_accept_token

from nonstop.core import (
    Alert,
    CloseTransport,
    Config,
    Connected,
    Connecting,
    Disconnected,
    Event,
    FeedCore,
    Message,
    Messages,
    OpenTransport,
    Reason,
    State,
    Stopped,
    Subscribed,
    Subscription,
)
from tests.helpers import client_frames, frame

NOW = 1000.0
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
OPEN_TRANSPORT_STATES = (State.HANDSHAKING, State.OPEN, State.CLOSING, State.STOPPING)


# -- the script -------------------------------------------------------------
@dataclass(frozen=True)
class Msg:
    """A message, sent as ``len(cuts) + 1`` frames (cuts are byte offsets, so a
    text fragment boundary may fall inside a UTF-8 sequence, as RFC 6455 5.4
    allows), with an optional ping after the first fragment."""

    data: str | bytes
    cuts: tuple[int, ...] = ()
    ping_inside: bytes | None = None

    @property
    def raw(self) -> bytes:
        return self.data.encode("utf-8") if isinstance(self.data, str) else self.data


@dataclass(frozen=True)
class Ctl:
    opcode: int  # PING or PONG
    payload: bytes


@dataclass(frozen=True)
class BadFrame:
    """A frame the core must fail the connection on, with the expected outcome."""

    data: bytes
    reason: Reason
    code: int


@dataclass(frozen=True)
class Script:
    items: list[Msg | Ctl]
    bad: BadFrame | None
    close: tuple[int, str] | None  # (code, reason); code 1005: an empty close frame
    trailer: bytes  # bytes after the close frame, to be ignored
    max_message_size: int | None


def encode_items(script: Script) -> bytes:
    out = bytearray()
    for item in script.items:
        if isinstance(item, Ctl):
            out += frame(item.opcode, item.payload)
            continue
        raw = item.raw
        bounds = [0, *item.cuts, len(raw)]
        pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
        for i, piece in enumerate(pieces):
            opcode = (TEXT if isinstance(item.data, str) else BINARY) if i == 0 else CONT
            out += frame(opcode, piece, fin=i == len(pieces) - 1)
            if i == 0 and len(pieces) > 1 and item.ping_inside is not None:
                out += frame(PING, item.ping_inside)
    if script.bad is not None:
        out += script.bad.data
    if script.close is not None:
        code, reason = script.close
        payload = b"" if code == 1005 else code.to_bytes(2, "big") + reason.encode("utf-8")
        out += frame(CLOSE, payload)
        out += script.trailer
    return bytes(out)


def response_101(request: bytes) -> bytes:
    """A valid upgrade response for the core's request (its own nonce)."""
    head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    keys = [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]
            if line.split(":", 1)[0].strip().lower() == "sec-websocket-key"]
    assert len(keys) == 1, head
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {generate_accept_token(keys[0].encode('ascii')).decode('ascii')}"
        "\r\n\r\n"
    ).encode("ascii")


# -- strategies -------------------------------------------------------------
@st.composite
def messages(draw: st.DrawFn) -> Msg:
    data: str | bytes = draw(st.one_of(
        st.just("ack"),
        st.text(max_size=30),
        st.binary(max_size=40),
        st.binary(min_size=126, max_size=200),  # 16-bit extended length
    ))
    raw = data.encode("utf-8") if isinstance(data, str) else data
    cuts: tuple[int, ...] = ()
    if raw and draw(st.booleans()):
        cuts = tuple(sorted(draw(st.sets(st.integers(0, len(raw)), max_size=3))))
    ping = draw(st.none() | st.binary(max_size=8))
    return Msg(data, cuts, ping)


controls = st.builds(Ctl, st.sampled_from([PING, PONG]), st.binary(max_size=125))

bad_frames = st.sampled_from([
    BadFrame(frame(TEXT, b"ok\xff"), Reason.INVALID_DATA, 1007),
    BadFrame(frame(0x3, b""), Reason.PROTOCOL_ERROR, 1002),  # reserved opcode
    BadFrame(frame(TEXT, b"x", rsv=4), Reason.PROTOCOL_ERROR, 1002),  # RSV1, no extension
    BadFrame(frame(TEXT, b"x", mask=b"abcd"), Reason.PROTOCOL_ERROR, 1002),  # masked by server
    BadFrame(frame(CONT, b"x"), Reason.PROTOCOL_ERROR, 1002),  # continuation out of nowhere
    BadFrame(frame(PING, b"p" * 126), Reason.PROTOCOL_ERROR, 1002),  # control frame too long
    BadFrame(frame(PING, b"", fin=False), Reason.PROTOCOL_ERROR, 1002),  # fragmented control
])

scripts = st.builds(
    Script,
    items=st.lists(st.one_of(messages(), controls), max_size=8),
    bad=st.none() | bad_frames,
    close=st.none() | st.tuples(st.sampled_from([1000, 1001, 1005, 1011, 3000, 4999]),
                                st.text(max_size=10)),
    trailer=st.binary(max_size=10),
    max_message_size=st.none() | st.integers(16, 150),
)


# -- running a core -------------------------------------------------------------
@dataclass
class Run:
    events: list[Event] = field(default_factory=list)
    written: bytearray = field(default_factory=bytearray)


def new_core(script: Script, seed: int) -> FeedCore:
    config = Config(
        url="ws://feed.example/stream",
        subscriptions=[Subscription(message="sub", ack=lambda m: m == "ack")],
        max_message_size=script.max_message_size,
        failure_grace=0.0,  # a deferred protocol failure is due at once: drain() runs it
    )
    return FeedCore(config, rng=random.Random(seed))


def drain(core: FeedCore, run: Run) -> bool:
    """Collect output, then run the timers that are due (a protocol failure
    is acted on by the timer due at once), as the driver loop does.  Return
    True once the core closed the transport."""
    closed = False
    while True:
        run.written += core.data_to_send()
        while (event := core.next_event()) is not None:
            if isinstance(event, Messages):
                run.events.extend(event)  # one Message per message
                continue
            run.events.append(event)
            closed = closed or isinstance(event, CloseTransport)
        deadline = core.next_deadline()
        if deadline is None or deadline > NOW:
            return closed
        core.handle_timer(NOW)


def run_script(script: Script, seed: int, split: list[int] | None) -> Run:
    """Feed the script cut at *split* offsets (``None``: byte by byte), then EOF.

    Like a driver, stop feeding once the core asked to close the transport.
    """
    core = new_core(script, seed)
    core.start(NOW)
    core.transport_opened(NOW)
    request = core.data_to_send()
    run = Run()
    drain(core, run)
    stream = response_101(request) + encode_items(script)
    bounds = list(range(len(stream) + 1)) if split is None else [0, *split, len(stream)]
    for a, b in itertools.pairwise(bounds):
        if b > a:
            core.receive_data(stream[a:b], NOW)
            if drain(core, run):
                return run
    assert core.state in OPEN_TRANSPORT_STATES
    core.receive_eof(NOW)
    assert drain(core, run), "EOF must close the transport"
    return run


def project(event: Event) -> tuple[object, ...]:
    """What must not depend on chunking (not free-text details)."""
    if isinstance(event, Message):
        return ("Message", event.data, event.connection)
    if isinstance(event, Disconnected):
        return ("Disconnected", event.reason, event.code, event.status, event.retry_in)
    if isinstance(event, Subscribed):
        return ("Subscribed", event.subscription.payload, event.acked)
    if isinstance(event, CloseTransport):
        return ("CloseTransport", event.abort)
    if isinstance(event, Connected):
        return ("Connected", event.connection, event.subprotocol)
    if isinstance(event, Alert):
        return ("Alert", event.kind, event.active)
    if isinstance(event, Stopped):
        return ("Stopped", event.reason)
    assert isinstance(event, (Connecting, OpenTransport))
    return (type(event).__name__,)


# -- what the script says should happen ---------------------------------------
@dataclass
class Expected:
    messages: list[str | bytes]
    pongs: list[bytes]
    failure: tuple[Reason, int | None]
    close_code: bytes | None  # the code in the client's close frame (b"": none)


def expect(script: Script) -> Expected:
    limit = script.max_message_size
    messages: list[str | bytes] = []
    pongs: list[bytes] = []

    def too_big(n: int) -> bool:
        return limit is not None and n > limit

    def failed(reason: Reason, code: int) -> Expected:
        return Expected(messages, pongs, (reason, code), code.to_bytes(2, "big"))

    for item in script.items:
        if isinstance(item, Ctl):
            if item.opcode == PING:
                pongs.append(item.payload)
            continue
        raw = item.raw
        first = raw[: item.cuts[0]] if item.cuts else raw
        if too_big(len(first)):
            return failed(Reason.MESSAGE_TOO_BIG, 1009)
        if item.cuts and item.ping_inside is not None:
            pongs.append(item.ping_inside)
        if too_big(len(raw)):
            return failed(Reason.MESSAGE_TOO_BIG, 1009)
        messages.append(item.data)
    if script.bad is not None:
        return failed(script.bad.reason, script.bad.code)
    if script.close is None:
        return Expected(messages, pongs, (Reason.EOF, 1006), None)
    code = script.close[0]
    if code == 1005:
        return Expected(messages, pongs, (Reason.SERVER_CLOSED, None), b"")
    return Expected(messages, pongs, (Reason.SERVER_CLOSED, code), code.to_bytes(2, "big"))


def check_against_script(script: Script, run: Run) -> None:
    want = expect(script)
    assert [e.data for e in run.events if isinstance(e, Message)] == want.messages
    frames = client_frames(bytes(run.written))
    assert [p for op, _, p in frames if op == PONG] == want.pongs
    assert [op for op, _, _ in frames if op not in (PONG, TEXT)] == (
        [] if want.close_code is None else [CLOSE])
    if want.close_code is not None:
        assert frames[-1][:2] == (CLOSE, True)
        assert frames[-1][2][:2] == want.close_code
    disconnects = [e for e in run.events if isinstance(e, Disconnected)]
    assert [(d.reason, d.code) for d in disconnects] == [want.failure]
    acked = [e.acked for e in run.events if isinstance(e, Subscribed)]
    assert acked == ([True] if "ack" in want.messages else [])


# -- the properties -----------------------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_chunking_does_not_change_events_or_output(script: Script, seed: int, data: st.DataObject) -> None:
    whole = run_script(script, seed, [])
    check_against_script(script, whole)
    # The stream's length does not depend on the nonce (the accept token is 28 chars).
    probe = new_core(script, seed)
    probe.start(NOW)
    probe.transport_opened(NOW)
    stream_len = len(response_101(probe.data_to_send()) + encode_items(script))
    cuts = sorted(data.draw(st.sets(st.integers(1, stream_len - 1), max_size=30), label="cuts"))
    for other in (run_script(script, seed, cuts), run_script(script, seed, None)):
        assert [project(e) for e in other.events] == [project(e) for e in whole.events]
        assert client_frames(bytes(other.written)) == client_frames(bytes(whole.written))


def test_a_64_bit_length_message_split_anywhere_is_one_message() -> None:
    """A 70 000-byte binary message (8-byte length field) in one chunk or in
    200 random pieces (the 101 comes in its own chunk in both runs)."""
    payload = bytes(range(256)) * 273 + b"end"
    script = Script([Msg(payload, (1, 65_536)), Ctl(PING, b"after")], None, (1000, "bye"), b"",
                    None)
    fake_request = b"GET / HTTP/1.1\r\nSec-WebSocket-Key: x\r\n\r\n"
    head = len(response_101(fake_request))
    stream_len = head + len(encode_items(script))
    whole = run_script(script, 7, [head])
    check_against_script(script, whole)
    rng = random.Random(7)
    cuts = sorted({head, *rng.sample(range(head + 1, stream_len), 200)})
    split = run_script(script, 7, cuts)
    assert [project(e) for e in split.events] == [project(e) for e in whole.events]
    assert client_frames(bytes(split.written)) == client_frames(bytes(whole.written))
