"""nonstop.core: the sans-IO heart of nonstop.

A pure, synchronous state machine (:class:`FeedCore`) that connects,
handshakes, subscribes, watches health and reconnects with backoff, fed bytes
and ``now`` by a driver.  It imports nothing that does I/O, reads a clock or
uses the global :mod:`random`.  See ``docs/core.md``.
"""

from __future__ import annotations

from ._backoff import ceiling, first_retry_delay, retry_delay
from ._config import AppPing, Backoff, Config, Login, Payload, Subscription, UrlProvider
from ._core import FeedCore
from ._errors import (
    ConfigError,
    InvalidURL,
    LocalProtocolError,
    NonstopError,
    NotConnected,
)
from ._events import (
    Alert,
    AppEvent,
    CloseTransport,
    Connected,
    Connecting,
    Disconnected,
    Effect,
    Event,
    FetchUrl,
    Gap,
    LoggedIn,
    Message,
    Messages,
    OpenTransport,
    Pong,
    Rotating,
    Stopped,
    Subscribed,
)
from ._guard import (
    ERROR,
    INFO,
    WARNING,
    AlertKind,
    AlertPolicy,
    ProxyError,
    Reason,
    classify_error,
    level_for,
)
from ._logfmt import KEYWORDS, event_level, format_event, redact_text
from ._merge import Merge
from ._metrics import Metrics
from ._proxy import Proxy, ProxyHandshake, ProxyRules, parse_proxy, proxy_unreachable, rules_from_environment
from ._retry_after import parse_retry_after
from ._state import TRANSITIONS, Input, State
from ._url import Endpoint, parse_url, redact_url

__all__ = [
    "FeedCore",
    "Merge",
    "Gap",
    "Rotating",
    "Config",
    "Backoff",
    "Subscription",
    "Login",
    "UrlProvider",
    "AppPing",
    "AlertPolicy",
    "Payload",
    "State",
    "Input",
    "TRANSITIONS",
    "Reason",
    "AlertKind",
    "Metrics",
    "Event",
    "Effect",
    "AppEvent",
    "FetchUrl",
    "OpenTransport",
    "CloseTransport",
    "Connecting",
    "Connected",
    "LoggedIn",
    "Subscribed",
    "Message",
    "Messages",
    "Pong",
    "Disconnected",
    "Alert",
    "Stopped",
    "NonstopError",
    "LocalProtocolError",
    "ConfigError",
    "InvalidURL",
    "NotConnected",
    "Endpoint",
    "Proxy",
    "ProxyError",
    "ProxyHandshake",
    "ProxyRules",
    "parse_proxy",
    "proxy_unreachable",
    "rules_from_environment",
    "parse_url",
    "redact_url",
    "redact_text",
    "format_event",
    "event_level",
    "KEYWORDS",
    "classify_error",
    "level_for",
    "retry_delay",
    "first_retry_delay",
    "ceiling",
    "parse_retry_after",
    "INFO",
    "WARNING",
    "ERROR",
]
