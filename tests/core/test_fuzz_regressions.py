"""What the fuzzers found, kept as tests.

Two parts:

* every committed corpus file (``fuzz/corpus/<harness>/``: the seeds and the
  ``crash-*`` reproducers) is replayed through its harness's
  ``TestOneInput`` -- plain Python, no atheris needed -- so the harnesses'
  invariants are checked by every test run, not only while fuzzing;
* each bug the fuzzers found, written out against the core's API.

The handshake tests build the server's answer by hand: the accept key is
computed here (``base64(sha1(key + GUID))``), not by wsproto.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import random
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from nonstop.core import Config, Connected, Disconnected, FeedCore, Reason, State

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = tuple(sorted(p.stem[len("fuzz_"):] for p in FUZZ.glob("fuzz_*.py")))
NOW = 1000.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def harness(name: str) -> ModuleType:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    return importlib.import_module(f"fuzz_{name}")


CORPUS = sorted((name, path) for name in HARNESSES if (FUZZ / "corpus" / name).is_dir()
                for path in (FUZZ / "corpus" / name).iterdir())


@pytest.mark.parametrize(("name", "path"), CORPUS,
                         ids=[f"{name}/{path.name}" for name, path in CORPUS])
def test_corpus_input_keeps_every_invariant(name: str, path: Path) -> None:
    harness(name).TestOneInput(path.read_bytes())


def test_every_harness_has_a_corpus() -> None:
    assert {"server_bytes", "lifecycle", "handshake"} <= set(HARNESSES)
    for name in HARNESSES:
        folder = FUZZ / "corpus" / name
        assert folder.is_dir() and any(folder.iterdir()), f"no corpus for fuzz_{name}.py"


# ---------------------------------------------------------------------------
# the bugs, one by one

def handshaking(**options: object) -> tuple[FeedCore, bytes]:
    """A core that sent its upgrade request, and the right accept key for it."""
    core = FeedCore(Config(url="ws://feed.example/stream", ping_interval=None,
                           **options), rng=random.Random(0))  # type: ignore[arg-type]
    core.start(NOW)
    core.transport_opened(NOW)
    key = re.search(rb"\r\nSec-WebSocket-Key: (\S+)\r\n", core.data_to_send(), re.I)
    assert key is not None
    while core.next_event() is not None:
        pass
    return core, base64.b64encode(hashlib.sha1(key.group(1) + GUID).digest())


def response(accept: bytes, extra: bytes = b"", eol: bytes = b"\r\n") -> bytes:
    lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
             b"Sec-WebSocket-Accept: " + accept]
    return eol.join(lines) + eol + extra.replace(b"\r\n", eol) + eol


def events(core: FeedCore) -> list[object]:
    out = []
    while (event := core.next_event()) is not None:
        out.extend(event) if type(event).__name__ == "Messages" else out.append(event)
    return out


@pytest.mark.parametrize("header", [b"Sec-WebSocket-Protocol", b"Connection",
                                    b"Sec-WebSocket-Extensions"])
def test_non_ascii_header_in_a_101_fails_the_handshake(header: bytes) -> None:
    """Found by fuzz_handshake (corpus crash-non-ascii-*): wsproto decodes
    these header values as ASCII and its UnicodeDecodeError escaped
    ``receive_data``.  A peer's bytes must never raise out of the core."""
    core, accept = handshaking(subprotocols=["chat"])
    core.receive_data(response(accept, header + b": caf\xe9\r\n"), NOW)
    (gone,) = [e for e in events(core) if isinstance(e, Disconnected)]
    assert gone.reason is Reason.HANDSHAKE_FAILED
    assert core.state is State.BACKOFF


def test_a_repeated_accept_header_with_a_wrong_value_does_not_open() -> None:
    """Found by fuzz_handshake (corpus crash-repeated-accept): wsproto reads
    only the last ``Sec-WebSocket-Accept``, so a wrong value before the right
    one opened the connection.  RFC 6455 4.1: the field must be exactly the
    expected value; repeated, its combined value is not."""
    core, accept = handshaking()
    wrong = base64.b64encode(hashlib.sha1(b"dGhlIHNhbXBsZSBub25jZQ==" + GUID).digest())
    core.receive_data(response(wrong + b"\r\nSec-WebSocket-Accept: " + accept), NOW)
    got = events(core)
    assert not [e for e in got if isinstance(e, Connected)]
    (gone,) = [e for e in got if isinstance(e, Disconnected)]
    assert gone.reason is Reason.HANDSHAKE_FAILED


def test_frames_behind_a_bare_lf_101_are_delivered_at_once_and_in_order() -> None:
    """Found by fuzz_server_bytes (corpus crash-bare-lf-101): h11 ends a head
    at a bare-LF blank line, the fast path looked for CRLF CRLF only, so the
    frames in the same read as such a 101 stayed in wsproto: not delivered
    with the 101, and delivered after later messages once they were."""
    core, accept = handshaking()
    core.receive_data(response(accept, eol=b"\n") + b"\x81\x05hello", NOW)
    assert [e.data for e in events(core) if type(e).__name__ == "Message"] == ["hello"]
    core.receive_data(b"\x81\x05world", NOW)
    assert [e.data for e in events(core) if type(e).__name__ == "Message"] == ["world"]


def test_a_continuation_header_alone_at_the_end_of_a_read_is_a_protocol_error() -> None:
    """Found by fuzz_server_bytes (corpus crash-continuation-header-at-end-of-read):
    the fast path hands a continuation frame that has no message to continue
    to wsproto, which fails it only when its payload comes.  Alone at the end
    of a read, the payload came in the next read, which the fast path parsed
    as new frames: here it delivered b"abc" from inside the broken frame."""
    core, accept = handshaking(failure_grace=0.0)
    core.receive_data(response(accept), NOW)
    core.receive_data(b"\x00\x05", NOW)  # a continuation, 5 bytes of payload to come
    core.receive_data(b"\x82\x03abc", NOW)  # ...which are these
    while (deadline := core.next_deadline()) is not None and deadline <= NOW:
        core.handle_timer(NOW)  # the deferred failure, as a driver fires it
    got = events(core)
    assert [e.data for e in got if type(e).__name__ == "Message"] == []
    (gone,) = [e for e in got if isinstance(e, Disconnected)]
    assert gone.reason is Reason.PROTOCOL_ERROR and gone.code == 1002


@pytest.mark.parametrize(
    "protocols",
    [b"Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Protocol: chat\r\n",
     b"Sec-WebSocket-Protocol: chat, superchat\r\n"],
    ids=["repeated", "two-in-one"],
)
def test_a_101_choosing_more_than_one_subprotocol_does_not_open(protocols: bytes) -> None:
    """Found by fuzz_handshake (corpus crash-two-subprotocols): wsproto reads
    only the last Sec-WebSocket-Protocol, so a 101 naming two opened with the
    last.  RFC 6455 4.1: the server selects one."""
    core, accept = handshaking(subprotocols=["chat", "superchat"])
    core.receive_data(response(accept, protocols), NOW)
    got = events(core)
    assert not [e for e in got if isinstance(e, Connected)]
    (gone,) = [e for e in got if isinstance(e, Disconnected)]
    assert gone.reason is Reason.HANDSHAKE_FAILED
    assert gone.detail == "the server chose more than one subprotocol"
