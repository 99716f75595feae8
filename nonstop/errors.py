"""Every exception nonstop raises on purpose, in one public place.

Theory of operation
-------------------
All of them derive from :class:`NonstopError`, except :class:`WriteStalled`,
which is an :class:`OSError` because it is a transport failure like any
other socket error (the feed reconnects; it reaches the application only in
a ``Disconnected`` event's detail).

* :class:`LocalProtocolError` -- the caller used the sans-IO core wrongly;
  the core's state is unchanged.
* :class:`ConfigError` (also a :class:`ValueError`) and its subclass
  :class:`InvalidURL` -- raised by ``connect(...)`` before anything
  connects, naming the bad option.
* :class:`NotConnected` -- a message was sent while no connection is open;
  nothing was queued.
* :class:`FeedGaveUp` -- raised to the consumer when the feed stopped
  without being asked to (``max_attempts`` reached, a fatal status or close
  code); its :attr:`~FeedGaveUp.stopped` event says why.
* :class:`CredentialsRefused` -- a :class:`FeedGaveUp` for a login the
  server refused ``max_rejections`` times in a row.
* :class:`WriteStalled` -- a write did not complete within
  ``write_timeout``.

The core's errors are defined in :mod:`nonstop.core` (which imports nothing
outside itself) and re-exported here; the drivers' two are defined here.
"""

from __future__ import annotations

from .core import Reason, Stopped
from .core._errors import (
    ConfigError,
    InvalidURL,
    LocalProtocolError,
    NonstopError,
    NotConnected,
)

__all__ = [
    "NonstopError",
    "LocalProtocolError",
    "ConfigError",
    "InvalidURL",
    "NotConnected",
    "FeedGaveUp",
    "CredentialsRefused",
    "WriteStalled",
]


class WriteStalled(OSError):
    """A write did not complete within ``write_timeout``: the server stopped
    reading.  Classified as reason ``network``; the feed reconnects."""


class FeedGaveUp(NonstopError):
    """Raised to the consumer when the feed stopped without being asked to:
    ``max_attempts`` was reached, or a fatal status or close code was seen.

    :attr:`stopped` is the final :class:`~nonstop.Stopped` event.
    """

    def __init__(self, stopped: Stopped) -> None:
        super().__init__(f"feed gave up: {stopped.detail}")
        self.stopped = stopped

    @staticmethod
    def of(stopped: Stopped) -> FeedGaveUp:
        """The error for *stopped*: :class:`CredentialsRefused` after refused
        logins, :class:`FeedGaveUp` otherwise."""
        if stopped.reason is Reason.LOGIN_REJECTED:
            return CredentialsRefused(stopped)
        return FeedGaveUp(stopped)


class CredentialsRefused(FeedGaveUp):
    """The feed stopped because the server refused its login
    ``max_rejections`` times in a row (reason ``login_rejected``): a wrong
    key or secret, missing permissions, or a clock too far off for a signed
    timestamp.  Retrying would not help; fix the credentials."""
