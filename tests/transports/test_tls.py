"""TLS: verified by default, explicit contexts honoured, failures classified.

A trusted certificate connects; an untrusted CA, a certificate for another
host name and an expired certificate are each refused with reason ``tls``
and a detail that says why -- and retried per policy, never downgraded.
Both drivers, the anyio one on asyncio and trio (the ``backend`` fixture).
Real sockets on 127.0.0.1,
real certificates from trustme, hard timeouts.
"""

from __future__ import annotations

import datetime
import gc
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import pytest
import trustme
from websockets.sync.server import ServerConnection, serve

import nonstop
from nonstop import Connected, Disconnected, Reason

from .conftest import RETRY, Backend

pytestmark = pytest.mark.timeout(60)


def hello(ws: ServerConnection) -> None:
    ws.send("hello")
    for _ in ws:
        pass


@contextmanager
def tls_server(
    cert: trustme.LeafCert, handler: Callable[[ServerConnection], None] = hello
) -> Iterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    with serve(handler, "127.0.0.1", 0, ssl=context) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(10)


CA = trustme.CA()
OTHER_CA = trustme.CA()
NOW = datetime.datetime.now(datetime.timezone.utc)
CERTS = {
    "trusted": (CA, CA.issue_cert("localhost")),
    "untrusted-ca": (CA, OTHER_CA.issue_cert("localhost")),
    "wrong-host": (CA, CA.issue_cert("other.example")),
    "expired": (CA, CA.issue_cert("localhost", not_before=NOW - datetime.timedelta(days=30),
                                  not_after=NOW - datetime.timedelta(days=1))),
}
EXPECTED_DETAIL = {
    "untrusted-ca": "certificate verify failed",
    "wrong-host": "hostname mismatch",
    "expired": "certificate has expired",
}


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def check_refused(events: list[nonstop.core.AppEvent], case: str) -> None:
    failures = [e for e in events if isinstance(e, Disconnected)]
    assert len(failures) == 2, failures  # the first attempt and one retry (max_attempts=2)
    for failure in failures:
        assert failure.reason is Reason.TLS
        assert EXPECTED_DETAIL[case] in failure.detail.lower()
    assert not any(isinstance(e, Connected) for e in events)
    stopped = events[-1]
    assert isinstance(stopped, nonstop.Stopped) and stopped.reason is Reason.GAVE_UP


@pytest.mark.parametrize("case", list(CERTS))
@pytest.mark.anyio
async def test_driver_tls(case: str, backend: Backend) -> None:
    ca, cert = CERTS[case]
    events: list[nonstop.core.AppEvent] = []
    with tls_server(cert) as port, anyio.fail_after(30):
        async with backend.connect(f"wss://localhost:{port}/", ssl=client_context(ca),
                                   on_event=events.append, **RETRY) as feed:
            if case == "trusted":
                assert await feed.__anext__() == "hello"
                return
            with pytest.raises(nonstop.FeedGaveUp):
                await feed.__anext__()
    check_refused(events, case)


@pytest.mark.anyio
async def test_server_hostname_option_checks_the_named_host(backend: Backend) -> None:
    """Connecting by IP with server_hostname= verifies the certificate's name."""
    ca, cert = CERTS["trusted"]
    with tls_server(cert) as port, anyio.fail_after(30):
        async with backend.connect(f"wss://127.0.0.1:{port}/", ssl=client_context(ca),
                                   server_hostname="localhost", **RETRY) as feed:
            assert await feed.__anext__() == "hello"


def test_ssl_context_for_a_plain_url_is_a_configuration_error() -> None:
    with pytest.raises(nonstop.ConfigError, match="wss://"):
        nonstop.sync.connect("ws://127.0.0.1:1/", ssl=ssl.create_default_context())


@contextmanager
def silent_tcp_server() -> Iterator[int]:
    """Accepts TCP connections and never says a word (nor a TLS byte)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(10)
        for conn in accepted:
            conn.close()
        listener.close()


def open_fds() -> int:
    """Open sockets and files, not counting what an earlier test left to the
    collector, nor /dev/null: libuv (uvloop) opens it once per loop, on
    demand, as a spare descriptor for running out of them."""
    gc.collect()
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") != "/dev/null"
        except OSError:  # the directory's own descriptor, gone already
            pass
    return count


STALL = dict(RETRY, connect_timeout=0.3, handshake_timeout=0.3)


@pytest.mark.anyio
async def test_a_tls_handshake_that_never_answers_times_out_and_leaks_nothing(
    backend: Backend,
) -> None:
    events: list[nonstop.core.AppEvent] = []
    before = open_fds()
    with silent_tcp_server() as port, anyio.fail_after(30):
        async with backend.connect(f"wss://localhost:{port}/", ssl=client_context(CA),
                                   on_event=events.append, **STALL) as feed:
            with pytest.raises(nonstop.FeedGaveUp):
                await feed.__anext__()
    await anyio.sleep(0.1)
    after = open_fds()  # the server's sockets are closed too by now
    failures = [e for e in events if isinstance(e, Disconnected)]
    assert [f.reason for f in failures] == [Reason.CONNECT_TIMEOUT] * 2, failures
    assert after <= before



@pytest.mark.anyio
async def test_a_reconnect_resumes_the_tls_session(backend: Backend) -> None:
    """The second connection offers the first one's session and the server
    takes it (``session_reused`` on the server's side); no handshake is
    repeated in full."""
    reused: list[bool] = []

    def once_then_stay(ws: ServerConnection) -> None:
        reused.append(ws.socket.session_reused)  # type: ignore[attr-defined]
        ws.send("hello")
        if len(reused) == 1:  # the first connection: up past stable_after, then a FIN
            time.sleep(0.4)
            ws.socket.shutdown(socket.SHUT_RDWR)
            return
        for _ in ws:
            pass

    events: list[nonstop.core.AppEvent] = []
    _, cert = CERTS["trusted"]
    with tls_server(cert, once_then_stay) as port, anyio.fail_after(30):
        async with backend.connect(f"wss://localhost:{port}/", ssl=client_context(CA),
                                   on_event=events.append, stable_after=0.2, ping_interval=None,
                                   silence_timeout=None) as feed:
            got = []
            async for message in feed:
                got.append(message)
                if len(got) == 2:
                    break
    assert got == ["hello", "hello"]
    assert reused == [False, True]
    gone = next(e for e in events if isinstance(e, Disconnected))
    assert gone.retry_in == 0.0  # and it came back at once


def test_offering_leaves_a_context_with_an_ssl_object_class_of_its_own_alone(
        caplog: pytest.LogCaptureFixture) -> None:
    """Another library's ``sslobject_class`` stays; nothing is offered, and
    a debug line says why.  Outside the block, and without a session,
    ``wrap_bio`` offers nothing."""
    from nonstop.transports._tls import offering

    class Theirs(ssl.SSLObject):
        pass

    caplog.set_level("DEBUG", logger="nonstop")
    context = client_context(CA)
    context.sslobject_class = Theirs
    session = object()
    with offering(context, session):  # type: ignore[arg-type]
        assert context.sslobject_class is Theirs
    assert any("no TLS session resumption" in r.getMessage() for r in caplog.records)

    plain = client_context(CA)
    with offering(plain, None):
        assert plain.sslobject_class is ssl.SSLObject
    made = plain.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="localhost")
    assert made.session is None
