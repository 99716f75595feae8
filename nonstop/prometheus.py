"""Prometheus metrics for one or many feeds (the ``nonstop[prometheus]`` extra).

Theory of operation
-------------------
Two sources feed one :class:`Exporter`:

* **Snapshots.**  Everything :meth:`feed.metrics() <nonstop.AsyncFeed.metrics>`
  reports -- counters that only grow, gauges that describe the moment -- is
  read at scrape time by the exporter, which is a ``prometheus_client``
  custom collector: a scrape turns each tracked feed's current
  :class:`~nonstop.Metrics` into samples labelled ``feed="<name>"``.  Nothing
  is copied on the hot path, and the numbers are exactly the feed's.
* **Events.**  Distributions cannot be rebuilt from a snapshot, so the
  callback returned by :meth:`Exporter.on_event` (pass it as ``on_event=``)
  observes each :class:`~nonstop.Connected` ``downtime`` into a
  time-to-reconnect histogram, each :class:`~nonstop.Pong` ``rtt`` into a
  ping round-trip histogram, and counts alerts as they start.

Threads.  ``prometheus_client`` serves scrapes from its own threads, but an
:class:`~nonstop.AsyncFeed` lives on its event loop (asyncio or trio) and
its ``metrics()`` must run there.  :meth:`Exporter.add` therefore remembers
the loop (``anyio.lowlevel.current_token()``), and a scrape from another
thread runs ``feed.metrics()`` on that loop through
``anyio.from_thread.run_sync(..., token=...)`` -- one short call on the
loop per feed and scrape.  A :class:`~nonstop.SyncFeed`'s
``metrics()`` is thread-safe and is called directly.  When a feed has
stopped, or its loop is gone, the last snapshot is served until
:meth:`Exporter.remove`.

Usage::

    from prometheus_client import start_http_server
    from nonstop.prometheus import Exporter

    exporter = Exporter()                       # registers on prometheus_client.REGISTRY
    start_http_server(9464, addr="127.0.0.1")   # or exporter.serve(9464)
    async with nonstop.connect(url, name="prices", on_event=exporter.on_event("prices")) as feed:
        exporter.add("prices", feed)
        async for message in feed: ...

Every metric is listed, with alert rules, in ``docs/observability.md``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.from_thread
import anyio.lowlevel
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core import Alert, AlertKind, AppEvent, Connected, Metrics, Pong, Reason, State, Stopped
from .transports._anyio import AsyncFeed
from .transports._blocking import SyncFeed

__all__ = ["Exporter", "MetricsServer", "RECONNECT_BUCKETS", "RTT_BUCKETS"]

#: Buckets of ``nonstop_time_to_reconnect_seconds``: from a quick reconnect to
#: the default backoff cap (60 s) and beyond.
RECONNECT_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
#: Buckets of ``nonstop_ping_rtt_seconds``: loopback to intercontinental and
#: overloaded (the default ``ping_timeout`` is 10 s).
RTT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

Feed = AsyncFeed | SyncFeed


@dataclass(slots=True)
class _Tracked:
    feed: Feed
    token: anyio.lowlevel.EventLoopToken | None  # the event loop of an AsyncFeed
    thread: int | None  # that loop's thread
    last: Metrics | None = None
    stopped: bool = False


class MetricsServer:
    """The HTTP endpoint started by :meth:`Exporter.serve`."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        address = httpd.server_address
        #: The address it listens on.
        self.host: str = str(address[0])
        #: The port it listens on (the real one when 0 was asked for).
        self.port: int = int(address[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            self._thread.join(5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Exporter(Collector):
    """Exposes the metrics of any number of feeds, each labelled ``feed=<name>``.

    It registers itself (and its histograms) on *registry*
    (``prometheus_client.REGISTRY`` by default): make one per registry.
    *prefix* starts every metric name.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        prefix: str = "nonstop",
        reconnect_buckets: Sequence[float] = RECONNECT_BUCKETS,
        rtt_buckets: Sequence[float] = RTT_BUCKETS,
    ) -> None:
        if not prefix or not prefix.replace("_", "a").isalnum() or prefix[0].isdigit():
            raise ValueError(f"prefix must be a metric name part like 'nonstop', got {prefix!r}")
        self.registry = REGISTRY if registry is None else registry
        self.prefix = prefix
        self._feeds: dict[str, _Tracked] = {}
        self._lock = threading.Lock()
        self._time_to_reconnect = Histogram(
            f"{prefix}_time_to_reconnect_seconds",
            "Downtime before each reconnect: connection loss detected to the next 101.",
            ["feed"], registry=None, buckets=tuple(reconnect_buckets),
        )
        self._rtt = Histogram(
            f"{prefix}_ping_rtt_seconds",
            "Round trip of each answered protocol ping.",
            ["feed"], registry=None, buckets=tuple(rtt_buckets),
        )
        self._alerts = Counter(
            f"{prefix}_alerts",
            "Alerts raised (each started alert once; clearing does not count).",
            ["feed", "kind"], registry=None,
        )
        for metric in (self._time_to_reconnect, self._rtt, self._alerts):
            self.registry.register(metric)
        self.registry.register(self)

    # ------------------------------------------------------------------
    # wiring feeds in
    def on_event(
        self, name: str, then: Callable[[AppEvent], None] | None = None
    ) -> Callable[[AppEvent], None]:
        """The ``on_event=`` callback for the feed called *name*.

        It fills the histograms and the alert counter, then calls *then* (your
        own callback), if given.  Its series exist (at zero) from now on.
        """
        _check_name(name)
        ttr = self._time_to_reconnect.labels(feed=name)
        rtt = self._rtt.labels(feed=name)
        alerts = {kind: self._alerts.labels(feed=name, kind=kind.value) for kind in AlertKind}

        def callback(event: AppEvent) -> None:
            if type(event) is Pong:
                rtt.observe(event.rtt)
            elif type(event) is Connected:
                if event.downtime is not None:
                    ttr.observe(event.downtime)
            elif type(event) is Alert:
                if event.active:
                    alerts[event.kind].inc()
            elif type(event) is Stopped:
                self._stopped(name)
            if then is not None:
                then(event)

        return callback

    def add(self, name: str, feed: Feed) -> None:
        """Export *feed*'s :meth:`metrics` snapshot as ``feed=<name>``.

        Call it for an :class:`~nonstop.AsyncFeed` from inside its event loop
        (e.g. right after ``async with nonstop.connect(...) as feed:``).
        """
        _check_name(name)
        if isinstance(feed, AsyncFeed):
            try:
                token: anyio.lowlevel.EventLoopToken | None = anyio.lowlevel.current_token()
            except Exception:
                raise RuntimeError(
                    "Exporter.add(): call it for an AsyncFeed from inside its event loop "
                    "(e.g. right after `async with nonstop.connect(...) as feed:`)"
                ) from None
            thread: int | None = threading.get_ident()
        elif isinstance(feed, SyncFeed):
            token = thread = None
        else:
            raise TypeError(f"feed must be a nonstop.AsyncFeed or nonstop.SyncFeed, got {feed!r}")
        with self._lock:
            if name in self._feeds:
                raise ValueError(f"a feed named {name!r} is already exported; remove() it first")
            self._feeds[name] = _Tracked(feed, token, thread)

    def remove(self, name: str) -> None:
        """Stop exporting the feed called *name* (its series disappear)."""
        with self._lock:
            self._feeds.pop(name, None)
        for metric in (self._time_to_reconnect, self._rtt):
            with contextlib.suppress(KeyError):
                metric.remove(name)
        for kind in AlertKind:
            with contextlib.suppress(KeyError):
                self._alerts.remove(name, kind.value)

    @property
    def names(self) -> list[str]:
        """The names of the feeds exported now."""
        with self._lock:
            return list(self._feeds)

    def serve(self, port: int, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve this exporter's registry over HTTP on *addr*:*port* (``0``: any
        free port) from a daemon thread; ``close()`` the result to stop."""
        httpd, thread = start_http_server(port, addr=addr, registry=self.registry)
        return MetricsServer(httpd, thread)

    # ------------------------------------------------------------------
    # snapshots
    def _stopped(self, name: str) -> None:
        """The feed stopped: keep its final snapshot (we are on its loop/thread)."""
        with self._lock:
            tracked = self._feeds.get(name)
        if tracked is None:
            return
        if isinstance(tracked.feed, AsyncFeed):
            with contextlib.suppress(Exception):
                tracked.last = tracked.feed.metrics()
            tracked.stopped = True

    def _snapshot(self, tracked: _Tracked) -> Metrics | None:
        feed = tracked.feed
        if tracked.stopped:
            return tracked.last
        try:
            if isinstance(feed, SyncFeed) or threading.get_ident() == tracked.thread:
                metrics = feed.metrics()
            else:
                metrics = anyio.from_thread.run_sync(feed.metrics, token=tracked.token)
        except Exception:  # the loop is gone: serve what we last saw
            return tracked.last
        tracked.last = metrics
        return metrics

    # ------------------------------------------------------------------
    # the prometheus_client Collector protocol
    def describe(self) -> Iterable[Metric]:
        return list(self._families([]))

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            tracked = list(self._feeds.items())
        snapshots = []
        for name, item in tracked:
            metrics = self._snapshot(item)
            if metrics is not None:
                snapshots.append((name, metrics))
        return list(self._families(snapshots))

    def _families(self, snapshots: list[tuple[str, Metrics]]) -> Iterator[Metric]:
        p = self.prefix

        def counter(name: str, doc: str, get: Callable[[Metrics], float]) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{p}_{name}", doc, labels=["feed"])
            for feed, m in snapshots:
                family.add_metric([feed], float(get(m)))
            return family

        def gauge(name: str, doc: str, get: Callable[[Metrics], float | None]) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"{p}_{name}", doc, labels=["feed"])
            for feed, m in snapshots:
                value = get(m)
                if value is not None:
                    family.add_metric([feed], float(value))
            return family

        yield counter("messages_received", "Messages delivered by the server (complete messages).",
                      lambda m: m.messages_received)
        yield counter("bytes_received", "Bytes read from the server, handshakes and frames included.",
                      lambda m: m.bytes_received)
        yield counter("connection_attempts", "Connection attempts started.", lambda m: m.attempts)
        yield counter("connections_opened", "Connections opened (handshakes completed).",
                      lambda m: m.connection)
        yield counter("reconnects", "Connections opened after the first one.", lambda m: m.reconnects)
        yield counter("gaps", "Windows in which messages may have been lost (a break until the "
                      "next connection delivered).", lambda m: m.gaps)
        yield counter("gap_seconds", "Seconds of those windows, all together.", lambda m: m.gap_seconds)
        yield counter("duplicates", "Messages dropped because another leg had delivered them first.",
                      lambda m: m.duplicates)
        yield counter("missing", "Sequence numbers reported missing in gaps.", lambda m: m.missing)
        yield counter("unreadable", "Messages whose sequence number could not be read (delivered).",
                      lambda m: m.unreadable)
        yield counter("rotations", "Connections replaced before their lifetime (max_lifetime).",
                      lambda m: m.rotations)
        yield counter("connected_seconds", "Seconds spent connected, all connections together.",
                      lambda m: m.total_uptime)
        yield counter("running_seconds", "Seconds since the feed started.", lambda m: m.running_time)
        yield counter("messages_dropped", "Messages dropped by the drop_oldest or disconnect policy.",
                      lambda m: m.messages_dropped)
        yield counter("queue_overflows", "Times the application's queue was full when a message came.",
                      lambda m: m.overflows)

        disconnects = CounterMetricFamily(
            f"{p}_disconnects", "Connection losses and failed attempts, by reason.",
            labels=["feed", "reason"],
        )
        for feed, m in snapshots:
            for reason in Reason:
                if reason is Reason.STOPPED or reason is Reason.GAVE_UP:
                    continue
                disconnects.add_metric([feed, reason.value], float(m.disconnects.get(reason.value, 0)))
        yield disconnects

        yield gauge("up", "1 while a connection is open, else 0.",
                    lambda m: 1.0 if m.state is State.OPEN else 0.0)
        state = GaugeMetricFamily(f"{p}_state", "1 for the feed's current state, 0 for the others.",
                                  labels=["feed", "state"])
        for feed, m in snapshots:
            for s in State:
                state.add_metric([feed, s.value], 1.0 if m.state is s else 0.0)
        yield state
        yield gauge("connection_uptime_seconds", "Seconds the current connection has been open (0 if none).",
                    lambda m: m.uptime)
        yield gauge("connected_ratio", "Share of the running time spent connected (0 to 1).",
                    lambda m: m.connected_ratio)
        yield gauge("reconnects_last_minute", "Reconnects in the last 60 seconds.",
                    lambda m: m.reconnects_last_minute)
        yield gauge("consecutive_failures", "Failures since the last connection that stayed up stable_after.",
                    lambda m: m.consecutive_failures)
        yield gauge("last_time_to_reconnect_seconds", "Downtime before the latest reconnect.",
                    lambda m: m.last_time_to_reconnect)
        yield gauge("last_message_age_seconds", "Seconds since the last complete message.",
                    lambda m: m.last_message_age)
        yield gauge("last_ping_rtt_seconds", "Round trip of the latest answered protocol ping.",
                    lambda m: m.last_ping_rtt)
        yield gauge("pending_acks", "Subscriptions sent on this connection and not acknowledged yet.",
                    lambda m: m.pending_acks)
        yield gauge("subscriptions", "Subscriptions replayed on every connect.", lambda m: m.subscriptions)
        yield gauge("queued_messages", "Messages waiting for the application.", lambda m: m.queued)
        yield gauge("legs", "Connections the feed keeps at once (redundancy).", lambda m: m.legs)
        yield gauge("legs_live", "Connections delivering now.", lambda m: m.legs_live)
        leg_up = GaugeMetricFamily(f"{p}_leg_up", "1 while this leg of a redundant feed is open.",
                                   labels=["feed", "leg"])
        leg_reconnects = CounterMetricFamily(f"{p}_leg_reconnects", "Reconnects of this leg.",
                                             labels=["feed", "leg"])
        for feed, m in snapshots:
            for i, leg in enumerate(m.leg_metrics):
                leg_up.add_metric([feed, str(i)], 1.0 if leg.state is State.OPEN else 0.0)
                leg_reconnects.add_metric([feed, str(i)], float(leg.reconnects))
        yield leg_up
        yield leg_reconnects
        yield gauge("reading_paused", "1 while the driver stopped reading (the application is behind).",
                    lambda m: 1.0 if m.reading_paused else 0.0)
        alert = GaugeMetricFamily(f"{p}_alert_active", "1 while an alert of this kind is active.",
                                  labels=["feed", "kind"])
        for feed, m in snapshots:
            for kind in AlertKind:
                alert.add_metric([feed, kind.value], 1.0 if kind.value in m.alerts_active else 0.0)
        yield alert


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a feed name must be a non-empty str, got {name!r}")
