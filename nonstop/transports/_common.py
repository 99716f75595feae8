"""What both drivers share: options, the message buffer, logging, event fan-out.

Theory of operation
-------------------
The drivers are thin: they move bytes and sleep.  The few things they do
beyond that are identical for anyio and blocking sockets, so they live here:

* :func:`prepare` turns ``connect(url, **options)`` keyword arguments into
  the core's :class:`~nonstop.core.Config` and the driver's options, so both
  drivers accept exactly the same options with the same defaults.
* :class:`MessageBuffer` is the bounded queue between the driver and the
  application, with the slow-consumer policy (``backpressure``,
  ``drop_oldest``, ``disconnect``).  It is not thread-safe; the blocking
  driver wraps it in a condition variable.
* :class:`Observer` logs every lifecycle event with the core's formatter on the
  ``nonstop`` logger, calls the ``on_event`` callback, keeps a short history
  and remembers the final ``Stopped``.
"""

from __future__ import annotations

import collections
import enum
import logging
import random
import ssl as _ssl
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..core import (
    AlertPolicy,
    AppEvent,
    Backoff,
    Config,
    ConfigError,
    FeedCore,
    Message,
    Metrics,
    NonstopError,
    Pong,
    Reason,
    Stopped,
    format_event,
)

__all__ = [
    "Overflow",
    "FeedGaveUp",
    "WriteStalled",
    "prepare",
    "DriverOptions",
    "MessageBuffer",
    "Observer",
    "LOGGER",
]

LOGGER = logging.getLogger("nonstop")

OverflowName = Literal["backpressure", "drop_oldest", "disconnect"]


class Overflow(enum.Enum):
    """What happens when the application falls ``queue_size`` messages behind."""

    BACKPRESSURE = "backpressure"
    """Stop reading the socket until there is room (nothing is dropped; the
    server's own buffers and TCP flow control absorb the burst).  Liveness
    timeouts are suspended meanwhile, pings still go out."""
    DROP_OLDEST = "drop_oldest"
    """Keep reading; drop the oldest queued message for each new one."""
    DISCONNECT = "disconnect"
    """Drop the connection (reason ``slow_consumer``) and reconnect: for feeds
    where a fresh snapshot beats a stale backlog."""


class WriteStalled(OSError):
    """A write did not complete within ``write_timeout``: the server stopped
    reading.  Classified as reason ``network``; the feed reconnects."""


class FeedGaveUp(NonstopError):
    """Raised to the consumer when the feed stopped without being asked to:
    ``max_attempts`` was reached, or a fatal status or close code was seen."""

    def __init__(self, stopped: Stopped) -> None:
        super().__init__(f"feed gave up: {stopped.detail}")
        self.stopped = stopped


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverOptions:
    """Driver-side options (everything else belongs to the core's Config)."""

    ssl_context: _ssl.SSLContext | None
    queue_size: int
    overflow: Overflow
    on_event: Callable[[AppEvent], None] | None
    read_size: int
    write_timeout: float
    logger: logging.Logger


_DRIVER_KEYS = ("ssl", "queue_size", "overflow", "on_event", "read_size", "write_timeout", "logger")


def prepare(arguments: dict[str, Any]) -> tuple[FeedCore, DriverOptions]:
    """Split ``connect()``'s arguments between the core and the driver.

    Both public ``connect`` functions spell out every option (for editors and
    type checkers) and hand their ``locals()`` here, so the two can never
    disagree on names or defaults.  The core's options become its
    :class:`~nonstop.core.Config` (``subscribe`` is its ``subscriptions``).
    """
    arguments = dict(arguments)
    rng = arguments.pop("rng")
    driver = {key: arguments.pop(key) for key in _DRIVER_KEYS}
    arguments["subscriptions"] = list(arguments.pop("subscribe"))
    if arguments["backoff"] is None:
        arguments["backoff"] = Backoff()
    if arguments["alerts"] is None:
        arguments["alerts"] = AlertPolicy()
    arguments["subprotocols"] = tuple(arguments["subprotocols"])
    arguments["fatal_statuses"] = frozenset(arguments["fatal_statuses"])
    arguments["fatal_close_codes"] = frozenset(arguments["fatal_close_codes"])
    config = Config(**arguments)
    options = build_driver_options(config, **driver)
    core = FeedCore(config, rng=rng if rng is not None else random.Random())
    return core, options


def build_driver_options(
    config: Config,
    *,
    ssl: _ssl.SSLContext | None,
    queue_size: int,
    overflow: Overflow | OverflowName,
    on_event: Callable[[AppEvent], None] | None,
    read_size: int,
    write_timeout: float,
    logger: logging.Logger | None,
) -> DriverOptions:
    if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
        raise ConfigError(f"ssl must be an ssl.SSLContext or None, got {ssl!r}")
    if ssl is not None and not config.endpoint.tls:
        raise ConfigError("ssl was given but the URL is ws://; use wss:// for TLS")
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise ConfigError(f"queue_size must be an integer >= 1, got {queue_size!r}")
    try:
        policy = Overflow(overflow)
    except ValueError:
        choices = ", ".join(o.value for o in Overflow)
        raise ConfigError(f"overflow must be one of {choices}, got {overflow!r}") from None
    if on_event is not None and not callable(on_event):
        raise ConfigError(f"on_event must be callable, got {on_event!r}")
    if isinstance(read_size, bool) or not isinstance(read_size, int) or read_size < 1024:
        raise ConfigError(f"read_size must be an integer >= 1024, got {read_size!r}")
    if not write_timeout > 0:
        raise ConfigError(f"write_timeout must be > 0, got {write_timeout!r}")
    context = ssl
    if context is None and config.endpoint.tls:
        context = _ssl.create_default_context()
    return DriverOptions(
        ssl_context=context,
        queue_size=queue_size,
        overflow=policy,
        on_event=on_event,
        read_size=read_size,
        write_timeout=write_timeout,
        logger=logger if logger is not None else LOGGER,
    )


class MessageBuffer:
    """The bounded queue of messages between a driver and its application.

    ``push`` returns what the driver must do: ``"ok"``, ``"full"`` (under
    ``backpressure``: hold the rest and stop reading) or ``"disconnect"``.
    Messages held back under backpressure wait in :attr:`held` -- at most one
    received chunk's worth -- and move in as the consumer makes room.
    """

    __slots__ = ("_queue", "held", "size", "policy", "dropped", "overflows", "closed")

    def __init__(self, size: int, policy: Overflow) -> None:
        self._queue: collections.deque[Message] = collections.deque()
        self.held: collections.deque[Message] = collections.deque()
        self.size = size
        self.policy = policy
        self.dropped = 0
        self.overflows = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def full(self) -> bool:
        return len(self._queue) >= self.size

    def push(self, message: Message) -> str:
        queue = self._queue
        if self.held:
            self.held.append(message)
            return "full"
        if len(queue) < self.size:
            queue.append(message)
            return "ok"
        self.overflows += 1
        if self.policy is Overflow.BACKPRESSURE:
            self.held.append(message)
            return "full"
        if self.policy is Overflow.DROP_OLDEST:
            queue.popleft()
            self.dropped += 1
            queue.append(message)
            return "ok"
        self.dropped += 1
        return "disconnect"

    def pop(self) -> Message | None:
        queue = self._queue
        if not queue:
            return None
        message = queue.popleft()
        held = self.held
        while held and len(queue) < self.size:
            queue.append(held.popleft())
        return message

    def drain_into(self, out: list[Message], limit: int) -> None:
        """Move up to *limit* messages into *out* (batch consumers)."""
        while len(out) < limit:
            message = self.pop()
            if message is None:
                return
            out.append(message)

    def add_driver_metrics(self, metrics: Metrics) -> Metrics:
        return replace(
            metrics,
            queued=len(self._queue) + len(self.held),
            messages_dropped=self.dropped,
            overflows=self.overflows,
        )


class Observer:
    """Logs lifecycle events, calls ``on_event``, keeps history, catches Stopped."""

    __slots__ = ("_label", "_logger", "_callback", "history", "stopped", "callback_errors")

    def __init__(self, label: str, logger: logging.Logger,
                 callback: Callable[[AppEvent], None] | None) -> None:
        self._label = label
        self._logger = logger
        self._callback = callback
        self.history: collections.deque[AppEvent] = collections.deque(maxlen=256)
        self.stopped: Stopped | None = None
        self.callback_errors = 0

    def observe(self, event: AppEvent) -> None:
        line = format_event(event, self._label)
        if line is not None:
            self._logger.log(line[0], line[1])
        if not isinstance(event, Pong):  # one every ping_interval: not history
            self.history.append(event)
        if isinstance(event, Stopped):
            self.stopped = event
        if self._callback is not None:
            try:
                self._callback(event)
            except Exception:
                # A broken callback must not take the feed down; say so loudly.
                self.callback_errors += 1
                self._logger.exception("[ALERT] feed=%s on_event callback raised", self._label)

    def gave_up(self) -> FeedGaveUp | None:
        stopped = self.stopped
        if stopped is not None and stopped.reason is not Reason.STOPPED:
            return FeedGaveUp(stopped)
        return None

