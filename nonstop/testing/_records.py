"""What the feed server records about each connection, for tests to inspect.

Theory of operation
-------------------
Every accepted TCP connection gets one :class:`Record`, which its connection
task updates as things happen (TLS, upgrade request, messages, close).  Tests
never see a record itself: the server hands out :class:`ConnectionInfo`
snapshots (:meth:`Record.snapshot`), frozen copies taken at the moment of the
call, so a test can compare what it saw earlier with what it sees later, and
nothing it holds changes under its feet.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConnectionInfo", "Record"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionInfo:
    """A snapshot of what the server knows about one accepted TCP connection.

    ``phase`` is one of ``"tls"`` (TLS handshake), ``"handshake"`` (waiting for
    or answering the upgrade request), ``"open"``, ``"stalled"``,
    ``"rejected"`` or ``"closed"``.
    """

    #: Accept order of the TCP connection, from 1.
    tcp: int
    #: The connection number (upgrade order, from 1), or None if never upgraded.
    number: int | None
    #: The client's address.
    peer: tuple[str, int]
    #: Whether the connection used TLS.
    tls: bool
    #: See the class docstring.
    phase: str
    #: The request path (without the query), once the upgrade request arrived.
    path: str | None
    #: The query string, without the ``?``.
    query: str
    #: The request headers, names lower-cased: ``host``, ``sec-websocket-protocol``
    #: and ``sec-websocket-extensions`` first (wsproto parses them out), then
    #: the others in the order received.
    headers: tuple[tuple[str, str], ...]
    #: The subprotocols the client offered.
    subprotocols: tuple[str, ...]
    #: The subprotocol the server accepted, if any.
    subprotocol: str | None
    #: The HTTP status the upgrade was rejected with, if it was.
    rejected: int | None
    #: Streamed (numbered) messages sent on this connection.
    sent: int
    #: Messages received from the client.
    received: int
    #: The close code the client sent, if it sent a close frame.
    close_code: int | None
    #: Why the connection ended (``None`` while it is open).
    ended_by: str | None

    def header(self, name: str) -> str | None:
        """The first request header called ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Record:
    """The mutable state behind :class:`ConnectionInfo`."""

    tcp: int
    peer: tuple[str, int]
    tls: bool
    number: int | None = None
    phase: str = "handshake"
    path: str | None = None
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()
    subprotocol: str | None = None
    rejected: int | None = None
    sent: int = 0
    received: int = 0
    close_code: int | None = None
    ended_by: str | None = None

    def snapshot(self) -> ConnectionInfo:
        return ConnectionInfo(
            tcp=self.tcp,
            number=self.number,
            peer=self.peer,
            tls=self.tls,
            phase=self.phase,
            path=self.path,
            query=self.query,
            headers=self.headers,
            subprotocols=self.subprotocols,
            subprotocol=self.subprotocol,
            rejected=self.rejected,
            sent=self.sent,
            received=self.received,
            close_code=self.close_code,
            ended_by=self.ended_by,
        )
