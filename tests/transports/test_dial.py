"""Happy eyeballs, the I/O: :func:`dial` (anyio, on asyncio and trio) and
:class:`SelectorDial` (the blocking driver's selector loop), on real sockets.

Only loopback: a listening socket (accepts), a bound socket that does not
listen (refuses), and a *slow* address -- a listener with ``listen(0)``
whose one backlog slot is already taken, so a new connect to it stays in
progress, as one to a host that drops SYNs does.  Every test counts the
open descriptors of the process before and after: no socket may leak,
whether the dial won, failed or was cancelled.
"""

from __future__ import annotations

import errno
import gc
import os
import select
import selectors
import socket
import time
from collections.abc import Iterator

import anyio
import pytest

from nonstop.core import Reason, classify_error
from nonstop.core._errors import LocalProtocolError
from nonstop.transports._dial import AddrInfo, SelectorDial, dial, dial_addresses, numeric

pytestmark = pytest.mark.timeout(30)

V4 = socket.AF_INET
V6 = socket.AF_INET6
#: TCP to a multicast address fails in connect() itself (ENETUNREACH): the
#: local stack refuses it and no packet leaves the machine.
UNREACHABLE: AddrInfo = (V4, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("224.0.0.1", 9))
#: A socket that cannot even be opened (TCP over the UDP protocol number).
UNOPENABLE: AddrInfo = (V4, socket.SOCK_STREAM, socket.IPPROTO_UDP, "", ("127.0.0.1", 9))


def fds() -> int:
    """Open descriptors, after a collection: sockets an earlier test left to
    the garbage collector must not be counted against this one."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def info(family: int, port: int) -> AddrInfo:
    host = "::1" if family == V6 else "127.0.0.1"
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))


def _has_ipv6() -> bool:
    try:
        with socket.socket(V6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")


class Ports:
    """Loopback ports that accept, refuse, or never answer; closed at the end."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []

    def _socket(self, family: int) -> socket.socket:
        s = socket.socket(family)
        self._held.append(s)
        s.bind(("::1" if family == V6 else "127.0.0.1", 0))
        return s

    def accepting(self, family: int = V4) -> int:
        s = self._socket(family)
        s.listen(128)
        return int(s.getsockname()[1])

    def refusing(self, family: int = V4) -> int:
        return int(self._socket(family).getsockname()[1])  # bound, not listening

    def slow(self, family: int = V4) -> int:
        listener = self._socket(family)
        listener.listen(0)
        port = int(listener.getsockname()[1])
        filler = socket.socket(family)
        self._held.append(filler)
        filler.connect((listener.getsockname()[0], port))  # takes the one backlog slot
        probe = socket.socket(family)
        self._held.append(probe)
        probe.setblocking(False)
        probe.connect_ex((listener.getsockname()[0], port))
        _, writable, _ = select.select([], [probe], [], 0.2)
        if writable:
            pytest.skip("a full backlog does not hold connects back here")
        return port

    def close(self) -> None:
        for s in self._held:
            s.close()


@pytest.fixture
def no_leak() -> Iterator[None]:
    """The test must leave exactly as many descriptors open as it found."""
    before = fds()
    yield
    assert fds() == before


@pytest.fixture
def ports(no_leak: None) -> Iterator[Ports]:
    """Set up after ``no_leak`` and torn down before it checks the count."""
    p = Ports()
    yield p
    p.close()


def check_connected(sock: socket.socket, port: int) -> None:
    assert sock.getblocking() is False
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert sock.getpeername()[1] == port


def localhost_families(port: int) -> set[int]:
    try:
        infos = socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {i[0] for i in infos}


# ---------------------------------------------------------------------------
# dial(): the anyio driver, on asyncio and trio


@pytest.mark.anyio
async def test_dial_connects(ports: Ports, no_leak: None) -> None:
    port = ports.accepting()
    before = fds()
    sock = await dial("127.0.0.1", port)
    try:
        check_connected(sock, port)
        assert fds() == before + 1  # the socket, and nothing else
    finally:
        sock.close()


@pytest.mark.anyio
async def test_dial_refused_is_refused(ports: Ports, no_leak: None) -> None:
    port = ports.refusing()
    before = fds()
    with pytest.raises(ConnectionRefusedError) as caught:
        await dial("127.0.0.1", port)
    assert classify_error(caught.value) is Reason.REFUSED
    assert fds() == before


@pytest.mark.anyio
async def test_dial_unknown_name_is_dns(no_leak: None) -> None:
    with pytest.raises(socket.gaierror) as caught:
        await dial("nonexistent.invalid", 80)
    assert classify_error(caught.value) is Reason.DNS


@pytest.mark.anyio
async def test_dial_no_address(no_leak: None) -> None:
    with pytest.raises(OSError, match=r"no address for feed\.example") as caught:
        await dial_addresses([], host="feed.example")
    assert classify_error(caught.value) is Reason.NETWORK


@pytest.mark.anyio
@needs_ipv6
async def test_dial_next_address_at_once_when_the_first_is_refused(ports: Ports, no_leak: None) -> None:
    port = ports.accepting(V4)
    infos = [info(V6, ports.refusing(V6)), info(V4, port)]
    started = time.monotonic()
    sock = await dial_addresses(infos, host="localhost", delay=10.0)
    try:
        assert time.monotonic() - started < 5.0  # not after the 10 s delay
        assert sock.family == V4
        check_connected(sock, port)
    finally:
        sock.close()


@pytest.mark.anyio
@needs_ipv6
async def test_dial_all_refused_is_the_last_error_with_the_first_as_context(
    ports: Ports, no_leak: None
) -> None:
    infos = [info(V6, ports.refusing(V6)), info(V4, ports.refusing(V4))]
    with pytest.raises(ConnectionRefusedError) as caught:
        await dial_addresses(infos, host="localhost")
    assert isinstance(caught.value.__context__, ConnectionRefusedError)
    assert caught.value.__context__ is not caught.value
    assert classify_error(caught.value) is Reason.REFUSED


@pytest.mark.anyio
async def test_dial_addresses_that_fail_at_once(ports: Ports, no_leak: None) -> None:
    port = ports.accepting()
    sock = await dial_addresses([UNOPENABLE, UNREACHABLE, info(V4, port)], host="h", delay=10.0)
    try:
        check_connected(sock, port)
    finally:
        sock.close()
    with pytest.raises(OSError) as caught:
        await dial_addresses([UNOPENABLE, UNREACHABLE], host="h")
    assert caught.value.errno == errno.ENETUNREACH
    assert isinstance(caught.value.__context__, OSError)
    assert caught.value.__context__.errno == errno.EPROTONOSUPPORT
    assert classify_error(caught.value) is Reason.NETWORK


@pytest.mark.anyio
async def test_dial_slow_first_address_then_the_next_beside_it(ports: Ports, no_leak: None) -> None:
    slow, good = ports.slow(), ports.accepting()
    before = fds()
    started = time.monotonic()
    sock = await dial_addresses([info(V4, slow), info(V4, good)], host="h", delay=0.2)
    try:
        assert 0.15 <= time.monotonic() - started < 5.0
        check_connected(sock, good)
        assert fds() == before + 1  # the slow attempt's socket is closed
    finally:
        sock.close()


@pytest.mark.anyio
async def test_dial_race_of_two_winners_keeps_one(ports: Ports, no_leak: None) -> None:
    a, b = ports.accepting(), ports.accepting()
    before = fds()
    for _ in range(10):  # delay 0: both connect, usually in the same loop turn
        sock = await dial_addresses([info(V4, a), info(V4, b)], host="h", delay=0.0)
        assert sock.getpeername()[1] in (a, b)
        sock.close()
    assert fds() == before


@pytest.mark.anyio
@pytest.mark.parametrize("after", [0.0, 0.05, 0.3])
async def test_dial_cancelled_closes_every_socket(ports: Ports, no_leak: None, after: float) -> None:
    slow = [info(V4, ports.slow()), info(V4, ports.slow()), info(V4, ports.slow())]
    before = fds()
    with anyio.move_on_after(after) as scope:
        await dial_addresses(slow, host="h", delay=0.1)
    assert scope.cancelled_caught
    assert fds() == before


@pytest.mark.anyio
async def test_dial_cancelled_during_the_lookup(no_leak: None) -> None:
    with anyio.move_on_after(0) as scope:
        await dial("localhost", 9)
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_dial_calls_waiting_before_each_step_that_waits(ports: Ports, no_leak: None) -> None:
    """The driver's work that can wait (the events held since a break) goes
    before a lookup and before a connect that is not over at once."""
    calls: list[str] = []
    sock = await dial("localhost", ports.accepting(V4), waiting=lambda: calls.append("lookup"))
    sock.close()
    assert calls[:1] == ["lookup"]
    calls.clear()
    with anyio.move_on_after(0.05):
        await dial_addresses([info(V4, ports.slow())], host="h", waiting=lambda: calls.append("one"))
    assert calls == ["one"]
    calls.clear()
    with anyio.move_on_after(0.05):
        await dial_addresses([info(V4, ports.slow()), info(V4, ports.slow())], host="h",
                             waiting=lambda: calls.append("race"))
    assert calls == ["race"]


def test_selector_dial_calls_waiting_before_a_lookup(ports: Ports, selector: selectors.BaseSelector,
                                                     no_leak: None) -> None:
    calls: list[str] = []
    port = ports.accepting()
    d = SelectorDial.open("127.0.0.1", port, selector, waiting=lambda: calls.append("ip"))
    d.close()
    assert calls == []  # an IP address: no lookup
    d = SelectorDial.open("localhost", port, selector, waiting=lambda: calls.append("name"))
    d.close()
    assert calls == ["name"]


@pytest.mark.anyio
async def test_dial_localhost_on_both_families(ports: Ports, no_leak: None) -> None:
    probe = ports.accepting(V4)
    if localhost_families(probe) != {V4, V6}:
        pytest.skip("localhost does not resolve to both ::1 and 127.0.0.1 here")
    # Only IPv4 listens on this port number (if ::1 has it free: refused there).
    sock = await dial("localhost", probe)
    try:
        check_connected(sock, probe)
    finally:
        sock.close()


# ---------------------------------------------------------------------------
# SelectorDial: the blocking driver's loop
def drive(d: SelectorDial, selector: selectors.BaseSelector, limit: float = 10.0) -> None:
    """The driver's loop, reduced to the dial: select, feed, check."""
    end = time.monotonic() + limit
    while not d.done:
        assert time.monotonic() < end, "the dial did not finish"
        deadline = d.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        for key, _ in selector.select(timeout if timeout is not None else end - time.monotonic()):
            assert key.data is d
            d.on_ready(key.fileobj, time.monotonic())
        d.handle_timer(time.monotonic())


@pytest.fixture
def selector() -> Iterator[selectors.BaseSelector]:
    s = selectors.DefaultSelector()
    yield s
    s.close()


def test_selector_dial_connects(ports: Ports, selector: selectors.BaseSelector, no_leak: None) -> None:
    port = ports.accepting()
    d = SelectorDial.open("127.0.0.1", port, selector)
    assert [key.data for key in selector.get_map().values()] == [d]
    drive(d, selector)
    sock = d.take()
    try:
        check_connected(sock, port)
        assert d.error is None
        assert len(selector.get_map()) == 0  # unregistered: the driver registers it its way
        d.close()  # does not touch the taken socket
        check_connected(sock, port)
        with pytest.raises(LocalProtocolError):
            d.take()
    finally:
        sock.close()


def test_selector_dial_refused(ports: Ports, selector: selectors.BaseSelector, no_leak: None) -> None:
    d = SelectorDial.open("127.0.0.1", ports.refusing(), selector)
    drive(d, selector)
    assert isinstance(d.error, ConnectionRefusedError)
    assert classify_error(d.error) is Reason.REFUSED
    assert len(selector.get_map()) == 0
    with pytest.raises(LocalProtocolError):
        d.take()


def test_selector_dial_unknown_name(selector: selectors.BaseSelector, no_leak: None) -> None:
    d = SelectorDial.open("nonexistent.invalid", 80, selector)
    assert d.done and isinstance(d.error, socket.gaierror)
    assert classify_error(d.error) is Reason.DNS
    assert d.next_deadline() is None and len(selector.get_map()) == 0


def test_selector_dial_no_address(selector: selectors.BaseSelector, no_leak: None) -> None:
    d = SelectorDial([], selector, host="feed.example", now=time.monotonic())
    assert d.done and str(d.error) == "no address for feed.example"


@needs_ipv6
def test_selector_dial_all_refused(ports: Ports, selector: selectors.BaseSelector, no_leak: None) -> None:
    infos = [info(V6, ports.refusing(V6)), info(V4, ports.refusing(V4))]
    d = SelectorDial(infos, selector, host="localhost", now=time.monotonic())
    drive(d, selector)
    assert isinstance(d.error, ConnectionRefusedError)
    assert isinstance(d.error.__context__, ConnectionRefusedError)
    assert d.error.__context__ is not d.error


@needs_ipv6
def test_selector_dial_refused_then_next_at_once(
    ports: Ports, selector: selectors.BaseSelector, no_leak: None
) -> None:
    port = ports.accepting(V4)
    infos = [info(V6, ports.refusing(V6)), info(V4, port)]
    started = time.monotonic()
    d = SelectorDial(infos, selector, host="localhost", now=started, delay=10.0)
    drive(d, selector)
    assert time.monotonic() - started < 5.0
    with d.take() as sock:
        check_connected(sock, port)


def test_selector_dial_addresses_that_fail_at_once(
    ports: Ports, selector: selectors.BaseSelector, no_leak: None
) -> None:
    port = ports.accepting()
    d = SelectorDial([UNOPENABLE, UNREACHABLE, info(V4, port)], selector, host="h",
                     now=time.monotonic(), delay=10.0)
    assert len(selector.get_map()) == 1  # the third, started at once
    drive(d, selector)
    with d.take() as sock:
        check_connected(sock, port)
    d = SelectorDial([UNREACHABLE, UNOPENABLE], selector, host="h", now=time.monotonic())
    assert d.done and isinstance(d.error, OSError)
    assert d.error.errno == errno.EPROTONOSUPPORT
    assert isinstance(d.error.__context__, OSError)
    assert d.error.__context__.errno == errno.ENETUNREACH
    assert classify_error(d.error) is Reason.NETWORK


def test_selector_dial_slow_first_address(
    ports: Ports, selector: selectors.BaseSelector, no_leak: None
) -> None:
    slow, good = ports.slow(), ports.accepting()
    started = time.monotonic()
    d = SelectorDial([info(V4, slow), info(V4, good)], selector, host="h", now=started, delay=0.2)
    assert d.next_deadline() == pytest.approx(started + 0.2)
    assert len(selector.get_map()) == 1
    drive(d, selector)
    assert time.monotonic() - started >= 0.15
    assert len(selector.get_map()) == 0  # the slow one is unregistered and closed
    with d.take() as sock:
        check_connected(sock, good)


def test_selector_dial_close_mid_connect(
    ports: Ports, selector: selectors.BaseSelector, no_leak: None
) -> None:
    before = fds()
    now = time.monotonic()
    d = SelectorDial([info(V4, ports.slow()), info(V4, ports.slow())], selector, host="h", now=now,
                     delay=0.05)
    d.handle_timer(now + 0.05)  # both in flight
    assert len(selector.get_map()) == 2
    assert fds() == before + 2 + 6  # two attempts, and the two slow ports' three sockets each
    d.close()
    d.close()
    assert len(selector.get_map()) == 0
    assert fds() == before + 6
    assert d.next_deadline() is None and not d.done
    d.handle_timer(now + 10)  # closed: starts nothing
    assert len(selector.get_map()) == 0


def test_selector_dial_close_before_take_closes_the_winner(
    ports: Ports, selector: selectors.BaseSelector, no_leak: None
) -> None:
    d = SelectorDial.open("127.0.0.1", ports.accepting(), selector)
    before = fds()
    drive(d, selector)
    d.close()
    assert fds() == before - 1
    with pytest.raises(LocalProtocolError):
        d.take()


def test_selector_dial_ignores_sockets_it_no_longer_holds(
    ports: Ports, selector: selectors.BaseSelector, no_leak: None
) -> None:
    a, b = ports.accepting(), ports.accepting()
    d = SelectorDial([info(V4, a), info(V4, b)], selector, host="h", now=time.monotonic(), delay=0.0)
    d.handle_timer(d.next_deadline() or 0.0)
    keys = list(selector.get_map().values())
    assert len(keys) == 2
    # Both connect; report both from "one select round", as a driver would.
    deadline = time.monotonic() + 5
    while len(selector.select(0.1)) < 2:
        assert time.monotonic() < deadline
    for key in keys:
        d.on_ready(key.fileobj, time.monotonic())
    d.on_ready(object(), time.monotonic())  # not a socket of ours
    assert d.done and len(selector.get_map()) == 0
    with d.take() as sock:
        assert sock.getpeername()[1] in (a, b)


def test_selector_dial_closed_ignores_ready(
    ports: Ports, selector: selectors.BaseSelector, no_leak: None
) -> None:
    d = SelectorDial.open("127.0.0.1", ports.accepting(), selector)
    (key,) = selector.get_map().values()
    d.close()
    d.on_ready(key.fileobj, time.monotonic())
    assert not d.done


def test_selector_dial_localhost(ports: Ports, selector: selectors.BaseSelector, no_leak: None) -> None:
    port = ports.accepting(V4)
    if localhost_families(port) != {V4, V6}:
        pytest.skip("localhost does not resolve to both ::1 and 127.0.0.1 here")
    d = SelectorDial.open("localhost", port, selector)
    drive(d, selector)
    with d.take() as sock:
        check_connected(sock, port)


def test_an_ip_address_needs_no_name_lookup() -> None:
    """A host that is an IP address gives its one address at once (the
    dial then skips the resolver's thread); a name gives None."""
    assert numeric("127.0.0.1", 80) == [
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 80))]
    v6 = numeric("::1", 443)
    assert v6 is not None and v6[0][0] == socket.AF_INET6 and v6[0][4][:2] == ("::1", 443)
    assert numeric("localhost", 80) is None
    assert numeric("feed.example", 80) is None
