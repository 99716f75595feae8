"""Proxies, the I/O: the tunnel's handshake driven by :class:`nonstop.core.ProxyHandshake`.

Theory of operation
-------------------
An ``OpenTransport`` effect with a ``proxy`` asks for the connection to go
through that proxy.  The driver dials the proxy instead of the feed, then:

* ``http://``, ``socks5://``, ``socks5h://``, ``socks4a://``: the handshake
  runs on the raw non-blocking socket (:func:`tunnel` for the anyio driver;
  :class:`SocketTunnel` steps for the blocking driver's selector), and the
  socket, now a pipe to the feed, goes on exactly as a direct one would:
  TLS to the feed, the upgrade, the fast loops;
* ``https://``: TLS to the proxy first, the handshake over it, then the
  feed's own TLS inside it.  anyio's ``TLSStream`` runs TLS over any stream
  (:func:`tls_tunnel`); the blocking driver's proxy connection is an
  :class:`ssl.SSLSocket`, which cannot carry another, so the feed's TLS
  there is :class:`NestedTLS`: an :class:`ssl.SSLObject` whose bytes go
  through the proxy's socket, with the calls of a socket the driver makes.

What to do is the core's: which proxy, the bytes of the handshake, and the
verdict on its failure.  Anything that goes wrong between the dial and the
tunnel's end (the proxy refused or reset, its name did not resolve, TLS to
it failed) is raised as the core's :class:`~nonstop.core.ProxyError`
(:func:`~nonstop.core.proxy_unreachable`), so the feed reports reason
``proxy`` and never blames the feed's host.  ``socks5://`` sends an IP
address: the feed's name is looked up here (the ``resolver`` option, if
given), and a failed lookup is the feed's (reason ``dns``).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from ..core import OpenTransport, Proxy, ProxyHandshake, proxy_unreachable
from ._dial import Lookup, dial

__all__ = ["NestedTLS", "TLS_SOCKETS", "SocketTunnel", "dial_proxy", "handshake_for", "open_through_proxy",
           "proxy_context", "tunnel", "tls_tunnel"]

#: Bytes of one read of the proxy's answer (answers are a few hundred bytes).
_READ = 4096
#: Seconds :class:`NestedTLS` may wait to hand its handshake's bytes to the
#: proxy's socket (whose buffer takes them at once unless the proxy is stuck).
_HANDSHAKE_WRITE = 10.0


def proxy_context(feed_context: ssl.SSLContext | None) -> ssl.SSLContext:
    """The TLS context for an ``https://`` proxy: the feed's (the ``ssl``
    option), else a verifying default one."""
    return feed_context if feed_context is not None else ssl.create_default_context()


async def dial_proxy(effect: OpenTransport, lookup: dict[str, Any]) -> socket.socket:
    """A TCP connection to *effect*'s proxy (*lookup*: the keyword arguments
    of :func:`._dial.dial`); a failure is the proxy's."""
    proxy = effect.proxy
    assert proxy is not None
    try:
        return await dial(proxy.host, proxy.port, **lookup)
    except OSError as exc:
        raise proxy_unreachable(proxy, exc) from exc


async def _address(effect: OpenTransport, lookup: dict[str, Any]) -> str | None:
    """The feed's IP address, for a proxy that takes one (``socks5://``)."""
    proxy = effect.proxy
    assert proxy is not None
    if not proxy.resolves_locally:
        return None
    rules = lookup.get("lookup")
    finder = Lookup(rules.resolver if isinstance(rules, Lookup) else None)
    infos = await finder.resolve(effect.host, effect.port, reuse=False, limit=lookup.get("limit", 10.0))
    return str(infos[0][4][0])


def handshake_for(effect: OpenTransport, address: str | None, user_agent: str | None) -> ProxyHandshake:
    """The core's handshake for *effect* (*address*: the feed's IP address,
    for ``socks5://``)."""
    assert effect.proxy is not None
    return ProxyHandshake(effect.proxy, effect.host, effect.port, address=address, user_agent=user_agent)


async def tunnel(sock: socket.socket, effect: OpenTransport, lookup: dict[str, Any],
                 user_agent: str | None) -> None:
    """Open the tunnel through the proxy *sock* is connected to (a plain
    one: not ``https://``); on return *sock* leads to the feed."""
    proxy = effect.proxy
    assert proxy is not None
    shake = handshake_for(effect, await _address(effect, lookup), user_agent)
    try:
        while not shake.done:
            out = shake.data_to_send()
            while out:
                await anyio.wait_writable(sock)
                try:
                    out = out[sock.send(out):]
                except BlockingIOError:
                    pass
            await anyio.wait_readable(sock)
            try:
                data = sock.recv(_READ)
            except BlockingIOError:
                continue
            shake.receive_data(data)
    except OSError as exc:
        raise proxy_unreachable(proxy, exc) from exc


async def tls_tunnel(sock: socket.socket, effect: OpenTransport, lookup: dict[str, Any],
                     user_agent: str | None, context: ssl.SSLContext | None) -> anyio.abc.ByteStream:
    """TLS to the ``https://`` proxy *sock* is connected to, and the tunnel
    through it: the stream that leads to the feed (the caller owns it)."""
    proxy = effect.proxy
    assert proxy is not None
    try:
        stream: anyio.abc.ByteStream = await anyio.abc.SocketStream.from_socket(sock)
    except BaseException:
        sock.close()
        raise
    try:
        shake = handshake_for(effect, await _address(effect, lookup), user_agent)
        try:
            stream = await TLSStream.wrap(stream, hostname=proxy.host, ssl_context=proxy_context(context),
                                          standard_compatible=False)
            while not shake.done:
                out = shake.data_to_send()
                if out:
                    await stream.send(out)
                shake.receive_data(await stream.receive(_READ))
        except anyio.EndOfStream:
            shake.receive_data(b"")  # raises: the proxy closed mid-handshake
        except (OSError, anyio.BrokenResourceError) as exc:  # (ssl.SSLError is an OSError)
            raise proxy_unreachable(proxy, exc) from exc
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise
    return stream


async def open_through_proxy(effect: OpenTransport, lookup: dict[str, Any], *, user_agent: str | None,
                             ssl_context: ssl.SSLContext | None) -> socket.socket | anyio.abc.ByteStream:
    """Reach *effect*'s feed through its proxy: the socket of the tunnel
    (a plain proxy: TLS to the feed, if any, is the caller's to add), or
    for an ``https://`` proxy the stream through it, with the feed's TLS
    inside it if *effect* asks for TLS."""
    proxy = effect.proxy
    assert proxy is not None
    sock = await dial_proxy(effect, lookup)
    if not proxy.tls:
        try:
            await tunnel(sock, effect, lookup, user_agent)
        except BaseException:
            sock.close()
            raise
        return sock
    stream = await tls_tunnel(sock, effect, lookup, user_agent, ssl_context)
    if effect.tls:
        try:
            stream = await TLSStream.wrap(stream, hostname=effect.server_hostname, ssl_context=ssl_context,
                                          standard_compatible=False)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
    return stream


class SocketTunnel:
    """The blocking driver's tunnel: the handshake on a non-blocking socket
    (a plain one, or an :class:`ssl.SSLSocket` to an ``https://`` proxy
    whose TLS handshake is over), stepped when the selector says.

    :meth:`step` returns the selector events to wait for next, or ``0``
    when the tunnel is open; it raises :class:`~nonstop.core.ProxyError`.
    """

    def __init__(self, sock: socket.socket, proxy: Proxy, handshake: ProxyHandshake) -> None:
        self.sock = sock
        self.proxy = proxy
        self._shake = handshake
        self._out = handshake.data_to_send()

    def step(self, readable: bool) -> bool:
        """Move the handshake on; ``True`` once the tunnel is open.  While
        it is not, :attr:`wants_write` says what to wait for."""
        shake, sock = self._shake, self.sock
        try:
            if readable and not self._out:
                try:
                    data = sock.recv(_READ)
                    # (TLS to the proxy: take what its buffer holds, which
                    # the selector would never report)
                    while data and isinstance(sock, ssl.SSLSocket) and sock.pending():
                        data += sock.recv(_READ)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return False
                shake.receive_data(data)
                self._out = shake.data_to_send()
            while self._out:
                try:
                    self._out = self._out[sock.send(self._out):]
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return False
        except OSError as exc:
            raise proxy_unreachable(self.proxy, exc) from exc
        return shake.done

    @property
    def wants_write(self) -> bool:
        """Bytes of the handshake wait for the socket to take them."""
        return bool(self._out)


class NestedTLS:
    """TLS to the feed inside the blocking driver's TLS connection to an
    ``https://`` proxy: an :class:`ssl.SSLObject` over memory buffers, its
    bytes carried by *outer* (non-blocking, like every socket of that
    driver).  It answers the calls the driver makes of a TLS socket:
    ``do_handshake``, ``recv``, ``pending``, ``sendall`` with a timeout,
    ``fileno`` for the selector, ``setsockopt`` and ``close``.

    A read drains *outer* entirely (its own buffered records included), so
    no byte waits where the selector cannot see it.
    """

    def __init__(self, outer: ssl.SSLSocket, context: ssl.SSLContext, server_hostname: str | None,
                 session: ssl.SSLSession | None = None) -> None:
        self._outer = outer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname,
                                           session=session)
        self._timeout: float | None = 0.0

    def fileno(self) -> int:
        return self._outer.fileno()

    def setsockopt(self, *args: Any) -> None:
        self._outer.setsockopt(*args)

    def getpeername(self) -> Any:
        return self._outer.getpeername()

    def close(self) -> None:
        self._outer.close()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def setblocking(self, blocking: bool) -> None:
        self._timeout = None if blocking else 0.0

    def pending(self) -> int:
        """Bytes a ``recv`` may give without the socket being readable: the
        decrypted ones, and records already taken from the socket."""
        return self.ssl_object.pending() or self._incoming.pending

    def do_handshake(self) -> None:
        self._step(self.ssl_object.do_handshake)

    def recv(self, size: int) -> bytes:
        try:
            data: bytes = self._step(self.ssl_object.read, size)
            return data
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # the feed's end of TLS: EOF, as SSLSocket says it
            return b""

    def sendall(self, data: bytes) -> None:
        self.ssl_object.write(data)
        self._outer.settimeout(self._timeout)
        try:
            self._outer.sendall(self._outgoing.read())
        finally:
            self._outer.setblocking(False)

    def _step(self, call: Any, *args: Any) -> Any:
        """*call* on the TLS object, moving its bytes to and from *outer*
        until it is done, or must wait for the proxy's socket to be readable
        (:class:`ssl.SSLWantReadError`, as a non-blocking socket raises)."""
        while True:
            try:
                result = call(*args)
            except ssl.SSLWantReadError:
                self._send()
                if not self._receive():
                    raise
                continue
            self._send()
            return result

    def _send(self) -> None:
        """Hand what the TLS object wrote to *outer* (a handshake's few
        kilobytes: the socket's buffer takes them)."""
        data = self._outgoing.read()
        if data:
            self._outer.settimeout(_HANDSHAKE_WRITE)
            try:
                self._outer.sendall(data)
            finally:
                self._outer.setblocking(False)

    def _receive(self) -> bool:
        """Move everything *outer* has to the TLS object; False: nothing."""
        got = False
        while True:
            try:
                data = self._outer.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return got
            if not data:
                self._incoming.write_eof()
                return True
            self._incoming.write(data)
            got = True


#: What the blocking driver treats as a TLS socket.
TLS_SOCKETS = (ssl.SSLSocket, NestedTLS)
