"""permessage-deflate (RFC 7692): the offer, the server's answer, and the
two directions of compression.

Theory of operation
-------------------
The decisions are here and in :mod:`._framing`; zlib is only a computation.

* **The offer** is ``permessage-deflate; client_max_window_bits``: the
  server may compress with any window and tell us the window our messages
  may use.  :func:`negotiate` reads the answer (``Sec-WebSocket-Extensions``
  of the 101): one ``permessage-deflate`` at most, each parameter known, at
  most once, with a value where one belongs and in range; anything else is a
  :class:`~._handshake.HandshakeError` (the attempt fails as a protocol
  error and is retried like one).
* **Inflating** (:class:`Inflater`) is bounded by ``max_message_size``: zlib
  is asked for at most the bytes still allowed plus one, so a frame of a
  kilobyte that would inflate to a gigabyte costs no more memory than the
  limit before it fails with 1009.  One decompressor serves the fast path
  (whole frames) and wsproto (fragments, big frames), so the context the
  server keeps between messages is the same whichever path a message took.
  It is made with the first compressed message and dropped after each one
  if the server said ``server_no_context_takeover``.  Inflating always uses
  a 32 KiB window: at least what any server may use.
* **Deflating** (:func:`deflate`): each message we send is compressed on
  its own (a fresh compressor at zlib's fastest level, dropped after the
  message).  The decoder at
  the server cannot tell (a message may always use less context than
  allowed), we send rarely (subscriptions, a login, an answer), and a
  compressor kept per connection would cost about 130 KiB of memory on
  every idle connection.  A server that limits our window to 8 bits gets
  our messages uncompressed (zlib cannot make a raw stream with a window of
  256 bytes; an uncompressed message is always allowed).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits

from ._handshake import HandshakeError

__all__ = ["OFFER", "Negotiated", "negotiate", "Inflater", "InflateFailed", "deflate", "WsprotoInflate"]

#: The ``Sec-WebSocket-Extensions`` value of our upgrade request.
OFFER: Final = "permessage-deflate; client_max_window_bits"
#: What a sender strips from the end of each compressed message (RFC 7692 7.2.1).
TAIL: Final = b"\x00\x00\xff\xff"
#: zlib's memory level for our compressor (1-9): smaller costs less memory
#: per message for a ratio that differs little on messages of a few KiB.
MEM_LEVEL: Final = 5
#: zlib's compression level for what we send: the fastest.  A client sends
#: little, and a large message (an echo, a bulk request) must not cost
#: milliseconds of the feed's loop (level 6 takes about five times as long
#: on data that compresses poorly, for a ratio a tenth or so better).
LEVEL: Final = 1

_NAME: Final = "permessage-deflate"
_FLAGS: Final = ("server_no_context_takeover", "client_no_context_takeover")
_BITS: Final = ("server_max_window_bits", "client_max_window_bits")


@dataclass(frozen=True)
class Negotiated:
    """What the server's answer settled for this connection."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15


def negotiate(values: list[bytes]) -> Negotiated | None:
    """The ``Sec-WebSocket-Extensions`` values of a 101 (ASCII, checked by
    the caller), when we offered :data:`OFFER`: ``None`` if the server
    accepted no extension, else the parameters.  Raises
    :class:`HandshakeError` naming what we did not offer or cannot use."""
    accepted = [part.strip() for value in values for part in value.decode("ascii").split(",")]
    accepted = [part for part in accepted if part]
    if not accepted:
        return None
    names = [part.split(";")[0].strip() for part in accepted]
    others = [name for name in names if name.lower() != _NAME]
    if others:
        raise HandshakeError("the server accepted an extension that was not offered: "
                             + ", ".join(repr(name) for name in others))
    if len(accepted) > 1:
        raise HandshakeError("the server accepted permessage-deflate more than once")
    found: dict[str, bool | int] = {}
    for param in accepted[0].split(";")[1:]:
        name, eq, raw = param.partition("=")
        name = name.strip().lower()
        raw = raw.strip()
        if name in found:
            raise HandshakeError(f"permessage-deflate: {name} appears twice in the server's answer")
        if name in _FLAGS:
            if eq:
                raise HandshakeError(f"permessage-deflate: {name} takes no value, got {raw!r}")
            found[name] = True
        elif name in _BITS:
            text = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
            if not (text.isdigit() and len(text) <= 2 and 8 <= int(text) <= 15):
                raise HandshakeError(f"permessage-deflate: {name} must be a number from 8 to 15, "
                                     f"got {raw!r}" if eq else
                                     f"permessage-deflate: {name} needs a value in the answer")
            found[name] = int(text)
        else:
            raise HandshakeError(f"permessage-deflate: the server answered with a parameter "
                                 f"that does not exist: {name!r}")
    return Negotiated(**found)  # type: ignore[arg-type]


class InflateFailed(Exception):
    """A compressed message could not be inflated: ``code`` is the close
    code (1009 past the size limit, 1007 for bytes that are not deflate)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class Inflater:
    """One connection's decompressor, bounded by *limit* (``None``: no limit)."""

    __slots__ = ("_limit", "_reset", "_size", "_zlib")

    def __init__(self, limit: int | None, negotiated: Negotiated) -> None:
        self._limit = limit
        self._reset = negotiated.server_no_context_takeover
        self._zlib: zlib._Decompress | None = None
        self._size = 0  # bytes of the current message inflated so far

    def piece(self, data: bytes) -> bytes:
        """Inflate part of a compressed message (raises :class:`InflateFailed`)."""
        z = self._zlib
        if z is None:
            z = self._zlib = zlib.decompressobj(-15)
        limit = self._limit
        try:
            if limit is None:
                out = z.decompress(data)
            else:
                out = z.decompress(data, limit - self._size + 1)
        except zlib.error as exc:
            self._zlib = None
            raise InflateFailed(1007, f"a compressed message is not valid deflate data ({exc})") from None
        self._size += len(out)
        if limit is not None and (self._size > limit or z.unconsumed_tail):
            self._zlib = None
            raise InflateFailed(1009, f"message larger than max_message_size ({limit} bytes) "
                                      f"once inflated")
        return out

    def finish(self, last: bytes = b"") -> bytes:
        """The end of the message, with its *last* bytes (a message in one
        frame: all of it, in one call to zlib), then the stripped tail."""
        out = self.piece(last + TAIL)
        self._size = 0
        if self._reset:
            self._zlib = None
        return out


def deflate(data: bytes, negotiated: Negotiated) -> bytes | None:
    """*data* compressed as one message, or ``None``: send it uncompressed
    (the window we may use is one zlib cannot make)."""
    bits = negotiated.client_max_window_bits
    if bits < 9:
        return None
    z = zlib.compressobj(LEVEL, zlib.DEFLATED, -bits, MEM_LEVEL)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(TAIL) else out


class WsprotoInflate(Extension):
    """The extension wsproto reads frames with when deflate was negotiated:
    it checks the RSV1 rules (not on control frames or continuations) and
    inflates through the connection's :class:`Inflater`.  It never
    compresses: our data frames are written by :mod:`._framing`."""

    name = _NAME

    def __init__(self, inflater: Inflater) -> None:
        self._inflater = inflater
        self._compressed = False  # the current message (a fragmented one too)
        self.failure: str | None = None  # why inflating failed (wsproto only says "error in extension")

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:  # (wsproto asks for it; our handshake sends OFFER itself)
        return OFFER

    def frame_inbound_header(self, proto: object, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        if rsv.rsv1 and (opcode.iscontrol() or opcode is Opcode.CONTINUATION):
            return CloseReason.PROTOCOL_ERROR
        if not opcode.iscontrol() and opcode is not Opcode.CONTINUATION:
            self._compressed = rsv.rsv1
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(self, proto: object, data: bytes) -> bytes | CloseReason:
        if not self._compressed or not self._data_frame(proto):
            return data
        try:
            return self._inflater.piece(bytes(data))
        except InflateFailed as exc:
            self.failure = exc.detail
            return CloseReason(exc.code)

    def frame_inbound_complete(self, proto: object, fin: bool) -> bytes | CloseReason | None:
        if not fin or not self._compressed or not self._data_frame(proto):
            return None
        self._compressed = False
        try:
            return self._inflater.finish()
        except InflateFailed as exc:
            self.failure = exc.detail
            return CloseReason(exc.code)

    @staticmethod
    def _data_frame(proto: object) -> bool:
        """Is the frame wsproto is reading a data frame (not a control
        frame between the fragments of a compressed message)?"""
        header = getattr(proto, "header", None)
        opcode = getattr(header, "opcode", None)
        return opcode is None or not opcode.iscontrol()
