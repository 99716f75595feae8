"""TLS session resumption: a reconnect offers the last connection's session.

Theory of operation
-------------------
A full TLS handshake costs a round trip more than a resumed one, and the
key exchange's CPU on both ends; a feed that comes back after a break can
skip both by offering the session of its last connection (RFC 8446 2.2;
in TLS 1.2 a session ID or ticket).  The server may decline: then the
handshake is a full one, nothing else changes.

:class:`TlsSessions` keeps one feed's last session, for the endpoint it
came from (host, port, TLS name).  The driver names each new TLS
connection (:meth:`~TlsSessions.watch`) and the session is read from its
``ssl`` object once (:meth:`~TlsSessions.take`): when the connection is
open (TLS 1.3 tickets arrive after the handshake, before the upgrade
response) and the driver is about to wait, or when it ends before that.
Reading it copies the session with the server's certificate in it, a few
hundred microseconds: done at close, that time would be on the way from
the break to the next attempt.  :meth:`~TlsSessions.offer` gives it for the
next connection to the same endpoint.

How the session reaches the handshake depends on the TLS layer:

* the blocking driver wraps its socket itself:
  ``SSLContext.wrap_socket(..., session=...)``;
* anyio's ``TLSStream`` (the anyio driver's plain loop, and its fast loop
  on trio) and the asyncio and uvloop TLS transports (the fast loop on
  asyncio) all make their ``ssl`` object with ``SSLContext.wrap_bio``,
  which has a ``session`` parameter none of them passes.  :func:`offering`
  fills it in: it gives the context a ``sslobject_class`` whose
  constructor takes the session from a context variable that it sets
  around the connect (the loops run the transport's callbacks in a copy of
  the connecting task's context).  Where the variable is not set, the class
  is ``ssl.SSLObject`` exactly, so a context shared with other code behaves
  as before.  A context with an ``sslobject_class`` of its own (another
  library's) is left alone: no resumption, said once at debug level.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import ssl
from collections.abc import Iterator
from typing import Any

__all__ = ["Endpoint", "TlsSessions", "offering"]

LOGGER = logging.getLogger("nonstop")

_OFFER: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar(
    "nonstop_tls_offer", default=None)

#: (host, port, TLS name): the endpoint a session belongs to.
Endpoint = tuple[str, int, "str | None"]


class _OfferingSSLObject(ssl.SSLObject):
    """``ssl.SSLObject``, made with the session :func:`offering` set, if any."""

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                server_side: bool = False, server_hostname: Any = None,
                session: ssl.SSLSession | None = None, context: Any = None) -> ssl.SSLObject:
        if session is None and not server_side:
            session = _OFFER.get()
        made: ssl.SSLObject = super()._create(  # type: ignore[misc]
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname,
            session=session, context=context)
        return made


@contextlib.contextmanager
def offering(context: ssl.SSLContext | None, session: ssl.SSLSession | None) -> Iterator[None]:
    """Within the block, ``ssl`` objects that *context* makes with
    ``wrap_bio`` for a client offer *session* (see the module doc)."""
    if session is None or context is None:
        yield
        return
    kind = context.sslobject_class
    if kind is not _OfferingSSLObject:
        if kind is not ssl.SSLObject:
            LOGGER.debug("no TLS session resumption: the SSL context makes %r objects", kind)
            yield
            return
        context.sslobject_class = _OfferingSSLObject
    token = _OFFER.set(session)
    try:
        yield
    finally:
        _OFFER.reset(token)


class TlsSessions:
    """One feed's last TLS session, for the endpoint it belongs to."""

    __slots__ = ("_endpoint", "_pending", "_session")

    def __init__(self) -> None:
        self._endpoint: Endpoint | None = None
        self._session: ssl.SSLSession | None = None
        self._pending: tuple[Endpoint, ssl.SSLObject | ssl.SSLSocket] | None = None

    def watch(self, endpoint: Endpoint, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> None:
        """A connection to *endpoint* is up (``None``: not TLS): its session
        is read by :meth:`take`, later."""
        self._pending = None if ssl_object is None else (endpoint, ssl_object)

    @property
    def pending(self) -> bool:
        """A connection's session is still to be read."""
        return self._pending is not None

    def take(self) -> None:
        """Read the watched connection's session now, if not done yet."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.keep(*pending)

    def keep(self, endpoint: Endpoint, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> None:
        """Keep the session of *ssl_object*, a connection to *endpoint*, to offer next."""
        if ssl_object is None:
            return
        try:
            session = ssl_object.session
        except (ValueError, OSError):  # no handshake completed
            return
        if session is not None:
            self._endpoint, self._session = endpoint, session

    def offer(self, endpoint: Endpoint | None) -> ssl.SSLSession | None:
        """The session to offer a new connection to *endpoint*, if any."""
        return self._session if endpoint is not None and endpoint == self._endpoint else None
