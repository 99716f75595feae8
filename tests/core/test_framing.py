"""Framing: messages, fragmentation, control frames, the
close handshake and every way a server can break RFC 6455.

A peer's misbehaviour never raises out of ``receive_data``: it becomes our
close frame with the right code (1002, 1007, 1009) and a ``Disconnected``.
Server frames are hand-built with ``helpers.frame``; what the core writes is
decoded with :func:`written_frames`.  The clock starts at 1000.0.
"""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)

from nonstop.core import (
    ERROR,
    INFO,
    Alert,
    AlertKind,
    Backoff,
    CloseTransport,
    Connected,
    Connecting,
    Disconnected,
    LocalProtocolError,
    Message,
    NotConnected,
    OpenTransport,
    Reason,
    State,
    Stopped,
    _framing,
)
from tests.helpers import Pair, client_frames, frame, pair_in

NOW = 1000.0
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def open_pair(**options: object) -> Pair:
    """A connected pair without pings, exact backoff (0.5 s) and close_timeout 5 s.

    ``failure_grace=0``: a protocol failure found after messages of the same
    read is due at once, so ``feed`` (which runs what is due now) sees it.
    """
    options.setdefault("ping_interval", None)
    options.setdefault("failure_grace", 0.0)
    options.setdefault("backoff", Backoff(jitter=0))
    pair = Pair(**options)
    pair.connect()
    assert pair.core.state is State.OPEN
    return pair


def written_frames(pair: Pair) -> list[tuple[int, bool, bytes]]:
    """Decode every frame the core wrote: ``(opcode, fin, unmasked payload)``."""
    return client_frames(bytes(pair.wire_to_server).split(b"\r\n\r\n", 1)[1])


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode("utf-8")


def sent_closes(pair: Pair) -> list[bytes]:
    return [payload for op, _, payload in written_frames(pair) if op == CLOSE]


def feed(pair: Pair, data: bytes) -> list[object]:
    """Feed *data*, then run what is due now, as a driver would."""
    pair.feed(data)
    return list(pair.pump()) + list(pair.settle())


def failure(reason: Reason, code: int, detail: str, *, now: float = NOW,
            connection: int = 1, failures: int = 1) -> Disconnected:
    return Disconnected(reason=reason, code=code, status=None, detail=detail, level=ERROR,
                        connection=connection, uptime=now - NOW, failures=failures,
                        retry_in=0.5, retry_at=now + 0.5)


# ---------------------------------------------------------------------------
# messages


def test_text_message_is_delivered_as_str() -> None:
    pair = open_pair()
    pair.advance(2.5)
    assert pair.send_text("hello \u00e9\u4e16") == [
        Message(data="hello \u00e9\u4e16", connection=1, received_at=1002.5)]


def test_binary_message_is_delivered_as_bytes() -> None:
    pair = open_pair()
    [event] = pair.send_bytes(b"\x00\xff\x10")
    assert isinstance(event, Message) and event.data == b"\x00\xff\x10"
    assert type(event.data) is bytes


@pytest.mark.parametrize(("opcode", "expected"), [(TEXT, ""), (BINARY, b"")])
def test_empty_messages_are_delivered(opcode: int, expected: str | bytes) -> None:
    pair = open_pair()
    feed(pair, frame(opcode, b""))
    assert pair.messages() == [expected]


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 70000])
def test_every_length_encoding_is_read(size: int) -> None:
    pair = open_pair(max_message_size=None)
    payload = bytes(i % 251 for i in range(size))
    feed(pair, frame(BINARY, payload))
    assert pair.messages() == [payload]


def test_several_messages_in_one_chunk_keep_their_order() -> None:
    pair = open_pair()
    feed(pair, frame(TEXT, b"a") + frame(BINARY, b"b") + frame(TEXT, b"c"))
    assert pair.messages() == ["a", b"b", "c"]


def test_message_split_across_chunks_is_delivered_once_complete() -> None:
    pair = open_pair()
    data = frame(TEXT, b"split message")
    assert feed(pair, data[:5]) == []
    assert feed(pair, data[5:]) == [Message(data="split message", connection=1,
                                            received_at=NOW)]


def test_received_at_is_the_time_of_the_completing_chunk() -> None:
    pair = open_pair()
    data = frame(TEXT, b"slow")
    feed(pair, data[:3])
    pair.advance(1.25)
    feed(pair, data[3:])
    assert pair.of(Message)[0].received_at == 1001.25


# ---------------------------------------------------------------------------
# what the core sends


def test_application_messages_go_out_as_text_and_binary_frames() -> None:
    pair = open_pair()
    pair.core.send("caf\u00e9", NOW)
    pair.core.send(b"\x00\x01", NOW)
    pair.core.send({"op": "ping", "n": [1]}, NOW)
    pair.pump()
    assert written_frames(pair) == [
        (TEXT, True, "caf\u00e9".encode()), (BINARY, True, b"\x00\x01"),
        (TEXT, True, b'{"op":"ping","n":[1]}')]
    assert pair.server_messages == ["caf\u00e9", b"\x00\x01", '{"op":"ping","n":[1]}']


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 70_001])
def test_every_length_is_written_as_wsproto_reads_it(size: int) -> None:
    """Data frames are serialized and masked by us, not wsproto: wsproto's
    server side must read back exactly what was sent, at every length."""
    pair = open_pair()
    text = "\u00e9" * size  # two UTF-8 bytes per character
    binary = (bytes(range(256)) * (size // 256 + 1))[:size]
    pair.core.send(text, NOW)
    pair.core.send(binary, NOW)
    pair.pump()
    assert pair.server_messages == [text, binary]
    assert [(op, fin, len(p)) for op, fin, p in written_frames(pair)] == [
        (TEXT, True, 2 * size), (BINARY, True, size)]


def test_masking_keys_are_fresh_and_drawn_from_the_os_in_pools(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = _framing.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(_framing, "urandom", counting)
    pair = open_pair()
    start = len(pair.wire_to_server)
    for _ in range(1500):
        pair.core.send("x", NOW)
    pair.pump()
    wire = bytes(pair.wire_to_server)[start:]
    keys = {wire[i + 2:i + 6] for i in range(0, len(wire), 7)}  # 2 + 4 + 1 bytes each
    assert len(wire) == 1500 * 7
    assert len(keys) > 1490  # 32 random bits each: a repeat or two at most
    assert calls == [16, 4096, 4096]  # the handshake's key, then 1,024 masking keys per call


def test_the_fork_hook_makes_every_connection_draw_a_new_key_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = _framing.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(_framing, "urandom", counting)
    pair = open_pair()
    pair.core.send("x", NOW)
    pair.core.send("x", NOW)
    assert calls == [16, 4096]  # the handshake's key, then one pool for many masking keys
    _framing._forked()  # what os.register_at_fork runs in a child
    pair.core.send("x", NOW)
    assert calls == [16, 4096, 4096]  # the pool drawn before the fork is gone


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_never_reuses_the_parents_masking_keys() -> None:
    pair = open_pair()
    pair.core.send("x", NOW)  # the pool is drawn before the fork
    pair.pump()

    def next_key() -> bytes:
        start = len(pair.wire_to_server)
        pair.core.send("y", NOW)
        pair.pump()
        return bytes(pair.wire_to_server)[start + 2:start + 6]

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next key, and leave without cleanup
        try:
            os.write(w, next_key())
        finally:
            os._exit(0)
    os.close(w)
    try:
        child_key = os.read(r, 4)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert len(child_key) == 4 and child_key != next_key()


def test_protocol_ping_goes_out_as_a_ping_frame() -> None:
    pair = open_pair(ping_interval=5.0, auto_pong=False)
    assert pair.fire_next() == 1005.0
    assert written_frames(pair) == [(PING, True, (1).to_bytes(4, "big"))]
    assert pair.server_pings == [(1).to_bytes(4, "big")]


# ---------------------------------------------------------------------------
# fragmentation


def test_fragmented_text_message_is_joined() -> None:
    pair = open_pair()
    events = feed(pair, frame(TEXT, b"hel", fin=False) + frame(CONT, b"lo ", fin=False)
                  + frame(CONT, b"world"))
    assert events == [Message(data="hello world", connection=1, received_at=NOW)]


def test_fragmented_binary_message_is_joined_as_bytes() -> None:
    pair = open_pair()
    feed(pair, frame(BINARY, b"\x01\x02", fin=False) + frame(CONT, b"\x03"))
    assert pair.messages() == [b"\x01\x02\x03"]
    assert type(pair.messages()[0]) is bytes


def test_fragments_in_separate_chunks_deliver_nothing_until_the_last() -> None:
    pair = open_pair()
    assert feed(pair, frame(TEXT, b"a", fin=False)) == []
    assert feed(pair, frame(CONT, b"b", fin=False)) == []
    assert feed(pair, frame(CONT, b"c")) == [Message(data="abc", connection=1, received_at=NOW)]


def test_utf8_sequence_split_across_fragments() -> None:
    pair = open_pair()
    feed(pair, frame(TEXT, b"caf\xc3", fin=False) + frame(CONT, b"\xa9"))
    assert pair.messages() == ["caf\u00e9"]


def test_empty_fragments_are_allowed() -> None:
    pair = open_pair()
    feed(pair, frame(BINARY, b"", fin=False) + frame(CONT, b"x", fin=False) + frame(CONT, b""))
    assert pair.messages() == [b"x"]


def test_fragmented_messages_back_to_back() -> None:
    pair = open_pair()
    feed(pair, frame(TEXT, b"a", fin=False) + frame(CONT, b"b")
         + frame(BINARY, b"c", fin=False) + frame(CONT, b"d"))
    assert pair.messages() == ["ab", b"cd"]


def test_ping_inside_a_fragmented_message_is_answered_at_once() -> None:
    pair = open_pair()
    events = feed(pair, frame(TEXT, b"hel", fin=False) + frame(PING, b"mid"))
    assert events == []
    assert written_frames(pair) == [(PONG, True, b"mid")]
    feed(pair, frame(CONT, b"lo"))
    assert pair.messages() == ["hello"]


def test_pong_inside_a_fragmented_message_is_swallowed() -> None:
    pair = open_pair()
    events = feed(pair, frame(BINARY, b"a", fin=False) + frame(PONG, b"x") + frame(CONT, b"b"))
    assert events == [Message(data=b"ab", connection=1, received_at=NOW)]
    assert written_frames(pair) == []


def test_server_close_inside_a_fragmented_message_drops_the_partial_message() -> None:
    pair = open_pair()
    events = feed(pair, frame(TEXT, b"part", fin=False) + frame(CLOSE, close_payload(1001)))
    assert [type(e) for e in events] == [Disconnected]
    assert pair.of(Message) == []
    assert sent_closes(pair) == [close_payload(1001)]


# ---------------------------------------------------------------------------
# pings and pongs


@pytest.mark.parametrize("payload", [b"", b"abc", bytes(range(125))])
def test_server_ping_is_answered_with_the_same_payload(payload: bytes) -> None:
    pair = open_pair()
    assert feed(pair, frame(PING, payload)) == []
    assert written_frames(pair) == [(PONG, True, payload)]


def test_server_ping_via_wsproto_gets_a_pong_the_server_understands() -> None:
    pair = open_pair()
    assert pair.server is not None
    pair.feed(pair.server.send(Ping(payload=b"are you there")))
    pair.server.receive_data(pair.core.data_to_send())
    assert list(pair.server.events()) == [Pong(payload=b"are you there")]


def test_every_ping_gets_its_own_pong() -> None:
    pair = open_pair()
    feed(pair, frame(PING, b"1") + frame(TEXT, b"m") + frame(PING, b"2"))
    assert written_frames(pair) == [(PONG, True, b"1"), (PONG, True, b"2")]
    assert pair.messages() == ["m"]


def test_unsolicited_pong_is_ignored() -> None:
    pair = open_pair()
    assert feed(pair, frame(PONG, b"whatever")) == []
    assert written_frames(pair) == []
    assert pair.core.state is State.OPEN


# ---------------------------------------------------------------------------
# invalid UTF-8: 1007


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (frame(TEXT, b"\xff\xfe"), "invalid start byte"),
        (frame(TEXT, b"caf\xc3"), "unexpected end of data"),
        (frame(TEXT, b"ok", fin=False) + frame(CONT, b"\xff"), "invalid start byte"),
        (frame(TEXT, b"caf\xc3", fin=False) + frame(CONT, b""), "unexpected end of data"),
        (frame(TEXT, b"\xed\xa0\x80"), "invalid continuation byte"),  # a UTF-16 surrogate
    ],
    ids=["bad-start", "truncated", "bad-fragment", "truncated-fragmented", "surrogate"],
)
def test_invalid_utf8_closes_with_1007(data: bytes, detail: str) -> None:
    pair = open_pair()
    events = feed(pair, data)
    [disc] = events
    assert isinstance(disc, Disconnected)
    assert (disc.reason, disc.code, disc.level, disc.connection, disc.retry_in) == (
        Reason.INVALID_DATA, 1007, ERROR, 1, 0.5)
    assert detail in disc.detail
    [sent] = sent_closes(pair)
    assert sent[:2] == (1007).to_bytes(2, "big")
    assert pair.core.state is State.CLOSING
    assert pair.of(Message) == []


def test_invalid_utf8_in_a_close_reason_closes_with_1007() -> None:
    pair = open_pair()
    [disc] = feed(pair, frame(CLOSE, close_payload(1000) + b"\xff"))
    assert isinstance(disc, Disconnected)
    assert (disc.reason, disc.code) == (Reason.INVALID_DATA, 1007)
    assert sent_closes(pair)[0][:2] == (1007).to_bytes(2, "big")


def test_binary_message_is_not_checked_for_utf8() -> None:
    pair = open_pair()
    feed(pair, frame(BINARY, b"\xff\xfe"))
    assert pair.messages() == [b"\xff\xfe"]


# ---------------------------------------------------------------------------
# protocol errors: 1002


PROTOCOL_ERRORS = {
    "reserved-data-opcode": (frame(0x3, b"x"), "Invalid opcode 0x3"),
    "reserved-control-opcode": (frame(0xB, b"x"), "Invalid opcode 0xb"),
    "rsv1": (frame(TEXT, b"x", rsv=4), "Reserved bit set unexpectedly"),
    "rsv2": (frame(TEXT, b"x", rsv=2), "Reserved bit set unexpectedly"),
    "rsv3": (frame(BINARY, b"x", rsv=1), "Reserved bit set unexpectedly"),
    "masked": (frame(TEXT, b"x", mask=b"abcd"), "client received unexpected masked frame"),
    "continuation-without-start": (frame(CONT, b"x"), "unexpected CONTINUATION"),
    "new-message-inside-fragmented": (
        frame(TEXT, b"a", fin=False) + frame(BINARY, b"b"), "expected CONTINUATION"),
    "control-frame-over-125": (frame(PING, b"x" * 126), "Control frame with payload len > 125"),
    "fragmented-control-frame": (frame(PING, b"x", fin=False),
                                 "Invalid attempt to fragment control frame"),
    "close-with-one-byte": (frame(CLOSE, b"\x03"), "CLOSE with 1 byte payload"),
    "close-with-invalid-code": (frame(CLOSE, close_payload(999)), "CLOSE with invalid code"),
    "close-with-local-only-code": (frame(CLOSE, close_payload(1006)), "local-only"),
}


@pytest.mark.parametrize(("data", "detail"), PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_error_closes_with_1002(data: bytes, detail: str) -> None:
    pair = open_pair()
    [disc] = feed(pair, data)
    assert isinstance(disc, Disconnected)
    assert (disc.reason, disc.code, disc.status, disc.level, disc.connection, disc.failures,
            disc.retry_in, disc.retry_at) == (
        Reason.PROTOCOL_ERROR, 1002, None, ERROR, 1, 1, 0.5, 1000.5)
    assert detail in disc.detail
    [sent] = sent_closes(pair)
    assert sent[:2] == (1002).to_bytes(2, "big")
    assert pair.server_closes[0].code == 1002
    assert pair.core.state is State.CLOSING
    assert pair.core.next_deadline() == 1005.0


def test_protocol_error_is_never_an_exception_even_byte_by_byte() -> None:
    pair = open_pair()
    for byte in frame(0x3, b"abc") + frame(TEXT, b"later"):
        if pair.core.state is State.OPEN:
            feed(pair, bytes([byte]))
    assert [(d.reason, d.code) for d in pair.of(Disconnected)] == [(Reason.PROTOCOL_ERROR, 1002)]
    assert pair.of(Message) == []


def test_messages_before_the_bad_frame_are_delivered_and_after_it_discarded() -> None:
    pair = open_pair()
    events = feed(pair, frame(TEXT, b"ok") + frame(0x3, b"") + frame(TEXT, b"lost"))
    assert [type(e) for e in events] == [Message, Disconnected]
    assert pair.messages() == ["ok"]


def test_the_application_may_answer_messages_that_came_before_a_bad_frame() -> None:
    """Autobahn 3.2/5.15: the failure waits (due at once) behind the messages
    of the same chunk, so an echo goes out before our close frame."""
    pair = open_pair()
    pair.feed(frame(TEXT, b"ok") + frame(0x3, b"") + frame(PING, b""))
    assert [type(e) for e in pair.pump()] == [Message]
    assert pair.core.failure_pending
    assert pair.core.state is State.OPEN
    assert pair.core.next_deadline() == pair.now
    pair.core.send("echo ok", pair.now)
    pair.core.handle_timer(pair.now)
    [disc] = pair.pump()
    assert isinstance(disc, Disconnected) and disc.code == 1002
    assert not pair.core.failure_pending
    assert pair.server_messages == ["echo ok"]
    assert [c.code for c in pair.server_closes] == [1002]
    assert pair.server_pings == []  # nothing after the bad frame was answered


def test_a_deferred_failure_is_superseded_by_whatever_ends_the_connection_first() -> None:
    pair = open_pair()
    pair.feed(frame(TEXT, b"ok") + frame(0x3, b""))
    pair.pump()
    [disc] = pair.eof()[:1]
    assert isinstance(disc, Disconnected) and disc.reason is Reason.EOF
    assert not pair.core.failure_pending


# -- the grace before a deferred failure (failure_grace) and caught_up()


def bad_after_good(pair: Pair) -> list[object]:
    """A message and a bad frame in one read: the message, the failure deferred."""
    pair.feed(frame(TEXT, b"ok") + frame(0x3, b"") + frame(PING, b""))
    return list(pair.pump())


def test_a_deferred_failure_is_due_failure_grace_after_it_was_detected() -> None:
    pair = open_pair(failure_grace=2.5)
    pair.advance(1.0)
    detected = pair.now
    assert [type(e) for e in bad_after_good(pair)] == [Message]
    assert pair.core.failure_pending
    assert pair.core.next_deadline() == detected + 2.5
    pair.advance(2.4)
    assert pair.core.state is State.OPEN and pair.core.failure_pending
    assert pair.fire_next() == detected + 2.5
    assert pair.of(Disconnected) == [
        failure(Reason.PROTOCOL_ERROR, 1002, pair.of(Disconnected)[0].detail, now=detected + 2.5)]
    assert not pair.core.failure_pending
    assert [c.code for c in pair.server_closes] == [1002]
    assert pair.server_pings == []
    assert pair.core.next_deadline() == detected + 2.5 + 5.0  # close_timeout


def test_while_a_failure_waits_the_connections_other_timers_wait() -> None:
    """No ping, silence, ACK or stable timer fires on a connection that is
    failing: its fate is decided, only the grace is left."""
    pair = open_pair(failure_grace=3.0, ping_interval=0.5, silence_timeout=1.0, stable_after=0.25)
    bad_after_good(pair)
    assert pair.core.next_deadline() == NOW + 3.0
    pair.advance(3.0)
    [disc] = pair.of(Disconnected)
    assert (disc.reason, disc.code, disc.failures) == (Reason.PROTOCOL_ERROR, 1002, 1)
    assert pair.server_pings == []


def test_caught_up_fails_a_deferred_failure_at_once() -> None:
    pair = open_pair(failure_grace=10.0)
    bad_after_good(pair)
    pair.advance(0.3)
    pair.core.send("echo ok", pair.now)
    assert pair.pump() == []
    pair.core.caught_up(pair.now)
    [disc] = pair.pump()
    assert disc == failure(Reason.PROTOCOL_ERROR, 1002, disc.detail, now=NOW + 0.3)
    assert not pair.core.failure_pending
    assert pair.core.state is State.CLOSING
    assert pair.server_messages == ["echo ok"]
    assert [c.code for c in pair.server_closes] == [1002]
    assert pair.core.next_deadline() == NOW + 0.3 + 5.0
    pair.core.caught_up(pair.now)  # again: nothing more
    assert pair.pump() == [] and pair.core.data_to_send() == b""
    assert [c.code for c in pair.server_closes] == [1002]


def test_caught_up_with_a_zero_grace_is_the_timer_due_now() -> None:
    timer, caught = open_pair(), open_pair()
    bad_after_good(timer)
    bad_after_good(caught)
    timer.core.handle_timer(timer.now)
    caught.core.caught_up(caught.now)
    assert timer.pump() == caught.pump()
    assert [c.code for c in timer.server_closes] == [c.code for c in caught.server_closes] == [1002]


def caught_up_changes_nothing(pair: Pair) -> None:
    state, deadline, pending = pair.core.state, pair.core.next_deadline(), pair.core.pending_output
    metrics = pair.core.metrics(pair.now)
    pair.core.caught_up(pair.now)
    pair.core.caught_up(pair.now)
    assert (pair.core.state, pair.core.next_deadline(), pair.core.pending_output) == (
        state, deadline, pending)
    assert pair.core.next_event() is None
    assert pair.core.metrics(pair.now) == metrics


@pytest.mark.parametrize("when", ["idle", "connecting", "handshaking", "open", "closing",
                                  "backoff", "stopping", "stopped"])
def test_caught_up_without_a_deferred_failure_changes_nothing(when: str) -> None:
    pair = pair_in(when, failure_grace=2.0)
    assert not pair.core.failure_pending
    caught_up_changes_nothing(pair)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1000", None, 999.0])
def test_caught_up_validates_now(bad: object) -> None:
    pair = open_pair(failure_grace=2.0)
    bad_after_good(pair)
    with pytest.raises(LocalProtocolError):
        pair.core.caught_up(bad)  # type: ignore[arg-type]
    assert pair.core.failure_pending and pair.core.state is State.OPEN
    assert pair.core.next_event() is None


def test_a_deferred_failure_in_its_grace_is_superseded_by_eof() -> None:
    pair = open_pair(failure_grace=2.0, backoff=Backoff(initial=1.0, jitter=0))
    bad_after_good(pair)
    pair.advance(0.5)
    [disc, close] = pair.eof()
    assert isinstance(disc, Disconnected) and (disc.reason, disc.code) == (Reason.EOF, 1006)
    assert isinstance(close, CloseTransport) and close.abort
    assert not pair.core.failure_pending
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == NOW + 0.5 + 1.0  # the retry, not the grace
    caught_up_changes_nothing(pair)
    assert pair.server_closes == []


def test_a_stop_during_the_grace_ends_the_connection_gracefully() -> None:
    pair = open_pair(failure_grace=2.0)
    bad_after_good(pair)
    pair.advance(0.5)
    pair.core.stop(pair.now)
    [disc] = pair.pump()
    assert isinstance(disc, Disconnected)
    assert (disc.reason, disc.code, disc.level) == (Reason.STOPPED, 1000, INFO)
    assert not pair.core.failure_pending
    assert pair.core.state is State.STOPPING
    assert pair.core.next_deadline() == NOW + 0.5 + 5.0  # close_timeout, not the grace
    assert [c.code for c in pair.server_closes] == [1000]
    caught_up_changes_nothing(pair)
    pair.advance(5.0)
    assert pair.core.state is State.STOPPED
    assert [type(e) for e in pair.pump()] == []
    assert isinstance(pair.events[-1], Stopped)


def test_bytes_after_a_failure_are_discarded() -> None:
    pair = open_pair()
    feed(pair, frame(0x3, b""))
    frames_before = written_frames(pair)
    assert feed(pair, frame(TEXT, b"late") + frame(PING, b"p")) == []
    assert feed(pair, frame(CLOSE, close_payload(1000))) == []
    assert written_frames(pair) == frames_before  # no pong, no second close
    assert pair.of(Message) == []
    assert len(pair.of(Disconnected)) == 1
    assert pair.core.state is State.CLOSING


def test_failure_then_eof_ends_the_close_handshake() -> None:
    pair = open_pair()
    feed(pair, frame(0x3, b""))
    pair.advance(0.25)
    assert pair.eof() == [CloseTransport(abort=False)]
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == 1000.5


def test_failure_then_close_timeout_aborts() -> None:
    pair = open_pair(close_timeout=2.0)
    feed(pair, frame(0x3, b""))
    assert pair.core.next_deadline() == 1002.0
    assert pair.fire_next() == 1002.0
    # The retry (due at 1000.5) is overdue: the next attempt starts at once.
    assert [type(e) for e in pair.events[-3:]] == [CloseTransport, Connecting, OpenTransport]
    assert pair.events[-3] == CloseTransport(abort=True)
    assert pair.core.state is State.CONNECTING


def test_sending_after_a_failure_is_refused() -> None:
    pair = open_pair()
    feed(pair, frame(0x3, b""))
    with pytest.raises(NotConnected):
        pair.core.send("too late", NOW)


# ---------------------------------------------------------------------------
# max_message_size: 1009, checked before the message is buffered


def assert_too_big(pair: Pair, events: list[object], size: int | None = None) -> None:
    """One 1009 failure; the detail names the limit, the same however the
    message was chunked (*size* is the message size, not in the detail)."""
    [disc] = events
    assert isinstance(disc, Disconnected)
    assert disc == failure(Reason.MESSAGE_TOO_BIG, 1009, disc.detail)
    limit = pair.config.max_message_size
    assert disc.detail == f"message larger than max_message_size ({limit} bytes)"
    if size is not None:
        assert limit is not None and size > limit
    [sent] = sent_closes(pair)
    assert sent[:2] == (1009).to_bytes(2, "big")
    assert pair.core.state is State.CLOSING
    assert pair.of(Message) == []


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_message_of_exactly_the_limit_is_delivered(opcode: int) -> None:
    pair = open_pair(max_message_size=10)
    feed(pair, frame(opcode, b"0123456789"))
    assert len(pair.messages()[0]) == 10


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_single_frame_over_the_limit_closes_with_1009(opcode: int) -> None:
    pair = open_pair(max_message_size=10)
    events = feed(pair, frame(opcode, b"0123456789A"))
    assert_too_big(pair, events, 11)


def test_text_of_the_limit_in_utf8_bytes_is_delivered() -> None:
    pair = open_pair(max_message_size=10)
    feed(pair, frame(TEXT, ("\u00e9" * 5).encode()))  # 5 characters, 10 bytes
    assert pair.messages() == ["\u00e9" * 5]


def test_text_size_is_counted_in_utf8_bytes() -> None:
    pair = open_pair(max_message_size=10)
    events = feed(pair, frame(TEXT, ("\u00e9" * 6).encode()))  # 6 characters, 12 bytes
    assert_too_big(pair, events, 12)


def test_fragmented_message_of_exactly_the_limit_is_delivered() -> None:
    pair = open_pair(max_message_size=10)
    feed(pair, frame(TEXT, b"01234", fin=False) + frame(CONT, b"56789"))
    assert pair.messages() == ["0123456789"]


def test_fragmented_message_fails_on_the_fragment_that_crosses_the_limit() -> None:
    pair = open_pair(max_message_size=10)
    assert feed(pair, frame(BINARY, b"aaaa", fin=False)) == []
    assert feed(pair, frame(CONT, b"bbbb", fin=False)) == []
    events = feed(pair, frame(CONT, b"ccc", fin=False))  # 11 bytes, message not finished
    assert_too_big(pair, events)


def test_fragmented_text_size_is_counted_in_utf8_bytes() -> None:
    pair = open_pair(max_message_size=10)
    feed(pair, frame(TEXT, "\u00e9\u00e9".encode(), fin=False))  # 4 bytes
    events = feed(pair, frame(CONT, "\u00e9\u00e9\u00e9\u00e9".encode()))  # +8 bytes
    assert_too_big(pair, events)


def test_a_character_cut_by_the_end_of_a_fragment_counts_at_once() -> None:
    """17 of an 18-byte text message's bytes, the last three the start of a
    4-byte character (a fragment may end inside one, RFC 6455 5.4): over a
    limit of 16 now, before the ping that follows is answered.  (Found by
    the chunking property: the decoded text alone is 14 bytes.)"""
    raw = "00\x80\x80\x80\x80\U00010000\U00010000".encode()
    assert len(raw) == 18
    pair = open_pair(max_message_size=16)
    events = feed(pair, frame(TEXT, raw[:17], fin=False) + frame(PING, b"p"))
    assert_too_big(pair, events)
    assert [op for op, _, _ in written_frames(pair)] == [CLOSE]


def test_a_character_cut_within_the_limit_is_not_counted_twice() -> None:
    """The held-back bytes count once: with them the fragment is exactly at
    the limit, and the rest of the character completes the message there."""
    raw = ("a" * 7 + "\u00e9\u00e9").encode()  # 11 bytes
    pair = open_pair(max_message_size=11)
    assert feed(pair, frame(TEXT, raw[:10], fin=False)) == []  # 7 + 2 + 1 held back
    assert feed(pair, frame(PING, b"p")) == []
    assert [op for op, _, _ in written_frames(pair)] == [PONG]
    feed(pair, frame(CONT, raw[10:]))
    assert pair.messages() == ["a" * 7 + "\u00e9\u00e9"]


def test_a_huge_text_frame_fails_on_the_byte_that_crosses_the_limit() -> None:
    """Within one frame too: the 11th byte, the first of a 2-byte
    character, is enough (wsproto's decoder holds it back)."""
    pair = open_pair(max_message_size=10)
    header = frame(TEXT, b"\x00" * (1 << 20))[:10]
    assert feed(pair, header + b"a" * 10) == []
    events = feed(pair, "\u00e9".encode()[:1])
    assert_too_big(pair, events)


def test_huge_frame_fails_before_its_payload_has_arrived() -> None:
    """The frame announces 1 MiB; 11 bytes of it are enough to fail."""
    pair = open_pair(max_message_size=10)
    header = frame(BINARY, b"\x00" * (1 << 20))[:10]
    assert feed(pair, header + b"\x00" * 10) == []
    events = feed(pair, b"\x00")
    assert_too_big(pair, events)
    assert feed(pair, b"\x00" * 4096) == []  # the rest is discarded, not buffered


def test_too_big_while_stopping_aborts_at_once() -> None:
    """Our close frame is already out: no second one, just drop the socket."""
    pair = open_pair(max_message_size=10)
    pair.core.stop(NOW)
    pair.core.data_to_send()  # the server never answers our close
    pair.drain()
    assert feed(pair, frame(TEXT, b"still here")) == [
        Message(data="still here", connection=1, received_at=NOW)]
    events = feed(pair, frame(BINARY, b"x" * 11))
    assert events == [CloseTransport(abort=True), Stopped(reason=Reason.STOPPED,
                                                         detail="stop requested")]
    assert pair.core.state is State.STOPPED
    assert pair.core.data_to_send() == b""


def test_no_limit_when_max_message_size_is_none() -> None:
    pair = open_pair(max_message_size=None)
    feed(pair, frame(TEXT, b"a" * 100, fin=False) + frame(CONT, b"b" * (1 << 20)))
    assert pair.messages() == ["a" * 100 + "b" * (1 << 20)]


def test_limit_applies_per_message_not_per_chunk() -> None:
    pair = open_pair(max_message_size=10)
    feed(pair, frame(TEXT, b"0123456789") + frame(TEXT, b"0123456789")
         + frame(BINARY, b"012345", fin=False) + frame(CONT, b"6789"))
    assert pair.messages() == ["0123456789", "0123456789", b"0123456789"]


# ---------------------------------------------------------------------------
# the server closes


@pytest.mark.parametrize(
    ("code", "level"),
    [(1000, INFO), (1001, INFO), (1003, ERROR), (1011, ERROR), (1012, ERROR), (1013, ERROR),
     (3000, ERROR), (4000, ERROR), (4999, ERROR)],
)
def test_server_close_is_echoed_and_reported(code: int, level: int) -> None:
    pair = open_pair()
    pair.advance(3.0)
    events = pair.server_close(code, "bye")
    [disc] = pair.of(Disconnected, events)
    assert (disc.reason, disc.code, disc.status, disc.level, disc.connection, disc.uptime,
            disc.failures) == (Reason.SERVER_CLOSED, code, None, level, 1, 3.0, 1)
    assert disc.detail == "server closed the connection: bye"
    assert sent_closes(pair) == [close_payload(code, "bye")]
    assert pair.core.state is State.CLOSING
    assert pair.core.next_deadline() == 1008.0


def test_server_close_without_reason_has_a_plain_detail() -> None:
    pair = open_pair()
    [disc] = pair.of(Disconnected, pair.server_close(1001))
    assert disc.detail == "server closed the connection"
    assert sent_closes(pair) == [close_payload(1001)]


def test_server_close_without_a_code_is_echoed_empty() -> None:
    pair = open_pair()
    events = feed(pair, frame(CLOSE, b""))
    assert [type(e) for e in events] == [Disconnected]
    assert sent_closes(pair) == [b""]
    assert pair.server_closes[0].code == 1005
    assert pair.core.state is State.CLOSING


def test_server_close_without_a_code_is_a_normal_close() -> None:
    """RFC 6455 7.1.5: no status code means 1005, a normal close: INFO, like 1000."""
    pair = open_pair()
    [disc] = pair.of(Disconnected, feed(pair, frame(CLOSE, b"")))
    assert (disc.reason, disc.code) == (Reason.SERVER_CLOSED, None)
    assert disc.level == INFO


def test_server_close_1013_waits_the_full_ceiling() -> None:
    pair = open_pair(backoff=Backoff(initial=4.0), seed=1)
    [disc] = pair.of(Disconnected, pair.server_close(1013))
    assert disc.retry_in == 4.0


def test_other_server_close_uses_the_jittered_backoff() -> None:
    pair = open_pair(backoff=Backoff(initial=4.0), seed=1)
    [disc] = pair.of(Disconnected, pair.server_close(1011))
    assert disc.retry_in == 4.0 * (1 - random.Random(1).random())


def test_server_close_1008_raises_an_auth_alert() -> None:
    pair = open_pair()
    events = pair.server_close(1008, "policy")
    assert [(a.kind, a.active) for a in pair.of(Alert, events)] == [(AlertKind.AUTH, True)]


def test_server_close_then_eof_is_a_clean_close() -> None:
    pair = open_pair()
    pair.server_close(1000)
    pair.advance(0.5)
    assert pair.eof() == [CloseTransport(abort=False)]
    assert pair.core.state is State.BACKOFF
    assert pair.core.next_deadline() == 1000.5


def test_server_close_then_close_timeout_aborts() -> None:
    pair = open_pair(close_timeout=2.5)
    pair.server_close(1001)
    assert pair.core.next_deadline() == 1002.5
    pair.core.handle_timer(1002.4)
    assert pair.core.state is State.CLOSING
    assert pair.fire_next() == 1002.5
    # The retry (due at 1000.5) is overdue: the next attempt starts at once.
    assert [type(e) for e in pair.events[-3:]] == [CloseTransport, Connecting, OpenTransport]
    assert pair.events[-3] == CloseTransport(abort=True)
    assert pair.core.state is State.CONNECTING


def test_fatal_close_code_stops_after_the_close_handshake() -> None:
    pair = open_pair(fatal_close_codes={4001})
    [disc] = pair.of(Disconnected, pair.server_close(4001, "banned"))
    assert (disc.retry_in, disc.retry_at) == (None, None)
    assert pair.core.state is State.STOPPING
    events = pair.eof()
    assert events == [CloseTransport(abort=False),
                      Stopped(reason=Reason.GAVE_UP, detail="server_closed: fatal")]
    assert pair.core.state is State.STOPPED


def test_messages_before_the_server_close_are_delivered() -> None:
    pair = open_pair()
    events = feed(pair, frame(TEXT, b"last") + frame(CLOSE, close_payload(1000)))
    assert [type(e) for e in events] == [Message, Disconnected]
    assert pair.messages() == ["last"]


def test_frames_after_the_server_close_are_ignored() -> None:
    pair = open_pair()
    feed(pair, frame(CLOSE, close_payload(1000)) + frame(TEXT, b"same chunk"))
    assert feed(pair, frame(TEXT, b"later chunk") + frame(PING, b"p")) == []
    assert feed(pair, frame(0x3, b"junk")) == []
    assert pair.of(Message) == []
    assert sent_closes(pair) == [close_payload(1000)]
    assert [op for op, _, _ in written_frames(pair)] == [CLOSE]
    assert len(pair.of(Disconnected)) == 1


def test_answer_to_our_close_is_not_a_server_close() -> None:
    """After ``stop()`` the server's close frame is the answer, not a new event."""
    pair = open_pair()
    pair.core.stop(NOW)
    events = pair.pump()  # the server echoes our 1000
    assert [type(e) for e in events] == [Disconnected]
    assert events[0].reason is Reason.STOPPED  # type: ignore[attr-defined]
    assert pair.eof() == [CloseTransport(abort=False),
                          Stopped(reason=Reason.STOPPED, detail="stop requested")]


def test_server_ping_while_our_close_is_pending_does_not_raise() -> None:
    """A ping that crosses our close frame must not crash ``receive_data``
    (wsproto refuses to send a pong after our close: skip the answer)."""
    pair = open_pair()
    pair.core.stop(NOW)
    pair.core.data_to_send()
    pair.drain()
    assert feed(pair, frame(PING, b"late ping")) == []
    assert pair.core.state is State.STOPPING
    assert feed(pair, frame(CLOSE, close_payload(1000))) == []
    assert pair.eof()[-1] == Stopped(reason=Reason.STOPPED, detail="stop requested")


def test_protocol_error_while_our_close_is_pending_aborts_at_once() -> None:
    """Garbage after our close: the clean end can no longer come, drop the socket
    now rather than wait for ``close_timeout``."""
    pair = open_pair()
    pair.core.stop(NOW)
    pair.core.data_to_send()
    pair.drain()
    events = feed(pair, frame(0x3, b"junk"))
    assert events == [CloseTransport(abort=True),
                      Stopped(reason=Reason.STOPPED, detail="stop requested")]
    assert pair.core.state is State.STOPPED


# ---------------------------------------------------------------------------
# chunking: one chunk or byte by byte, the same events


def server_script(pair: Pair, ending: str) -> bytes:
    """Everything a server might send on one connection, as one byte string."""
    server = pair.server
    assert server is not None
    data = server.send(AcceptConnection())
    data += server.send(TextMessage(data="hello"))
    data += server.send(BytesMessage(data=b"\x00\x01", message_finished=False))
    data += server.send(Ping(payload=b"p1"))
    data += server.send(BytesMessage(data=b"\x02"))
    data += server.send(TextMessage(data="\u00e9" * 150))  # 300 bytes: 16-bit length
    data += server.send(Pong(payload=b"unsolicited"))
    data += server.send(TextMessage(data="caf\u00e9 " * 3))
    if ending == "close":
        data += server.send(CloseConnection(code=1001, reason="bye"))
    elif ending == "protocol-error":
        data += frame(0x3, b"bad") + frame(TEXT, b"never")
    elif ending == "invalid-utf8":
        data += frame(TEXT, b"ok\xff") + frame(TEXT, b"never")
    else:
        assert ending == "too-big"
        data += frame(BINARY, b"z" * 400) + frame(TEXT, b"never")
    return data


def run_script(ending: str, chunk: int) -> tuple[list[object], list[tuple[int, bool, bytes]]]:
    pair = Pair(ping_interval=None, max_message_size=350, failure_grace=0.0)
    pair.start()
    pair.open()
    data = server_script(pair, ending)
    for i in range(0, len(data), chunk):
        if pair.core.state not in (State.HANDSHAKING, State.OPEN, State.CLOSING):
            break
        feed(pair, data[i:i + chunk])
    return pair.events, written_frames(pair)


@pytest.mark.parametrize("ending", ["close", "protocol-error", "too-big"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_chunking_does_not_change_events_or_answers(ending: str, chunk: int) -> None:
    whole = run_script(ending, 1 << 20)
    assert run_script(ending, chunk) == whole


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_chunking_does_not_change_invalid_utf8_handling(chunk: int) -> None:
    """Same events and frames; only wsproto's decoder text (a byte position
    within the chunk) may differ, in ``detail`` and our close reason."""

    def without_text(run: tuple[list[object], list[tuple[int, bool, bytes]]]) -> object:
        events, frames = run
        return ([dataclasses.replace(e, detail="") if isinstance(e, Disconnected) else e
                 for e in events],
                [(op, fin, payload[:2] if op == CLOSE else payload) for op, fin, payload in frames])

    whole = run_script("invalid-utf8", 1 << 20)
    assert whole[0][-1].reason is Reason.INVALID_DATA  # type: ignore[attr-defined]
    assert without_text(run_script("invalid-utf8", chunk)) == without_text(whole)


def test_script_in_one_chunk_gives_the_expected_events() -> None:
    events, frames = run_script("close", 1 << 20)
    assert [type(e) for e in events[2:]] == [Connected] + [Message] * 4 + [Disconnected]
    messages = [e.data for e in events if isinstance(e, Message)]
    assert messages == ["hello", b"\x00\x01\x02", "\u00e9" * 150, "caf\u00e9 " * 3]
    assert all(e.received_at == NOW for e in events if isinstance(e, Message))
    assert frames == [(PONG, True, b"p1"), (CLOSE, True, close_payload(1001, "bye"))]


@pytest.mark.parametrize("seed", range(5))
def test_random_chunking_gives_the_same_events(seed: int) -> None:
    rng = random.Random(seed)
    pair = Pair(ping_interval=None)
    pair.start()
    pair.open()
    data = server_script(pair, "close")
    i = 0
    while i < len(data):
        n = rng.randint(1, 40)
        pair.feed(data[i:i + n])
        pair.pump()
        i += n
    assert pair.events == run_script("close", 1 << 20)[0]
