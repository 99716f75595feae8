"""The fast receive path and its equivalence with the wsproto reference path.

``Framing`` cuts whole, simple data frames straight out of each read and
hands every other frame to wsproto whole (or streamed, for fragments).  A
big simple frame split across reads is kept as pieces and joined once.
These tests pin the seams: runs of messages as one ``Messages``
event, frames split across reads at every offset, big frames in pieces, a
fragmented message in the middle of simple ones, and -- with Hypothesis --
the same messages, answers and close codes as ``Framing(fast=False)``, which
sends every byte through wsproto, for any bytes and any chunking.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from nonstop.core import Config, FeedCore, Messages, Reason, Subscription
from nonstop.core._framing import Failed, Framing, PeerClosed, PongReceived, _frame_size
from nonstop.core._url import parse_url
from tests.helpers import Pair, frame

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def open_framing(max_size: int | None = 1 << 20, *, fast: bool = True,
                 trailing: bytes = b"") -> Framing:
    """A framing past the 101 (with *trailing* bytes in the same read)."""
    framing = Framing(max_size, fast=fast)
    framing.request(parse_url("ws://h/"), [], [])
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(bytes(framing.outgoing))
    framing.outgoing.clear()
    assert isinstance(next(server.events()), Request)
    items = framing.feed(server.send(AcceptConnection()) + trailing)
    assert type(items[-1]).__name__ == "Accepted"
    framing.resume()
    return framing


def flatten(items: list[object]) -> list[object]:
    """Items with runs expanded, control items described for comparison."""
    out: list[object] = []
    for item in items:
        if isinstance(item, list):
            out.extend(item)
        elif isinstance(item, (str, bytes)):
            out.append(item)
        elif isinstance(item, PongReceived):
            out.append(("pong", item.payload))
        elif isinstance(item, PeerClosed):
            out.append(("close", item.code))
        elif isinstance(item, Failed):
            out.append(("failed", item.code))
        else:
            out.append(repr(item))
    return out


def feed_chunks(framing: Framing, data: bytes, cuts: list[int]) -> tuple[list[object], bytes]:
    items: list[object] = []
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]
    for a, b in itertools.pairwise(bounds):
        items += framing.feed(data[a:b])
    return flatten(items), bytes(framing.outgoing)


# ---------------------------------------------------------------------------
# runs of messages


def test_a_read_of_simple_frames_is_one_run() -> None:
    framing = open_framing()
    items = framing.feed(frame(TEXT, b"a") + frame(BINARY, b"\x00") + frame(TEXT, b"c"))
    assert items == [["a", b"\x00", "c"]]


def test_the_core_emits_one_messages_event_per_run() -> None:
    pair = Pair(ping_interval=None)
    pair.connect()
    pair.feed(b"".join(frame(TEXT, str(i).encode()) for i in range(100)))
    pair.pump()
    [batch] = pair.batches
    assert isinstance(batch, Messages)
    assert batch.data == [str(i) for i in range(100)]
    assert (batch.connection, batch.received_at) == (1, pair.now)
    assert pair.core.metrics(pair.now).messages_received == 100


def test_a_run_is_split_where_a_subscription_is_acknowledged() -> None:
    """Order is kept: messages before the ACK, Subscribed, the ACK and the rest."""
    pair = Pair(ping_interval=None, subscriptions=[
        Subscription(message="sub", ack=lambda m: m == "ack")])
    pair.connect()
    pair.feed(frame(TEXT, b"early") + frame(TEXT, b"ack") + frame(TEXT, b"late"))
    events = pair.pump()
    assert [type(e).__name__ for e in events] == ["Message", "Subscribed", "Message", "Message"]
    assert [b.data for b in pair.batches] == [["early"], ["ack", "late"]]


def test_a_pending_run_is_extended_by_the_next_read_at_the_same_moment() -> None:
    pair = Pair(ping_interval=None)
    pair.connect()
    pair.feed(frame(TEXT, b"1"))
    pair.feed(frame(TEXT, b"2"))  # not pulled in between, same `now`
    pair.pump()
    assert [b.data for b in pair.batches] == [["1", "2"]]


# ---------------------------------------------------------------------------
# frames across reads


@pytest.mark.parametrize("payload", [b"x" * 5, b"y" * 300, b"z" * 70_000], ids=["7", "126", "127"])
def test_a_frame_split_at_every_offset_arrives_once(payload: bytes) -> None:
    data = frame(BINARY, payload) + frame(TEXT, b"after")
    step = max(1, len(data) // 40)
    for cut in list(range(1, 16)) + list(range(16, len(data), step)):
        framing = open_framing()
        items, _ = feed_chunks(framing, data, [cut])
        assert items == [payload, "after"], cut


def test_frame_size_needs_the_whole_length_field() -> None:
    assert _frame_size(b"\x82") is None
    assert _frame_size(b"\x82\x7e\x01") is None
    assert _frame_size(b"\x82\x7f" + bytes(7)) is None
    assert _frame_size(b"\x82\x7f" + (70_000).to_bytes(8, "big")) == 70_010
    assert _frame_size(b"\x82\x85") == 2 + 4 + 5  # a (forbidden) mask is counted


def test_a_big_frame_across_many_reads_is_joined_once() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB in 64 KiB reads
    data = frame(BINARY, payload) + frame(TEXT, b"next")
    framing = open_framing(max_size=4 << 20)
    items, _ = feed_chunks(framing, data, list(range(65536, len(data), 65536)))
    assert items == [payload, "next"]


def test_a_read_that_is_exactly_a_big_payload_is_the_message_itself() -> None:
    """No copy at all when the header came alone and the next read is the
    whole payload (what a driver reading the core's ``read_hint`` gets)."""
    payload = b"p" * 70_000
    framing = open_framing()
    assert framing.feed(frame(BINARY, payload)[:10]) == []
    read = bytes(payload)
    items = framing.feed(read)
    assert items == [[payload]] and items[0][0] is read  # type: ignore[index]


def test_a_big_text_frame_is_decoded_as_its_pieces_come() -> None:
    text = "é€😀x" * 5000  # characters of 2, 3 and 4 bytes: every cut splits some
    data = frame(TEXT, text.encode()) + frame(TEXT, b"next")
    for cut in (3, 10, 5001, 20_002, 30_003):
        framing = open_framing()
        items, _ = feed_chunks(framing, data, [cut, cut + 7777, cut + 7778])
        assert items == [text, "next"], cut


@pytest.mark.parametrize(("bad_at", "cut", "on_read"), [
    (100, 20_000, 0),      # bad bytes in the first read: fail at once
    (30_000, 20_000, 1),   # in the second read: fail when it comes
    (-1, 20_000, 1),       # the frame ends inside a character: fail at its end
])
def test_bad_utf8_in_a_big_text_frame_fails_when_it_arrives(bad_at: int, cut: int,
                                                           on_read: int) -> None:
    payload = bytearray(b"a" * 40_000)
    if bad_at >= 0:
        payload[bad_at] = 0xFF
    else:
        payload[-1:] = b"\xc3"  # the first byte of a two-byte character, and no second
    data = frame(TEXT, bytes(payload)) + frame(TEXT, b"after")
    framing = open_framing()
    first = flatten(framing.feed(data[:cut]))
    second = flatten(framing.feed(data[cut:]))
    assert [first, second][on_read] == [("failed", 1007)]
    assert [first, second][1 - on_read] == []


def test_a_streamed_frame_over_max_message_size_fails_before_it_is_all_read() -> None:
    framing = open_framing(max_size=1000)
    header = bytes([0x82, 126]) + (5000).to_bytes(2, "big")
    items = flatten(framing.feed(header + b"x" * 1500))
    assert items == [("failed", 1009)]


def test_a_control_frame_split_across_reads_waits_for_its_end() -> None:
    framing = open_framing()
    data = frame(TEXT, b"a") + frame(PING, b"ping!") + frame(TEXT, b"b")
    items, written = feed_chunks(framing, data, [5, 7])
    assert items == ["a", "b"]
    assert written == frame(PONG, b"ping!", mask=written[2:6])  # answered, masked by us


def test_a_fragmented_message_between_simple_frames() -> None:
    data = (frame(TEXT, b"one") + frame(TEXT, b"tw", fin=False) + frame(PING, b"")
            + frame(CONT, b"o") + frame(BINARY, b"three"))
    for cut in range(1, len(data)):
        framing = open_framing()
        items, _ = feed_chunks(framing, data, [cut])
        assert items == ["one", "two", b"three"], cut


def test_a_simple_frame_inside_a_fragmented_message_is_a_protocol_error() -> None:
    framing = open_framing()
    items = flatten(framing.feed(frame(TEXT, b"a", fin=False) + frame(TEXT, b"b")))
    assert items == [("failed", 1002)]


def test_frames_after_the_101_in_the_same_read_take_the_fast_path() -> None:
    framing = open_framing(trailing=frame(TEXT, b"hello") + frame(TEXT, b"wor"))
    assert framing.feed(frame(TEXT, b"ld")) == [["ld"]]


# ---------------------------------------------------------------------------
# equivalence with the reference path (wsproto for every byte)

simple = st.tuples(st.sampled_from([TEXT, BINARY]), st.binary(max_size=300))
control = st.tuples(st.sampled_from([PING, PONG]), st.binary(max_size=20))


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int], int | None]:
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["simple", "simple", "control", "fragmented", "junk",
                                     "utf8", "big", "bigtext", "close"]))
        if kind == "simple":
            op, payload = draw(simple)
            if op == TEXT:
                payload = draw(st.text(max_size=50)).encode()
            parts.append(frame(op, payload))
        elif kind == "control":
            parts.append(frame(*draw(control)))
        elif kind == "fragmented":
            text = draw(st.text(min_size=2, max_size=20)).encode()
            parts.append(frame(TEXT, text[:1], fin=False) + frame(CONT, text[1:]))
        elif kind == "junk":
            parts.append(draw(st.binary(min_size=1, max_size=12)))
        elif kind == "utf8":
            parts.append(frame(TEXT, draw(st.sampled_from([b"\xff", b"caf\xc3", b"\xed\xa0\x80"]))))
        elif kind == "big":
            parts.append(frame(BINARY, b"b" * draw(st.integers(126, 70_000))))
        elif kind == "bigtext":  # held as pieces, decoded as they come
            unit = draw(st.sampled_from(["a", "é", "€", "😀"])).encode()
            body = unit * (draw(st.integers(16_384, 40_000)) // len(unit))
            spoil = draw(st.sampled_from([None, 0, len(body) // 2, len(body) - 1]))
            if spoil is not None:
                body = body[:spoil] + b"\xff" + body[spoil + 1:]
            parts.append(frame(TEXT, body))
        else:
            parts.append(frame(CLOSE, (1000).to_bytes(2, "big")))
    data = b"".join(parts)
    cuts = draw(st.lists(st.integers(0, max(len(data), 1)), max_size=8))
    limit = draw(st.sampled_from([None, 10, 100, 65_536]))
    return data, cuts, limit


@settings(max_examples=400, deadline=None)
@given(streams())
def test_fast_and_reference_paths_agree(case: tuple[bytes, list[int], int | None]) -> None:
    data, cuts, limit = case
    fast = feed_chunks(open_framing(limit), data, cuts)
    reference = feed_chunks(open_framing(limit, fast=False), data, cuts)
    # same reads: same messages, same answers (pongs, close echo) and the same
    # close codes (even wsproto alone says 1009 or 1007 for a message both too
    # big and not UTF-8 depending on how much of it has arrived); the masking
    # keys of our answers are random, so compare unmasked frames
    assert fast[0] == reference[0]
    assert _unmasked(fast[1]) == _unmasked(reference[1])


def _unmasked(data: bytes) -> list[tuple[int, bytes]]:
    frames, pos = [], 0
    while pos < len(data):
        length = data[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            length, start = int.from_bytes(data[pos + 2:pos + 4], "big"), pos + 4
        key = data[start:start + 4]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[start + 4:start + 4 + length]))
        frames.append((data[pos], payload))
        pos = start + 4 + length
    return frames


@pytest.mark.parametrize("fast", [True, False])
def test_both_paths_count_a_character_cut_by_a_fragment_end(fast: bool) -> None:
    """Fragmented messages go through wsproto on both paths; the bytes its
    text decoder holds back still count against the limit (16 here)."""
    raw = "00\x80\x80\x80\x80\U00010000\U00010000".encode()
    framing = open_framing(16, fast=fast)
    items = flatten(framing.feed(frame(TEXT, raw[:17], fin=False) + frame(PING, b"p")))
    assert items == [("failed", 1009)]


def test_nothing_is_held_back_if_wsproto_has_no_text_decoder_where_it_is_read() -> None:
    """Should wsproto's internals move (no decoder where this reads it): 0,
    and the limit falls back to the decoded size."""
    framing = open_framing(16)
    framing._ws._proto._message_decoder = None  # type: ignore[assignment]
    assert framing._held_back() == 0


def test_the_reference_path_still_works_end_to_end() -> None:
    """``fast=False`` is a real path (the differential fuzzer's reference)."""
    framing = open_framing(fast=False, trailing=frame(TEXT, b"t"))
    assert flatten(framing.feed(frame(BINARY, b"b") + frame(CLOSE, b"\x03\xe8"))) == [
        b"b", ("close", 1000)]


def test_core_level_smoke_with_a_seeded_stream() -> None:
    rng = random.Random(7)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 2000)))
                for _ in range(200)]
    core = FeedCore(Config(url="ws://h/", ping_interval=None), rng=random.Random(0))
    pair = Pair(config=core.config)
    pair.connect()
    data = b"".join(frame(BINARY, p) for p in payloads)
    for i in range(0, len(data), 4093):
        pair.feed(data[i:i + 4093])
    pair.pump()
    assert pair.messages() == payloads
    assert pair.core.metrics(pair.now).disconnects == {}
    assert Reason.PROTOCOL_ERROR.value not in pair.core.metrics(pair.now).disconnects


def test_bad_utf8_fails_before_the_rest_of_its_frame_arrives() -> None:
    """As wsproto does with a frame's pieces: no waiting for the end of it."""
    framing = open_framing()
    partial = frame(TEXT, b"ok\xff" + b"x" * 100)[:10]
    assert flatten(framing.feed(frame(TEXT, b"before") + partial)) == ["before", ("failed", 1007)]
    framing = open_framing()
    assert flatten(framing.feed(partial)) == [("failed", 1007)]


def test_a_partial_text_frame_with_good_utf8_just_waits() -> None:
    framing = open_framing()
    data = frame(TEXT, "é".encode() * 50)
    assert framing.feed(data[:5]) == []  # cut inside a two-byte character
    assert framing.feed(data[5:]) == [["é" * 50]]


def test_a_length_not_in_its_shortest_form_is_a_protocol_error() -> None:
    """RFC 6455 5.2: the minimal number of bytes must encode the length."""
    framing = open_framing()
    non_minimal = bytes([0x82, 126]) + (5).to_bytes(2, "big") + b"12345"
    assert flatten(framing.feed(frame(TEXT, b"ok") + non_minimal)) == ["ok", ("failed", 1002)]
    for length in (5, 65535):  # the 64-bit form for a length that fits in 16 bits
        framing = open_framing()
        non_minimal = bytes([0x82, 127]) + length.to_bytes(8, "big") + b"x" * length
        assert flatten(framing.feed(frame(TEXT, b"ok") + non_minimal)) == ["ok", ("failed", 1002)]


def test_a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() -> None:
    framing = open_framing(max_size=None)
    huge = bytes([0x82, 127]) + (1 << 63).to_bytes(8, "big") + b"x" * 10
    assert flatten(framing.feed(frame(TEXT, b"ok") + huge)) == ["ok", ("failed", 1002)]


@pytest.mark.parametrize("limit", [0, 10, 125, 126, 300])
def test_a_message_over_a_small_limit_is_refused_as_the_reference_path_refuses_it(limit: int) -> None:
    """The hot loop takes a 7-bit length only up to ``min(limit, 125)`` and
    checks longer ones against the limit itself; a frame over the limit
    goes to the general case, which fails the connection with 1009."""
    for size in sorted({0, max(0, limit - 1), limit, limit + 1, 125, 126, 301}):
        messages: list[str | bytes] = ["k", b"x" * size, "after"]
        data = b"".join(frame(TEXT if isinstance(m, str) else BINARY,
                              m.encode() if isinstance(m, str) else m) for m in messages)
        expected: list[object] = []
        for message in messages:
            if len(message) > limit:
                expected.append(("failed", 1009))
                break
            expected.append(message)
        fast = feed_chunks(open_framing(limit), data, [])
        reference = feed_chunks(open_framing(limit, fast=False), data, [])
        assert fast[0] == reference[0] == expected, size


def test_a_read_cut_inside_a_frame_header_keeps_that_part_for_the_next_read() -> None:
    """The hot loop finds the end of a read by the IndexError of the next
    header byte: a read cut after each byte of a 2-, 4- or 10-byte header
    keeps exactly that partial header for the next read."""
    frames = [frame(TEXT, b"t" * 5), frame(BINARY, b"b" * 300), frame(BINARY, b"B" * 70_000)]
    for index, whole in enumerate(frames):
        header = {0: 2, 1: 4, 2: 10}[index]
        for cut in range(header + 1):
            framing = open_framing()
            data = frame(TEXT, b"before") + whole + frame(TEXT, b"after")
            first = framing.feed(data[:len(frame(TEXT, b"before")) + cut])
            assert flatten(first) == ["before"], (index, cut)
            rest = framing.feed(data[len(frame(TEXT, b"before")) + cut:])
            payload = whole[header:]
            assert flatten(rest) == [payload.decode() if index == 0 else payload, "after"], (index, cut)


def test_a_run_of_messages_is_an_ordinary_frozen_messages_event() -> None:
    # The core makes Messages through the slots' setters, not __init__:
    # what comes out must be the same value in every way.
    import dataclasses

    pair = Pair(ping_interval=None)
    pair.connect()
    pair.feed(frame(TEXT, b"a") + frame(BINARY, b"b"))
    pair.pump()
    (run,) = pair.batches
    expected = Messages(data=["a", b"b"], connection=1, received_at=pair.now)
    assert type(run) is Messages
    assert run == expected and repr(run) == repr(expected)
    assert dataclasses.astuple(run) == dataclasses.astuple(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.connection = 2  # type: ignore[misc]
