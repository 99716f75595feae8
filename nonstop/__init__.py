"""nonstop: a WebSocket client that keeps receiving, whatever the network does.

The sans-IO core lives in :mod:`nonstop.core`; drivers in
:mod:`nonstop.transports`.
"""

from __future__ import annotations

from . import sync
from ._api import connect
from .core import (
    Alert,
    AlertKind,
    AlertPolicy,
    AppPing,
    Backoff,
    Config,
    ConfigError,
    Connected,
    Connecting,
    Disconnected,
    FeedCore,
    InvalidURL,
    LocalProtocolError,
    Message,
    Messages,
    Metrics,
    NonstopError,
    NotConnected,
    Pong,
    Reason,
    State,
    Stopped,
    Subscribed,
    Subscription,
)
from .transports._anyio import AsyncFeed
from .transports._blocking import SyncFeed
from .transports._common import FeedGaveUp, Overflow, WriteStalled

__version__ = "0.1.0"

__all__ = [
    "connect",
    "AsyncFeed",
    "SyncFeed",
    "sync",
    "Overflow",
    "FeedGaveUp",
    "WriteStalled",
    "FeedCore",
    "Config",
    "Backoff",
    "Subscription",
    "AppPing",
    "AlertPolicy",
    "AlertKind",
    "Reason",
    "State",
    "Metrics",
    "Connecting",
    "Connected",
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
    "__version__",
]
