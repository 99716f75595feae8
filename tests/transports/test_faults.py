"""The fault matrix: every fault the testing server can inject, against both
drivers (the anyio one on asyncio and on trio, and the blocking one: the
``backend`` fixture).

Each scenario connects, waits until the subscription is acknowledged and
numbered messages flow, injects a fault, and asserts recovery: the failure
classified with the right reason (and code or status), a new connection, the
subscription replayed and acknowledged on it, messages flowing on it again,
and the metrics agreeing.  Detection and recovery times are measured and
printed (``pytest -s``); they are only checked against generous bounds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

import nonstop
from nonstop import Backoff, Disconnected, Gap, Reason, Subscribed, Subscription
from nonstop.core import AlertKind, AppEvent
from nonstop.testing import Fault, FeedServer

from .conftest import Backend

pytestmark = pytest.mark.timeout(90)

SUBSCRIBE = {"op": "subscribe", "args": ["trades"]}


def acked(message: str | bytes) -> bool:
    return isinstance(message, str) and '"subscribed"' in message


CLIENT: dict[str, Any] = dict(
    subscribe=[Subscription(message=SUBSCRIBE, ack=acked, ack_timeout=0.5, name="trades")],
    ping_interval=0.2,
    ping_timeout=0.3,
    silence_timeout=1.0,
    handshake_timeout=0.5,
    connect_timeout=2.0,
    close_timeout=0.5,
    stable_after=0.3,
    backoff=Backoff(initial=0.05, factor=2.0, cap=0.4),
)


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: list[tuple[Fault, dict[str, Any]]]
    reason: Reason
    code: int | None = None
    status: int | None = None
    alert: AlertKind | None = None
    # faults that only bite on the next handshake need the current connection dropped
    then_close: bool = False
    min_retry: float = 0.0
    client: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario("close (FIN)", [(Fault.CLOSE, {})], Reason.EOF, code=1006),
    Scenario("reset (RST)", [(Fault.RESET, {})], Reason.RESET),
    Scenario("silent zombie", [(Fault.SILENT, {})], Reason.PING_TIMEOUT, code=1006),
    Scenario("silent zombie, no pings", [(Fault.SILENT, {})], Reason.SILENCE, code=1006,
             client=dict(ping_interval=None)),
    Scenario("muted subscription, pings answered", [(Fault.MUTE, {})], Reason.SILENCE, code=1006),
    Scenario("refused for 1.5 s", [(Fault.REFUSE, {"duration": 1.5}), (Fault.CLOSE, {})],
             Reason.REFUSED),
    Scenario("garbage bytes", [(Fault.GARBAGE, {})], Reason.PROTOCOL_ERROR, code=1002),
    Scenario("half a frame, then FIN", [(Fault.HALF_FRAME, {})], Reason.EOF, code=1006),
    Scenario("upgrade 401", [(Fault.REJECT, {"status": 401})], Reason.REJECTED, status=401,
             alert=AlertKind.AUTH, then_close=True),
    Scenario("upgrade 429 Retry-After 1", [(Fault.REJECT, {"status": 429, "retry_after": 1})],
             Reason.REJECTED, status=429, then_close=True, min_retry=0.4,
             client=dict(backoff=Backoff(initial=0.05, cap=0.4))),
    Scenario("upgrade 503 Retry-After 1", [(Fault.REJECT, {"status": 503, "retry_after": 1})],
             Reason.REJECTED, status=503, then_close=True, min_retry=0.4),
    Scenario("close 1001", [(Fault.CLOSE_CODE, {"code": 1001})], Reason.SERVER_CLOSED, code=1001),
    Scenario("close 1008", [(Fault.CLOSE_CODE, {"code": 1008})], Reason.SERVER_CLOSED, code=1008,
             alert=AlertKind.AUTH),
    Scenario("close 1011", [(Fault.CLOSE_CODE, {"code": 1011})], Reason.SERVER_CLOSED, code=1011),
    Scenario("close 1013", [(Fault.CLOSE_CODE, {"code": 1013})], Reason.SERVER_CLOSED, code=1013),
    Scenario("subscription never acknowledged", [(Fault.NO_ACK, {})], Reason.ACK_TIMEOUT,
             code=1001, then_close=True),
    Scenario("handshake stalls", [(Fault.STALL_HANDSHAKE, {})], Reason.HANDSHAKE_TIMEOUT,
             then_close=True),
]


class Recorder:
    """Lifecycle events with the monotonic time they were seen."""

    def __init__(self) -> None:
        self.events: list[tuple[float, AppEvent]] = []

    def __call__(self, event: AppEvent) -> None:
        self.events.append((time.monotonic(), event))

    async def acked(self, timeout: float) -> None:
        """Until a subscription was acknowledged (seen at any time: with the
        blocking driver it may come before a ``wait_for`` is in place)."""
        with anyio.fail_after(timeout):
            while not any(isinstance(e, Subscribed) and e.acked for _, e in self.events):
                await anyio.sleep(0.01)

    def after(self, t0: float, kind: type[Any]) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if t >= t0 and isinstance(e, kind)]

    def first_failure(self, t0: float, reason: Reason) -> tuple[float, Disconnected] | None:
        for t, e in self.after(t0, Disconnected):
            if e.reason is reason:
                return t, e
        return None

    def recovered(self, t0: float, reason: Reason) -> tuple[float, int] | None:
        """Time and connection number of the first acknowledged subscription
        on a connection made after the failure of *reason*."""
        failure = self.first_failure(t0, reason)
        if failure is None:
            return None
        for t, e in self.after(failure[0], Subscribed):
            if e.acked:
                return t, e.connection
        return None


def inject_all(server: Any, scenario: Scenario) -> None:
    for fault, params in scenario.faults:
        server.inject(fault, **params)
    if scenario.then_close:
        server.inject(Fault.CLOSE)


def check(scenario: Scenario, rec: Recorder, t0: float, metrics: nonstop.Metrics,
          flowing: list[dict[str, Any]], driver: str) -> None:
    found = rec.first_failure(t0, scenario.reason)
    assert found is not None, [e for _, e in rec.events]
    t_detect, failure = found
    if scenario.code is not None:
        assert failure.code == scenario.code
    if scenario.status is not None:
        assert failure.status == scenario.status
    assert failure.retry_in is not None and failure.retry_in >= scenario.min_retry
    if scenario.alert is not None:
        assert any(e.kind is scenario.alert and e.active for _, e in rec.after(t0, nonstop.Alert))
    recovered = rec.recovered(t0, scenario.reason)
    assert recovered is not None
    t_recover, connection = recovered
    # messages flow again on the new connection, numbered by the server
    assert flowing and all(m["conn"] == connection for m in flowing)
    assert connection >= 2 and metrics.connection >= connection
    assert metrics.disconnects.get(scenario.reason.value, 0) >= 1
    # generous bounds: detection and recovery within seconds, not minutes
    assert t_detect - t0 < 10 and t_recover - t0 < 15
    print(f"\nFAULT {driver:8} {scenario.name:34} detect={t_detect - t0:6.3f}s "
          f"recover={t_recover - t0:6.3f}s reason={failure.reason.value}")


def numbered(message: str | bytes) -> dict[str, Any] | None:
    if isinstance(message, str) and message.startswith('{"seq"'):
        value: dict[str, Any] = json.loads(message)
        return value
    return None


async def until_flowing(feed: Any, rec: Recorder) -> None:
    """Until the subscription is acknowledged and a numbered message came."""
    await rec.acked(timeout=10)
    async for message in feed:
        if numbered(message):
            return


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
@pytest.mark.anyio
async def test_driver_recovers(scenario: Scenario, backend: Backend) -> None:
    rec = Recorder()
    options = {**CLIENT, **scenario.client}
    async with FeedServer(interval=0.01) as server:
        with anyio.fail_after(60):
            async with backend.connect(server.url, on_event=rec, **options) as feed:
                await until_flowing(feed, rec)
                t0 = time.monotonic()
                inject_all(server, scenario)
                if scenario.reason is Reason.ACK_TIMEOUT:
                    await feed.wait_for(Disconnected, lambda e: e.reason is Reason.ACK_TIMEOUT,
                                        timeout=20)
                    server.restore()
                flowing: list[dict[str, Any]] = []
                with anyio.fail_after(30):
                    async for record in feed.records():
                        if isinstance(record, Gap):
                            continue  # (the fault's window: test_redundancy checks those)
                        recovered = rec.recovered(t0, scenario.reason)
                        item = numbered(record.data)
                        if recovered is not None and item is not None \
                                and record.connection == recovered[1]:
                            flowing.append(item)
                            if len(flowing) == 5:
                                break
                metrics = feed.metrics()
    check(scenario, rec, t0, metrics, flowing, backend.name)


@pytest.mark.anyio
async def test_a_server_that_answers_pings_but_sends_no_data_is_left(backend: Backend) -> None:
    """The zombie subscription: pongs keep coming, data does not.  The
    silence watchdog counts data messages only, so the feed leaves within
    ``silence_timeout`` (1 s) + 0.5 s of the data's end, and says why."""
    rec = Recorder()
    async with FeedServer(interval=0.01) as server:
        with anyio.fail_after(30):
            async with backend.connect(server.url, on_event=rec, **CLIENT) as feed:
                await until_flowing(feed, rec)
                t0 = time.monotonic()
                server.inject(Fault.MUTE)
                gone = await feed.wait_for(Disconnected, lambda e: e.reason is Reason.SILENCE,
                                           timeout=10)
                t_gone = time.monotonic()
    assert t_gone - t0 < 1.0 + 0.5, t_gone - t0
    assert gone.detail == "no data message for 1.0s; bytes came (pongs, control frames)"
    pongs = [t for t, _ in rec.after(t0, nonstop.Pong) if t < t_gone]
    assert len(pongs) >= 2  # the server kept answering pings all along
    print(f"\nMUTE {backend.name:8} left {t_gone - t0:5.3f}s after the data stopped, "
          f"{len(pongs)} pongs in between")


@pytest.mark.anyio
async def test_nothing_is_lost_in_process_across_faults(anyio_backend: object) -> None:
    """Every numbered message the server sent on a connection is delivered,
    in order, once: what the client gets equals what the server logged.
    The consumer is a task beside the faults, in the async driver's loop."""
    got: list[tuple[int, int]] = []
    async with FeedServer(interval=0.005) as server:
        with anyio.fail_after(60):
            async with nonstop.connect(server.url, **CLIENT) as feed:
                async def consume() -> None:
                    async for message in feed:
                        item = numbered(message)
                        if item is not None:
                            got.append((item["seq"], item["conn"]))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    for fault in (Fault.CLOSE, Fault.RESET, Fault.GARBAGE):
                        await feed.wait_for(Subscribed, lambda e: e.acked, timeout=10)
                        await anyio.sleep(0.2)
                        server.inject(fault)
                        await feed.wait_for(Disconnected, timeout=10)
                    await feed.wait_for(Subscribed, lambda e: e.acked, timeout=10)
                    await anyio.sleep(0.2)
                    await feed.aclose()
            log = server.sent_log
    # what the client received is exactly what the server sent, minus at most
    # the frames still in flight when each connection broke
    sent_by_conn: dict[int, list[int]] = {}
    for seq, conn in log:
        sent_by_conn.setdefault(conn, []).append(seq)
    seqs = [seq for seq, _ in got]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))  # ordered, no duplicates
    for conn, sent in sent_by_conn.items():
        received = [seq for seq, c in got if c == conn]
        assert received == sent[: len(received)]  # a prefix: no gaps inside a connection
