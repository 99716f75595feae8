"""What the fast asyncio path leans on in an event loop, checked on every loop.

Each lean named in ``nonstop/transports/_loops.py`` is tested on the stock
asyncio loop and on uvloop: where a loop has it, it works as the fast path
uses it; where it has not, the answer is "no" with a debug line, and the
feed still runs (its plain way).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import anyio
import pytest

from nonstop.transports._loops import loop_clock, read_size_knob, reads_behind, reads_into_buffer

pytestmark = [pytest.mark.timeout(30), pytest.mark.anyio]

LOOPS = [pytest.param("asyncio", id="asyncio"),
         pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data


async def _pair() -> tuple[socket.socket, socket.socket, Any, _Collect]:
    """A connected pair: (server end, our socket), and the loop's transport
    and protocol over our socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_Collect, sock=ours)
    return peer, ours, transport, protocol


def _is_uvloop() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith("uvloop")


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_the_read_size_knob_sets_the_stock_transports_reads_or_says_none(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nonstop")
    peer, _ours, transport, _protocol = await _pair()
    try:
        knob = read_size_knob(transport)
        if _is_uvloop():
            assert knob is None
            assert any("has no max_size" in r.getMessage() for r in caplog.records)
        else:
            assert knob is not None
            knob(4096)
            assert transport.max_size == 4096
            peer.sendall(b"x" * 10_000)
            with anyio.fail_after(5):
                while len(_protocol.data) < 10_000:
                    await anyio.sleep(0.01)
    finally:
        transport.close()
        peer.close()


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_reads_beside_the_loops_own_keep_every_byte_in_order() -> None:
    """What a consumer's own ``recv`` takes and what the transport reads
    after it are the stream, in order, with nothing lost or doubled."""
    peer, ours, transport, protocol = await _pair()
    try:
        assert reads_behind(transport)
        ours_got = bytearray()
        sent = bytearray()
        for n in range(50):
            chunk = bytes([n]) * 3000
            peer.sendall(chunk)
            sent += chunk
            if n % 2:  # every other time the consumer reads first
                await anyio.sleep(0)
                try:
                    ours_got += ours.recv(1 << 16)
                except BlockingIOError:
                    pass
        with anyio.fail_after(5):
            while len(ours_got) + len(protocol.data) < len(sent):
                await anyio.sleep(0.01)
        # chunk n is n repeated: each side's bytes, in the order it read
        # them, never go back, and together they are the stream
        assert len(ours_got) + len(protocol.data) == len(sent)
        assert list(ours_got) == sorted(ours_got) and list(protocol.data) == sorted(protocol.data)
        assert sorted(ours_got + protocol.data) == list(sent)
        assert ours_got, "the consumer read nothing: the test checked nothing"
    finally:
        transport.close()
        peer.close()


def test_an_unknown_transport_gets_no_reads_beside_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nonstop")

    class Elsewhere:
        max_size = 1 << 18

    assert not reads_behind(Elsewhere())
    assert read_size_knob(Elsewhere()) is None  # a max_size on an unknown transport is not ours
    assert any("not known to allow them" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_the_loop_clock_is_the_loops_time() -> None:
    loop = asyncio.get_running_loop()
    clock = loop_clock(loop)
    assert abs(clock() - loop.time()) < 0.05


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_reads_into_our_buffer_on_uvloop_only(caplog: pytest.LogCaptureFixture) -> None:
    """uvloop reads into a buffer of ours; the stock loop hands over its own
    reads (a buffered read there would copy every byte twice)."""
    caplog.set_level(logging.DEBUG, logger="nonstop")
    loop = asyncio.get_running_loop()
    assert reads_into_buffer(loop) is _is_uvloop()
    if not _is_uvloop():
        assert any("not known to read faster" in r.getMessage() for r in caplog.records)


class _Buffered(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buffer = bytearray(1 << 20)
        self.data = bytearray()
        self.reads: list[int] = []

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.reads.append(nbytes)
        self.data += self.buffer[:nbytes]


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_the_loop_reads_into_the_buffer_it_is_given_as_much_as_it_holds() -> None:
    """What :func:`reads_into_buffer` leans on: the loop fills the buffered
    protocol's buffer, every byte in order, in reads as large as the buffer
    (beyond uvloop's own 256 KiB) when that much is waiting."""
    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sent = bytes(range(256)) * (12 * 1024)  # 3 MiB
    peer.setblocking(False)
    taken = 0
    while taken < len(sent):  # fill the kernel's buffers before the loop reads
        try:
            taken += peer.send(sent[taken:])
        except BlockingIOError:
            break
    loop = asyncio.get_running_loop()
    protocol = _Buffered()
    transport, _ = await loop.create_connection(lambda: protocol, sock=ours)
    try:
        with anyio.fail_after(10):
            while len(protocol.data) < len(sent):
                if taken < len(sent):
                    try:
                        taken += peer.send(sent[taken:])
                    except BlockingIOError:
                        pass
                await anyio.sleep(0.001)
        assert bytes(protocol.data) == sent
        assert max(protocol.reads) > 256 * 1024
    finally:
        transport.close()
        peer.close()


def test_linger_zero_on_a_socket_closed_underneath_is_a_no_op() -> None:
    """The abort of a connection the loop already closed (uvloop hands out a
    pseudo-socket whose fd is -1 then: ValueError, not OSError)."""
    from nonstop.transports._anyio_loop import linger_zero

    sock = socket.socket()
    sock.close()
    linger_zero(sock)  # OSError (bad file descriptor) swallowed

    class Closed:
        def setsockopt(self, *args: object) -> None:
            raise ValueError("negative file descriptor")

    linger_zero(Closed())
    linger_zero(None)  # no socket at all
