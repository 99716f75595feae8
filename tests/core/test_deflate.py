"""permessage-deflate in the core: the offer, the server's answer, messages
both ways (fast path and wsproto), and the bound on inflating."""

from __future__ import annotations

import functools
import json
import tracemalloc
import zlib

import pytest
from wsproto.events import BytesMessage, TextMessage
from wsproto.extensions import PerMessageDeflate

from nonstop.core import Config, ConfigError, Disconnected, Reason, State
from nonstop.core._deflate import (
    OFFER,
    InflateFailed,
    Inflater,
    Negotiated,
    WsprotoInflate,
    deflate,
    negotiate,
)
from nonstop.core._handshake import HandshakeError

from ..helpers import Pair, frame, unframe
from .test_handshake import response_101

# -- the answer ---------------------------------------------------------------


@pytest.mark.parametrize(("answer", "settled"), [
    ([], None),
    ([b""], None),
    ([b"permessage-deflate"], Negotiated()),
    ([b"Permessage-Deflate; Server_No_Context_Takeover"], Negotiated(server_no_context_takeover=True)),
    ([b"permessage-deflate; client_no_context_takeover; server_max_window_bits=10; "
      b"client_max_window_bits=\"9\""],
     Negotiated(client_no_context_takeover=True, server_max_window_bits=10, client_max_window_bits=9)),
])
def test_the_servers_answer_is_read(answer: list[bytes], settled: Negotiated | None) -> None:
    assert negotiate(answer) == settled


@pytest.mark.parametrize(("answer", "error"), [
    ([b"x-webkit-deflate-frame"], "extension that was not offered: 'x-webkit-deflate-frame'"),
    ([b"permessage-deflate, permessage-deflate"], "more than once"),
    ([b"permessage-deflate", b"permessage-deflate"], "more than once"),
    ([b"permessage-deflate; server_no_context_takeover; server_no_context_takeover"], "appears twice"),
    ([b"permessage-deflate; server_no_context_takeover=1"], "takes no value"),
    ([b"permessage-deflate; server_max_window_bits=16"], "from 8 to 15, got '16'"),
    ([b"permessage-deflate; server_max_window_bits=7"], "from 8 to 15"),
    ([b"permessage-deflate; client_max_window_bits=abc"], "from 8 to 15"),
    ([b"permessage-deflate; client_max_window_bits"], "needs a value"),
    ([b"permessage-deflate; mystery"], "does not exist: 'mystery'"),
])
def test_an_answer_we_cannot_use_is_a_handshake_error(answer: list[bytes], error: str) -> None:
    with pytest.raises(HandshakeError, match=error.replace("(", r"\(")):
        negotiate(answer)


def test_compression_is_deflate_or_none() -> None:
    assert Config(url="ws://x/").compression == "deflate"
    assert Config(url="ws://x/", compression=None).compression is None
    with pytest.raises(ConfigError, match="compression must be 'deflate' or None, got 'gzip'"):
        Config(url="ws://x/", compression="gzip")


# -- a connection -------------------------------------------------------------

def deflated(**params: object) -> Pair:
    """An open pair whose server accepted permessage-deflate with *params*
    (a protocol failure is due at once: ``failure_grace=0``)."""
    pair = Pair(ping_interval=None, failure_grace=0.0)
    pair.start()
    pair.open()
    assert pair.requests[0].extensions == [OFFER]
    pair.accept(extensions=[PerMessageDeflate(**params)])  # type: ignore[arg-type]
    assert pair.core.state is State.OPEN
    return pair


def test_the_request_offers_deflate_and_none_without_it() -> None:
    pair = deflated()
    assert b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" in pair.wire_to_server
    plain = Pair(ping_interval=None, compression=None)
    plain.connect()
    assert b"Sec-WebSocket-Extensions" not in plain.wire_to_server


@pytest.mark.parametrize("params", [{}, {"server_no_context_takeover": True},
                                    {"server_max_window_bits": 9}])
def test_compressed_messages_arrive_whole_in_order(params: dict[str, object]) -> None:
    pair = deflated(**params)
    sent: list[str | bytes] = []
    for i in range(20):
        body = json.dumps({"seq": i, "bids": [[100 + i, 1.5]] * 20})
        sent.append(body)
        pair.send_text(body)
    sent.append(b"\x00\x01" * 300)
    pair.send_bytes(b"\x00\x01" * 300)
    assert pair.messages() == sent
    assert pair.core.state is State.OPEN


def test_the_frames_on_the_wire_are_compressed() -> None:
    pair = deflated()
    assert pair.server is not None
    data = pair.server.send(TextMessage(data="a" * 1000))
    assert data[0] == 0xC1 and len(data) < 100  # RSV1, FIN, text; a tenth of the size
    pair.feed(data)
    pair.pump()
    assert pair.messages() == ["a" * 1000]


def test_fragmented_compressed_messages_and_control_frames_between_them() -> None:
    pair = deflated()
    assert pair.server is not None
    body = "fragments " * 500
    pair.feed(pair.server.send(TextMessage(data=body[:2000], message_finished=False)))
    pair.feed(frame(0x9, b"ping between"))
    pair.feed(pair.server.send(TextMessage(data=body[2000:], message_finished=True)))
    pair.send_text("after")  # the context the fragments left is the fast path's too
    pair.send_bytes(b"\xff" * 5000)
    assert pair.messages() == [body, "after", b"\xff" * 5000]
    assert pair.core.state is State.OPEN


def test_a_big_compressed_frame_streams_through_the_bounded_path() -> None:
    pair = deflated()
    assert pair.server is not None
    body = bytes(range(256)) * 512 * 4  # 512 KiB that compresses to more than _BIG
    data = pair.server.send(BytesMessage(data=body))
    for at in range(0, len(data), 7000):  # in reads that cut the frame anywhere
        pair.feed(data[at:at + 7000])
    pair.pump()
    assert pair.messages() == [body]


def test_what_the_client_sends_is_compressed_with_rsv1() -> None:
    pair = deflated()
    before = len(pair.wire_to_server)
    pair.core.send({"op": "subscribe", "args": ["trades"] * 50}, pair.now)
    pair.pump()
    frames, _ = unframe(bytes(pair.wire_to_server[before:]), masked=True)
    assert frames[0][0] == 0xC1  # FIN, RSV1, text
    assert len(frames[0][1]) < 100
    assert pair.server_messages == [json.dumps({"op": "subscribe", "args": ["trades"] * 50},
                                               separators=(",", ":"))]


def test_a_window_of_eight_bits_sends_uncompressed() -> None:
    settled = Negotiated(client_max_window_bits=8)
    assert deflate(b"abc" * 100, settled) is None
    pair = Pair(ping_interval=None)  # (wsproto's server cannot answer 8: the 101 by hand)
    pair.start()
    pair.open()
    pair.server = None
    pair.feed(response_101(pair, extra=b"Sec-WebSocket-Extensions: permessage-deflate; "
                                       b"client_max_window_bits=8\r\n"))
    pair.pump()
    assert pair.core.state is State.OPEN
    pair.core.send("abc" * 100, pair.now)
    sent = pair.core.data_to_send()
    frames, _ = unframe(sent, masked=True)
    assert frames == [(0x81, b"abc" * 100)]


def test_rsv1_where_it_cannot_be_fails_the_connection() -> None:
    pair = deflated()
    pair.feed(frame(0x9, b"x", rsv=4))  # a compressed ping
    pair.settle()
    down = [e for e in pair.events if isinstance(e, Disconnected)]
    assert down and down[0].reason is Reason.PROTOCOL_ERROR and down[0].code == 1002


def test_rsv1_without_deflate_fails_the_connection() -> None:
    pair = Pair(ping_interval=None, compression=None, failure_grace=0.0)
    pair.connect()
    pair.feed(bytes([0xC1, 3]) + zlib.compress(b"abc")[2:5])
    pair.settle()
    down = [e for e in pair.events if isinstance(e, Disconnected)]
    assert down and down[0].code == 1002


def test_bytes_that_are_not_deflate_close_1007() -> None:
    pair = deflated()
    pair.send_text("first")
    pair.feed(bytes([0xC1, 4]) + b"\xff\xff\xff\xff")
    pair.settle()
    down = [e for e in pair.events if isinstance(e, Disconnected)]
    assert pair.messages() == ["first"]
    assert down and down[0].code == 1007 and "not valid deflate data" in down[0].detail


def test_compressed_text_that_is_not_utf8_closes_1007() -> None:
    pair = deflated()
    body = zlib.compressobj(wbits=-15)
    payload = body.compress(b"\xff\xfe") + body.flush(zlib.Z_SYNC_FLUSH)
    pair.feed(bytes([0xC1, len(payload) - 4]) + payload[:-4])
    pair.settle()
    down = [e for e in pair.events if isinstance(e, Disconnected)]
    assert down and down[0].code == 1007


@functools.lru_cache(maxsize=1)
def bomb() -> bytes:
    """One compressed message that inflates to 1 GiB of zeros (about 1 MiB)."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = [z.compress(chunk) for _ in range(1024)]
    parts.append(z.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


def bomb_frames(path: str) -> bytes:
    """The bomb as the fast path takes it (one frame under ``_BIG``: the
    first 16 KiB of it, 16 MiB once inflated), or as wsproto does (the
    whole GiB in fragments of 64 KiB)."""
    payload = bomb()
    if path == "fast":
        return frame(0x2, payload[:16000], rsv=4)
    pieces = [payload[at:at + 65536] for at in range(0, len(payload), 65536)]
    return b"".join(frame(0x2 if i == 0 else 0x0, piece, fin=i == len(pieces) - 1, rsv=4 if i == 0 else 0)
                    for i, piece in enumerate(pieces))


@pytest.mark.parametrize("path", ["fast", "wsproto"])
def test_a_decompression_bomb_costs_no_more_than_the_limit(path: str) -> None:
    """1 GiB once inflated (16 MiB by the fast path), limit 1 MiB: the
    connection fails with 1009, and what parsing allocated at its peak
    stays within 2 MiB of the limit (zlib grows its output buffer to the
    limit and copies it once)."""
    limit = 1 << 20
    pair = Pair(ping_interval=None, max_message_size=limit, failure_grace=0.0)
    pair.start()
    pair.open()
    pair.accept(extensions=[PerMessageDeflate()])
    data = bomb_frames(path)
    tracemalloc.start()
    try:
        pair.feed(data)
        pair.settle()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    down = [e for e in pair.events if isinstance(e, Disconnected)]
    assert down and down[0].code == 1009 and "once inflated" in down[0].detail
    assert down[0].detail == "message larger than max_message_size (1048576 bytes) once inflated"
    assert peak < limit + (2 << 20), peak
    assert pair.messages() == []


def test_the_inflater_counts_each_message_on_its_own() -> None:
    inflater = Inflater(100, Negotiated())
    z = zlib.compressobj(wbits=-15)
    for _ in range(5):  # 5 x 80 bytes: each under the limit, with context kept
        payload = (z.compress(b"x" * 80) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
        assert inflater.finish(payload) == b"x" * 80
    payload = (z.compress(b"x" * 101) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
    with pytest.raises(InflateFailed) as failed:
        inflater.finish(payload)
    assert failed.value.code == 1009


def test_the_wsproto_extension_refuses_rsv1_on_continuations() -> None:
    from wsproto.frame_protocol import CloseReason, Opcode, RsvBits

    ext = WsprotoInflate(Inflater(None, Negotiated()))
    assert ext.enabled() and ext.offer() == OFFER
    rsv1 = RsvBits(True, False, False)
    assert ext.frame_inbound_header(None, Opcode.CONTINUATION, rsv1, 3) is CloseReason.PROTOCOL_ERROR
    assert ext.frame_inbound_header(None, Opcode.TEXT, RsvBits(False, False, False), 3) == rsv1
    assert ext.frame_inbound_payload_data(None, b"abc") == b"abc"  # not compressed: as it came
    assert ext.frame_inbound_complete(None, True) is None


def test_an_empty_extensions_answer_means_no_compression() -> None:
    pair = Pair(ping_interval=None)
    pair.start()
    pair.open()
    pair.server = None
    pair.feed(response_101(pair, extra=b"Sec-WebSocket-Extensions: \r\n"))
    pair.pump()
    assert pair.core.state is State.OPEN
    pair.core.send("plain", pair.now)
    assert unframe(pair.core.data_to_send(), masked=True)[0] == [(0x81, b"plain")]


def test_without_a_size_limit_inflating_is_not_bounded() -> None:
    pair = Pair(ping_interval=None, max_message_size=None)
    pair.start()
    pair.open()
    pair.accept(extensions=[PerMessageDeflate()])
    pair.send_bytes(bytes(5 << 20))
    assert pair.messages() == [bytes(5 << 20)]


def test_a_compressed_frame_cut_by_the_end_of_a_read_waits_for_the_rest() -> None:
    pair = deflated()
    assert pair.server is not None
    data = pair.server.send(TextMessage(data="split " * 100))
    pair.feed(data[:10])
    assert pair.messages() == []
    pair.feed(data[10:])
    pair.pump()
    assert pair.messages() == ["split " * 100]


def _sync(data: bytes) -> bytes:
    z = zlib.compressobj(wbits=-15)
    return (z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.parametrize(("bad", "code"), [
    (frame(0x2, b"\x00\x05\x00", rsv=4), 1007),  # a stored block whose lengths the tail breaks
    (frame(0x1, _sync(b"\xff\xfe"), rsv=4), 1007),  # not UTF-8
    (frame(0x2, _sync(bytes(2000)), rsv=4), 1009),  # over the limit once inflated
])
def test_the_messages_before_a_bad_compressed_one_are_delivered(bad: bytes, code: int) -> None:
    pair = Pair(ping_interval=None, failure_grace=0.0, max_message_size=1000)
    pair.start()
    pair.open()
    pair.accept(extensions=[PerMessageDeflate()])
    pair.feed(frame(0x1, _sync(b"before"), rsv=4) + bad)
    pair.settle()
    down = [e for e in pair.events if isinstance(e, Disconnected)]
    assert pair.messages() == ["before"]
    assert down and down[0].code == code


def test_a_fragmented_message_whose_end_is_not_deflate_closes_1007() -> None:
    pair = deflated()
    pair.feed(frame(0x2, b"\x00\x05\x00", fin=False, rsv=4) + frame(0x0, b""))
    pair.settle()
    down = [e for e in pair.events if isinstance(e, Disconnected)]
    assert down and down[0].code == 1007 and "not valid deflate data" in down[0].detail


@pytest.mark.parametrize(("params", "limit"), [({}, None), ({"server_no_context_takeover": True}, 1 << 20)],
                         ids=["no-limit", "no-context-takeover"])
def test_fragmented_messages_in_a_row(params: dict[str, object], limit: int | None) -> None:
    """Through wsproto's path: without a size limit, and with the
    decompressor dropped after each message (no context takeover)."""
    pair = Pair(ping_interval=None, max_message_size=limit)
    pair.start()
    pair.open()
    pair.accept(extensions=[PerMessageDeflate(**params)])  # type: ignore[arg-type]
    assert pair.server is not None
    for i in range(3):
        body = f"message {i} " * 300
        pair.feed(pair.server.send(TextMessage(data=body[:1000], message_finished=False)))
        pair.feed(pair.server.send(TextMessage(data=body[1000:], message_finished=True)))
    pair.pump()
    assert pair.messages() == [f"message {i} " * 300 for i in range(3)]
