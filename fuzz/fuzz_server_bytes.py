"""Fuzz harness 1: a hostile server's bytes, in arbitrary chunks.

Theory of operation
-------------------
A core is driven to the upgrade request; a real wsproto server reads what
it writes.  Then the fuzzer's bytes are the server's side of the wire, cut
into chunks by a size table, either *after* a valid 101 (the server's own,
alone or glued to the first chunk) or *instead of* it (a hostile server
answering the upgrade with junk).  The harness plays the driver: after
every chunk it runs the timers due at ``now`` (a deferred protocol failure),
writes ``data_to_send()`` to the server and drains the events; once the core
closes the transport it stops feeding, else it ends with EOF.

Allowed outcomes are events and one classified ``Disconnected`` with one
``CloseTransport``; checked:

* nothing raises out of ``receive_data``, ``receive_eof`` or ``handle_timer``;
* buffers stay bounded after every chunk (``_common.check_buffers``);
* junk instead of a 101 never opens; the reason is ``rejected``,
  ``handshake_failed`` or ``eof``; after a 101 it is one of the framing
  reasons, with the matching close code, also in the close frame we send;
* every frame the core writes is well-formed; after ``Connected`` the server
  first receives the subscriptions, in order;
* no delivered message exceeds ``max_message_size``;
* chunking and the fast path change nothing: the same bytes in one chunk
  through the wsproto-only reference path (``Framing(fast=False)``, when the
  core has it) deliver the same messages and acknowledgements.

Input layout (``make_corpus.py`` writes seeds in it)::

    byte 0   config: bits 0-1 subscriptions (0-3), bits 2-4 max_message_size,
             bit 5 app ping, bit 6 max_attempts=1, bit 7 fatal close code 4001
    byte 1   bit 0: the bytes answer the upgrade (no 101 first);
             bit 1: the 101 and the first chunk arrive as one chunk;
             bit 2: the 101's lines end with a bare LF
    byte 2   n (low 4 bits), then n chunk-size bytes (``_common.chunk_size``)
    rest     the server's bytes
"""

from __future__ import annotations

import sys

import _instrument  # noqa: F401  (first: instruments the code under test)
from _common import (
    NOW,
    Reader,
    ServerView,
    check_buffers,
    drain,
    new_core,
    read_chunk_table,
    run_due_timers,
    split,
    subscription_overhead,
    use_reference_framing,
)

from nonstop.core import (
    Alert,
    AppPing,
    CloseTransport,
    Config,
    Connected,
    Disconnected,
    Event,
    FeedCore,
    Message,
    Reason,
    State,
    Stopped,
    Subscribed,
    Subscription,
)

SUBS = ("trades", b"\x01book", Subscription(message={"op": "sub"}, ack=lambda m: m == "ack"))
SIZES = (1, 16, 125, 126, 1024, 65536, None, 1 << 20)
HANDSHAKE_REASONS = {Reason.REJECTED, Reason.HANDSHAKE_FAILED, Reason.EOF}
#: Framing failures and the close code each one sends (None: the server's own).
OPEN_REASONS = {Reason.SERVER_CLOSED: None, Reason.PROTOCOL_ERROR: 1002,
                Reason.INVALID_DATA: 1007, Reason.MESSAGE_TOO_BIG: 1009, Reason.EOF: 1006}


def make_config(flags: int) -> Config:
    return Config(
        url="ws://feed.example/stream",
        subscriptions=SUBS[:flags & 3],
        max_message_size=SIZES[(flags >> 2) & 7],
        app_ping=AppPing(message="ping", is_pong=lambda m: m == "pong") if flags & 32 else None,
        max_attempts=1 if flags & 64 else None,
        fatal_close_codes=frozenset({4001}) if flags & 128 else frozenset(),
    )


def size_of(data: str | bytes) -> int:
    return len(data.encode("utf-8")) if isinstance(data, str) else len(data)


def play(config: Config, payload: bytes, table: bytes, *, raw: bool, glue: bool,
         bare_lf: bool = False, reference: bool = False) -> list[Event]:
    """One connection attempt fed *payload*; returns every event, checked.

    ``bare_lf``: the 101 ends its lines with LF alone (h11 takes it);
    ``reference``: parse with the wsproto-only reference path.
    """
    core = new_core(config)
    core.start(NOW)
    if reference:
        use_reference_framing(core)
    core.transport_opened(NOW)
    server = ServerView()
    server.receive(core.data_to_send())
    events = drain(core)
    chunks = list(split(payload, table))
    if not raw:
        hello = server.accept()
        if bare_lf:
            hello = hello.replace(b"\r\n", b"\n")
        if glue and chunks:
            chunks[0] = hello + chunks[0]
        else:
            chunks.insert(0, hello)
    overhead = subscription_overhead(core)
    largest = 0
    for chunk in [*chunks, None]:
        if chunk is None:
            core.receive_eof(NOW)  # the bytes ended and the transport is still open
        else:
            core.receive_data(chunk, NOW)
            largest = max(largest, len(chunk))
            check_buffers(core, len(chunk), overhead, largest)
        run_due_timers(core, NOW)
        out = core.data_to_send()
        if out:
            assert not raw, f"the core wrote {out!r} after a response that cannot be a valid 101"
            server.receive(out)
        new = drain(core)
        events += new
        if any(isinstance(e, Connected) for e in new):
            subs = [s.payload for s in core.subscriptions]
            assert server.messages[:len(subs)] == subs, "subscriptions must be replayed first"
        if any(isinstance(e, CloseTransport) for e in new):
            break
    check_outcome(core, events, server, raw=raw)
    return events


def check_outcome(core: FeedCore, events: list[Event], server: ServerView, *, raw: bool) -> None:
    config = core.config
    disconnects = [e for e in events if isinstance(e, Disconnected)]
    assert len(disconnects) == 1, f"expected one Disconnected, got {disconnects}"
    assert sum(isinstance(e, CloseTransport) for e in events) == 1
    gone = disconnects[0]
    opened = any(isinstance(e, Connected) for e in events)
    assert opened is not raw, "only the server's valid 101 may open the connection"
    if raw:
        assert gone.reason in HANDSHAKE_REASONS, gone
        assert (gone.status is not None) == (gone.reason is Reason.REJECTED), gone
    else:
        assert gone.reason in OPEN_REASONS, gone
        expected = OPEN_REASONS[gone.reason]
        assert expected is None or gone.code == expected, gone
        if server.close is not None:
            sent = int(server.close.code)
            assert sent == (1005 if gone.code is None else gone.code), (sent, gone)
    limit = config.max_message_size
    for event in events:
        if isinstance(event, Message) and limit is not None:
            assert size_of(event.data) <= limit, f"delivered {size_of(event.data)} > {limit}"
        assert not isinstance(event, Alert) or event.kind.value == "auth" or not event.active
    if core.state is State.STOPPED:
        assert isinstance(events[-1], Stopped)
    else:
        assert core.state is State.BACKOFF, core.state


def TestOneInput(data: bytes) -> None:
    r = Reader(data)
    config = make_config(r.byte())
    mode = r.byte()
    raw, glue, bare_lf = bool(mode & 1), bool(mode & 2), bool(mode & 4)
    table = read_chunk_table(r)
    payload = r.rest()
    events = play(config, payload, table, raw=raw, glue=glue, bare_lf=bare_lf)
    if not raw:  # one chunk, through wsproto alone: the same messages and ACKs
        whole = play(config, payload, b"", raw=False, glue=True, reference=True)
        kinds = (Message, Subscribed)
        got = [(type(e), getattr(e, "data", None)) for e in events if isinstance(e, kinds)]
        want = [(type(e), getattr(e, "data", None)) for e in whole if isinstance(e, kinds)]
        assert got == want, f"chunking changed what was delivered:\n{got}\n{want}"


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
