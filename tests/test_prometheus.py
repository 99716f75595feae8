"""``nonstop.prometheus``: the metrics of several feeds, scraped over real HTTP.

Feeds connect to the testing server on 127.0.0.1; the exporter serves its
own registry on an ephemeral 127.0.0.1 port and the tests scrape it with
``urllib`` from a worker thread -- the path a real Prometheus takes, where
the scrape thread has to reach the feed's event loop (asyncio and trio) --
and check the numbers against the feeds' own ``metrics()``.
"""

from __future__ import annotations

import urllib.request

import anyio
import pytest
from prometheus_client import CollectorRegistry

import nonstop
from nonstop import Backoff, Connected
from nonstop.prometheus import Exporter
from nonstop.testing import Fault, FeedServer

pytestmark = pytest.mark.timeout(60)

FAST = dict(ping_interval=0.05, ping_timeout=2.0, backoff=Backoff(initial=0.05, cap=0.2))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.mark.anyio
async def test_two_feeds_labelled_by_name_scraped_over_http(anyio_backend: str) -> None:
    registry = CollectorRegistry()
    exporter = Exporter(registry)
    with exporter.serve(0) as endpoint:
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        async with FeedServer(interval=0.005) as server:
            with anyio.fail_after(40):
                async with nonstop.connect(server.url + "?feed=a", name="a",
                                           on_event=exporter.on_event("a"), **FAST) as a, \
                        nonstop.connect(server.url + "?feed=b", name="b",
                                        on_event=exporter.on_event("b"), **FAST) as b:
                    exporter.add("a", a)
                    exporter.add("b", b)
                    assert sorted(exporter.names) == ["a", "b"]
                    await a.wait_connected(10)
                    await b.wait_connected(10)
                    # break a's connection only: one reconnect, one downtime observed
                    (of_a,) = [c.number for c in server.history if c.query == "feed=a"]
                    assert server.inject(Fault.RESET, connection=of_a) == 1
                    await a.wait_for(Connected, lambda e: e.downtime is not None,
                                     timeout=10)
                    while (a.metrics().last_ping_rtt is None or b.metrics().last_ping_rtt is None
                           or a.metrics().messages_received < 20):
                        await anyio.sleep(0.05)
                    samples = await anyio.to_thread.run_sync(scrape, endpoint.url)
                    ma, mb = a.metrics(), b.metrics()

                    assert samples['nonstop_up{feed="a"}'] == 1.0 == samples['nonstop_up{feed="b"}']
                    assert samples['nonstop_reconnects_total{feed="a"}'] == 1.0
                    assert samples['nonstop_reconnects_total{feed="b"}'] == 0.0
                    assert samples['nonstop_disconnects_total{feed="a",reason="reset"}'] == 1.0
                    assert samples['nonstop_disconnects_total{feed="b",reason="reset"}'] == 0.0
                    assert samples['nonstop_time_to_reconnect_seconds_count{feed="a"}'] == 1.0
                    assert samples['nonstop_time_to_reconnect_seconds_count{feed="b"}'] == 0.0
                    assert samples['nonstop_time_to_reconnect_seconds_sum{feed="a"}'] > 0
                    assert samples['nonstop_ping_rtt_seconds_count{feed="a"}'] >= 1
                    assert samples['nonstop_ping_rtt_seconds_count{feed="b"}'] >= 1
                    assert samples['nonstop_state{feed="a",state="open"}'] == 1.0
                    assert samples['nonstop_state{feed="a",state="backoff"}'] == 0.0
                    # snapshot counters come from the feed itself, taken on its loop at scrape time
                    for feed, m in (("a", ma), ("b", mb)):
                        got = samples[f'nonstop_messages_received_total{{feed="{feed}"}}']
                        assert 20 <= got <= m.messages_received
                        assert samples[f'nonstop_connections_opened_total{{feed="{feed}"}}'] == m.connection
                        assert samples[f'nonstop_alert_active{{feed="{feed}",kind="down"}}'] == 0.0
                        assert samples[f'nonstop_subscriptions{{feed="{feed}"}}'] == 0.0
                    assert 'nonstop_last_message_age_seconds{feed="a"}' in samples

                # both stopped: their final snapshots are still served...
                final = await anyio.to_thread.run_sync(scrape, endpoint.url)
                assert final['nonstop_up{feed="a"}'] == 0.0
                assert final['nonstop_state{feed="b",state="stopped"}'] == 1.0
                # ...until removed
                exporter.remove("a")
                rest = await anyio.to_thread.run_sync(scrape, endpoint.url)
                assert not any('feed="a"' in name for name in rest)
                assert 'nonstop_up{feed="b"}' in rest


def test_a_blocking_feed_and_misuse() -> None:
    registry = CollectorRegistry()
    exporter = Exporter(registry, prefix="ws")
    with FeedServer(interval=0.005).run_in_thread() as server, exporter.serve(0) as endpoint:
        with nonstop.sync.connect(server.url, on_event=exporter.on_event("s"), **FAST) as feed:
            exporter.add("s", feed)
            with pytest.raises(ValueError, match="already exported"):
                exporter.add("s", feed)
            feed.wait_connected(10)
            for _ in range(10):
                feed.receive(timeout=10)
            samples = scrape(endpoint.url)
            assert samples['ws_up{feed="s"}'] == 1.0
            assert samples['ws_messages_received_total{feed="s"}'] >= 10
    with pytest.raises(TypeError, match="AsyncFeed or"):
        exporter.add("x", object())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="inside its event loop"):
        exporter.add("x", nonstop.connect("ws://127.0.0.1:9/"))
    with pytest.raises(ValueError, match="prefix"):
        Exporter(CollectorRegistry(), prefix="no good")
    with pytest.raises(ValueError):  # one exporter per registry
        Exporter(registry, prefix="ws")
