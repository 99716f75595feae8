"""nonstop: a WebSocket client that keeps receiving, whatever the network does.

``nonstop.connect(url, ...)`` (asyncio or trio) and ``nonstop.sync.connect(url,
...)`` (a script or a thread) open a feed; everything an application names --
the feeds, the option types, the events, the errors -- is importable from
here.  The sans-IO core lives in :mod:`nonstop.core`, the drivers in
:mod:`nonstop.transports`, the exceptions also in :mod:`nonstop.errors`, a
fault-injecting test server in :mod:`nonstop.testing`.  ``docs/architecture.md``
maps the modules.
"""

from __future__ import annotations

from . import errors, sync
from ._api import connect
from ._options import FROM_ENVIRONMENT, FromEnvironment, Overflow, OverflowName
from .core import (
    Alert,
    AlertKind,
    AlertPolicy,
    AppEvent,
    AppPing,
    Backoff,
    Config,
    Connected,
    Connecting,
    Disconnected,
    FeedCore,
    Gap,
    LoggedIn,
    Login,
    Message,
    Messages,
    Metrics,
    Payload,
    Pong,
    Reason,
    Rotating,
    State,
    Stopped,
    Subscribed,
    Subscription,
)
from .core._config import HeaderProvider, HeadersLike
from .errors import (
    ConfigError,
    CredentialsRefused,
    FeedGaveUp,
    InvalidURL,
    LocalProtocolError,
    NonstopError,
    NotConnected,
    WriteStalled,
)
from .transports._anyio import AsyncFeed
from .transports._blocking import SyncFeed

__version__ = "0.1.0"

__all__ = [
    "FROM_ENVIRONMENT",
    "FromEnvironment",
    # opening a feed
    "connect",
    "sync",
    "AsyncFeed",
    "SyncFeed",
    # options and their types
    "Config",
    "Backoff",
    "Subscription",
    "Login",
    "AppPing",
    "AlertPolicy",
    "Overflow",
    "OverflowName",
    "HeadersLike",
    "HeaderProvider",
    "Payload",
    # what a feed reports
    "State",
    "Reason",
    "AlertKind",
    "Metrics",
    # events (AppEvent is their union)
    "AppEvent",
    "Connecting",
    "Connected",
    "LoggedIn",
    "Subscribed",
    "Message",
    "Messages",
    "Pong",
    "Disconnected",
    "Gap",
    "Rotating",
    "Alert",
    "Stopped",
    # errors (also in nonstop.errors)
    "errors",
    "NonstopError",
    "LocalProtocolError",
    "ConfigError",
    "InvalidURL",
    "NotConnected",
    "FeedGaveUp",
    "CredentialsRefused",
    "WriteStalled",
    # the sans-IO core (the rest of it: nonstop.core)
    "FeedCore",
    "__version__",
]
