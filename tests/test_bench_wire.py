"""The benchmark's own RFC 6455 helpers (bench/wire.py) are right.

The load server and the raw-socket baseline rely on them; a wrong accept key
or a mis-parsed frame would make every client fail or the numbers lie.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from wire import (
    OP_BINARY,
    OP_PING,
    OP_TEXT,
    FrameReader,
    accept_key,
    encode_frame,
    payload_for,
    unmask,
)
from wsproto.frame_protocol import FrameProtocol

pytestmark = pytest.mark.timeout(60)


def test_accept_key_matches_the_rfc_example() -> None:
    # RFC 6455 section 1.3
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_server_frames_parse_in_wsproto(size: int) -> None:
    payload = payload_for("binary", size)
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(encode_frame(OP_BINARY, payload))
    frames = list(proto.received_frames())
    assert len(frames) == 1
    assert frames[0].payload == payload and frames[0].frame_finished and frames[0].message_finished


@given(
    messages=st.lists(st.tuples(st.sampled_from([OP_TEXT, OP_BINARY, OP_PING]), st.binary(max_size=300)),
                      max_size=8),
    mask=st.binary(min_size=4, max_size=4),
    cut=st.integers(min_value=1, max_value=50),
)
def test_frame_reader_unmasks_any_chunking(messages: list[tuple[int, bytes]], mask: bytes, cut: int) -> None:
    wire = b"".join(encode_frame(op, data, mask=mask) for op, data in messages)
    reader = FrameReader()
    got: list[tuple[bool, int, bytes]] = []
    for i in range(0, len(wire), cut):
        reader.feed(wire[i : i + cut])
        got += reader.frames()
    assert got == [(True, op, data) for op, data in messages]


def test_unmask_is_its_own_inverse_and_payloads_have_their_size() -> None:
    data = bytes(range(256)) * 3
    assert unmask(unmask(data, b"abcd"), b"abcd") == data
    assert len(payload_for("text", 1024)) == 1024 and payload_for("text", 64).isascii()
    with pytest.raises(ValueError, match="'text' or 'binary'"):
        payload_for("json", 64)
