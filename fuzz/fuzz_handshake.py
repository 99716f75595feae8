"""Fuzz harness 3: arbitrary HTTP responses to the upgrade request.

Theory of operation
-------------------
A core sends its upgrade request; the fuzzer's bytes become the server's
answer, cut into chunks by a size table, then EOF.  Only a valid 101 with
the right ``Sec-WebSocket-Accept`` may open the connection (RFC 6455 4.1);
anything else must end as a classified rejection: ``rejected`` (an HTTP
status, reported in ``Disconnected.status``), ``handshake_failed`` or
``eof``.  The response comes in one of two forms:

* **structured**: status, HTTP version, reason phrase and a list of header
  fields picked from a pool (the right accept key, a wrong one, a truncated
  one, upgrade and connection variants, offered and unoffered subprotocols,
  an extension, fuzzed names and values), then trailing bytes.  The
  expectation is computed here from the fields: ``must_not_open`` (wrong
  status, any accept value that is not the right one, no ``Upgrade:
  websocket``, no ``upgrade`` connection token, any extension when none was
  offered, a subprotocol that was not offered or more than one) and
  ``must_open`` (a plain, clean valid response: each of those fields once,
  nothing odd).  When permessage-deflate was offered, a plain
  ``permessage-deflate`` answer may open; any other extension answer has no
  expectation here beyond the ones every opening must meet (its parameters
  are the core tests' to check).
* **raw**: the bytes as they are, ``$A`` replaced by the right accept key.
  If the core opens, a lenient parse of the response head must find status
  101 and only right accept values.

The accept key is computed with :mod:`hashlib` (``_common.accept_for``), not
by wsproto, so the check is independent of the code under test.

Input layout::

    byte 0   config: bits 0-1 offered subprotocols, bit 2 fatal 401, bit 3 max_attempts=1,
             bit 4 permessage-deflate offered
    byte 1   bit 0: raw form
    byte 2   n (low 4 bits), then n chunk-size bytes (``_common.chunk_size``)
    raw:        rest = the response
    structured: status, version, reason (one byte each), k (low 4 bits), k
                header picks (fuzzed names/values: a length byte, then bytes),
                rest = bytes after the head
"""

from __future__ import annotations

import re
import sys

import _instrument  # noqa: F401  (first: instruments the code under test)
from _common import (
    NOW,
    Reader,
    accept_for,
    check_buffers,
    drain,
    new_core,
    read_chunk_table,
    request_key,
    run_due_timers,
    split,
    subscription_overhead,
)

from nonstop.core import CloseTransport, Config, Connected, Disconnected, Event, Reason

OFFERED = ((), ("chat",), ("chat", "superchat"), ("superchat",))
STATUSES = (101, 101, 101, 101, 200, 204, 301, 400, 401, 403, 404, 426, 429, 500, 503,
            100, 102, 199, 599)
VERSIONS = (b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1")
PHRASES = (b"Switching Protocols", b"", b"OK", b"\xe2\x9c\x93 caf\xe9", b"Too Many Requests")
SIGNIFICANT = (b"upgrade", b"connection", b"sec-websocket-accept", b"sec-websocket-protocol",
               b"sec-websocket-extensions", b"content-length", b"transfer-encoding")
TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
OPEN_FAILURES = {Reason.REJECTED, Reason.HANDSHAKE_FAILED, Reason.EOF}


def fuzz_value(r: Reader) -> bytes:
    """Up to 31 fuzzed bytes, without CR, LF and NUL (the head stays one head)."""
    return bytes(b for b in r.take(r.byte() & 31) if b not in b"\r\n\x00")


def fuzz_name(r: Reader) -> bytes:
    return bytes(b for b in r.take(r.byte() & 15) if b in TCHAR) or b"X"


def header_pool(r: Reader, accept: bytes) -> tuple[bytes, bytes]:
    wrong = accept_for(b"dGhlIHNhbXBsZSBub25jZQ==")  # RFC 6455's sample key: not ours
    pool = (
        (b"Upgrade", b"websocket"), (b"upgrade", b"WebSocket"), (b"Upgrade", b"h2c"),
        (b"Connection", b"Upgrade"), (b"connection", b"keep-alive, upgrade"),
        (b"Connection", b"close"),
        (b"Sec-WebSocket-Accept", accept), (b"sec-websocket-accept", b" " + accept + b" "),
        (b"Sec-WebSocket-Accept", wrong), (b"Sec-WebSocket-Accept", accept[:-2]),
        (b"Sec-WebSocket-Accept", accept.lower()),
        (b"Sec-WebSocket-Protocol", b"chat"), (b"Sec-WebSocket-Protocol", b"superchat"),
        (b"Sec-WebSocket-Protocol", b"other"), (b"Sec-WebSocket-Protocol", b"chat, superchat"),
        (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
        (b"Content-Length", b"0"), (b"Transfer-Encoding", b"chunked"),
        (b"Date", b"Wed, 21 Oct 2015 07:28:00 GMT"),
    )
    pick = r.byte()
    if pick < 200:
        return pool[pick % len(pool)]
    if pick < 215:
        return b"Retry-After", fuzz_value(r)
    if pick < 230:
        return b"X-Fuzz", fuzz_value(r)
    if pick < 245:
        return SIGNIFICANT[pick % len(SIGNIFICANT)], fuzz_value(r)
    return fuzz_name(r), fuzz_value(r)


def clean(value: bytes) -> bool:
    """A field value h11 takes as is: visible bytes, spaces, tabs and obs-text."""
    return all((b >= 0x20 and b != 0x7F) or b == 0x09 for b in value)


def expectation(status: int, version: bytes, phrase: bytes, headers: list[tuple[bytes, bytes]],
                offered: tuple[str, ...], accept: bytes, deflate: bool) -> tuple[bool, bool]:
    """(must_not_open, must_open) for a structured response (*deflate*:
    permessage-deflate was offered)."""
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
    accepts = fields.get(b"sec-websocket-accept", [])
    upgrades = fields.get(b"upgrade", [])
    connections = fields.get(b"connection", [])
    protocols = {t.strip(b" \t") for v in fields.get(b"sec-websocket-protocol", [])
                 for t in v.split(b",")}
    extensions = [v.lower() for v in fields.get(b"sec-websocket-extensions", [])]
    plain_deflate = deflate and extensions == [b"permessage-deflate"]
    unsure = deflate and bool(extensions) and not plain_deflate
    must_not_open = (
        status != 101
        or not accepts or any(a != accept for a in accepts)
        or not any(u.lower() == b"websocket" for u in upgrades)
        or not any(t.strip(b" \t").lower() == b"upgrade" for c in connections for t in c.split(b","))
        or (bool(extensions) and not deflate)
        or len(protocols) > 1
        or any(p.decode("latin-1") not in offered for p in protocols)
    )
    must_open = (
        not must_not_open and not unsure and version == b"HTTP/1.1" and clean(phrase)
        and len(accepts) == len(upgrades) == len(connections) == 1
        and len(fields.get(b"sec-websocket-protocol", [])) <= 1
        and b"content-length" not in fields and b"transfer-encoding" not in fields
        and all(clean(v) for _, v in headers)
    )
    return must_not_open, must_open


def lenient_head(response: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """The status line and fields of a response head, unfolding obs-fold
    lines; generous in what it accepts (used only when the core opened)."""
    lines = re.split(rb"\r?\n", response)
    while lines and not lines[0]:
        lines.pop(0)
    status_line, fields, last = (lines[0] if lines else b""), {}, None
    for line in lines[1:]:
        if not line:
            break
        if line[:1] in (b" ", b"\t") and last is not None:
            fields[last][-1] = (fields[last][-1] + b" " + line.strip(b" \t")).strip(b" \t")
            continue
        name, _, value = line.partition(b":")
        last = name.strip().lower()
        fields.setdefault(last, []).append(value.strip(b" \t"))
    return status_line, fields


def play(config: Config, r: Reader, raw: bool, table: bytes) -> None:
    core = new_core(config)
    core.start(NOW)
    core.transport_opened(NOW)
    accept = accept_for(request_key(core.data_to_send()))
    events: list[Event] = drain(core)
    must_not_open, must_open, status = False, False, None
    if raw:
        response = r.rest().replace(b"$A", accept)
    else:
        status, version, phrase = r.pick(STATUSES), r.pick(VERSIONS), r.pick(PHRASES)
        headers = [header_pool(r, accept) for _ in range(r.byte() & 15)]
        head = b"%s %d %s\r\n" % (version, status, phrase)
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        response = head + b"\r\n" + r.rest()
        must_not_open, must_open = expectation(status, version, phrase, headers,
                                               config.subprotocols, accept, config.compression is not None)
    overhead, largest = subscription_overhead(core), 0
    for chunk in [*split(response, table), None]:
        if chunk is None:
            core.receive_eof(NOW)
        else:
            core.receive_data(chunk, NOW)
            largest = max(largest, len(chunk))
            check_buffers(core, len(chunk), overhead, largest)
        run_due_timers(core, NOW)
        core.data_to_send()
        new = drain(core)
        events += new
        if any(isinstance(e, CloseTransport) for e in new):
            break
    opened = [e for e in events if isinstance(e, Connected)]
    gone = next(e for e in events if isinstance(e, Disconnected))
    if opened:
        assert not must_not_open, "an invalid response opened the connection"
        status_line, fields = lenient_head(response)
        assert re.match(rb"HTTP/\d\.\d 101(?:[ \t]|$)", status_line), status_line
        accepts = fields.get(b"sec-websocket-accept", [])
        assert accepts and all(a == accept for a in accepts), f"opened with accept {accepts}"
        protocol = opened[0].subprotocol
        assert protocol is None or protocol in config.subprotocols, protocol
        assert config.compression is not None or b"sec-websocket-extensions" not in fields
    else:
        assert not must_open, f"a valid 101 did not open: {gone}"
        assert gone.reason in OPEN_FAILURES, gone
        assert (gone.status is not None) == (gone.reason is Reason.REJECTED), gone
        if gone.status is not None:
            assert gone.status != 101 and (status is None or gone.status == status), gone
        cap = config.backoff.cap
        assert gone.retry_in is None or 0.0 <= gone.retry_in <= cap, gone


def TestOneInput(data: bytes) -> None:
    r = Reader(data)
    flags = r.byte()
    config = Config(
        url="ws://feed.example/stream",
        subscriptions=["trades"],
        subprotocols=OFFERED[flags & 3],
        fatal_statuses=frozenset({401}) if flags & 4 else frozenset(),
        max_attempts=1 if flags & 8 else None,
        compression="deflate" if flags & 16 else None,
    )
    raw = bool(r.byte() & 1)
    table = read_chunk_table(r)
    play(config, r, raw, table)


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
