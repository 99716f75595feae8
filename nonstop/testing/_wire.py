"""Byte transport for one server-side connection: a raw socket, optionally TLS.

Theory of operation
-------------------
The feed server must be able to end a connection in ways a normal stream
abstraction hides: a FIN without a TLS ``close_notify``, or an RST (which
needs ``SO_LINGER`` 0 *and* no ``shutdown()`` first: asyncio's transports
always send a FIN on close, so the RST would arrive after an EOF).  It also
needs to know exactly when a message's first byte reaches the kernel, so that
the global sequence numbers of streamed messages have no gaps.  So the server
owns its sockets: each one is non-blocking, and :class:`Wire` waits for
readiness with anyio (``wait_readable``/``wait_writable``), which works under
asyncio (selector loops) and trio alike.

TLS runs over :class:`ssl.MemoryBIO` pairs (``SSLContext.wrap_bio``), so the
same raw socket carries ciphertext and closing it is still ours to do.

Concurrency: one task reads (:meth:`Wire.recv`, :meth:`Wire.drain`); any task
may write, but every write, and every flush of TLS output, happens under
:attr:`Wire.lock`, so frames never interleave and only one task waits for
writability at a time.  Nothing is buffered beyond one received chunk and the
frame being written: a peer that does not read simply blocks the writer.

Closing: the owner must make sure no task is waiting on the socket any more
(cancel them and let them finish) before calling :meth:`Wire.close`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["Wire"]

_CHUNK = 65536

# anyio >= 4.7 has wait_readable/wait_writable; older 4.x has the socket-only forms.
if hasattr(anyio, "wait_readable"):
    _wait_readable: Callable[[socket.socket], Awaitable[None]] = anyio.wait_readable
    _wait_writable: Callable[[socket.socket], Awaitable[None]] = anyio.wait_writable
else:  # pragma: no cover - anyio < 4.7
    _wait_readable = anyio.wait_socket_readable
    _wait_writable = anyio.wait_socket_writable


class Wire:
    """A non-blocking socket plus optional server-side TLS; see the module docstring."""

    def __init__(self, sock: socket.socket, ssl_context: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.lock = anyio.Lock()
        self.closed = False
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None
        if ssl_context is not None:
            self._tls = ssl_context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    @property
    def tls(self) -> bool:
        """True if this connection speaks TLS."""
        return self._tls is not None

    # -- reading (one task only) -------------------------------------------

    async def recv_raw(self) -> bytes:
        """Wait for and return the next chunk of raw bytes; ``b""`` at EOF."""
        while True:
            await _wait_readable(self.sock)
            try:
                return self.sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                continue

    async def handshake(self) -> None:
        """Run the server side of the TLS handshake (no-op without TLS).

        Raises :class:`ssl.SSLError` or :class:`ConnectionError` on failure.
        """
        tls = self._tls
        if tls is None:
            return
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    await self.flush()  # the alert, if any
                raise
            await self.flush()
            data = await self.recv_raw()
            if not data:
                raise ConnectionError("the client closed the connection during the TLS handshake")
            self._incoming.write(data)
        await self.flush()  # the last flight, and TLS 1.3 session tickets

    async def recv(self) -> bytes:
        """Return the next chunk of (decrypted) application bytes; ``b""`` at EOF."""
        tls = self._tls
        if tls is None:
            return await self.recv_raw()
        while True:
            try:
                return tls.read(_CHUNK)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            if self._outgoing.pending:
                await self.flush()
            data = await self.recv_raw()
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()

    async def drain(self) -> None:
        """Read and discard raw bytes until EOF or a socket error."""
        while True:
            try:
                data = await self.recv_raw()
            except OSError:
                return
            if not data:
                return

    # -- writing (under self.lock) -----------------------------------------

    async def _send_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                await _wait_writable(self.sock)
                continue
            view = view[sent:]

    def _encode(self, data: bytes) -> bytes:
        if self._tls is None:
            return data
        self._tls.write(data)
        return self._outgoing.read()

    async def flush(self) -> None:
        """Send any TLS output that is waiting (handshake, alerts, tickets)."""
        async with self.lock:
            out = self._outgoing.read()
            if out:
                await self._send_all(out)

    async def send(self, build: Callable[[], bytes | None]) -> bool:
        """Take the lock, call ``build()`` and send what it returns.

        ``build`` runs synchronously under the lock, so it sees the state at
        the moment of writing and can decide not to send (return ``None`` or
        ``b""``).  Returns whether anything was sent.
        """
        async with self.lock:
            data = build()
            if not data:
                return False
            await self._send_all(self._encode(data))
            return True

    async def send_committed(
        self, build: Callable[[], tuple[bytes, Callable[[], None]] | None]
    ) -> bool:
        """Like :meth:`send`, but ``commit()`` runs only once the data is on its way.

        ``build()`` returns ``(data, commit)`` or ``None``.  It runs right after
        the socket became writable, and ``commit`` runs in the same
        synchronous step as the first successful ``send()`` system call (with
        TLS: once the record is encrypted), so no other task can observe a
        committed message that never left, nor slip in between.  If the first
        write fails, nothing is committed and the error propagates.
        """
        async with self.lock:
            while True:
                await _wait_writable(self.sock)
                built = build()
                if built is None:
                    return False
                data, commit = built
                out = self._encode(data)
                try:
                    sent = self.sock.send(out)
                except (BlockingIOError, InterruptedError):
                    if self._tls is None:
                        continue  # nothing left: build again after the next wait
                    sent = 0  # the record is in the TLS stream: it must go out
                commit()
                await self._send_all(memoryview(out)[sent:])
                return True

    # -- ending ------------------------------------------------------------

    def shutdown_write(self) -> None:
        """Send a FIN (no TLS ``close_notify``); reading stays possible."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self, *, reset: bool = False) -> None:
        """Close the socket; with ``reset`` the kernel sends an RST (SO_LINGER 0).

        Idempotent.  No task may be waiting on the socket.
        """
        if self.closed:
            return
        self.closed = True
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
