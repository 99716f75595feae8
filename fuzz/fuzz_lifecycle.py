"""Fuzz harness 2: lifecycle sequences.

Theory of operation
-------------------
The fuzzer's bytes decode into a config and then a sequence of inputs, one
per opcode byte (``OPS``): clock advances (none, tiny, huge; timers fired
punctually in order, or once, late), bare ``handle_timer`` calls (early or
due), the driver (``start``, ``transport_opened``, ``transport_failed``,
EOF), a real wsproto server per transport (accept, reject, messages,
fragments, pings, pongs, closes, junk) and the application (``send``,
``subscribe``, ``unsubscribe``, ``reconnect``, pause/resume reading,
``stop``).  Inputs that are illegal in the current state are fed anyway: they
must raise ``LocalProtocolError`` (``NotConnected`` for ``send``) and change
nothing.  The input ends with ``stop`` and ``close_timeout`` of fake time.

Invariants, after every input:

* after ``handle_timer(now)`` the deadline is ``None`` or later than ``now``,
  and a timer called before its deadline changes nothing;
* the state is one of the documented ``State`` members, and agrees with the
  effects: ``OpenTransport`` pending exactly in ``CONNECTING``, a transport
  open exactly from ``HANDSHAKING`` to ``STOPPING``, bytes written only to it;
* ``Disconnected.retry_in`` (the backoff) is within ``[0, backoff.cap]``;
* after every ``Connected`` the server receives exactly the remembered
  subscriptions, in order, then what the application sent or subscribed;
* metrics counters never go backwards (and agree with the events);
* alerts alternate start/clear per kind and are all cleared at ``Stopped``;
* after ``stop`` the core is ``STOPPED`` within ``close_timeout`` of fake
  time (by the next float where ``now + close_timeout`` rounds to ``now``),
  and then emits nothing more: no event, deadline or byte;
* buffers stay bounded after every chunk of server bytes.

Input layout: 4 config bytes, a seed byte, then opcodes (``OPS``), each
followed by the bytes it reads, whatever the state (``make_corpus.py``
writes seeds in it).
"""

from __future__ import annotations

import json
import math
import random
import sys

import _instrument  # noqa: F401  (first: instruments the code under test)
from _common import NOW, Reader, ServerView, check_buffers, drain, subscription_overhead
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, RejectConnection, TextMessage

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
    FeedCore,
    LocalProtocolError,
    Message,
    NotConnected,
    OpenTransport,
    State,
    Stopped,
    Subscription,
)

WIRE_STATES = (State.HANDSHAKING, State.OPEN, State.CLOSING, State.STOPPING)
APP_PING = "__ping__"


def fragile(message: object) -> bool:
    """A user callback with a bug: it raises on the message "boom"."""
    if message == "boom":
        raise ValueError("boom")
    return False


def broken_headers() -> dict[str, str]:
    raise KeyError("token store unavailable")


SUB_POOL = (
    Subscription(message="trades"),
    Subscription(message=b"\x01book"),
    Subscription(message={"op": "subscribe", "ch": "ticker"}, ack=lambda m: m == "ack:ticker",
                 ack_timeout=2.0, unsubscribe={"op": "unsubscribe", "ch": "ticker"}),
    Subscription(message="candles", ack=lambda m: m == "ack:candles", ack_timeout=4.0),
    Subscription(message="news", unsubscribe="unsub news"),
    Subscription(message="fragile", ack=lambda m: m == "ack:fragile" or fragile(m), ack_timeout=1.0),
)
SERVER_TEXTS = ("ack:ticker", "ack:candles", "ack:fragile", "__pong__", "boom", "hello")
APP_MESSAGES = ("hi", b"\x00bin", {"op": "ping"}, "")
ERRORS = (ConnectionRefusedError(111, "refused"), ConnectionResetError(104, "reset"),
          TimeoutError("timed out"), OSError(113, "no route to host"), RuntimeError(""))
STATUSES = (400, 401, 403, 404, 429, 500, 503)
REJECT_HEADERS = ([], [(b"Retry-After", b"3")], [(b"Retry-After", b"120")],
                  [(b"Retry-After", b"Wed, 21 Oct 2015 07:28:30 GMT"),
                   (b"Date", b"Wed, 21 Oct 2015 07:28:00 GMT")])
CLOSE_CODES = (1000, 1001, 1002, 1008, 1011, 1013, 3000, 4001)
SMALL_STEPS = (0.0, 1e-9, 0.01, 0.3, 0.5, 1.0, 2.0, 5.0)
BIG_STEPS = (10.0, 61.0, 1e4, 1e7, 1e12, 1e17)  # 1e17: past where now + 0.5 == now


def make_config(r: Reader) -> Config:
    c1, c2, c3, c4 = r.byte(), r.byte(), r.byte(), r.byte()
    return Config(
        url="ws://feed.example/stream?token=s3cret",
        ping_interval=(None, 1.0, 5.0, 20.0)[c1 & 3],
        ping_timeout=(None, 0.5, 3.0, 10.0)[(c1 >> 2) & 3],
        silence_timeout=(None, 2.0, 7.5, 60.0)[(c1 >> 4) & 3],
        stable_after=(0.5, 2.0, 10.0, 10.0)[(c1 >> 6) & 3],
        close_timeout=(0.5, 1.0, 5.0, 5.0)[c2 & 3],
        connect_timeout=(1.0, 10.0)[(c2 >> 2) & 1],
        handshake_timeout=(1.0, 10.0)[(c2 >> 3) & 1],
        backoff=Backoff(initial=(0.1, 0.5, 1.0, 0.5)[(c2 >> 4) & 3],
                        factor=(1.0, 2.0, 3.0, 2.0)[(c2 >> 6) & 3],
                        cap=(1.0, 5.0, 60.0, 60.0)[c3 & 3], jitter=(0.0, 0.5, 1.0, 1.0)[(c3 >> 2) & 3]),
        max_attempts=(None, None, None, 3)[(c3 >> 4) & 3],
        app_ping=AppPing(message=APP_PING, is_pong=lambda m: m == "__pong__" or fragile(m),
                         interval=1.0, timeout=0.5) if c3 & 64 else None,
        max_message_size=100 if c3 & 128 else 1 << 20,
        headers=(None, None, lambda: {"Authorization": "Bearer fresh"}, broken_headers)[c4 & 3],
        subscriptions=[s for i, s in enumerate(SUB_POOL[:3]) if c4 >> (2 + i) & 1],
        fatal_statuses=frozenset({403}) if c4 & 32 else frozenset(),
        fatal_close_codes=frozenset({4001}) if c4 & 64 else frozenset(),
        alerts=AlertPolicy(consecutive_failures=2, down_for=1.0, reconnects_per_minute=1)
        if c4 & 128 else AlertPolicy(),
    )


def wire(message: object) -> str | bytes:
    if isinstance(message, (str, bytes)):
        return message
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class Life:
    def __init__(self, r: Reader) -> None:
        self.r = r
        self.config = make_config(r)
        self.core = FeedCore(self.config, rng=random.Random(r.byte()))
        self.now = NOW
        self.server: ServerView | None = None
        self.pending_open = False
        self.expected: list[str | bytes] | None = None  # since Connected
        self.stop_at: float | None = None
        self.stopped = False
        self.alerts: set[object] = set()
        self.fed = 0
        self.largest = 0
        self.counts = {"attempts": 0, "connected": 0, "messages": 0}
        self.last = self.core.metrics(self.now)

    # -- feeding inputs ---------------------------------------------------
    def snapshot(self) -> tuple[object, ...]:
        core = self.core
        return core.state, core.next_deadline(), core.metrics(self.now), core.subscriptions

    def feed(self, call: object, *, refusable: tuple[type[Exception], ...] = (LocalProtocolError,),
             sends: str | bytes | None = None) -> bool:
        """One input.  If it is refused, nothing may have changed.  *sends*:
        the message it puts on the wire if accepted while open."""
        before = self.snapshot()
        was_open = before[0] is State.OPEN
        try:
            call()  # type: ignore[operator]
        except refusable:
            assert self.snapshot() == before, "a refused input changed the core"
            assert self.core.next_event() is None and self.core.pending_output == 0
            return False
        if sends is not None and was_open:
            assert self.expected is not None
            self.expected.append(sends)
        self.settle()
        return True

    def timer(self, t: float) -> None:
        self.core.handle_timer(t)
        deadline = self.core.next_deadline()
        assert deadline is None or deadline > t, f"deadline {deadline} after handle_timer({t})"
        self.settle()

    def data(self, data: bytes) -> None:
        if not data or self.server is None or self.core.reading_paused:
            return  # a driver reads only an open transport, and not while paused
        self.fed += len(data)
        self.largest = max(self.largest, len(data))
        self.core.receive_data(data, self.now)
        check_buffers(self.core, len(data), subscription_overhead(self.core) + 512, self.largest)
        self.settle()
        self.run_due()

    def run_due(self) -> None:
        """A driver fires a timer due at ``now`` at once (a deferred failure)."""
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.timer(self.now)

    # -- after every input: the outputs and the invariants ------------------
    def settle(self) -> None:
        out = self.core.data_to_send()
        if out:
            assert self.server is not None, f"the core wrote {out!r} with no open transport"
            self.server.receive(out)
        events = drain(self.core)
        assert not (self.stopped and events), f"events after Stopped: {events}"
        for event in events:
            self.on_event(event)
        self.check()

    def on_event(self, event: object) -> None:
        if isinstance(event, OpenTransport):
            assert not self.pending_open and self.server is None, "a second transport"
            self.pending_open = True
        elif isinstance(event, CloseTransport):
            assert self.pending_open or self.server is not None, "closing a transport twice"
            self.pending_open, self.server, self.expected = False, None, None
        elif isinstance(event, Connecting):
            self.counts["attempts"] += 1
        elif isinstance(event, Connected):
            assert self.server is not None
            self.counts["connected"] += 1
            self.expected = [s.payload for s in self.core.subscriptions]
        elif isinstance(event, Message):
            self.counts["messages"] += 1
        elif isinstance(event, Disconnected):
            cap = self.config.backoff.cap
            if event.retry_in is not None:
                assert 0.0 <= event.retry_in <= cap, f"retry_in {event.retry_in} not in [0, {cap}]"
            else:
                assert event.retry_at is None
        elif isinstance(event, Alert):
            assert event.active == (event.kind not in self.alerts), f"alert {event} out of turn"
            (self.alerts.add if event.active else self.alerts.discard)(event.kind)
        elif isinstance(event, Stopped):
            assert not self.alerts, f"alerts still active at Stopped: {self.alerts}"
            self.stopped = True

    def check(self) -> None:
        core, state = self.core, self.core.state
        assert isinstance(state, State) and state in State.__members__.values(), state
        assert self.pending_open == (state is State.CONNECTING), (state, self.pending_open)
        assert (self.server is not None) == (state in WIRE_STATES), (state, self.server)
        if self.server is not None and self.expected is not None:
            got = [m for m in self.server.messages if m != APP_PING]
            assert got == self.expected, f"server got {got}, expected {self.expected}"
        if self.stop_at is not None:
            assert state in (State.STOPPING, State.STOPPED), state
        if self.stopped or state is State.STOPPED:
            assert self.stopped and core.next_deadline() is None and core.pending_output == 0
        m = core.metrics(self.now)
        last = self.last
        for name in ("attempts", "connection", "reconnects", "messages_received",
                     "bytes_received", "running_time"):
            assert getattr(m, name) >= getattr(last, name), f"metrics.{name} went backwards"
        assert m.total_uptime >= last.total_uptime * (1 - 1e-12), "total_uptime went backwards"
        for reason, n in last.disconnects.items():
            assert m.disconnects.get(reason, 0) >= n, f"disconnects[{reason}] went backwards"
        assert (m.attempts, m.connection, m.messages_received, m.bytes_received) == (
            self.counts["attempts"], self.counts["connected"], self.counts["messages"], self.fed)
        self.last = m

    # -- the clock ----------------------------------------------------------
    def advance(self, dt: float, *, punctual: bool = True) -> None:
        target = self.now + dt
        for _ in range(200 if punctual else 0):
            deadline = self.core.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(deadline, self.now)
            self.timer(self.now)
        self.now = target
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= target:
            self.timer(target)  # late, or the rest of a very long jump in one call
        if self.stop_at is not None and self.now >= self.stopped_by(self.stop_at):
            assert self.core.state is State.STOPPED, f"{self.core.state} long after stop"

    def stopped_by(self, stop_at: float) -> float:
        """``stop_at + close_timeout``; at a huge ``now``, where that sum rounds
        back to ``stop_at``, the next float: the soonest instant after it."""
        limit = stop_at + self.config.close_timeout
        return limit if limit > stop_at else math.nextafter(stop_at, math.inf)

    # -- the operations -----------------------------------------------------
    def op_tick(self) -> None:
        self.advance(self.r.pick(SMALL_STEPS))

    def op_jump(self) -> None:
        self.advance(self.r.pick(BIG_STEPS), punctual=not self.r.byte() & 1)

    def op_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.timer(self.now)
            return
        before = self.snapshot()
        self.core.handle_timer(self.now)  # early: safe, and changes nothing
        assert self.snapshot() == before and self.core.next_event() is None
        assert self.core.pending_output == 0

    def op_start(self) -> None:
        self.feed(lambda: self.core.start(self.now))

    def op_opened(self) -> None:
        if self.pending_open:
            self.pending_open, self.server = False, ServerView()
        if self.feed(lambda: self.core.transport_opened(self.now)) and self.server is not None:
            assert self.server.requested, "transport_opened must write the upgrade request"

    def op_failed(self) -> None:
        error = self.r.pick(ERRORS)
        self.feed(lambda: self.core.transport_failed(error, self.now))

    def server_ready(self, *states: ConnectionState) -> ServerView | None:
        s = self.server
        ok = s is not None and s.ws.state in states and not self.core.reading_paused
        return s if ok else None

    def op_accept(self) -> None:
        greet = self.r.byte() & 1
        s = self.server_ready(ConnectionState.CONNECTING)
        if s is not None and s.requested:
            data = s.accept()
            if greet:  # a greeting right behind the 101
                data += s.ws.send(TextMessage(data="welcome")) + s.ws.send(Ping(payload=b"hi"))
            self.data(data)

    def op_reject(self) -> None:
        s = self.server_ready(ConnectionState.CONNECTING)
        status, headers = self.r.pick(STATUSES), self.r.pick(REJECT_HEADERS)
        if s is not None and s.requested:
            self.data(s.ws.send(RejectConnection(status_code=status, headers=headers,
                                                 has_body=False)))

    def op_message(self) -> None:
        s = self.server_ready(ConnectionState.OPEN)
        kind, pieces, text = self.r.byte(), 1 + self.r.byte() % 3, self.r.pick(SERVER_TEXTS)
        raw = self.r.take(self.r.byte() & 127)
        payload: str | bytes = (text if kind % 3 == 0 else
                                raw.decode("latin-1") if kind % 3 == 1 else raw)
        if s is None:
            return
        step = max(1, len(payload) // pieces)
        parts = [payload[i:i + step] for i in range(0, len(payload), step)] or [payload]
        data = b""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            data += s.ws.send(TextMessage(data=part, message_finished=last) if isinstance(part, str)
                              else BytesMessage(data=part, message_finished=last))
        self.data(data)

    def op_control(self) -> None:
        choice, code = self.r.byte() % 4, self.r.pick(CLOSE_CODES)
        s = self.server_ready(ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)
        if s is None:
            return
        if s.ws.state is ConnectionState.REMOTE_CLOSING:
            assert s.close is not None
            self.data(s.ws.send(s.close.response()))  # the server answers our close
        elif choice == 0:
            self.data(s.ws.send(Ping(payload=b"srv")))
        elif choice == 1:
            self.data(s.ws.send(Pong(payload=s.pings[-1] if s.pings else b"unsolicited")))
        else:
            self.data(s.ws.send(CloseConnection(code=code, reason="bye" if choice == 2 else "")))

    def op_junk(self) -> None:
        self.data(self.r.take(1 + self.r.byte() % 24))

    def op_eof(self) -> None:
        if self.server is not None and not self.core.reading_paused:
            self.feed(lambda: self.core.receive_eof(self.now))

    def op_send(self) -> None:
        message = self.r.pick(APP_MESSAGES)
        was_open = self.core.state is State.OPEN
        accepted = self.feed(lambda: self.core.send(message, self.now),
                             refusable=(LocalProtocolError, NotConnected), sends=wire(message))
        assert accepted == was_open, f"send {'accepted' if accepted else 'refused'} while {was_open=}"

    def op_subscription(self) -> None:
        flip, sub = self.r.byte(), self.r.pick(SUB_POOL)
        if flip & 1:
            target = sub.message if flip & 2 else sub
            self.feed(lambda: self.core.unsubscribe(target, self.now), sends=sub.unsubscribe_payload)
        else:
            self.feed(lambda: self.core.subscribe(sub, self.now), sends=sub.payload)

    def op_other(self) -> None:
        choice = self.r.byte() % 3
        if choice == 0:
            self.feed(lambda: self.core.reconnect(self.now))
        elif choice == 1:
            self.feed(lambda: self.core.pause_reading(self.now))
        else:
            self.feed(lambda: self.core.resume_reading(self.now))

    def op_stop(self) -> None:
        self.feed(lambda: self.core.stop(self.now))
        if self.stop_at is None:
            self.stop_at = self.now

    OPS = ("op_tick", "op_jump", "op_timer", "op_start", "op_opened", "op_failed", "op_accept",
           "op_reject", "op_message", "op_control", "op_junk", "op_eof", "op_send",
           "op_subscription", "op_other", "op_stop")

    def finish(self) -> None:
        """Stop, then ``close_timeout`` of fake time: STOPPED, and nothing more."""
        self.op_stop()
        self.advance(self.stopped_by(self.now) - self.now)
        assert self.core.state is State.STOPPED and self.stopped
        later = self.now + 1.0
        self.core.handle_timer(later)
        self.core.stop(later)
        assert self.core.next_event() is None and self.core.data_to_send() == b""
        assert self.core.next_deadline() is None and math.isfinite(later)


def TestOneInput(data: bytes) -> None:
    r = Reader(data)
    life = Life(r)
    for _ in range(400):
        if r.done:
            break
        getattr(life, Life.OPS[r.byte() % len(Life.OPS)])()
    life.finish()


if __name__ == "__main__":
    import atheris

    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
