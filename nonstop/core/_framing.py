"""The framing seam: bytes in, whole messages and control events out.

Theory of operation
-------------------
Everything RFC 6455 says about bytes on the wire lives behind this one class,
so the state machine never sees a frame.  The handshake is
:mod:`._handshake`'s; wsproto reads every frame the fast path of
:meth:`Framing.feed` does not take; this class adds what wsproto
does not do for a client:

* **Reassembly with a size limit.**  wsproto hands out frame *pieces* as they
  arrive; we join them into whole messages and fail with 1009 as soon as a
  message grows past ``max_message_size`` -- before it is all buffered.
* **Failure detection.**  On a parse error wsproto yields a
  ``CloseConnection`` while its state stays ``OPEN``, which looks just like
  a peer's close.  We tell them apart by the state, queue our own
  close frame with the right code (1002, 1007) and mark the parser dead: the
  bytes that follow are discarded, never buffered.
* **permessage-deflate** (:mod:`._deflate`), when the server accepted our
  offer: whole compressed frames are inflated by the fast path, the others
  by wsproto through a small extension, both with the connection's one
  decompressor, bounded by ``max_message_size``; what we send is
  compressed in :meth:`Framing.send`.
* **Automatic answers.**  Pings are answered with pongs and a peer's close is
  echoed (RFC 6455 5.5.1) inside :meth:`feed`; the bytes go to ``outgoing``.

:meth:`feed` returns a list whose items are either a message (``str`` for
text, ``bytes`` for binary) or one of the small control classes below; plain
payloads keep the per-message cost to one list append.
"""

from __future__ import annotations

import codecs
import os
import struct
from collections.abc import Sequence
from os import urandom
from typing import Final, Union

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from ._config import Payload
from ._deflate import OFFER, InflateFailed, Inflater, Negotiated, WsprotoInflate, deflate, negotiate
from ._guard import Reason
from ._handshake import MAX_HEAD, HandshakeError, check_101, nonce_from, parse_head, request
from ._url import Endpoint

__all__ = ["Framing", "Accepted", "Rejected", "HandshakeFailed", "PeerClosed",
           "PongReceived", "Failed", "Item"]

MESSAGE_TOO_BIG: Final = 1009
PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007


class Accepted:
    __slots__ = ("subprotocol",)

    def __init__(self, subprotocol: str | None) -> None:
        self.subprotocol = subprotocol


class Rejected:
    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers


class HandshakeFailed:
    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


class PeerClosed:
    """The server's close frame (already answered if it started the close)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason


class PongReceived:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Failed:
    """The server's bytes broke the protocol; the core must close with ``code``."""

    __slots__ = ("code", "detail", "reason")

    def __init__(self, reason: Reason, code: int, detail: str) -> None:
        self.reason = reason
        self.code = code
        self.detail = detail


Item = Union[str, bytes, list[Payload], Accepted, Rejected, HandshakeFailed, PeerClosed,
             PongReceived, Failed]

_NO_LIMIT: Final = 1 << 63
#: Masking keys are drawn from the OS's CSPRNG (RFC 6455 10.3 wants them
#: unpredictable), as wsproto does, but this many bytes at a time: 1,024
#: keys per system call instead of one.
_KEY_POOL: Final = 4096
#: How many ``fork()`` calls this process came out of: a pool of masking keys
#: drawn in an earlier generation is thrown away, so parent and child never
#: share keys.
_fork_generation = 0


def _forked() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):  # pragma: no branch  (not on Windows)
    os.register_at_fork(after_in_child=_forked)
#: The longest frame header from a server: 2 bytes, 8 of length, 4 of mask.
_MAX_HEADER: Final = 14


def _end_of_head(buffer: bytes) -> int:
    """Where an HTTP response head ends (after its blank line), or -1.

    Bare LF line ends are HTTP/1.1 too (RFC 9112 2.2), so the blank line is
    the first LF CR LF or LF LF after the status line.
    """
    ends = [i + 3 for i in (buffer.find(b"\n\r\n"),) if i >= 0]
    ends += [i + 2 for i in (buffer.find(b"\n\n"),) if i >= 0]
    return min(ends) if ends else -1


def _utf8_prefix(data: bytes) -> None:
    """Raise UnicodeDecodeError if *data* cannot start valid UTF-8 text."""
    codecs.getincrementaldecoder("utf-8")().decode(data, False)


def _frame_size(head: bytes) -> int | None:
    """The whole frame's length, from its first bytes; None if they are
    too few to tell."""
    n = len(head)
    if n < 2:
        return None
    length = head[1] & 0x7F
    size = 2 + (4 if head[1] & 0x80 else 0)
    if length == 126:
        if n < 4:
            return None
        return size + 2 + ((head[2] << 8) | head[3])
    if length == 127:
        if n < 10:
            return None
        return size + 8 + int.from_bytes(head[2:10], "big")
    return size + length


#: A 16-bit payload length: one call, not two indexings, a shift and an or.
_U16: Final = struct.Struct(">H").unpack_from
#: Opcodes RFC 6455 reserves (5.2): a frame with one fails the connection.
_BAD_OPCODES: Final = frozenset({3, 4, 5, 6, 7, 11, 12, 13, 14, 15})
#: wsproto states in which frames are still read.  A tuple, not a set: an
#: ``Enum`` member hashes through a Python ``__hash__``, and this is asked
#: once per read that ends a big frame or a held-back tail.
_READING: Final = (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING)
#: An incomplete fast-path frame at least this long is not held back as a
#: tail (re-copied when the next read completes it): its payload is kept as
#: pieces, joined once when the last one comes (see ``_start_big``).
_BIG: Final = 1 << 14

# wsproto's own message names a byte offset within the chunk: not stable.
_INVALID_UTF8: Final = "invalid UTF-8 in a text message"

_REASON_FOR_CODE: Final = {
    INVALID_DATA: Reason.INVALID_DATA,
    MESSAGE_TOO_BIG: Reason.MESSAGE_TOO_BIG,
}


class Framing:
    """One connection's wire protocol.  Create a new one per connection."""

    __slots__ = ("_accepted", "_big_decoder", "_big_need", "_big_parts", "_big_text", "_dead",
                 "_deflate", "_extension", "_fast", "_fragmented", "_handshake", "_inflater", "_key",
                 "_key_at", "_keys", "_keys_fork", "_limit", "_max_size", "_offer_deflate",
                 "_offered", "_owed", "_parts", "_passthrough", "_size", "_tail", "_ws", "outgoing")

    def __init__(self, max_message_size: int | None, *, fast: bool = True,
                 compression: bool = False) -> None:
        # wsproto's reader of frames, used once the 101 is accepted (until
        # then its OPEN state means nothing: ``_accepted`` says).
        self._ws = Connection(ConnectionType.CLIENT)
        self._accepted = False
        self._key = b""  # our Sec-WebSocket-Key
        self._offered: tuple[str, ...] = ()  # the subprotocols we offered
        self._max_size = max_message_size
        # The largest payload the fast path takes (a 64-bit length with its
        # top bit set is never simple: RFC 6455 5.2).
        self._limit = _NO_LIMIT - 1 if max_message_size is None else min(max_message_size, _NO_LIMIT - 1)
        self._parts: list[str] | list[bytes] = []
        self._size = 0
        self._dead = False
        self._tail = b""  # an incomplete frame, waiting for the next read
        self._owed = 0  # bytes of a streamed frame wsproto still has to get
        self._fragmented = False  # a fragmented message is in progress (wsproto's)
        self._handshake = b""  # the response head so far, until its end comes
        self._fast = fast  # False: every byte through wsproto (the reference path)
        self._passthrough = False  # a broken frame went to wsproto: it gets the rest
        # A big fast-path frame in progress: payload bytes still to come, the
        # pieces so far (binary), or the text decoded so far and the decoder.
        self._big_need = 0
        self._big_parts: list[bytes | memoryview] = []
        self._big_text: list[str] = []
        self._big_decoder: codecs.IncrementalDecoder | None = None
        self.outgoing = bytearray()
        self._keys = b""  # masking keys from urandom, used from _key_at on
        self._key_at = 0
        self._keys_fork = _fork_generation  # the generation the pool was drawn in
        # permessage-deflate: offered, then (if the server accepted it) what
        # was settled, the connection's decompressor and wsproto's view of it.
        self._offer_deflate = compression
        self._deflate: Negotiated | None = None
        self._inflater: Inflater | None = None
        self._extension: WsprotoInflate | None = None

    # -- handshake --------------------------------------------------------
    def request(
        self, endpoint: Endpoint, headers: Sequence[tuple[str, str]], subprotocols: Sequence[str]
    ) -> None:
        """Queue the HTTP upgrade request (RFC 6455 4.1).

        The headers were validated by the caller (RFC 9110 tokens, Latin-1
        values).
        """
        self._key = nonce_from(urandom(16))
        self._offered = tuple(subprotocols)
        if self._offer_deflate:
            headers = [*headers, ("Sec-WebSocket-Extensions", OFFER)]
        self.outgoing += request(endpoint, headers, subprotocols, self._key)

    @property
    def is_open(self) -> bool:
        """True while we may send data frames (even if receiving has failed:
        the close frame is not sent yet)."""
        return self._accepted and self._ws.state is ConnectionState.OPEN

    @property
    def mid_message(self) -> bool:
        """Part of a data message has come and the rest has not (a big
        frame still arriving, a fragmented message, an incomplete data
        frame held back): data is flowing, if slowly."""
        tail = self._tail
        return bool(self._big_need or self._parts or self._fragmented or self._owed
                    or (tail and tail[0] & 0x0F < 3))

    # -- receiving --------------------------------------------------------
    def feed(self, data: bytes) -> list[Item]:
        """Parse *data*; return messages and control events in wire order.

        A run of messages found by the fast path comes as one ``list`` item.
        """
        if self._dead:
            return []
        if not self._accepted:
            return self._opening(data)
        state = self._ws.state
        if state is ConnectionState.OPEN or state is ConnectionState.LOCAL_CLOSING:
            if not self._fast or self._passthrough:
                self._ws.receive_data(data)
                return self._drain()
            if self._big_need:
                return self._continue_big(data)
            if self._tail:
                return self._complete_tail(data)
            return self._frames(data, 0)
        return []  # after the peer's close frame nothing more is read

    def _opening(self, data: bytes) -> list[Item]:
        """The response to the upgrade request, until its head is whole:
        then the outcome (``Accepted``, ``Rejected`` or ``HandshakeFailed``).
        What came after the head in the same read waits in ``_tail``: frames
        after a 101 are parsed by :meth:`resume`, once the core has queued
        its subscriptions, so what we write never depends on how the bytes
        were chunked."""
        buffer = self._handshake + data
        end = _end_of_head(buffer)
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._dead = True
                return [HandshakeFailed(f"Bad HTTP message: no end of the response head "
                                        f"in {MAX_HEAD} bytes")]
            self._handshake = buffer
            return []
        self._handshake, self._tail = b"", buffer[end:]
        self._dead = True  # unless the 101 is good
        try:
            status, fields = parse_head(buffer[:end])
            if status != 101:  # its body, if any, is never read
                return [Rejected(status, fields)]
            extensions: list[bytes] | None = [] if self._offer_deflate else None
            chosen = check_101(fields, self._key, self._offered, extensions)
            if extensions:
                self._use_deflate(negotiate(extensions))
        except HandshakeError as exc:
            return [HandshakeFailed(str(exc))]
        self._dead = False
        self._accepted = True
        return [Accepted(chosen)]

    def _use_deflate(self, negotiated: Negotiated | None) -> None:
        """The server accepted permessage-deflate: frames with RSV1 are
        compressed messages, read by the fast path and by wsproto through
        one decompressor."""
        if negotiated is None:
            return
        self._deflate = negotiated
        self._inflater = Inflater(self._max_size, negotiated)
        self._extension = WsprotoInflate(self._inflater)
        self._ws = Connection(ConnectionType.CLIENT, extensions=[self._extension])

    def _complete_tail(self, data: bytes) -> list[Item]:
        """Finish the frame waiting in ``_tail`` with the start of *data*,
        copying only that frame, then parse the rest of *data* in place
        (no ``tail + data`` copy of the whole read)."""
        tail = self._tail
        head = tail + data[:max(0, _MAX_HEADER - len(tail))]
        size = _frame_size(head)
        need = -1 if size is None else size - len(tail)
        self._tail = b""
        if need < 0 or need > len(data):  # still incomplete: check what is there
            return self._frames(tail + data, 0)
        out = self._frames(tail + data[:need], 0)
        if need < len(data) and not self._dead and self._ws.state in _READING:
            out += self._frames(data, need)
        return out

    def _frames(self, data: bytes, pos: int) -> list[Item]:
        """The hot loop.  Frame boundaries are found here, always: whole,
        unfragmented, unmasked text/binary frames without RSV bits, within
        ``max_message_size``, are cut straight out of *data*; every other
        frame (control, fragment, masked, RSV, non-minimal length, too big)
        is handed to wsproto whole, so wsproto never holds half a frame and
        the fast path never has to wait for it.  A data frame of a
        fragmented message (or over ``max_message_size``) is streamed to
        wsproto instead, and ``_owed`` counts the rest of it.  An incomplete
        simple frame at the end waits in ``_tail`` for the next read, or, if
        it is big (``_BIG``), as pieces of its payload (``_start_big``).
        """
        out: list[Item] = []
        run: list[Payload] = []
        limit = self._limit
        small = min(limit, 125)
        n = len(data)
        if self._owed:
            end = min(pos + self._owed, n)
            self._owed -= end - pos
            if not self._to_wsproto(data[pos:end], run, out):
                return out
            pos = end
        append = run.append
        u16 = _U16
        inflating = self._inflater is not None
        while n - pos >= 2:
            if not self._fragmented:
                # The hottest loop: whole text and binary frames in their
                # shortest length form, within the limit, nothing else.
                # Whatever it does not take falls through to the general
                # case below, one frame at a time.  Header bytes past the
                # end raise IndexError, or struct.error for a 16-bit length
                # (a zero-cost ``try``: no bounds test per frame); a 7-bit
                # length within ``small`` is within the limit too.
                try:
                    while True:
                        b0 = data[pos]
                        length = data[pos + 1]
                        if length <= small:
                            start = pos + 2
                        elif length == 126:
                            length = u16(data, pos + 2)[0]
                            if length < 126 or length > limit:
                                break
                            start = pos + 4
                        elif length == 127 and n - pos >= 10:
                            length = int.from_bytes(data[pos + 2:pos + 10], "big")
                            if length < 65536 or length > limit:
                                break
                            start = pos + 10
                        else:
                            break
                        end = start + length
                        if end > n:
                            break
                        if b0 == 0x81:
                            try:
                                append(data[start:end].decode())  # UTF-8, strict
                            except UnicodeDecodeError:
                                break  # the general case reports it
                        elif b0 == 0x82:
                            append(data[start:end])
                        elif (b0 == 0xC1 or b0 == 0xC2) and inflating and length < _BIG:
                            # compressed, whole: inflated (or the connection failed)
                            if not self._inflate(data[start:end], b0 == 0xC1, run, out):
                                return out
                        else:
                            break
                        pos = end
                except (IndexError, struct.error):  # a header cut by the end of the read
                    pass
                if n - pos < 2:
                    break
            b0 = data[pos]
            length = data[pos + 1]
            masked = length & 0x80
            length &= 0x7F
            opcode = b0 & 0x0F
            if (opcode in _BAD_OPCODES or (opcode >= 8 and (not b0 & 0x80 or length > 125))
                    or (opcode < 8 and (opcode == 0) != self._fragmented)):
                # Broken in its first two bytes (a reserved opcode, a long or
                # fragmented control frame, a continuation out of place, a
                # new message inside a fragmented one): wsproto fails it,
                # perhaps only once more bytes come -- so from now on every
                # byte is wsproto's.
                self._passthrough = True
                self._to_wsproto(data[pos:], run, out)
                return out
            start = pos + 2
            minimal = True
            if length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                minimal = length >= 126
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                minimal = 65536 <= length < _NO_LIMIT
                start = pos + 10
            end = start + length
            if masked or (b0 & 0x70 and (b0 & 0x30 or self._inflater is None)):
                # A masked server frame, or RSV bits without an extension:
                # wsproto fails the connection once it has read the length.
                self._passthrough = True
                self._to_wsproto(data[pos:], run, out)
                return out
            if (b0 == 0xC1 or b0 == 0xC2) and minimal and length <= limit and length < _BIG:
                # A compressed message in one frame (RSV1 and FIN; RSV1
                # anywhere else is wsproto's to refuse) that the hot loop
                # left: cut by the end of the read (it inflates whole ones).
                assert end > n
                break
            if (b0 == 0x81 or b0 == 0x82) and minimal and length <= limit:
                if end > n:
                    if length >= _BIG:
                        if run:
                            out.append(run)
                        self._start_big(b0 == 0x81, length, data[start:], out)
                        return out
                    if b0 == 0x81 and start < n:
                        # Fail on bad UTF-8 as soon as it arrives, as wsproto
                        # does with the pieces of a frame (RFC 6455 8.1).
                        try:
                            _utf8_prefix(data[start:])
                        except UnicodeDecodeError as exc:
                            if run:
                                out.append(run)
                            self._fail(INVALID_DATA, f"{_INVALID_UTF8}: {exc.reason}", out)
                            return out
                    break
                # The hot loop takes every whole simple frame but text that
                # is not UTF-8: that fails here (as wsproto would, 1007).
                # (Anything else would fall through to wsproto, which
                # parses it just as well.)
                try:
                    data[start:end].decode("utf-8")
                except UnicodeDecodeError as exc:
                    if run:
                        out.append(run)
                    self._fail(INVALID_DATA, f"{_INVALID_UTF8}: {exc.reason}", out)
                    return out
            # Anything else is wsproto's.  Control frames go whole (wsproto
            # waits for them whole too); data frames of a fragmented message
            # stream, so wsproto checks each piece as it comes.
            if end > n:
                if opcode >= 8:
                    break
                self._owed = end - n
                end = n
            if opcode and opcode < 8:  # a data frame starts a message...
                self._fragmented = not b0 & 0x80
            elif not opcode and b0 & 0x80:  # ...a final continuation ends it
                self._fragmented = False
            if not self._to_wsproto(data[pos:end], run, out):
                return out
            pos = end
        if pos < n:
            self._tail = data[pos:]
        if run:
            out.append(run)
        return out

    def _inflate(self, payload: bytes, text: bool, run: list[Payload], out: list[Item]) -> bool:
        """Inflate a whole compressed message into *run*; False if it failed
        the connection (past the limit, not deflate, not UTF-8)."""
        assert self._inflater is not None
        try:
            data = self._inflater.finish(payload)
        except InflateFailed as exc:
            if run:
                out.append(run[:])
                run.clear()
            self._fail(exc.code, exc.detail, out)
            return False
        if not text:
            run.append(data)
            return True
        try:
            run.append(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            if run:
                out.append(run[:])
                run.clear()
            self._fail(INVALID_DATA, f"{_INVALID_UTF8}: {exc.reason}", out)
            return False
        return True

    def _start_big(self, text: bool, length: int, piece: bytes, out: list[Item]) -> None:
        """Begin a big frame whose header is read: keep its first *piece*
        (the rest of the read) and wait for ``length`` bytes in all."""
        self._big_need = length - len(piece)
        self._big_parts, self._big_text = [], []
        self._big_decoder = codecs.getincrementaldecoder("utf-8")() if text else None
        if piece:
            self._big_piece(piece, False, out)

    def _big_piece(self, piece: bytes | memoryview, final: bool, out: list[Item]) -> bool:
        """Add a piece of the big frame; text is decoded as it comes, so bad
        UTF-8 fails the connection as soon as it arrives (RFC 6455 8.1)."""
        decoder = self._big_decoder
        if decoder is None:
            self._big_parts.append(piece)
            return True
        try:
            self._big_text.append(decoder.decode(piece, final))
        except UnicodeDecodeError as exc:
            self._big_need = 0
            self._big_text = []
            self._fail(INVALID_DATA, f"{_INVALID_UTF8}: {exc.reason}", out)
            return False
        return True

    def _continue_big(self, data: bytes) -> list[Item]:
        """The next read while a big frame is in progress: finish it (one
        join; none at all if *data* is exactly its whole payload), then
        parse the rest of *data* in place."""
        out: list[Item] = []
        need, n = self._big_need, len(data)
        if n < need:
            self._big_need = need - n
            self._big_piece(data, False, out)
            return out
        piece: bytes | memoryview = data if n == need else memoryview(data)[:need]
        self._big_need = 0
        if not self._big_piece(piece, True, out):
            return out
        parts, self._big_parts = self._big_parts, []
        message: Payload
        if self._big_decoder is not None:
            self._big_decoder = None
            text, self._big_text = self._big_text, []
            message = text[0] if len(text) == 1 else "".join(text)
        elif len(parts) == 1 and parts[0] is data:
            message = data  # the read was exactly the payload: no copy at all
        else:
            message = b"".join(parts)
        out.append([message])
        if need < n and self._ws.state in _READING:
            out += self._frames(data, need)
        return out

    def _to_wsproto(self, data: bytes, run: list[Payload], out: list[Item]) -> bool:
        """Let wsproto parse *data* (whole frames, or the start or rest of a
        streamed one), after the run so far.  False once reading must stop."""
        if run:
            out.append(run[:])
            run.clear()
        self._ws.receive_data(data)
        out += self._drain()
        return not self._dead and self._ws.state in _READING

    def resume(self) -> list[Item]:
        """Parse what arrived after the 101 in the same read (see :meth:`feed`)."""
        data, self._tail = self._tail, b""
        if not data:
            return []
        return self._frames(data, 0) if self._fast else self.feed(data)

    def feed_eof(self) -> None:
        """The peer closed TCP.  Nothing to parse any more."""
        self._dead = True

    def _drain(self) -> list[Item]:
        out: list[Item] = []
        ws = self._ws
        for event in ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._piece(event, out)
                if self._dead:
                    break
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:  # not once our close is out
                    self.outgoing += ws.send(event.response())
            elif isinstance(event, Pong):
                out.append(PongReceived(bytes(event.payload)))
            else:
                assert isinstance(event, CloseConnection)
                self._close_event(event, out)
                break
        return out

    def _piece(self, event: TextMessage | BytesMessage, out: list[Item]) -> None:
        data: str | bytes | bytearray = event.data
        if isinstance(data, str):
            size = len(data) if data.isascii() else len(data.encode("utf-8"))
        else:
            size = len(data)
        if event.message_finished and not self._parts:
            if self._max_size is not None and size > self._max_size:
                self._fail(MESSAGE_TOO_BIG, self._too_big(), out)
                return
            out.append(data if isinstance(data, str) else bytes(data))
            return
        self._size += size
        if self._max_size is not None and self._size + self._held_back() > self._max_size:
            self._fail(MESSAGE_TOO_BIG, self._too_big(), out)
            return
        self._parts.append(data)  # type: ignore[arg-type]
        if event.message_finished:
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(data, str):
                out.append("".join(parts))  # type: ignore[arg-type]
            else:
                out.append(b"".join(parts))  # type: ignore[arg-type]

    def _held_back(self) -> int:
        """The bytes of a UTF-8 character cut by the end of what wsproto
        was given so far: its text decoder holds them back, so the text
        pieces miss them, yet they are the message's bytes and count
        against the limit now (a fragment boundary inside a character is
        legal, RFC 6455 5.4).  Read from wsproto's decoder, read only: it
        has none for a binary message and drops it when a message finishes
        (0 then).  If those internals ever move this is 0 too, and the
        limit is checked up to 3 bytes late."""
        try:
            decoder = self._ws._proto._message_decoder.decoder
        except AttributeError:
            return 0
        return 0 if decoder is None else len(decoder.getstate()[0])

    def _too_big(self) -> str:
        return f"message larger than max_message_size ({self._max_size} bytes)"

    def _close_event(self, event: CloseConnection, out: list[Item]) -> None:
        ws = self._ws
        code = int(event.code)
        if ws.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
            # wsproto's parse failure: it looks like a peer's close, but a real
            # close frame would have moved the state on (to REMOTE_CLOSING or
            # CLOSED).  The close frame, if one can still be sent, is ours.
            detail = event.reason or "protocol error"
            if self._extension is not None and self._extension.failure is not None:
                detail = self._extension.failure  # (wsproto says "error in extension")
            elif code == INVALID_DATA:  # drop the chunk-relative byte offset
                detail = _INVALID_UTF8 + ": " + detail.rpartition(": ")[2]
            self._fail(code, detail, out)
            return
        if ws.state is ConnectionState.REMOTE_CLOSING:
            # The server started the close: echo its code (RFC 6455 5.5.1).
            self.outgoing += ws.send(event.response())
        out.append(PeerClosed(None if code == 1005 else code, event.reason or ""))

    def _fail(self, code: int, detail: str, out: list[Item]) -> None:
        """Stop parsing for good.  Sending our close frame (with *code*) is
        the core's call: it may first let the application answer the
        messages that came before the bad bytes."""
        self._dead = True
        self._parts, self._size = [], 0
        out.append(Failed(_REASON_FOR_CODE.get(code, Reason.PROTOCOL_ERROR), code, detail))

    # -- sending ----------------------------------------------------------
    def send(self, payload: Payload) -> None:
        """Queue a text (``str``) or binary (``bytes``) message.

        One frame, masked (RFC 6455 5.3), serialized here rather than
        through wsproto, which builds an event object, draws a fresh
        ``os.urandom(4)`` and makes a masker object per message.  With
        permessage-deflate the payload is compressed first (RSV1 set);
        ``tests/core/test_framing.py`` checks wsproto reads back what this
        writes.  Only while open: the core makes sure (:meth:`is_open`),
        so this does not ask wsproto again.
        """
        if isinstance(payload, str):
            data, opcode = payload.encode("utf-8"), 0x81
        else:
            data, opcode = payload, 0x82
        if self._deflate is not None:
            compressed = deflate(data, self._deflate)
            if compressed is not None:
                data, opcode = compressed, opcode | 0x40
        n = len(data)
        if n < 126:
            header = bytes((opcode, 0x80 | n))
        elif n < 65536:
            header = bytes((opcode, 0xFE)) + n.to_bytes(2, "big")
        else:
            header = bytes((opcode, 0xFF)) + n.to_bytes(8, "big")
        at = self._key_at
        if at + 4 > len(self._keys) or self._keys_fork != _fork_generation:
            self._keys, at, self._keys_fork = urandom(_KEY_POOL), 0, _fork_generation
        key = self._keys[at:at + 4]
        self._key_at = at + 4
        out = self.outgoing
        out += header
        out += key
        if n:
            mask = int.from_bytes(key * (n // 4 + 1), "little") & ((1 << (8 * n)) - 1)
            out += (int.from_bytes(data, "little") ^ mask).to_bytes(n, "little")

    def ping(self, payload: bytes) -> None:
        self.outgoing += self._ws.send(Ping(payload=payload))

    def close(self, code: int, reason: str = "") -> None:
        """Queue our close frame (only while open: the core makes sure)."""
        self.outgoing += self._ws.send(CloseConnection(code=code, reason=reason))
