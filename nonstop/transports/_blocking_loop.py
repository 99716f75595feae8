"""The blocking driver's loop: one I/O thread with ``socket``, ``ssl`` and ``selectors``.

Theory of operation
-------------------
:class:`SyncFeed` runs :class:`~nonstop.core.FeedCore` in one background
thread that does all the I/O, the loop every driver runs: write
``data_to_send()``, drain the core's events through the
:class:`~._session.Session` (messages to the bounded queue, lifecycle
events to the log, ``on_event`` and waiters, effects to this driver), then
wait in ``selector.select(timeout)`` until the socket is readable, the
wake-up socket is readable, or the core's next deadline passes, and feed
exactly one input.  The thread sleeps exactly until the next deadline: an
idle feed costs no CPU.

The application lives in other threads.  Everything the core, the session
and the queue hold is guarded by one condition variable (``_cond``), held
around core calls only, never around I/O.  The application's calls
(``send``, ``subscribe``, ...) call the core under it and write a byte to a
``socketpair`` to wake the loop, so new bytes are written and a new deadline
is honoured at once; consumers wait on the condition, which the loop
notifies whenever it queued messages or events.  ``stop()`` takes no lock:
it sets a flag and writes the wake-up byte, so it is safe from a signal
handler; the loop then runs the close handshake and the thread ends.

Connecting never blocks the loop (``stop()`` must stay prompt): the TCP
connects are the :class:`~._dial.SelectorDial`'s, on this selector, and the
TLS handshake runs non-blocking here.

This module is the plain loop; the application's side of a feed
(iteration, ``send``, ``subscribe``, ``wait_for``, ...) is
:class:`~._blocking.SyncFeed`, built on it.  The speed-ups (a waiting consumer runs the
loop itself instead of waiting for this thread, ``send`` writes from the
caller's thread, ``for`` steps through batches with C iterators) are in
:mod:`._blocking_fast`; ``fast=False`` on ``connect`` (or
``NONSTOP_FAST=0``) runs this loop alone.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import struct
import threading
import time
from typing import cast

from ..core import (
    CloseTransport,
    FeedCore,
    FetchUrl,
    OpenTransport,
    ProxyError,
    State,
    proxy_unreachable,
)
from ..core._dial import lookup_limit
from ._common import DriverOptions, WriteStalled
from ._dial import SelectorDial
from ._proxy import TLS_SOCKETS, NestedTLS, SocketTunnel, handshake_for, proxy_context
from ._session import Feed

__all__ = ["BlockingLoop"]


#: Selector data of the open socket, of a TLS handshake and of a proxy's
#: handshake in progress.
_READ = "read"
_TLS = "tls"
_PROXY = "proxy"


class BlockingLoop(Feed):
    """One feed's loop in blocking code: the state it keeps, and the loop itself."""

    def __init__(self, core: FeedCore, options: DriverOptions) -> None:
        super().__init__(core, options)
        self._cond = threading.Condition(threading.RLock())  # the core, session and queue
        self._write_lock = threading.Lock()  # one writer on the socket at a time
        self._unsent = b""  # taken from the core, not yet written
        self._sock: socket.socket | None = None
        self._reading = False  # the socket is registered for reading
        self._dial: SelectorDial | None = None
        self._tls: ssl.SSLSocket | NestedTLS | None = None  # a TLS handshake in progress
        self._tls_to_proxy = False  # ... with an https:// proxy, not the feed
        self._tunnel: SocketTunnel | None = None  # a proxy's handshake in progress
        self._effect: OpenTransport | None = None  # the connect in progress
        self._pending_open: FetchUrl | OpenTransport | None = None
        #: The URL provider's answer, from its thread: ``(url, None)`` or
        #: ``(None, error)`` once it returned (``None``: no call outstanding).
        self._fetch: list[tuple[object, BaseException | None]] | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop_requested = False
        self._done = threading.Event()
        self._crash: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _in_loop(self) -> bool:
        """True in the thread running the loop (a callback): it must not
        wait for the loop."""
        return threading.current_thread() is self._thread

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._wake_w.send(b"\0")

    def _poke(self) -> None:
        """The loop has work (bytes to write, a new deadline): wake it."""
        self._wake()

    def _close_wake(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------
    # the loop
    def _run(self) -> None:
        try:
            with self._cond:
                self._core.start(time.monotonic())
            while True:
                self._turn()
                if not self._step(None):
                    break
        except BaseException as exc:  # a bug: surface it to the consumer
            self._crash = exc
            raise
        finally:
            self._drop_socket(abort=True)
            with self._cond:
                try:
                    self._session.settle(time.monotonic())
                finally:
                    self._close_wake()
                    self._done.set()
                    self._cond.notify_all()

    def _turn(self) -> None:
        """In the I/O thread, before each turn of the loop."""

    def _step(self, limit: float | None) -> bool:
        """One turn of the loop: write, hand out events, then wait (at most
        *limit* seconds) for one input.  False once stopped."""
        core = self._core
        self._flush()
        self._dispatch()
        if core.state is State.STOPPED:
            return False
        if self._stop_requested and core.state is not State.STOPPING:
            with self._cond:
                core.stop(time.monotonic())
            return True
        if not self._hand_out():
            self._wait(limit)
        return True

    def _hand_out(self) -> bool:
        """Should this turn end before waiting, to hand messages out?"""
        return False

    def _flush(self) -> None:
        with self._write_lock:
            with self._cond:
                data = self._core.data_to_send()
            if self._unsent:
                data, self._unsent = self._unsent + data, b""
            sock = self._sock
            if data and sock is not None:
                self._send_all(sock, data)
        with self._cond:  # a sender may be waiting for the backlog to drain
            self._cond.notify_all()

    def _send_all(self, sock: socket.socket, data: bytes) -> None:
        timeout = self._opts.write_timeout
        try:
            sock.settimeout(timeout)
            sock.sendall(data)
            sock.setblocking(False)
        except TimeoutError:
            self._lost(WriteStalled(f"write blocked for {timeout}s: the server is not reading"))
        except OSError as exc:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        with self._cond:
            self._session.lost(exc, time.monotonic())

    def _dispatch(self) -> None:
        session = self._session
        while True:
            with self._cond:
                effect = session.effect(time.monotonic())
                self._cond.notify_all()  # messages or events for consumers and waiters
            if effect is None:
                return
            if not isinstance(effect, CloseTransport):
                self._pending_open = effect
            else:
                self._pending_open = None
                self._drop_socket(abort=effect.abort)

    def _drop_socket(self, *, abort: bool) -> None:
        self._fetch = None  # a provider call still running is abandoned
        dial, self._dial = self._dial, None
        if dial is not None:
            dial.close()
        tls, self._tls = self._tls, None
        tunnel, self._tunnel = self._tunnel, None
        with self._write_lock:  # no send() is writing to it; its leftovers go too
            sock, self._sock = self._sock, None
            self._unsent = b""
        self._tls_sessions.take()  # its TLS session, for the next connection, if not read yet
        self._reading = False
        for s in (tls, None if tunnel is None else tunnel.sock, sock):
            if s is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                if abort:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()

    def _wait(self, limit: float | None = None) -> None:
        if self._tls_sessions.pending and self._core.state is State.OPEN:  # idle: read it now
            self._tls_sessions.take()  # (outside the lock: the consumer may take messages)
        with self._cond:
            deadline = self._session.prepare_wait(time.monotonic())
            held = self._buffer.held
        if self._fetch:
            self._take_url()
            return
        pending = self._pending_open
        if isinstance(pending, FetchUrl):
            self._begin_fetch()
        elif pending is not None:
            self._begin_connect(pending)
            return
        self._watch(not held)
        now = time.monotonic()
        timeout = None if deadline is None else max(0.0, deadline - now)
        dial = self._dial
        dial_at = None if dial is None else dial.next_deadline()
        for until in (dial_at, None if limit is None else now + limit):
            if until is not None:
                timeout = max(0.0, until - now) if timeout is None else min(timeout, max(0.0, until - now))
        if timeout is None or timeout > 0:  # this thread is about to wait (not: a retry due now)
            self._release()
        ready = self._selector.select(timeout)
        woken = False
        for key, _mask in ready:
            if key.fileobj is self._wake_r:
                woken = True
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            elif key.data is _READ:
                self._read()
                return
            elif key.data is _TLS:
                self._tls_step()
                return
            elif key.data is _PROXY:
                self._tunnel_step(readable=bool(_mask & selectors.EVENT_READ))
                return
            elif dial is not None and key.data is dial:
                dial.on_ready(key.fileobj, time.monotonic())
                self._dial_step()
                return
        if woken:
            return
        now = time.monotonic()
        if dial is not None and dial_at is not None and now >= dial_at:
            dial.handle_timer(now)
            self._dial_step()
        elif deadline is not None and now >= deadline:
            with self._cond:
                self._session.handle_timer(max(deadline, now))

    def _release(self) -> None:
        """Observe the events held since a break (:meth:`Session.release`),
        before this thread waits."""
        with self._cond:
            if self._session.held is not None:
                self._session.release()
                self._cond.notify_all()  # waiters on them

    def _watch(self, reading: bool) -> None:
        """Register the open socket for reading, or not (backpressure)."""
        sock = self._sock
        if sock is None or reading is self._reading:
            return
        if reading:
            self._selector.register(sock, selectors.EVENT_READ, _READ)
        else:
            self._selector.unregister(sock)
        self._reading = reading

    # -- connecting, without blocking the loop --------------------------
    def _begin_fetch(self) -> None:
        """Call the URL provider in a thread of its own, so that this loop
        keeps its deadlines (the core's connect timeout ends the wait) and
        hears a stop; the answer wakes the loop."""
        self._pending_open = None
        provider = self._core.config.url_provider
        assert provider is not None
        box: list[tuple[object, BaseException | None]] = []
        self._fetch = box

        def call() -> None:
            try:
                box.append((provider(), None))
            except Exception as exc:
                box.append((None, exc))
            self._wake()

        threading.Thread(target=call, name=f"nonstop url provider {self._core.config.label}",
                         daemon=True).start()

    def _take_url(self) -> None:
        """The provider answered: hand its URL (or its error) to the core."""
        box, self._fetch = self._fetch, None
        assert box
        url, error = box[0]
        with self._cond:
            now = time.monotonic()
            if self._core.state is not State.CONNECTING:  # (stopped meanwhile)
                return
            if error is not None:
                self._core.url_failed(error, now)
            else:
                self._core.url_fetched(url, now)

    def _begin_connect(self, effect: OpenTransport) -> None:
        self._pending_open = None
        self._effect = effect
        with self._cond:
            rules = self._lookup_rules(time.monotonic())
        rules["waiting"] = self._release  # (a lookup waits in this thread)
        proxy = effect.proxy
        host, port = (effect.host, effect.port) if proxy is None else (proxy.host, proxy.port)
        self._dial = dial = SelectorDial.open(host, port, self._selector, **rules)
        if not dial.done:
            # A connect on this host or LAN is often over at once: take it
            # now (the request goes out before the held events are written)
            # instead of after a turn of the loop.  Other keys stay ready
            # for that turn (the selector reports them again).
            for key, _mask in self._selector.select(0):
                if key.data is dial:
                    dial.on_ready(key.fileobj, time.monotonic())
                    break
        self._dial_step()

    def _dial_step(self) -> None:
        """After the dial moved: go on with its winner, or fail with its error."""
        dial = self._dial
        assert dial is not None
        if not dial.done:
            return
        self._dial = None
        if dial.error is not None:
            self._fail_connect(self._proxy_error(dial.error))
        else:
            self._tcp_connected(dial.take())

    def _proxy_error(self, error: OSError) -> BaseException:
        """*error* while reaching the proxy, if there is one: the proxy's."""
        effect = self._effect
        if effect is None or effect.proxy is None:
            return error
        wrapped = proxy_unreachable(effect.proxy, error)
        wrapped.__cause__ = error
        return wrapped

    def _tcp_connected(self, sock: socket.socket) -> None:
        effect = self._effect
        assert effect is not None
        proxy = effect.proxy
        if proxy is not None and proxy.tls:
            self._begin_tls(sock, proxy_context(self._opts.ssl_context), proxy.host, None, to_proxy=True)
        elif proxy is not None:
            self._begin_tunnel(sock)
        else:
            self._through(sock)

    def _through(self, sock: socket.socket) -> None:
        """*sock* leads to the feed: TLS to it if asked, then the upgrade."""
        effect = self._effect
        assert effect is not None
        if not effect.tls:
            self._connected(sock)
            return
        context = self._opts.ssl_context
        assert context is not None
        offer = self._tls_sessions.offer((effect.host, effect.port, effect.server_hostname))
        self._begin_tls(sock, context, effect.server_hostname, offer, to_proxy=False)

    def _begin_tls(self, sock: socket.socket, context: ssl.SSLContext, name: str | None,
                   offer: ssl.SSLSession | None, *, to_proxy: bool) -> None:
        try:
            if isinstance(sock, ssl.SSLSocket):  # inside TLS to an https:// proxy
                self._tls = NestedTLS(sock, context, name, offer)
            else:
                self._tls = context.wrap_socket(sock, server_hostname=name,
                                                do_handshake_on_connect=False, session=offer)
        except (OSError, ValueError) as exc:
            sock.close()
            self._fail_connect(self._proxy_error(exc) if to_proxy and isinstance(exc, OSError) else exc)
            return
        self._tls_to_proxy = to_proxy
        self._selector.register(self._tls, selectors.EVENT_READ, _TLS)
        self._tls_step()

    def _tls_step(self) -> None:
        tls = self._tls
        assert tls is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(tls, selectors.EVENT_READ, _TLS)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(tls, selectors.EVENT_WRITE, _TLS)
            return
        except OSError as exc:
            self._fail_connect(self._proxy_error(exc) if self._tls_to_proxy else exc)
            return
        self._selector.unregister(tls)
        self._tls = None
        if isinstance(tls, NestedTLS):
            self._connected(cast(socket.socket, tls))  # (the calls of a socket the loop makes)
        elif self._tls_to_proxy:
            self._begin_tunnel(tls)
        else:
            self._connected(tls)

    def _begin_tunnel(self, sock: socket.socket) -> None:
        """The proxy is reached: open the tunnel through it."""
        effect = self._effect
        assert effect is not None and effect.proxy is not None
        try:
            address = None
            if effect.proxy.resolves_locally:  # socks5:// sends the feed's address
                self._release()  # (the lookup waits in this thread)
                address = self._lookup.resolve_blocking(effect.host, effect.port, reuse=False,
                                                        limit=lookup_limit(self._core.config.connect_timeout))
            handshake = handshake_for(effect, None if address is None else str(address[0][4][0]),
                                      self._core.config.user_agent)
        except (OSError, ProxyError) as exc:  # the lookup, or a name the proxy cannot be sent
            sock.close()
            self._fail_connect(exc)
            return
        self._tunnel = SocketTunnel(sock, effect.proxy, handshake)
        self._selector.register(sock, selectors.EVENT_WRITE, _PROXY)
        self._tunnel_step(readable=False)

    def _tunnel_step(self, *, readable: bool) -> None:
        tunnel = self._tunnel
        assert tunnel is not None
        try:
            done = tunnel.step(readable)
        except ProxyError as exc:
            self._fail_connect(exc)
            return
        if not done:
            wanted = selectors.EVENT_WRITE if tunnel.wants_write else selectors.EVENT_READ
            self._selector.modify(tunnel.sock, wanted, _PROXY)
            return
        self._selector.unregister(tunnel.sock)
        self._tunnel = None
        self._through(tunnel.sock)

    def _fail_connect(self, exc: BaseException) -> None:
        self._drop_socket(abort=True)
        with self._cond:
            self._core.transport_failed(exc, time.monotonic())

    def _connected(self, sock: socket.socket) -> None:
        self._sock = sock
        effect = self._effect
        if isinstance(sock, TLS_SOCKETS) and effect is not None and effect.tls:
            watched = sock.ssl_object if isinstance(sock, NestedTLS) else sock
            self._tls_sessions.watch((effect.host, effect.port, effect.server_hostname), watched)
        with self._cond:
            self._session.new_reads()
            self._core.transport_opened(time.monotonic())
        self._watch(True)

    def _read(self) -> None:
        sock = self._sock
        assert sock is not None
        reads = self._session.reads
        chunks: list[bytes] = []
        error: OSError | None = None
        try:
            while True:
                data = sock.recv(reads.size)
                if not data:
                    break
                chunks.append(data)
                reads.update(len(data))
                if not (isinstance(sock, TLS_SOCKETS) and sock.pending()):
                    break
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if not chunks:
                return
        except OSError as exc:
            error = exc
        with self._cond:
            now = time.monotonic()
            if chunks:
                self._core.receive_data(b"".join(chunks), now)
            if error is not None:
                self._session.lost(error, now)
            elif not chunks:
                self._core.receive_eof(now)

