"""Exceptions raised by the core.

Theory of operation
-------------------
The core raises only for *local* mistakes, never for what the peer does:

* :class:`LocalProtocolError` -- the caller used the API wrongly (an input in a
  state that cannot take it, time running backwards, empty data).  It is raised
  before anything changes, so the core is exactly as it was.
* :class:`InvalidURL` and :class:`ConfigError` -- rejected at construction,
  with a message that names the bad value and what to do instead.
* :class:`NotConnected` -- the application sent a message while no connection
  is open.  The feed keeps running; the caller decides whether to retry.

A server that misbehaves (bad frames, bad handshake, silence, ...) becomes a
``Disconnected`` event with a classified reason, never an exception.
"""

from __future__ import annotations

__all__ = [
    "NonstopError",
    "LocalProtocolError",
    "ConfigError",
    "InvalidURL",
    "NotConnected",
]


class NonstopError(Exception):
    """Base class of every exception nonstop raises on purpose."""


class LocalProtocolError(NonstopError):
    """The caller misused the API; the core's state is unchanged."""


class ConfigError(NonstopError, ValueError):
    """An option has a value nonstop cannot work with."""


class InvalidURL(ConfigError):
    """The URL is not a usable ``ws://`` or ``wss://`` URL."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"invalid WebSocket URL {url!r}: {problem}")
        self.url = url
        self.problem = problem


class NotConnected(NonstopError):
    """A message was sent while no connection is open.

    The message was not queued: stateless reconnection means nothing from an
    old connection is replayed except the subscriptions.  Wait for the next
    ``Connected`` event (or use a subscription) and send again.
    """
