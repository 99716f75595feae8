"""A Hypothesis state machine drives one FeedCore through random lives.

One :class:`FeedCore` (seeded RNG, small timeouts) is wired to an in-memory
wsproto *server* connection that exists exactly while the core's transport is
open.  Rules, named by actor, advance a fake clock, play the driver (open,
fail, EOF), play the server (accept, reject, messages whole or cut anywhere,
junk, pings, closes) and play the user (send, subscribe, unsubscribe,
reconnect, pause reading, stop).  In "eager" runs the network opens every
transport and the server answers every upgrade at once (a "flaky" server
rejects two in three, a "greeting" one sends a message and a ping right behind
its 101, a "dropping" one a close frame), so those runs spend their steps on
open connections; some servers also answer pings by themselves.
Inputs are only fed when legal for the current state, except in the
``misuse`` rule (and duplicate or unknown subscriptions), which checks that
misuse raises ``LocalProtocolError`` and changes nothing.

Invariants, checked after every input:

* nothing but ``LocalProtocolError`` (misuse) and ``NotConnected`` (send while
  not open) escapes; peer behaviour never raises;
* after ``handle_timer(now)``, ``next_deadline()`` is ``None`` or ``> now``;
  calling it early changes nothing;
* ``Disconnected.retry_in`` is within ``[0, backoff.cap]``;
* effects match the state: an ``OpenTransport`` is pending exactly in
  ``CONNECTING``, a transport is open exactly in ``HANDSHAKING``..``STOPPING``,
  and the core writes bytes only to an open transport, never malformed frames
  and never after the close handshake;
* after each ``Connected`` the server receives exactly the remembered
  subscriptions, in order, then whatever the application sent or subscribed;
* a close frame the core sends carries the code of its ``Disconnected``;
* metrics counters never go backwards and agree with the events;
* alerts alternate start/clear per kind and are all cleared at ``Stopped``;
* after ``Stopped``: no events, no deadline, no bytes.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason

from nonstop.core import (
    Alert,
    AlertPolicy,
    AppPing,
    Backoff,
    CloseTransport,
    Config,
    Connected,
    Connecting,
    Disconnected,
    Event,
    FeedCore,
    LocalProtocolError,
    Message,
    Messages,
    NotConnected,
    OpenTransport,
    State,
    Stopped,
    Subscription,
)
from tests.helpers import frame

START = 1000.0
WIRE_STATES = (State.HANDSHAKING, State.OPEN, State.CLOSING, State.STOPPING)
TRANSPORT_STATES = (State.CONNECTING, *WIRE_STATES)
APP_PING = "__app_ping__"

#: Subscriptions the machine picks from, at construction and at run time.
SUB_POOL = (
    Subscription(message="trades"),
    Subscription(message=b"\x01book"),
    Subscription(message={"op": "subscribe", "ch": "ticker"}, ack=lambda m: m == "ack:ticker",
                 ack_timeout=2.0, unsubscribe={"op": "unsubscribe", "ch": "ticker"}),
    Subscription(message="candles", ack=lambda m: m == "ack:candles", ack_timeout=4.0),
    Subscription(message="news", unsubscribe="unsub news"),
    Subscription(message="fragile", ack=lambda m: m == "ack:fragile" or fragile(m), ack_timeout=1.0),
)


def fragile(message: object) -> bool:
    """A user callback with a bug: it raises on the message "boom"."""
    if message == "boom":
        raise ValueError("boom")
    return False


def broken_header_provider() -> dict[str, str]:
    raise KeyError("token store unavailable")


class SSLError(OSError):
    """Stands in for ssl.SSLError: the guard recognises TLS errors by class name."""


class gaierror(OSError):  # the class name is what the guard looks for
    """Stands in for socket.gaierror."""


def _chained() -> Exception:
    try:
        raise ConnectionResetError(104, "reset by peer")
    except ConnectionResetError as exc:
        try:
            raise RuntimeError("stream broke") from exc
        except RuntimeError as outer:
            return outer


TRANSPORT_ERRORS = (
    ConnectionRefusedError(111, "refused"),
    ConnectionResetError(104, "reset"),
    BrokenPipeError(32, "broken pipe"),
    TimeoutError("timed out"),
    OSError(113, "no route to host"),
    SSLError("certificate verify failed"),
    gaierror(-2, "Name or service not known"),
    RuntimeError(""),
    _chained(),
)

SERVER_TEXTS = st.one_of(
    st.sampled_from(["ack:ticker", "ack:candles", "__app_pong__", "hello"]),
    st.text(max_size=30),
)
SERVER_PAYLOADS = st.one_of(SERVER_TEXTS, st.binary(max_size=30), st.binary(min_size=101, max_size=140))
APP_MESSAGES = st.one_of(
    st.text(max_size=20).map(lambda s: "app:" + s),
    st.binary(max_size=20).map(lambda b: b"app:" + b),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(-5, 5), max_size=2),
)
CLOSE_CODES = st.sampled_from(
    [1000, 1001, 1002, 1003, 1008, 1011, 1013, 3000, 4001, 4999,
     1006, 1005, 999, CloseReason.NO_STATUS_RCVD]  # the last four are not valid on the wire
)
BAD_FRAMES = st.sampled_from([
    frame(0x1, b"ok\xff"),
    frame(0x3, b""),
    frame(0x1, b"x", rsv=4),
    frame(0x1, b"x", mask=b"abcd"),
    frame(0x0, b"x"),
    frame(0x9, b"p" * 126),
])
REJECT_HEADERS = st.sampled_from([
    [],
    [(b"Retry-After", b"0")],
    [(b"Retry-After", b"3")],
    [(b"Retry-After", b"120")],
    [(b"Retry-After", b"soon")],
    [(b"Retry-After", b"Wed, 21 Oct 2015 07:28:30 GMT"), (b"Date", b"Wed, 21 Oct 2015 07:28:00 GMT")],
])

#: How a flaky server answers two upgrades in three (the third is accepted).
FLAKY_ANSWERS = (
    (503, [(b"Retry-After", b"2")]),
    (429, []),
    (401, []),
    (429, [(b"Retry-After", b"Wed, 21 Oct 2015 07:28:30 GMT"), (b"Date", b"Wed, 21 Oct 2015 07:28:00 GMT")]),
    (403, []),
)

#: What eager servers send in the same chunk as their 101: a greeting, or a
#: close at once (the accept-and-drop server of a restart storm).
PIGGYBACK: dict[str, list[object]] = {
    "greeting": [TextMessage(data="welcome"), Ping(payload=b"hi")],
    "dropping": [CloseConnection(code=1001, reason="restarting")],
}

configs = st.fixed_dictionaries({
    "ping_interval": st.none() | st.sampled_from([1.0, 2.0, 5.0]),
    "ping_timeout": st.none() | st.sampled_from([0.5, 1.0, 3.0]),
    "silence_timeout": st.none() | st.sampled_from([2.0, 7.5, 20.0]),
    "stable_after": st.sampled_from([0.5, 2.0, 10.0]),
    "close_timeout": st.sampled_from([0.5, 1.0, 5.0]),
    "connect_timeout": st.sampled_from([1.0, 10.0]),
    "handshake_timeout": st.sampled_from([1.0, 10.0]),
    "backoff": st.builds(
        Backoff,
        initial=st.sampled_from([0.1, 0.5, 1.0]),
        factor=st.sampled_from([1.0, 2.0, 3.0]),
        cap=st.sampled_from([1.0, 3.0, 5.0]),
        jitter=st.sampled_from([0.0, 0.5, 1.0]),
    ),
    "max_attempts": st.sampled_from([None, None, None, None, 3]),
    "fatal_statuses": st.sampled_from([frozenset(), frozenset({403})]),
    "fatal_close_codes": st.sampled_from([frozenset(), frozenset({4001})]),
    "max_message_size": st.none() | st.just(100),
    "app_ping": st.none() | st.builds(
        AppPing,
        message=st.just(APP_PING),
        is_pong=st.just(lambda m: m == "__app_pong__" or fragile(m)),
        interval=st.sampled_from([1.0, 3.0]),
        timeout=st.sampled_from([0.5, 2.0]),
        deliver_pongs=st.booleans(),
    ),
    "alerts": st.builds(
        AlertPolicy,
        consecutive_failures=st.none() | st.integers(1, 4),
        down_for=st.none() | st.sampled_from([1.0, 10.0]),
        reconnects_per_minute=st.none() | st.integers(1, 3),
        auth=st.booleans(),
    ),
    "subscriptions": st.lists(st.sampled_from(SUB_POOL), unique_by=lambda s: s.payload, max_size=3),
    "headers": st.sampled_from(
        [None, None, lambda: {"Authorization": "Bearer fresh"}, broken_header_provider]),
})


def wire_payload(message: object) -> str | bytes:
    """What ``send``/``subscribe`` put on the wire (compact JSON for objects)."""
    if isinstance(message, (str, bytes)):
        return message
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class FeedMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.last_input = -math.inf
        self.events: list[Event] = []
        self.stopped = False
        self.pending_open = False
        self.server: WSConnection | None = None
        self.alerts_active: set[object] = set()
        self.bytes_fed = 0
        self.counters = (0, 0, 0, 0, 0)
        self.eager = self.flaky = self.busy = self.auto_pong = False
        self.piggyback: list[object] = []
        self.reset_wire()

    # -- set-up ---------------------------------------------------------
    @initialize(options=configs, seed=st.integers(0, 2**32 - 1),
                begin=st.sampled_from(["idle", "started", "open"]),
                eager=st.sampled_from(["no", "accepting", "flaky", "greeting", "dropping"]),
                auto_pong=st.booleans())
    def build(self, options: dict[str, object], seed: int, begin: str, eager: str,
              auto_pong: bool) -> None:
        self.config = Config(url="ws://feed.example/stream?token=s3cret", **options)  # type: ignore[arg-type]
        self.core = FeedCore(self.config, rng=random.Random(seed))
        self.eager = eager != "no"
        self.flaky = eager == "flaky"
        self.piggyback = PIGGYBACK.get(eager, [])
        self.auto_pong = auto_pong
        if begin == "started":
            self.start()
        elif begin == "open":
            self.driver_connects()

    def new_server(self) -> None:
        self.reset_wire()
        self.server = WSConnection(ConnectionType.SERVER)

    def reset_wire(self) -> None:
        """Forget everything about the previous transport."""
        self.server = None
        self.request_seen = False
        self.server_msgs: list[str | bytes] = []
        self.partial: list[str | bytes] = []
        self.expected: list[str | bytes] | None = None  # set at Connected
        self.client_pings: list[bytes] = []
        self.client_close: CloseConnection | None = None
        self.close_checked = False
        self.disconnect_code: tuple[int | None] | None = None

    # -- the plumbing: every input goes through here ---------------------
    def feed_core(self, data: bytes) -> None:
        self.bytes_fed += len(data)
        self.core.receive_data(data, self.now)
        self.after_input(self.now)

    def after_input(self, t: float, *, seen: bool = True) -> None:
        """Deliver the core's bytes to the server, then handle its events.

        ``seen``: the input was not a no-op, so the core now knows the time *t*
        (a no-op such as ``reconnect`` while not open need not record it).
        """
        if seen:
            self.last_input = t
        data = self.core.data_to_send()
        if data:
            assert self.server is not None, f"core wrote {data!r} with no open transport"
            self.deliver(data)
        new: list[Any] = []
        while (event := self.core.next_event()) is not None:
            if isinstance(event, Messages):  # a run: check it, then one Message each
                assert event.data and event.connection == self.core.connection
                new.extend(event)
            else:
                new.append(event)
        assert not (self.stopped and new), f"events after Stopped: {new}"
        for event in new:
            self.on_event(event, t)
        self.events += new
        self.check_close_code()
        self.check_effects_match_state()
        self.check_metrics(t)
        if not self.busy:
            self.busy = True
            try:
                self.react()
            finally:
                self.busy = False

    def react(self) -> None:
        """What an eager network and a pong-answering server do by themselves."""
        if self.eager and self.pending_open:
            self.transport_opened()
        if self.eager and self.server_handshaking():
            attempt = self.core.metrics(self.now).attempts
            if self.flaky and attempt % 3:
                self.server_rejects(*FLAKY_ANSWERS[attempt % len(FLAKY_ANSWERS)])
            else:
                self.server_accepts(self.piggyback)
        while self.auto_pong and self.client_pings and self.server_in(ConnectionState.OPEN):
            assert self.server is not None
            self.feed_core(self.server.send(Pong(payload=self.client_pings.pop(0))))

    def deliver(self, data: bytes) -> None:
        server = self.server
        assert server is not None
        assert server.state is not ConnectionState.CLOSED, (
            f"core wrote {data!r} after the close handshake completed")
        server.receive_data(data)
        for ev in server.events():
            if isinstance(ev, Request):
                self.request_seen = True
            elif isinstance(ev, (TextMessage, BytesMessage)):
                self.partial.append(ev.data)
                if ev.message_finished:
                    first = self.partial[0]
                    whole = "".join(self.partial) if isinstance(first, str) else b"".join(
                        self.partial)  # type: ignore[arg-type]
                    self.partial = []
                    if whole != APP_PING:
                        self.server_msgs.append(whole)
            elif isinstance(ev, Ping):
                self.client_pings.append(bytes(ev.payload))
            elif isinstance(ev, CloseConnection):
                assert server.state is not ConnectionState.OPEN, (
                    f"the core sent a malformed frame: server saw {ev}")
                assert self.client_close is None, "the core sent two close frames"
                self.client_close = ev

    def on_event(self, event: Event, t: float) -> None:
        if isinstance(event, OpenTransport):
            assert not self.pending_open and self.server is None, "a second transport opened"
            assert (event.host, event.port, event.tls) == ("feed.example", 80, False)
            self.pending_open = True
        elif isinstance(event, CloseTransport):
            assert self.pending_open or self.server is not None, "closing a transport twice"
            self.pending_open = False
            self.server = None
        elif isinstance(event, Connected):
            assert self.server is not None
            self.expected = [s.payload for s in self.core.subscriptions]
        elif isinstance(event, Disconnected):
            cap = self.config.backoff.cap
            if event.retry_in is not None:
                assert 0.0 <= event.retry_in <= cap, f"retry_in {event.retry_in} not in [0, {cap}]"
                assert event.retry_at == pytest.approx(t + event.retry_in)
            else:
                assert event.retry_at is None
            if self.server is not None and self.disconnect_code is None:
                self.disconnect_code = (event.code,)
        elif isinstance(event, Alert):
            if event.active:
                assert event.kind not in self.alerts_active, f"{event.kind} raised twice"
                self.alerts_active.add(event.kind)
            else:
                assert event.kind in self.alerts_active, f"{event.kind} cleared while not active"
                self.alerts_active.discard(event.kind)
        elif isinstance(event, Stopped):
            assert self.alerts_active == set(), f"still active at Stopped: {self.alerts_active}"
            self.stopped = True

    def check_close_code(self) -> None:
        """Our close frame says what our Disconnected says (None <-> 1005: no code)."""
        if self.client_close is None or self.close_checked:
            return
        self.close_checked = True
        sent = int(self.client_close.code)
        assert self.disconnect_code is not None, f"close {sent} sent without a Disconnected"
        (code,) = self.disconnect_code
        assert (1005 if code is None else code) == sent, (
            f"Disconnected says code={code}, the close frame says {sent}")

    def check_effects_match_state(self) -> None:
        state = self.core.state
        assert isinstance(state, State)
        assert self.pending_open == (state is State.CONNECTING), (state, self.pending_open)
        assert (self.server is not None) == (state in WIRE_STATES), (state, self.server)
        if self.server is not None:
            if self.expected is None:
                assert self.server_msgs == []
            else:
                assert self.server_msgs == self.expected, (
                    "after Connected the server must receive the subscriptions, then the sends")
        if state is State.STOPPED:
            assert self.stopped and self.core.next_deadline() is None
            assert self.core.data_to_send() == b""

    def check_metrics(self, t: float) -> None:
        m = self.core.metrics(t)
        counters = (m.attempts, m.connection, m.messages_received, m.bytes_received, m.reconnects)
        assert all(a >= b for a, b in zip(counters, self.counters, strict=True)), (
            counters, self.counters)
        self.counters = counters
        assert m.attempts == sum(isinstance(e, Connecting) for e in self.events)
        assert m.connection == sum(isinstance(e, Connected) for e in self.events)
        assert m.messages_received == sum(isinstance(e, Message) for e in self.events)
        assert m.bytes_received == self.bytes_fed
        assert m.reconnects == max(0, m.connection - 1)

    def timer(self, t: float) -> None:
        self.core.handle_timer(t)
        deadline = self.core.next_deadline()
        assert deadline is None or deadline > t, f"deadline {deadline} not after handle_timer({t})"
        self.after_input(t)

    # -- the clock ------------------------------------------------------
    def run_clock(self, target: float) -> None:
        """A punctual driver: fire every deadline up to *target*, in order."""
        for _ in range(60):
            deadline = self.core.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(deadline, self.now)
            self.timer(self.now)
        self.now = target
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= target:
            self.timer(target)  # a very long jump: the rest, late, in one call

    @precondition(lambda self: self.core.next_deadline() is not None)
    @rule()
    def clock_fire_next(self) -> None:
        deadline = self.core.next_deadline()
        assert deadline is not None
        self.now = max(deadline, self.now)
        self.timer(self.now)

    @rule(dt=st.sampled_from([0.0, 1e-9, 0.01, 0.3, 0.5, 1.0, 2.0, 5.0]))
    def clock_advance(self, dt: float) -> None:
        self.run_clock(self.now + dt)

    @rule(dt=st.sampled_from([10.0, 61.0, 1e4, 1e7]))
    def clock_long_jump(self, dt: float) -> None:
        self.run_clock(self.now + dt)

    @rule(dt=st.sampled_from([0.0, 0.7, 4.0, 100.0, 1e6]))
    def clock_oversleep(self, dt: float) -> None:
        """A late driver: one handle_timer long after the deadline."""
        self.now += dt
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.timer(self.now)

    @rule()
    def clock_early_timer_changes_nothing(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.now:
            return
        before = self.snapshot()
        self.core.handle_timer(self.now)
        self.last_input = self.now
        assert self.snapshot() == before
        assert self.core.next_event() is None and self.core.data_to_send() == b""

    # -- the driver -------------------------------------------------------
    @precondition(lambda self: self.core.state is State.IDLE or self.pending_open
                  or self.server_handshaking())
    @rule(accept=st.booleans())
    def driver_connects(self, accept: bool = True) -> None:
        """Every step left towards OPEN (start, open and, if *accept*, the 101)
        at once, so that random runs spend most of their time connected or
        handshaking rather than dialling."""
        if self.core.state is State.IDLE:
            self.start()
        if self.pending_open:
            self.transport_opened()
        if accept and self.server_handshaking():
            self.server_accepts([])

    @precondition(lambda self: self.core.state is State.IDLE)
    @rule()
    def start(self) -> None:
        self.core.start(self.now)
        self.after_input(self.now)

    @precondition(lambda self: self.pending_open)
    @rule()
    def transport_opened(self) -> None:
        self.pending_open = False
        self.new_server()
        self.core.transport_opened(self.now)
        self.after_input(self.now)
        if self.server is not None:
            assert self.request_seen, "transport_opened must queue the upgrade request"

    @precondition(lambda self: self.pending_open or self.server is not None)
    @rule(error=st.sampled_from(TRANSPORT_ERRORS))
    def transport_failed(self, error: Exception) -> None:
        self.core.transport_failed(error, self.now)
        self.after_input(self.now)
        assert self.server is None and not self.pending_open, "a failed transport must be closed"

    @precondition(lambda self: self.reading())
    @rule()
    def eof(self) -> None:
        self.core.receive_eof(self.now)
        self.after_input(self.now)
        assert self.server is None, "EOF must close the transport"

    # -- the server -------------------------------------------------------
    def reading(self) -> bool:
        """A transport is open and the driver reads it."""
        return self.server is not None and not self.core.reading_paused

    def server_in(self, *states: ConnectionState) -> bool:
        return self.reading() and self.server is not None and self.server.state in states

    def server_handshaking(self) -> bool:
        return self.server_in(ConnectionState.CONNECTING) and self.request_seen

    @precondition(lambda self: self.server_handshaking())
    @rule(extra=st.lists(st.sampled_from([TextMessage(data="hello"), Ping(payload=b"hi"),
                                          CloseConnection(code=1000)]), max_size=2))
    def server_accepts(self, extra: list[object]) -> None:
        """A valid 101, sometimes with frames right behind it in the same chunk."""
        assert self.server is not None
        data = self.server.send(AcceptConnection())
        for ev in extra:
            if self.server.state is ConnectionState.OPEN:
                data += self.server.send(ev)  # type: ignore[arg-type]
        self.feed_core(data)

    @precondition(lambda self: self.server_handshaking())
    @rule(status=st.sampled_from([400, 401, 403, 404, 429, 500, 503]), headers=REJECT_HEADERS)
    def server_rejects(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        assert self.server is not None
        self.feed_core(self.server.send(
            RejectConnection(status_code=status, headers=headers, has_body=False)))
        assert self.server is None, "a rejected upgrade must close the transport"

    @precondition(lambda self: self.server_in(ConnectionState.OPEN))
    @rule(payload=SERVER_PAYLOADS, pieces=st.integers(1, 3))
    def server_sends_message(self, payload: str | bytes, pieces: int) -> None:
        """One message, possibly fragmented into several frames, in one chunk."""
        assert self.server is not None
        step = max(1, len(payload) // pieces)
        parts = [payload[i:i + step] for i in range(0, len(payload), step)] or [payload]
        data = b""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            event = (TextMessage(data=part, message_finished=last) if isinstance(part, str)  # type: ignore[arg-type]
                     else BytesMessage(data=part, message_finished=last))
            data += self.server.send(event)
        self.feed_core(data)

    @precondition(lambda self: self.server_in(ConnectionState.OPEN))
    @rule(payloads=st.lists(SERVER_PAYLOADS, min_size=1, max_size=4), data=st.data())
    def server_sends_chunked(self, payloads: list[str | bytes], data: st.DataObject) -> None:
        """Valid frames (and a ping) cut at arbitrary byte boundaries."""
        assert self.server is not None
        wire = self.server.send(Ping(payload=b"chunked"))
        for payload in payloads:
            wire += self.server.send(
                TextMessage(data=payload) if isinstance(payload, str) else BytesMessage(data=payload))
        cuts = sorted(data.draw(st.sets(st.integers(1, len(wire) - 1), max_size=12), label="cuts"))
        bounds = [0, *cuts, len(wire)]
        for a, b in itertools.pairwise(bounds):
            if not self.reading():
                break  # the core closed the transport: a driver stops reading
            self.feed_core(wire[a:b])

    @precondition(lambda self: self.reading())
    @rule(junk=st.one_of(st.binary(min_size=1, max_size=24), BAD_FRAMES))
    def server_sends_junk(self, junk: bytes) -> None:
        self.feed_core(junk)

    @precondition(lambda self: self.server_in(ConnectionState.OPEN))
    @rule(text=st.sampled_from(["ack:ticker", "ack:candles", "ack:fragile", "__app_pong__", "boom"]))
    def server_acknowledges(self, text: str) -> None:
        """What the ACK and app-pong matchers wait for, or "boom", which makes them raise."""
        assert self.server is not None
        self.feed_core(self.server.send(TextMessage(data=text)))

    @precondition(lambda self: self.server_in(ConnectionState.OPEN))
    @rule(payload=st.binary(max_size=10))
    def server_pings(self, payload: bytes) -> None:
        assert self.server is not None
        self.feed_core(self.server.send(Ping(payload=payload)))

    @precondition(lambda self: self.server_in(ConnectionState.OPEN))
    @rule(answer=st.booleans())
    def server_pongs(self, answer: bool) -> None:
        assert self.server is not None
        payload = self.client_pings.pop(0) if answer and self.client_pings else b"unsolicited"
        self.feed_core(self.server.send(Pong(payload=payload)))

    @precondition(lambda self: self.server_in(ConnectionState.OPEN))
    @rule(code=CLOSE_CODES, reason=st.sampled_from(["", "bye", "maintenance"]))
    def server_closes(self, code: int, reason: str) -> None:
        assert self.server is not None
        if code is CloseReason.NO_STATUS_RCVD:
            reason = ""
        self.feed_core(self.server.send(CloseConnection(code=code, reason=reason)))

    @precondition(lambda self: self.server_in(ConnectionState.REMOTE_CLOSING))
    @rule()
    def server_answers_close(self) -> None:
        assert self.server is not None and self.client_close is not None
        self.feed_core(self.server.send(self.client_close.response()))

    # -- the application --------------------------------------------------
    @rule(message=APP_MESSAGES)
    def user_sends(self, message: object) -> None:
        was_open = self.core.state is State.OPEN
        try:
            self.core.send(message, self.now)
        except NotConnected:
            assert not was_open, "send refused while open"
            assert self.core.next_event() is None and self.core.data_to_send() == b""
            return
        assert was_open, f"send accepted in state {self.core.state}"
        assert self.expected is not None
        self.expected.append(wire_payload(message))
        self.after_input(self.now)

    @rule(sub=st.sampled_from(SUB_POOL))
    def user_subscribes(self, sub: Subscription) -> None:
        present = any(s.payload == sub.payload for s in self.core.subscriptions)
        if present or self.core.state in (State.STOPPING, State.STOPPED):
            self.expect_misuse(lambda: self.core.subscribe(sub, self.now))
            return
        was_open = self.core.state is State.OPEN
        before = self.core.subscriptions
        self.core.subscribe(sub, self.now)
        assert self.core.subscriptions == (*before, sub)
        if was_open:
            assert self.expected is not None
            self.expected.append(sub.payload)
        self.after_input(self.now)

    @rule(sub=st.sampled_from(SUB_POOL), by_value=st.booleans())
    def user_unsubscribes(self, sub: Subscription, by_value: bool) -> None:
        target: object = sub.message if by_value else sub
        if (not any(s.payload == sub.payload for s in self.core.subscriptions)
                or self.core.state in (State.STOPPING, State.STOPPED)):
            self.expect_misuse(lambda: self.core.unsubscribe(target, self.now))
            return
        was_open = self.core.state is State.OPEN
        self.core.unsubscribe(target, self.now)
        assert all(s.payload != sub.payload for s in self.core.subscriptions)
        if was_open and sub.unsubscribe_payload is not None:
            assert self.expected is not None
            self.expected.append(sub.unsubscribe_payload)
        self.after_input(self.now)

    @rule()
    def user_reconnects(self) -> None:
        was_open = self.core.state is State.OPEN
        assert self.core.reconnect(self.now) is was_open
        self.after_input(self.now, seen=was_open)

    @rule(mood=st.integers(0, 2))
    def user_pauses_reading(self, mood: int) -> None:
        """Backpressure, one time in three: the driver stops reading (no data or
        EOF is fed while paused)."""
        if mood != 2:
            return
        no_op = self.core.state is State.STOPPED or self.core.reading_paused
        self.core.pause_reading(self.now)
        if self.core.state is not State.STOPPED:
            assert self.core.reading_paused
        self.after_input(self.now, seen=not no_op)

    @rule()
    def user_resumes_reading(self) -> None:
        no_op = not self.core.reading_paused
        self.core.resume_reading(self.now)
        assert not self.core.reading_paused
        self.after_input(self.now, seen=not no_op)

    @rule(mood=st.integers(0, 4))
    def user_stops(self, mood: int) -> None:
        """Graceful stop, one time in five: a stopped feed has little left to explore."""
        if mood != 4:
            return
        no_op = self.core.state in (State.STOPPING, State.STOPPED)
        self.core.stop(self.now)
        self.after_input(self.now, seen=not no_op)
        assert self.core.state in (State.STOPPING, State.STOPPED)

    # -- misuse: LocalProtocolError and nothing changed ---------------------
    def snapshot(self) -> tuple[object, ...]:
        return (self.core.state, self.core.next_deadline(), self.core.metrics(self.now),
                self.core.subscriptions)

    def expect_misuse(self, call: object) -> None:
        before = self.snapshot()
        with pytest.raises(LocalProtocolError):
            call()  # type: ignore[operator]
        assert self.snapshot() == before
        assert self.core.next_event() is None and self.core.data_to_send() == b""

    def misuse_calls(self, data: bytes, error: Exception) -> dict[str, object]:
        """Every kind of misuse that applies in the current state."""
        core, now, state = self.core, self.now, self.core.state
        calls: dict[str, object] = {
            "empty data": lambda: core.receive_data(b"", now),
            "data not bytes": lambda: core.receive_data("text", now),  # type: ignore[arg-type]
            "unencodable send": lambda: core.send(object(), now),
            "nan now": lambda: core.handle_timer(math.nan),
            "infinite now": lambda: core.receive_eof(math.inf),
        }
        if state is not State.IDLE:
            calls["start twice"] = lambda: core.start(now)
        if state is not State.CONNECTING:
            calls["transport_opened"] = lambda: core.transport_opened(now)
        if state not in TRANSPORT_STATES:
            calls["transport_failed"] = lambda: core.transport_failed(error, now)
        if state not in WIRE_STATES:
            calls["data without transport"] = lambda: core.receive_data(data, now)
            calls["eof without transport"] = lambda: core.receive_eof(now)
        if self.last_input > -math.inf:
            past = self.last_input - (1e-6 if data[0] % 2 else 1e6)
            calls["past: timer"] = lambda: core.handle_timer(past)
            calls["past: data"] = lambda: core.receive_data(data, past)
            calls["past: eof"] = lambda: core.receive_eof(past)
            calls["past: stop"] = lambda: core.stop(past)
            calls["past: send"] = lambda: core.send("x", past)
            calls["past: subscribe"] = lambda: core.subscribe("new", past)
            calls["past: failed"] = lambda: core.transport_failed(error, past)
            calls["past: reconnect"] = lambda: core.reconnect(past)
        return calls

    @rule(choice=st.integers(0, 100), data=st.binary(min_size=1, max_size=8),
          error=st.sampled_from(TRANSPORT_ERRORS))
    def misuse(self, choice: int, data: bytes, error: Exception) -> None:
        """Misuse raises LocalProtocolError at once and changes nothing."""
        calls = self.misuse_calls(data, error)
        name = sorted(calls)[choice % len(calls)]
        self.expect_misuse(calls[name])

    # -- invariants between steps ------------------------------------------
    @invariant()
    def stopped_is_final(self) -> None:
        if self.stopped:
            assert self.core.state is State.STOPPED
            assert self.core.next_deadline() is None
            assert self.core.next_event() is None


FeedMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestFeedMachine = FeedMachine.TestCase
