"""The client's opening handshake (RFC 6455 4.1), written and read here.

The upgrade request is one template filled in; the response head is parsed
once it is whole (the framing layer finds its end) with the grammar h11
reads (RFC 9112 sections 4 and 5): CRLF or bare LF line ends, obsolete line
folding unfolded, a field value of visible bytes, spaces and tabs.  A
reconnect goes through this code once per connection, after a second or a
day of data: it is kept short, so that little has to be fetched back into
the CPU's caches (two regular expressions, one SHA-1), and the wsproto
connection that reads the frames is made only when the 101 is good.

What is checked, in order (the first problem is the error):

* the head: ``HTTP/d.d`` and a 3-digit status of at least 100, header lines
  that are ``name: value`` with a token for the name, at most
  :data:`MAX_HEAD` bytes (``Bad HTTP message: ...``);
* a status other than 101 is a rejection: its status and headers go to
  the core (``Retry-After``, fatal statuses); its body is never read;
* a 101 needs ``Upgrade: websocket`` and an ``upgrade`` token in
  ``Connection`` (any case), exactly one ``Sec-WebSocket-Accept`` equal to
  the key's token, at most one subprotocol and one that was offered, and no
  extension unless one was offered (then :mod:`._deflate` reads the
  answer).  The fields it reads must be ASCII.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from typing import Final

from ._url import Endpoint

#: RFC 6455 1.3: appended to the key before hashing.
GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The longest response head read (h11's default limit for an incomplete
#: event): a server that sends more without a blank line is not HTTP.
MAX_HEAD: Final = 16384

_STATUS_LINE: Final = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
_FIELD: Final = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*"
)


class HandshakeError(Exception):
    """The server's answer to the upgrade request is not a usable one."""


def nonce_from(random16: bytes) -> bytes:
    """``Sec-WebSocket-Key``: 16 random bytes, base64 (RFC 6455 4.1)."""
    return base64.b64encode(random16)


def accept_token(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer *key* with."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def request(endpoint: Endpoint, headers: Sequence[tuple[str, str]],
            subprotocols: Sequence[str], key: bytes) -> bytes:
    """The upgrade request.  *headers* were validated by the caller (RFC
    9110 tokens, Latin-1 values); the URL parser made host and target
    ASCII-safe (an internationalized host name becomes its IDNA form here)."""
    host = endpoint.host_header
    lines = [
        b"GET ", endpoint.target.encode("ascii"), b" HTTP/1.1\r\nHost: ",
        host.encode("ascii") if host.isascii() else host.encode("idna"),
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ", key,
        b"\r\nSec-WebSocket-Version: 13\r\n",
    ]
    if subprotocols:
        lines += (b"Sec-WebSocket-Protocol: ", ", ".join(subprotocols).encode("ascii"), b"\r\n")
    for name, value in headers:
        lines += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The status and the header fields (names in lower case, values
    without the whitespace around them, in order) of a response head that
    ends with its blank line.  Raises :class:`HandshakeError`."""
    if len(head) > MAX_HEAD:
        raise HandshakeError(f"Bad HTTP message: the response head is longer than {MAX_HEAD} bytes")
    lines = head.split(b"\n")
    del lines[-2:]  # the blank line and what follows its LF (nothing)
    if lines[0].endswith(b"\r"):
        lines[0] = lines[0][:-1]
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise HandshakeError(f"Bad HTTP message: {_shown(lines[0])} is not an HTTP status line")
    status = int(status_line[1])
    if status < 100:
        raise HandshakeError(f"Bad HTTP message: status {status} does not exist")
    fields: list[tuple[bytes, bytes]] = []
    unfolded: bytes | None = None
    for line in lines[1:]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line[:1] in (b" ", b"\t"):  # obsolete line folding: more of the last field
            if unfolded is None:
                raise HandshakeError("Bad HTTP message: a continuation line before any header")
            unfolded += b" " + line.lstrip(b" \t")
            continue
        if unfolded is not None:
            fields.append(_field(unfolded))
        unfolded = line
    if unfolded is not None:
        fields.append(_field(unfolded))
    return status, fields


def _field(line: bytes) -> tuple[bytes, bytes]:
    match = _FIELD.fullmatch(line)
    if match is None:
        raise HandshakeError(f"Bad HTTP message: {_shown(line)} is not a header field")
    return match[1].lower(), match[2]


def _shown(line: bytes) -> str:
    """A line of the server's, for an error message: at most 60 bytes, as
    Python writes bytes."""
    return repr(line[:60]) + ("..." if len(line) > 60 else "")


def check_101(fields: Sequence[tuple[bytes, bytes]], key: bytes,
              offered: Sequence[str], extensions_out: list[bytes] | None = None) -> str | None:
    """The subprotocol a 101 chose (``None``: none), if the 101 completes
    the handshake for *key*; else :class:`HandshakeError` naming what is
    wrong.  *extensions_out*: we offered an extension, and the
    ``Sec-WebSocket-Extensions`` values go there, for the caller to check;
    otherwise any such value is an error."""
    connection: list[bytes] = []
    upgrade: list[bytes] = []
    accepts: list[bytes] = []
    protocols: list[bytes] = []
    extensions: list[bytes] = []
    wanted = {b"connection": connection, b"upgrade": upgrade, b"sec-websocket-accept": accepts,
              b"sec-websocket-protocol": protocols, b"sec-websocket-extensions": extensions}
    for name, value in fields:
        into = wanted.get(name)
        if into is not None:
            if not value.isascii():
                raise HandshakeError(f"a WebSocket header is not ASCII: {name.decode()}: {_shown(value)}")
            into.append(value)
    if not any(token.strip(b" \t").lower() == b"upgrade"
               for value in connection for token in value.split(b",")):
        raise HandshakeError("Missing header, 'Connection: Upgrade'")
    if not any(value.lower() == b"websocket" for value in upgrade):
        raise HandshakeError("Missing header, 'Upgrade: websocket'")
    if len(accepts) > 1:
        raise HandshakeError("more than one Sec-WebSocket-Accept header")
    if not accepts or accepts[0] != accept_token(key):
        raise HandshakeError("Bad accept token")
    if len(protocols) > 1 or any(b"," in value for value in protocols):
        raise HandshakeError("the server chose more than one subprotocol")
    chosen = protocols[0].decode("ascii") if protocols else None
    if chosen is not None and chosen not in offered:
        raise HandshakeError(f"unrecognized subprotocol {chosen}")
    if extensions_out is not None:
        extensions_out += extensions
    elif extensions:
        names = ", ".join(repr(v.decode("ascii").split(";")[0].strip()) for v in extensions)
        raise HandshakeError(f"the server accepted an extension that was not offered: {names}")
    return chosen
