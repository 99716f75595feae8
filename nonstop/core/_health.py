"""The watchdog (``ConnectionHealthMonitor``): pings, pongs and silence.

Theory of operation
-------------------
A zombie connection looks alive -- TCP open, no error -- and delivers
nothing.  One :class:`Health` object per open connection keeps four clocks:

* **protocol ping**: every ``ping_interval`` a ping frame goes out.  If
  ``ping_timeout`` passes after it with *no byte at all* received, the peer is
  dead.  Any received byte satisfies an outstanding ping: a busy link whose
  pong is queued behind data is alive.  A matching pong
  also yields the round-trip time.
* **application ping** (optional): the ``AppPing`` message goes out every
  ``interval``; only a message its ``is_pong`` accepts satisfies it, within
  ``timeout``.  This checks the server's application, not just its socket.
* **silence**: no data message for ``silence_timeout`` since the connection
  opened or since the last one.  Armed from the first moment, before any
  message.  Only text and binary messages count: pongs and other control
  frames keep the keep-alive satisfied, not this watchdog, so a server that
  answers pings but stopped sending data (a zombie subscription) is left; an
  application pong the core swallows counts for neither.

:meth:`Health.next_deadline` is a pure query; :meth:`Health.poll` does what is
due and says what the core must do: send pings, or fail with a reason.
Deadlines are computed with :func:`after`, which stays strictly later than
``now`` even when ``now`` is huge, so the core never busy-loops.
"""

from __future__ import annotations

import math

from ._config import AppPing, Config
from ._guard import Reason

__all__ = ["Health", "after"]


def after(now: float, delay: float) -> float:
    """``now + delay``, but never equal to ``now`` through float rounding."""
    t = now + delay
    return t if t > now else math.nextafter(now, math.inf)


class Health:
    """Liveness bookkeeping for one open connection."""

    __slots__ = (
        "_app",
        "_config",
        "paused",
        "app_next",
        "app_pong_due",
        "last_data",
        "last_rx",
        "next_ping",
        "ping_count",
        "ping_payload",
        "ping_sent_at",
        "pong_due",
        "rtt",
    )

    def __init__(self, config: Config, now: float) -> None:
        self._config = config
        self._app: AppPing | None = config.app_ping
        self.last_rx = now
        self.last_data = now  # the core sets it as it hands messages out
        self.next_ping = None if config.ping_interval is None else after(now, config.ping_interval)
        self.pong_due: float | None = None
        self.ping_payload = b""
        self.ping_sent_at = 0.0
        self.ping_count = 0
        self.app_next = None if self._app is None else after(now, self._app.interval)
        self.app_pong_due: float | None = None
        self.rtt: float | None = None
        self.paused = False

    def on_bytes(self, now: float) -> None:
        """Any received byte: the socket is alive (not yet the data)."""
        self.last_rx = now
        self.pong_due = None

    def on_pong(self, payload: bytes, now: float) -> float | None:
        """The round trip of our latest ping if *payload* answers it, else None."""
        if payload == self.ping_payload and self.ping_count:
            self.rtt = now - self.ping_sent_at
            return self.rtt
        return None

    def on_app_pong(self) -> None:
        self.app_pong_due = None

    def pause(self) -> None:
        """The driver stopped reading (backpressure): liveness can't be seen,
        so no liveness verdict is given; pings still go out."""
        self.paused = True

    def resume(self, now: float) -> None:
        """Reading again: every liveness clock restarts from *now*."""
        self.paused = False
        self.on_bytes(now)
        self.last_data = now
        self.app_pong_due = None

    def silence_deadline(self) -> float | None:
        timeout = self._config.silence_timeout
        return None if timeout is None else after(self.last_data, timeout)

    def next_deadline(self) -> float | None:
        # The earliest set time, without a list (the driver asks after every read).
        best = self.next_ping
        t = self.app_next
        if t is not None and (best is None or t < best):
            best = t
        if self.paused:  # no liveness verdict while not reading
            return best
        for t in (self.pong_due, self.app_pong_due, self.silence_deadline()):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def _verdict(self, now: float) -> tuple[Reason, str] | None:
        config = self._config
        if self.pong_due is not None and now >= self.pong_due:
            return Reason.PING_TIMEOUT, f"no pong or data within {config.ping_timeout}s of a ping"
        if self.app_pong_due is not None and now >= self.app_pong_due:
            assert self._app is not None
            return Reason.PING_TIMEOUT, f"no application pong within {self._app.timeout}s"
        silence = self.silence_deadline()
        if silence is not None and now >= silence:
            alive = "; bytes came (pongs, control frames)" if self.last_rx > self.last_data else ""
            return Reason.SILENCE, f"no data message for {config.silence_timeout}s{alive}"
        return None

    def poll(self, now: float) -> tuple[list[bytes | None], tuple[Reason, str] | None]:
        """Do what is due at *now*.

        Returns the pings to send (``bytes``: a protocol ping payload;
        ``None``: the application ping message) and, if the connection is
        dead, the reason and a detail.  Failures win over pings.
        """
        config = self._config
        if not self.paused:
            verdict = self._verdict(now)
            if verdict is not None:
                return [], verdict
        pings: list[bytes | None] = []
        if self.next_ping is not None and now >= self.next_ping:
            assert config.ping_interval is not None
            self.ping_count += 1
            self.ping_payload = (self.ping_count & 0xFFFFFFFF).to_bytes(4, "big")
            self.ping_sent_at = now
            self.next_ping = after(now, config.ping_interval)
            if self.pong_due is None and config.ping_timeout is not None:
                self.pong_due = after(now, config.ping_timeout)
            pings.append(self.ping_payload)
        if self.app_next is not None and now >= self.app_next:
            assert self._app is not None
            self.app_next = after(now, self._app.interval)
            if self.app_pong_due is None:
                self.app_pong_due = after(now, self._app.timeout)
            pings.append(None)
        return pings, None
