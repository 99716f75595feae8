"""A scripted, in-memory run of the sans-IO core (no sockets; ``tests/test_docs_and_demo.py``).

The command ``nonstop demo`` runs the real chaos demo instead (:mod:`nonstop._demo`).

No socket, no thread, no sleep: a wsproto server object plays the feed, a
number plays the clock, and every lifecycle step the core decides is printed
as the log line any driver would write.  It shows the strategy at work:
a login signed over the clock on every connection, subscriptions replayed
after each login, a zombie connection caught by
the silence watchdog, a 503 with ``Retry-After`` honoured, garbage bytes
answered with close 1002, backoff growing and resetting, a connection's
replacement asked for before its lifetime, a graceful stop.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import TextIO

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    TextMessage,
)

from .core import (
    AlertPolicy,
    Backoff,
    CloseTransport,
    Config,
    FeedCore,
    Login,
    Message,
    OpenTransport,
    State,
    Subscription,
    format_event,
)

__all__ = ["run"]


class _Demo:
    def __init__(self, out: TextIO, seed: int) -> None:
        self.out = out
        self.now = 0.0
        config = Config(
            url="wss://feed.example/v1/stream?apiKey=SECRET-KEY-123",
            name="demo",
            login=Login(message=self.sign, ack=lambda m: isinstance(m, str) and '"login":"ok"' in m,
                        timeout=2.0),
            subscriptions=[
                Subscription(
                    message={"op": "subscribe", "channel": "trades"},
                    ack=lambda m: isinstance(m, str) and '"ack"' in m,
                    ack_timeout=5.0,
                    name="trades",
                )
            ],
            ping_interval=5.0,
            ping_timeout=3.0,
            silence_timeout=8.0,
            stable_after=10.0,
            connect_timeout=2.0,
            handshake_timeout=2.0,
            max_lifetime=20.0,  # a replacement is asked for 11 s before (connect, upgrade,
            # login, ACK)
            backoff=Backoff(initial=1.0, factor=2.0, cap=8.0),
            alerts=AlertPolicy(consecutive_failures=3, down_for=20.0),
        )
        self.core = FeedCore(config, rng=random.Random(seed))
        self.server: WSConnection | None = None
        self.messages = 0

    def sign(self) -> dict[str, object]:
        """The login, signed over the time it is sent (the demo's clock)."""
        return {"op": "login", "ts": round(self.now, 3), "sig": f"{hash(round(self.now, 3)):x}"}

    # -- plumbing ------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"{self.now:7.2f}s  -- {text}", file=self.out)

    def drain(self) -> None:
        while (event := self.core.next_event()) is not None:
            if isinstance(event, CloseTransport):
                self.server = None
            elif isinstance(event, OpenTransport):
                self.say(f"driver: open TCP to {event.host}:{event.port} tls={event.tls}")
            elif isinstance(event, Message):
                self.messages += 1
                print(f"{self.now:7.2f}s  message #{self.messages}: {event.data!r}", file=self.out)
            line = format_event(event, self.core.config.label)
            if line is not None:
                print(f"{self.now:7.2f}s  {line[1]}", file=self.out)
        if self.core.failure_pending:
            # This application has taken every message (printed above) and
            # waits for more: a failure held back for it goes ahead now.
            self.core.caught_up(self.now)
            self.pump()

    def pump(self) -> None:
        data = self.core.data_to_send()
        if data and self.server is not None:
            self.server.receive_data(data)
            for ev in self.server.events():
                if isinstance(ev, TextMessage) and '"op":"login"' in ev.data:
                    self.feed(self.server.send(TextMessage(data='{"login":"ok"}')))
                elif isinstance(ev, TextMessage) and '"subscribe"' in ev.data:
                    self.feed(self.server.send(TextMessage(data='{"event":"ack","channel":"trades"}')))
                elif isinstance(ev, Ping):
                    self.feed(self.server.send(ev.response()))
                elif isinstance(ev, CloseConnection):
                    if self.server.state is ConnectionState.REMOTE_CLOSING:
                        self.feed(self.server.send(ev.response()))
                    self.say("server: close handshake done, closing TCP")
                    self.server = None
                    self.core.receive_eof(self.now)
                    break
        self.drain()
        if self.core.pending_output and self.server is not None:  # an answer to an answer
            self.pump()
            return
        deadline = self.core.next_deadline()
        if deadline is not None and deadline <= self.now:  # due now, as in a driver's loop
            self.core.handle_timer(self.now)
            self.pump()

    def feed(self, data: bytes) -> None:
        if data:
            self.core.receive_data(data, self.now)

    def run_until(self, t: float, *, server: Callable[[], None] | None = None) -> None:
        """Let time pass to *t*, firing timers; optionally let the server act each second."""
        while self.now < t:
            step = min(t, self.now + 1.0) if server else t
            deadline = self.core.next_deadline()
            while deadline is not None and deadline <= step:
                self.now = max(self.now, deadline)
                self.core.handle_timer(self.now)
                self.pump()
                deadline = self.core.next_deadline()
            self.now = step
            if server is not None and self.server is not None and self.core.state is State.OPEN:
                server()
                self.pump()

    def until_connecting(self) -> None:
        """Let time pass, firing timers, until the core asks for a transport."""
        while self.core.state is not State.CONNECTING:
            deadline = self.core.next_deadline()
            assert deadline is not None, "the core waits for nothing"
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now)
            self.pump()

    def open_and_accept(self) -> None:
        self.server = WSConnection(ConnectionType.SERVER)
        self.core.transport_opened(self.now)
        self.pump()
        assert self.server is not None
        self.feed(self.server.send(AcceptConnection()))
        self.pump()

    def tick(self) -> None:
        assert self.server is not None
        self.feed(self.server.send(TextMessage(data=f'{{"trade":{self.messages + 1}}}')))

    # -- the script --------------------------------------------------------------
    def script(self) -> int:
        self.core.start(self.now)
        self.drain()
        self.open_and_accept()
        self.run_until(12.0, server=self.tick)

        self.say("server restarts: close 1012")
        assert self.server is not None
        self.feed(self.server.send(CloseConnection(code=1012, reason="service restart")))
        self.pump()
        self.until_connecting()
        self.open_and_accept()
        self.run_until(16.0, server=self.tick)

        self.say("server goes silent but keeps TCP open (zombie); it does not answer pings")
        start = self.now
        while self.core.state is State.OPEN:
            deadline = self.core.next_deadline()
            assert deadline is not None
            self.now = deadline
            self.core.handle_timer(self.now)
            self.core.data_to_send()  # the zombie swallows our pings
            self.drain()
        self.say(f"zombie detected after {self.now - start:.2f}s")

        self.say("server is overloaded: upgrade answered with 503, Retry-After: 4")
        self.until_connecting()
        self.server = WSConnection(ConnectionType.SERVER)
        self.core.transport_opened(self.now)
        self.pump()
        assert self.server is not None
        self.server.receive_data(b"")  # nothing more to read from this client
        self.feed(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 4\r\nContent-Length: 0\r\n\r\n"
        )
        self.pump()

        self.say("next attempt: the server sends garbage instead of frames")
        self.until_connecting()
        self.open_and_accept()
        self.feed(b"\xff\xfe\xfd garbage")
        self.pump()

        self.say("recovery: a healthy connection that stays up resets the backoff")
        self.until_connecting()
        self.open_and_accept()
        self.run_until(self.now + 12.0, server=self.tick)

        self.say("graceful stop")
        self.core.stop(self.now)
        self.pump()
        metrics = self.core.metrics(self.now)
        self.say(
            f"done: {metrics.messages_received} messages, {metrics.reconnects} reconnects, "
            f"connected {metrics.connected_ratio:.0%} of {metrics.running_time:.1f}s, "
            f"disconnects {dict(metrics.disconnects)}"
        )
        return 0 if self.core.state is State.STOPPED else 1


def run(out: TextIO = sys.stdout, seed: int = 1) -> int:
    """Run the scripted demo; return a process exit code."""
    return _Demo(out, seed).script()

