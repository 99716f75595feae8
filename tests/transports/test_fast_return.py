"""The loss window of one connection: a feed that worked and broke is back at once.

On every back end (asyncio, uvloop, trio, blocking), with the default
backoff (``initial`` 0.5 s): a connection that stayed up ``stable_after``
is broken by the testing server (an RST, a FIN, a close 1012, garbage
bytes); the client's first retry goes at once, and its subscription is
acknowledged on the new connection within 100 ms of the break being seen.
A server that accepts and drops at once still gets the growing series.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from nonstop import Backoff, Disconnected, Gap, Reason, Subscribed, Subscription
from nonstop.testing import Fault, FeedServer

from .conftest import Backend
from .test_faults import SUBSCRIBE, Recorder, acked, numbered

pytestmark = pytest.mark.timeout(60)

CLIENT: dict[str, Any] = dict(
    subscribe=[Subscription(message=SUBSCRIBE, ack=acked, ack_timeout=2.0, name="trades")],
    ping_interval=None,
    silence_timeout=None,
    stable_after=0.2,
)

#: Exact waits (no jitter) for the test of the series.
SERIES = Backoff(initial=0.05, factor=2.0, cap=1.0, jitter=0.0)

BREAKS = [
    pytest.param(Fault.RESET, {}, Reason.RESET, id="reset"),
    pytest.param(Fault.CLOSE, {}, Reason.EOF, id="fin"),
    pytest.param(Fault.CLOSE_CODE, {"code": 1012}, Reason.SERVER_CLOSED, id="close-1012"),
    pytest.param(Fault.GARBAGE, {}, Reason.PROTOCOL_ERROR, id="garbage"),
]


@pytest.mark.parametrize(("fault", "params", "reason"), BREAKS)
@pytest.mark.anyio
async def test_a_stable_feed_that_breaks_is_subscribed_again_within_100_ms(
        fault: Fault, params: dict[str, Any], reason: Reason, backend: Backend) -> None:
    rec = Recorder()
    async with FeedServer(interval=0.005) as server:
        with anyio.fail_after(30):
            async with backend.connect(server.url, on_event=rec, **CLIENT) as feed:
                await rec.acked(timeout=10)
                t_open = time.monotonic()
                async for message in feed:  # flowing, and up past stable_after
                    if numbered(message) and time.monotonic() - t_open > 0.3:
                        break
                t0 = time.monotonic()
                server.inject(fault, **params)
                async for message in feed:  # the consumer keeps reading
                    item = numbered(message)
                    back = rec.recovered(t0, reason)
                    if back is not None and item is not None and item["conn"] == back[1]:
                        break
    found = rec.first_failure(t0, reason)
    assert found is not None, [e for _, e in rec.events]
    t_break, gone = found
    assert gone.retry_in == 0.0 and gone.failures == 1
    back = rec.recovered(t0, reason)
    assert back is not None
    t_back, connection = back
    assert connection == 2
    print(f"\nRETURN {backend.name:8} {fault.value:12} subscribed again "
          f"{(t_back - t_break) * 1000:5.1f} ms after the break was seen")
    assert t_back - t_break < 0.1
    # The events of the break are held until the new connection is under
    # way, then handed out in order, none lost; the window is reported as a
    # Gap, from the break to the new connection's first message or ACK.
    after = [e for t, e in rec.events if t >= t0 and type(e).__name__ != "Pong"]
    kinds = [type(e).__name__ for e in after]
    assert kinds[:3] == ["Disconnected", "Connecting", "Connected"], kinds
    assert "Subscribed" in kinds[3:5] and "Gap" in kinds[3:5], kinds
    gap = next(e for e in after if isinstance(e, Gap))
    assert (gap.reason, gap.connection) == (reason.value, 2) and 0 < gap.seconds < 0.1, gap


@pytest.mark.anyio
async def test_a_server_that_drops_every_connection_at_once_still_gets_the_series(
        backend: Backend) -> None:
    """No connection reaches ``stable_after``: the waits grow as before,
    never an immediate retry."""
    rec = Recorder()
    async with FeedServer(interval=0.005) as server:
        with anyio.fail_after(30):
            async with backend.connect(server.url, on_event=rec, **{**CLIENT, "stable_after": 5.0},
                                       backoff=SERIES):
                await rec.acked(timeout=10)
                for _ in range(4):
                    before = len(rec.after(0, Disconnected))
                    server.inject(Fault.CLOSE)
                    with anyio.fail_after(10):
                        while len(rec.after(0, Disconnected)) == before \
                                or not _acked_since(rec, rec.after(0, Disconnected)[-1][0]):
                            await anyio.sleep(0.01)
    waits = [e.retry_in for _, e in rec.after(0, Disconnected) if e.reason is Reason.EOF]
    assert waits == [0.05, 0.1, 0.2, 0.4]


def _acked_since(rec: Recorder, t: float) -> bool:
    return any(e.acked for _, e in rec.after(t, Subscribed))

