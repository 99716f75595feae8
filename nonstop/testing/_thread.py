"""Running a :class:`~nonstop.testing.FeedServer` in a thread, for blocking code.

Theory of operation
-------------------
A blocking test (or the chaos demo) cannot ``async with`` a server, and must
not block the server's event loop either.  :class:`ThreadedFeedServer` starts
a daemon thread that runs ``anyio.run()``; inside, it opens an
:class:`anyio.from_thread.BlockingPortal` and then the server.  Every method
of the wrapper forwards to the server through ``portal.call``, which runs the
call in the loop thread and waits for the result, so the server's state is
only ever touched from its own loop and the wrapper is safe to use from any
thread.  Leaving the ``with`` block (or :meth:`ThreadedFeedServer.stop`) stops
the portal, which makes the loop leave ``async with server`` (closing every
socket) and return; the thread is then joined.

The handle is written against :class:`FeedServerLike`, the methods and
properties of :class:`~nonstop.testing.FeedServer` it forwards, so that the
server can offer :meth:`~nonstop.testing.FeedServer.run_in_thread` without
this module depending on the server's own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._faults import Fault
from ._records import ConnectionInfo

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["FeedServerLike", "ThreadedFeedServer"]

T = TypeVar("T")


class FeedServerLike(Protocol):
    """What :class:`ThreadedFeedServer` uses of the server it runs (a FeedServer)."""

    async def __aenter__(self) -> object: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...
    def inject(self, fault: Fault, **params: object) -> int: ...
    def restore(self) -> None: ...
    def broadcast(self, message: str | bytes) -> int: ...
    def pause_streaming(self) -> None: ...
    def resume_streaming(self) -> None: ...
    async def wait_connected(self, n: int = 1, timeout: float | None = 10.0) -> None: ...
    async def _wait_change(self, version: int, timeout: float | None) -> None: ...
    def sent_to(self, connection: int) -> int: ...
    def connection(self, number: int) -> ConnectionInfo: ...
    @property
    def _version(self) -> int: ...
    @property
    def streaming_paused(self) -> bool: ...
    @property
    def url(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def listening(self) -> bool: ...
    @property
    def connections(self) -> int: ...
    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def stalled(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def open_connections(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def sent_log(self) -> list[tuple[int, int]]: ...
    @property
    def received(self) -> list[tuple[int, str | bytes]]: ...
    @property
    def received_count(self) -> int: ...
    @property
    def subscriptions(self) -> list[tuple[int, str]]: ...
    @property
    def history(self) -> list[ConnectionInfo]: ...
    @property
    def auth_log(self) -> list[tuple[int, str]]: ...
    @property
    def listen_keys_issued(self) -> int: ...
    @property
    def http_url(self) -> str: ...


class ThreadedFeedServer:
    """A :class:`~nonstop.testing.FeedServer` running on its own loop in a daemon thread.

    Made by :meth:`FeedServer.run_in_thread`; use it as a context manager::

        with FeedServer(interval=0.01).run_in_thread() as server:
            client = connect(server.url)
            server.wait_connected()
            server.inject(Fault.CLOSE)
            server.wait_connected(n=2)

    Every method and property is thread-safe and blocks until the server's
    loop has carried it out.  :attr:`server` is the wrapped server, to be
    touched only from its own loop.
    """

    def __init__(self, server: FeedServerLike, *, backend: str = "asyncio") -> None:
        #: The wrapped server (only to be used from its own event loop).
        self.server = server
        #: The anyio backend of the thread's event loop.
        self.backend = backend
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 30.0) -> ThreadedFeedServer:
        """Start the thread and wait until the server listens; return self.

        Re-raises an error from binding (e.g. the port is taken).
        """
        if self._thread is not None:
            raise RuntimeError("this ThreadedFeedServer was already started")
        self._thread = threading.Thread(target=self._run, name="nonstop-feed-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the feed server did not start within {timeout} s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (closing every connection) and join the thread; idempotent."""
        portal, thread = self._portal, self._thread
        if portal is not None:
            self._portal = None
            with contextlib.suppress(RuntimeError):  # the loop is already gone
                portal.call(portal.stop, True)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the feed server thread did not stop within {timeout} s")

    def __enter__(self) -> ThreadedFeedServer:
        """Same as :meth:`start`."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Same as :meth:`stop`."""
        self.stop()

    def _run(self) -> None:
        try:
            anyio.run(self._main, backend=self.backend)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        # The server first: a bind error then comes out as itself, not wrapped
        # in the portal's task group.
        async with self.server, BlockingPortal() as portal:
            self._portal = portal
            self._ready.set()
            await portal.sleep_until_stopped()

    def _call(self, func: Callable[[], T]) -> T:
        portal = self._portal
        if portal is None:
            raise RuntimeError("the feed server is not running (use `with server.run_in_thread():`)")
        return portal.call(func)

    # -- faults ------------------------------------------------------------

    def inject(self, fault: Fault, **params: object) -> int:
        """Thread-safe :meth:`FeedServer.inject`."""
        return self._call(lambda: self.server.inject(fault, **params))

    def restore(self) -> None:
        """Thread-safe :meth:`FeedServer.restore`."""
        self._call(self.server.restore)

    def broadcast(self, message: str | bytes) -> int:
        """Thread-safe :meth:`FeedServer.broadcast`."""
        return self._call(lambda: self.server.broadcast(message))

    def pause_streaming(self) -> None:
        """Thread-safe :meth:`FeedServer.pause_streaming`."""
        self._call(self.server.pause_streaming)

    def resume_streaming(self) -> None:
        """Thread-safe :meth:`FeedServer.resume_streaming`."""
        self._call(self.server.resume_streaming)

    @property
    def streaming_paused(self) -> bool:
        """:attr:`FeedServer.streaming_paused`."""
        return self._call(lambda: self.server.streaming_paused)

    # -- waiting -----------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None = 10.0) -> None:
        """Block until ``predicate()`` is true, re-checking it on every change.

        ``predicate`` runs in the calling thread, so it may use this object's
        properties (``lambda: server.connections >= 2``).  Raises
        :class:`TimeoutError` after ``timeout`` seconds (None: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            version = self._call(lambda: self.server._version)
            if predicate():
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s")
            portal = self._portal
            if portal is None:
                raise RuntimeError("the feed server is not running")
            portal.call(self.server._wait_change, version, remaining)

    def wait_connected(self, n: int = 1, timeout: float | None = 10.0) -> None:
        """Blocking :meth:`FeedServer.wait_connected`."""
        portal = self._portal
        if portal is None:
            raise RuntimeError("the feed server is not running")
        portal.call(self.server.wait_connected, n, timeout)

    # -- observing ---------------------------------------------------------

    @property
    def url(self) -> str:
        """:attr:`FeedServer.url`."""
        return self._call(lambda: self.server.url)

    @property
    def http_url(self) -> str:
        """:attr:`FeedServer.http_url`."""
        return self._call(lambda: self.server.http_url)

    @property
    def port(self) -> int:
        """:attr:`FeedServer.port`."""
        return self._call(lambda: self.server.port)

    @property
    def listening(self) -> bool:
        """:attr:`FeedServer.listening`."""
        return self._call(lambda: self.server.listening)

    @property
    def connections(self) -> int:
        """:attr:`FeedServer.connections`."""
        return self._call(lambda: self.server.connections)

    @property
    def accepted(self) -> int:
        """:attr:`FeedServer.accepted`."""
        return self._call(lambda: self.server.accepted)

    @property
    def rejected(self) -> int:
        """:attr:`FeedServer.rejected`."""
        return self._call(lambda: self.server.rejected)

    @property
    def stalled(self) -> int:
        """:attr:`FeedServer.stalled`."""
        return self._call(lambda: self.server.stalled)

    @property
    def dropped(self) -> int:
        """:attr:`FeedServer.dropped`."""
        return self._call(lambda: self.server.dropped)

    @property
    def open_connections(self) -> int:
        """:attr:`FeedServer.open_connections`."""
        return self._call(lambda: self.server.open_connections)

    @property
    def sent(self) -> int:
        """:attr:`FeedServer.sent`."""
        return self._call(lambda: self.server.sent)

    def sent_to(self, connection: int) -> int:
        """:meth:`FeedServer.sent_to`."""
        return self._call(lambda: self.server.sent_to(connection))

    @property
    def sent_log(self) -> list[tuple[int, int]]:
        """:attr:`FeedServer.sent_log`."""
        return self._call(lambda: self.server.sent_log)

    @property
    def received(self) -> list[tuple[int, str | bytes]]:
        """:attr:`FeedServer.received`."""
        return self._call(lambda: self.server.received)

    @property
    def received_count(self) -> int:
        """:attr:`FeedServer.received_count`."""
        return self._call(lambda: self.server.received_count)

    @property
    def subscriptions(self) -> list[tuple[int, str]]:
        """:attr:`FeedServer.subscriptions`."""
        return self._call(lambda: self.server.subscriptions)

    @property
    def history(self) -> list[ConnectionInfo]:
        """:attr:`FeedServer.history`."""
        return self._call(lambda: self.server.history)

    def connection(self, number: int) -> ConnectionInfo:
        """:meth:`FeedServer.connection`."""
        return self._call(lambda: self.server.connection(number))

    @property
    def auth_log(self) -> list[tuple[int, str]]:
        """:attr:`FeedServer.auth_log`."""
        return self._call(lambda: self.server.auth_log)

    @property
    def listen_keys_issued(self) -> int:
        """:attr:`FeedServer.listen_keys_issued`."""
        return self._call(lambda: self.server.listen_keys_issued)

    def __repr__(self) -> str:
        state = "running" if self._portal is not None else "stopped"
        return f"<ThreadedFeedServer {state} {self.server!r}>"
