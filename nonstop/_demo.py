"""``nonstop demo``: a real client rides through a scripted chaos schedule.

Theory of operation
-------------------
One asyncio event loop runs both sides over real TCP on 127.0.0.1: the
fault-injecting :class:`~nonstop.testing.FeedServer` (numbered messages
``{"seq": N, "conn": C, ...}`` every 5 ms, subscriptions acknowledged) and a
client made with :func:`nonstop.connect` (the anyio driver) that subscribes
with an ACK matcher.  The schedule (:func:`plan`) is a list of
:class:`Step` s, in a fixed order: a server close (1001), a reset (RST), a
silent zombie, refused connections for longer than the backoff needs to
reach its cap (2 s here), an upgrade answered with 503 and ``Retry-After``,
garbage bytes, subscriptions that are never acknowledged, and recovery with
a graceful stop.  ``--seed`` draws the clean-stream time before each fault
and how long the lasting faults are held (and seeds the client's jitter:
``rng=random.Random(seed)``), so a seed always gives the same schedule;
``--duration`` scales it and the client's timeouts.

Each step: stream for the drawn time, *quiesce*, inject the fault, wait
until the client reports the expected :class:`~nonstop.Disconnected`
reason (*detect*: fault to detection), lift the fault if it lasts (refused,
no ACK), and wait for an acknowledged subscription on a new connection
(*recover*: detection -- or, for lasting faults, the moment the server was
healthy again -- to that ACK).

Honest counting.  The server logs which numbered message it handed to the
kernel on which connection (:attr:`FeedServer.sent_log`); the client's
consumer records every numbered message it delivered.  Frames in flight on
a TCP connection that breaks are lost *in the network*, not in the client
(an RST even makes the client's kernel discard what it has not read yet),
so before each fault the demo *quiesces*: it pauses the server's stream
(:meth:`FeedServer.pause_streaming`, exact) and waits until the client has
delivered everything sent.  Nothing is in flight when the connection
breaks, so for every connection *sent* must equal *delivered*: any
difference, and any duplicate, is a loss inside the client process and
fails the demo.  Each connection is counted in the row of the step during
which it ended.

Exit status 0 only when every fault was detected and recovered from and
nothing was lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO

import anyio

from ._api import connect
from ._display import Display, Rate, UsageError, status_text
from .core import (
    AlertPolicy,
    AppEvent,
    Backoff,
    Disconnected,
    Gap,
    Metrics,
    Reason,
    Subscribed,
    Subscription,
)
from .testing import Fault, FeedServer
from .transports._anyio import AsyncFeed

__all__ = ["Step", "Timing", "plan", "main", "run"]

DEFAULT_DURATION = 30.0
#: Seconds between numbered messages on the demo server.
INTERVAL = 0.005
#: The client's backoff ceiling in the demo (60 s by default elsewhere).
BACKOFF_CAP = 2.0
#: The Retry-After of the 503 step (seconds; at most BACKOFF_CAP, so honoured).
RETRY_AFTER = 1
#: Longest wait for a detection or a recovery before the step is failed.
WAIT_LIMIT = 20.0
#: Longest wait for the client to deliver what the server sent (quiescing).
QUIESCE_LIMIT = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """The client's settings for one run (scaled with ``--duration``)."""

    ping_interval: float
    ping_timeout: float
    silence_timeout: float
    ack_timeout: float
    stable_after: float
    close_timeout: float
    down_for: float
    backoff: Backoff


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One fault of the schedule."""

    key: str
    title: str
    story: str
    settle: float
    """Seconds of clean streaming before the fault."""
    hold: float = 0.0
    """Seconds the server keeps the fault up (0: a one-off)."""
    expect: tuple[Reason, ...] = ()
    """Disconnect reasons that count as detecting this fault."""


def plan(seed: int, duration: float = DEFAULT_DURATION) -> tuple[Timing, list[Step]]:
    """The client's timing and the schedule for *seed* and *duration*: a pure function."""
    s = min(10.0, max(0.2, duration / DEFAULT_DURATION))
    rng = random.Random(f"nonstop-demo:{seed}")
    timing = Timing(
        ping_interval=max(0.2, 0.5 * s),
        ping_timeout=max(0.3, 1.0 * s),
        silence_timeout=max(1.0, 3.0 * s),
        ack_timeout=max(0.4, 1.0 * s),
        stable_after=max(0.3, 1.0 * s),
        close_timeout=1.0,
        down_for=max(2.0, 3.0 * s),
        backoff=Backoff(initial=0.1, factor=2.0, cap=BACKOFF_CAP, jitter=1.0),
    )

    def settle() -> float:
        return round(max(timing.stable_after + 0.3, 1.9 * s * rng.uniform(0.75, 1.25)), 2)

    refused = round(max(2.5, 6.0 * s * rng.uniform(0.9, 1.1)), 2)
    no_ack = round(max(2.5 * timing.ack_timeout, 2.5 * s * rng.uniform(0.9, 1.1)), 2)
    steps = [
        Step(key="close", title="server close (1001)", settle=settle(), expect=(Reason.SERVER_CLOSED,),
             story="the server says goodbye with close code 1001 (going away), as in a deploy"),
        Step(key="reset", title="reset (RST)", settle=settle(), expect=(Reason.RESET,),
             story="the server aborts the TCP connection with an RST"),
        Step(key="zombie", title="silent zombie", settle=settle(),
             expect=(Reason.PING_TIMEOUT, Reason.SILENCE),
             story="the server keeps TCP open but sends nothing more: no data, no pongs"),
        Step(key="refused", title=f"refused for {refused:g}s", settle=settle(), hold=refused,
             expect=(Reason.REFUSED,),
             story=f"the server drops the connection and stops listening for {refused:g}s: "
                   f"long enough for the backoff to reach its {BACKOFF_CAP:g}s cap"),
        Step(key="503", title=f"503, Retry-After: {RETRY_AFTER}", settle=settle(),
             expect=(Reason.REJECTED,),
             story=f"the server drops the connection and answers the next upgrade with "
                   f"503 Service Unavailable, Retry-After: {RETRY_AFTER}"),
        Step(key="garbage", title="garbage bytes", settle=settle(), expect=(Reason.PROTOCOL_ERROR,),
             story="the server writes bytes that are not a WebSocket frame"),
        Step(key="no_ack", title=f"no ACKs for {no_ack:g}s", settle=settle(), hold=no_ack,
             expect=(Reason.ACK_TIMEOUT,),
             story=f"the server drops the connection and stops acknowledging subscriptions "
                   f"for {no_ack:g}s"),
        Step(key="final", title="recovery, graceful stop", settle=settle(),
             story="a clean stream, then a graceful stop (close 1000)"),
    ]
    return timing, steps


@dataclass(slots=True)
class _Row:
    step: Step
    injected: float = math.nan
    detected: float | None = None
    fixed: float | None = None
    recovered: float | None = None
    saw: str = ""
    problems: list[str] = field(default_factory=list)
    sent: int = 0
    delivered: int = 0
    duplicates: int = 0
    gaps: int = 0  # Gap records the client's records() reported in the step
    first_seq: int = 0  # the last number sent before the step (redundant runs count by number)

    @property
    def detect(self) -> float | None:
        return None if self.detected is None else self.detected - self.injected

    @property
    def recover(self) -> float | None:
        if self.recovered is None:
            return None
        start = self.fixed if self.fixed is not None else self.detected
        return None if start is None else self.recovered - start


class _Demo:
    def __init__(self, seed: int, duration: float, display: Display | None, legs: int = 1) -> None:
        self.seed = seed
        self.legs = legs
        self.report = ""
        self.timing, self.steps = plan(seed, duration)
        self.display = display
        self.events: list[tuple[float, AppEvent]] = []
        self._changed: anyio.Event | None = None
        self.got: list[tuple[int, int, int]] = []  # (seq, server conn, client connection)
        self.gap_records: list[tuple[float, Gap]] = []  # what records() reported, and when
        self.unique: set[int] = set()
        self.rows = [_Row(step) for step in self.steps]
        self.phase = "starting"
        self.t0 = 0.0

    # -- output ------------------------------------------------------------
    def now(self) -> float:
        return anyio.current_time() - self.t0

    def say(self, text: str) -> None:
        if self.display is not None:
            self.display.line(text)

    # -- the client's side -------------------------------------------------
    def on_event(self, event: AppEvent) -> None:
        self.events.append((self.now(), event))
        changed = self._changed
        if changed is not None:
            self._changed = anyio.Event()
            changed.set()

    async def wait_event(self, match: Callable[[AppEvent], bool], after: float,
                         limit: float = WAIT_LIMIT) -> float | None:
        """Time of the first event matching *match* at or after *after*, waiting ≤ *limit*."""
        with anyio.move_on_after(limit):
            while True:
                for t, event in self.events:
                    if t >= after and match(event):
                        return t
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
        return None

    async def consume(self, feed: AsyncFeed) -> None:
        async for record in feed.records():
            if type(record) is Gap:
                self.gap_records.append((self.now(), record))
                continue
            data = record.data
            if isinstance(data, str) and data.startswith('{"seq"'):
                item = json.loads(data)
                self.got.append((int(item["seq"]), int(item["conn"]), record.connection))
                self.unique.add(int(item["seq"]))

    async def quiesce(self, server: FeedServer) -> None:
        """Pause the stream and wait until the client has everything sent."""
        server.pause_streaming()
        with anyio.move_on_after(QUIESCE_LIMIT):
            while len(self.unique) < server.sent:
                await anyio.sleep(0.005)

    async def show_status(self, feed: AsyncFeed, duration: float, scope: anyio.CancelScope) -> None:
        assert self.display is not None
        rate = Rate()
        with scope:
            while True:
                m = feed.metrics()
                text = status_text(m, rate.update(anyio.current_time(), m.messages_received))
                self.display.status(f"demo {self.now():4.1f}s/~{duration:g}s · {self.phase} · {text}")
                await anyio.sleep(0.25)

    # -- the schedule ------------------------------------------------------
    async def run(self, duration: float) -> int:
        timing = self.timing
        if self.display is not None:
            self.say(f"nonstop demo: seed {self.seed}, about {duration:g}s; schedule: " + "; ".join(
                f"{i}. {step.title} after {step.settle:g}s" for i, step in enumerate(self.steps, 1)))
        server = FeedServer(interval=INTERVAL, record_limit=1 << 22, close_timeout=1.0,
                            handshake_timeout=5.0, shared_stream=self.legs > 1)
        redundant: dict[str, Any] = {}
        if self.legs > 1:  # every number on every leg: merged by it, one leg faulted at a time
            redundant = dict(redundancy=self.legs, dedupe=_demo_key,
                             leg_lag=2 * timing.silence_timeout)
        sub = Subscription(
            message={"op": "subscribe", "args": ["demo"]},
            ack=lambda m: isinstance(m, str) and m.startswith('{"event":"subscribed"'),
            ack_timeout=timing.ack_timeout,
            name="demo",
        )
        async with server:
            self.t0 = anyio.current_time()
            feed = connect(
                server.url,
                name="demo",
                subscribe=[sub],
                ping_interval=timing.ping_interval,
                ping_timeout=timing.ping_timeout,
                silence_timeout=timing.silence_timeout,
                connect_timeout=2.0,
                handshake_timeout=2.0,
                close_timeout=timing.close_timeout,
                stable_after=timing.stable_after,
                backoff=timing.backoff,
                alerts=AlertPolicy(consecutive_failures=3, down_for=timing.down_for,
                                   reconnects_per_minute=30),
                on_event=self.on_event,
                rng=random.Random(self.seed),
                **redundant,
            )
            status = anyio.CancelScope()
            async with feed, anyio.create_task_group() as tg:
                tg.start_soon(self.consume, feed)  # ends when the feed has stopped
                if self.display is not None and self.display.live:
                    tg.start_soon(self.show_status, feed, duration, status)
                first = await self.wait_event(_acked, 0.0)
                if first is None:
                    raise RuntimeError("the demo client did not connect to its own server")
                for index, row in enumerate(self.rows, 1):
                    await self.step(index, row, server)
                await self.quiesce(server)
                metrics = feed.metrics()
                await feed.aclose()
                status.cancel()
            sent_log = server.sent_log
        self.account(sent_log)
        ok = all(not row.problems for row in self.rows)
        self.table(metrics, ok)
        return 0 if ok else 1

    async def step(self, index: int, row: _Row, server: FeedServer) -> None:
        step = row.step
        n = len(self.rows)
        self.phase = f"{index}/{n} {step.title}"
        await anyio.sleep(step.settle)
        await self.quiesce(server)
        row.injected = self.now()
        row.first_seq = server.sent
        self.say(f"-- {index}/{n} {step.title}: {step.story}")
        if step.key == "final":
            server.resume_streaming()
            row.saw = "stopped (close 1000)"
            return
        self.inject(step, server)
        row.detected = await self.wait_event(
            lambda e: isinstance(e, Disconnected) and e.reason in step.expect, row.injected)
        server.resume_streaming()
        if step.hold:
            await anyio.sleep(max(0.0, row.injected + step.hold - self.now()))
            server.restore()
            row.fixed = self.now()
            self.say(f"-- {index}/{n} the server is healthy again")
        start = row.fixed if row.fixed is not None else row.detected
        if start is not None:
            row.recovered = await self.wait_event(_acked, start)
        self.check(row)
        if row.detect is not None and row.recover is not None:
            self.say(f"-- {index}/{n} detected in {row.detect:.3f}s, recovered in {row.recover:.3f}s")

    def inject(self, step: Step, server: FeedServer) -> None:
        key = step.key
        # A redundant client: the fault hits one connection (the oldest),
        # the server-wide ones (refusing, 503, no ACKs) its next attempts.
        one: dict[str, Any] = {}
        if self.legs > 1:
            one["connection"] = min(c.number for c in server.history
                                    if c.phase == "open" and c.number is not None)
        if key == "close":
            server.inject(Fault.CLOSE_CODE, code=1001, reason="going away", **one)
        elif key == "reset":
            server.inject(Fault.RESET, **one)
        elif key == "zombie":
            server.inject(Fault.SILENT, **one)
        elif key == "refused":
            server.inject(Fault.REFUSE)
            server.inject(Fault.CLOSE, **one)
        elif key == "503":
            server.inject(Fault.REJECT, status=503, retry_after=RETRY_AFTER)
            server.inject(Fault.CLOSE, **one)
        elif key == "garbage":
            server.inject(Fault.GARBAGE, **one)
        elif key == "no_ack":
            server.inject(Fault.NO_ACK)
            server.inject(Fault.CLOSE, **one)
        else:  # pragma: no cover - plan() makes only these
            raise AssertionError(key)

    def check(self, row: _Row) -> None:
        """Fill in what the client saw during the step, and what went wrong."""
        step = row.step
        end = self.now()
        seen = [e for t, e in self.events if row.injected <= t <= end and isinstance(e, Disconnected)]
        counts: dict[str, int] = defaultdict(int)
        order: list[str] = []
        for e in seen:
            what = e.reason.value
            if e.code is not None and e.reason in (Reason.SERVER_CLOSED, Reason.PROTOCOL_ERROR):
                what += f" {e.code}"
            if e.status is not None:
                what += f" {e.status}"
            if what not in counts:
                order.append(what)
            counts[what] += 1
        row.saw = ", ".join(w if counts[w] == 1 else f"{w} x{counts[w]}" for w in order)
        if row.detected is None:
            row.problems.append("not detected")
        elif row.recovered is None:
            row.problems.append("not recovered")
        if step.key == "503":
            rejected = [e for e in seen if e.reason is Reason.REJECTED]
            if rejected and rejected[0].retry_in is not None:
                row.saw += f", waited {rejected[0].retry_in:.2f}s"
                if rejected[0].retry_in < RETRY_AFTER:
                    row.problems.append("Retry-After not honoured")
            if rejected and rejected[0].status != 503:
                row.problems.append(f"status {rejected[0].status}")
        if step.key == "refused":
            waits = [e.retry_in for e in seen if e.retry_in is not None]
            if waits:
                row.saw += f", waits <= {max(waits):.2f}s (cap {BACKOFF_CAP:g}s)"
                if max(waits) > BACKOFF_CAP:
                    row.problems.append("backoff above its cap")

    # -- the numbers -------------------------------------------------------
    def account(self, sent_log: list[tuple[int, int]]) -> None:
        """Per row: what the server sent on the connections that ended in it,
        and what the client delivered from them (a redundant run: the
        numbers sent during the step, on any connection, and delivered)."""
        if self.legs > 1:
            self.account_numbers(sent_log)
            return
        starts = [row.injected for row in self.rows]

        def row_of(t: float) -> int:
            index = 0
            for i, start in enumerate(starts):
                if start <= t:
                    index = i
            return index

        ended: dict[int, int] = {}
        for t, e in self.events:
            if isinstance(e, Disconnected) and e.connection is not None and e.connection not in ended:
                ended[e.connection] = row_of(t)
        last = len(self.rows) - 1
        sent: dict[int, list[int]] = defaultdict(list)
        for seq, conn in sent_log:
            sent[conn].append(seq)
        got: dict[int, list[int]] = defaultdict(list)
        misrouted = 0
        for seq, conn, connection in self.got:
            got[conn].append(seq)
            misrouted += conn != connection
        for conn in sorted(set(sent) | set(got)):
            row = self.rows[ended.get(conn, last)]
            delivered = got[conn]
            row.sent += len(sent[conn])
            row.delivered += len(set(delivered) & set(sent[conn]))
            row.duplicates += len(delivered) - len(set(delivered))
            if delivered != sorted(set(delivered)):
                row.problems.append(f"connection {conn} out of order")
        for row in self.rows:
            if row.delivered != row.sent:
                row.problems.append(f"lost {row.sent - row.delivered}")
            if row.duplicates:
                row.problems.append(f"{row.duplicates} duplicates")
        if misrouted:
            self.rows[last].problems.append(f"{misrouted} messages on the wrong connection")
        for t, _gap in self.gap_records:
            self.rows[row_of(t)].gaps += 1

    def account_numbers(self, sent_log: list[tuple[int, int]]) -> None:
        """A redundant run: each number went out on every connection; per
        row, the distinct numbers sent after the fault before it and the
        client's deliveries of them, each wanted once."""
        bounds = [row.first_seq for row in self.rows[1:]] + [max((s for s, _ in sent_log), default=0)]
        sent = {seq for seq, _ in sent_log}
        delivered: dict[int, int] = defaultdict(int)
        for seq, _conn, _connection in self.got:
            delivered[seq] += 1
        low = 0
        for row, high in zip(self.rows, bounds, strict=True):
            numbers = {seq for seq in sent if low < seq <= high}
            row.sent = len(numbers)
            row.delivered = len(numbers & delivered.keys())
            row.duplicates = sum(delivered[seq] - 1 for seq in numbers if delivered[seq] > 1)
            low = high
        for t, _gap in self.gap_records:
            row = max((r for r in self.rows if r.injected <= t), key=lambda r: r.injected,
                      default=self.rows[0])
            row.gaps += 1
        for row in self.rows:
            if row.delivered != row.sent:
                row.problems.append(f"lost {row.sent - row.delivered}")
            if row.duplicates:
                row.problems.append(f"{row.duplicates} duplicates")
            if row.gaps:
                row.problems.append(f"{row.gaps} gaps (another leg was up)")

    def table(self, metrics: Metrics, ok: bool) -> None:
        def secs(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}s"

        width = max(len(row.saw) for row in self.rows)
        title = max(len(row.step.title) for row in self.rows) + 3
        lines = [
            f"{'fault':<{title}}  {'client saw':<{width}}  {'detect':>7}  {'recover':>8}"
            f"  {'sent':>6}  {'delivered':>9}  {'dups':>4}  {'gaps':>4}  result",
        ]
        for i, row in enumerate(self.rows, 1):
            star = "*" if row.fixed is not None else " "
            result = "ok" if not row.problems else "FAILED: " + "; ".join(row.problems)
            lines.append(
                f"{f'{i}. {row.step.title}':<{title}}  {row.saw:<{width}}  {secs(row.detect):>7}"
                f"  {secs(row.recover):>7}{star}  {row.sent:>6}  {row.delivered:>9}"
                f"  {row.duplicates:>4}  {row.gaps:>4}  {result}"
            )
        sent = sum(row.sent for row in self.rows)
        delivered = sum(row.delivered for row in self.rows)
        dups = sum(row.duplicates for row in self.rows)
        gaps = sum(row.gaps for row in self.rows)
        lines.append(f"{'total':<{title}}  {'':<{width}}  {'':>7}  {'':>8}  {sent:>6}  {delivered:>9}"
                     f"  {dups:>4}  {gaps:>4}")
        rule = "-" * max(len(line) for line in lines)
        lines.insert(1, rule)
        lines.insert(len(lines) - 1, rule)
        lines += [
            "",
            f"uptime: connected {metrics.total_uptime:.1f}s of {metrics.running_time:.1f}s "
            f"({metrics.connected_ratio:.1%}); {metrics.connection} connections, "
            f"{metrics.reconnects} reconnects, {metrics.attempts} attempts; "
            f"seed {self.seed}",
            "detect: fault injected -> client reports the disconnect; recover: detected (* for "
            "lasting faults: server healthy again) -> subscription acknowledged on a new connection.",
            ("sent/delivered: numbered messages the server sent on the connections that ended in "
             "that step / the client delivered from them (the stream is paused before each fault, "
             "so nothing is in flight); gaps: Gap records the client reported (a window in which "
             "messages may have been lost: every reconnect of a working connection is one)."
             if self.legs == 1 else
             f"{self.legs} legs, one faulted at a time; sent/delivered: distinct numbers the "
             "server sent on any connection after that step's fault / the client delivered, each "
             "once; gaps: Gap records (none while another leg covers)."),
            "result: every fault detected and recovered from; nothing lost in-process, no duplicates."
            if ok else "result: FAILED (see the rows above).",
        ]
        self.report = "\n".join(lines) + "\n"


def _demo_key(message: str | bytes) -> object:
    """A redundant run's key: a numbered message's number (each leg's copy
    names its own connection), anything else the message itself."""
    if isinstance(message, str) and message.startswith('{"seq"'):
        return int(json.loads(message)["seq"])
    return message


def _acked(event: AppEvent) -> bool:
    return isinstance(event, Subscribed) and event.acked


# ----------------------------------------------------------------------
# the command


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 3 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 3 and 3600 seconds")
    return value


def _legs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of connections") from None
    if not 1 <= value <= 4:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 to 4 connections")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nonstop demo",
        description="Start a local feed server on 127.0.0.1, connect to it, and break the connection "
        "in every way the client must survive: server close, reset, silent zombie, refused "
        "connections, 503 with Retry-After, garbage bytes, missing ACKs. Prints a table of "
        "detection and recovery times and of messages sent and delivered.",
        epilog="Exit status 0 only when every fault was detected and recovered from and nothing "
        "was lost or duplicated.",
    )
    parser.add_argument("--duration", metavar="S", type=_duration, default=DEFAULT_DURATION,
                        help="about how long the schedule runs; timeouts scale with it "
                        "(default: %(default)g)")
    parser.add_argument("--seed", metavar="N", type=int, default=1,
                        help="seeds the schedule and the client's backoff jitter (default: %(default)s)")
    parser.add_argument("--redundancy", metavar="N", type=_legs, default=1,
                        help="connections the client keeps (the server sends every number on "
                        "each); faults hit one at a time, and nothing may be lost, duplicated or "
                        "reported as a gap (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true",
                        help="print only the final table (default: lifecycle lines and narration "
                        "on stderr)")
    parser.add_argument("--no-status", action="store_true",
                        help="no live status line, even on a terminal (default: shown on a terminal "
                        "with rich)")
    return parser


def run(seed: int = 1, duration: float = DEFAULT_DURATION, *, quiet: bool = False,
        live: bool | None = None, out: TextIO | None = None, legs: int = 1) -> int:
    """Run the demo; return its exit status (0: every fault detected and recovered)."""
    out = sys.stdout if out is None else out
    start = [0.0]

    def prefix() -> str:
        return f"{max(0.0, anyio.current_time() - start[0]):7.3f}s " if start[0] else "  0.000s "

    display = None if quiet else Display(live=live, prefix=prefix)
    demo = _Demo(seed, duration, display, legs)
    logger = logging.getLogger("nonstop")
    saved = (logger.level, logger.propagate)
    # quiet: a NullHandler, or logging's last-resort handler would print errors
    handler = logging.NullHandler() if display is None else display.handler()

    async def go() -> int:
        start[0] = anyio.current_time()
        return await demo.run(duration)

    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        if display is None:
            code = anyio.run(go, backend="asyncio")
        else:
            with display:
                code = anyio.run(go, backend="asyncio")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    out.write(demo.report)  # after the status line is gone
    out.flush()
    return code


def main(argv: list[str]) -> int:
    """``nonstop demo [--duration S] [--seed N] [--redundancy N] [--quiet]``."""
    args = build_parser().parse_args(argv)
    return run(args.seed, args.duration, quiet=args.quiet, live=False if args.no_status else None,
               legs=args.redundancy)
