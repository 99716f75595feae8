"""The testing server (``nonstop.testing.FeedServer``) does what it says.

Checked with clients that do not share its code: the ``websockets`` package
(asyncio, trio and sync clients) and a bare wsproto-over-anyio client that
shows exactly what arrives on the wire (FIN vs RST, garbage, half frames).
Async tests run under asyncio and trio.  Every test has a hard timeout, never
asserts a tight duration (absence checks wait a little and assert nothing
came), and connects only to 127.0.0.1 / localhost.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import ssl
import struct
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import sniffio
import websockets.sync.client
from anyio.abc import ByteStream
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from nonstop.testing import DEFAULT_GARBAGE, FakeClock, Fault, FeedServer
from tests.helpers import unframe

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

QUIET = 0.3  # how long an absence check waits: long enough to notice, never asserted as a bound


# -- clients -----------------------------------------------------------------


def ws_connect(url: str, **kwargs: Any) -> Any:
    """The ``websockets`` client for the running backend (asyncio or trio)."""
    kwargs.setdefault("compression", None)
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 2)
    if sniffio.current_async_library() == "trio":
        # websockets has a trio client from 17.0 on, which needs Python 3.11
        trio_client = pytest.importorskip("websockets.trio.client", reason="websockets' trio "
                                          "client needs websockets >= 17 (Python >= 3.11)")
        trio_connect = trio_client.connect

        return trio_connect(url, **kwargs)
    from websockets.asyncio.client import connect as asyncio_connect

    return asyncio_connect(url, **kwargs)


class RawClient:
    """A bare wsproto client over an anyio byte stream."""

    def __init__(self, stream: ByteStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.wire = bytearray()  # every byte received, for inspection
        self.eof = False

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, url: str, *, ssl_context: ssl.SSLContext | None = None
    ) -> AsyncIterator[RawClient]:
        parts = urlsplit(url)
        assert parts.hostname in ("127.0.0.1", "localhost")
        assert parts.port is not None
        if ssl_context is not None:
            stream: ByteStream = await anyio.connect_tcp(
                parts.hostname, parts.port, ssl_context=ssl_context, tls_standard_compatible=False
            )
        else:
            stream = await anyio.connect_tcp(parts.hostname, parts.port)
        client = cls(stream, f"{parts.hostname}:{parts.port}")
        try:
            yield client
        finally:
            await anyio.aclose_forcefully(stream)

    async def send_request(
        self,
        target: str = "/",
        headers: list[tuple[bytes, bytes]] | None = None,
        subprotocols: list[str] | None = None,
    ) -> None:
        request = Request(
            host=self.host, target=target, extra_headers=headers or [], subprotocols=subprotocols or []
        )
        await self.stream.send(self.ws.send(request))

    async def read_raw(self) -> bytes:
        """The next chunk; b"" at EOF.  A reset raises anyio.BrokenResourceError."""
        try:
            data = await self.stream.receive()
        except anyio.EndOfStream:
            self.eof = True
            return b""
        self.wire += data
        return data

    async def next_event(self) -> Event:
        while True:
            for event in self.ws.events():
                return event
            data = await self.read_raw()
            self.ws.receive_data(data or None)

    async def handshake(self, target: str = "/", **kwargs: Any) -> AcceptConnection:
        await self.send_request(target, **kwargs)
        event = await self.next_event()
        assert isinstance(event, AcceptConnection), event
        return event

    async def send(self, event: Event) -> None:
        await self.stream.send(self.ws.send(event))

    async def recv_message(self) -> str | bytes:
        """The next text or binary message (whole); fails on anything else."""
        parts: list[Any] = []
        while True:
            event = await self.next_event()
            assert isinstance(event, (TextMessage, BytesMessage)), event
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)

    async def read_until_eof(self) -> bytes:
        while await self.read_raw():
            pass
        return bytes(self.wire)


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split unmasked server frames: ([(first_byte, payload)], incomplete tail)."""
    return unframe(data, masked=False)


async def quiet(client: Any, seconds: float = QUIET) -> list[Any]:
    """Whatever a websockets client receives within ``seconds`` (expected: nothing)."""
    got: list[Any] = []
    with anyio.move_on_after(seconds):
        while True:
            got.append(await client.recv())
    return got


async def barrier(client: Any, token: str = "echo:barrier") -> list[str]:
    """Send an echo and return every message that arrived before it came back.

    The server handles a connection's messages in order, so anything it
    would have answered to an earlier message has arrived by then.
    """
    await client.send(token)
    before = []
    while (message := await client.recv()) != token:
        before.append(message)
    return before


def stream_messages(messages: list[str]) -> list[dict[str, Any]]:
    return [m for m in map(json.loads, messages) if "seq" in m]


# -- streaming, numbering, recording ------------------------------------------


async def test_numbering_is_global_gap_free_and_per_connection_exact() -> None:
    async with FeedServer(interval=0) as server:

        async def client(results: list[list[dict[str, Any]]]) -> None:
            async with ws_connect(server.url) as ws:
                got = [json.loads(await ws.recv()) for _ in range(30)]
            results.append(got)

        results: list[list[dict[str, Any]]] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(client, results)
            await server.wait_for(lambda: server.open_connections == 0)

        log = server.sent_log
        assert [seq for seq, _ in log] == list(range(1, server.sent + 1))
        conns = set()
        for got in results:
            conn = got[0]["conn"]
            conns.add(conn)
            assert all(m["conn"] == conn for m in got)
            sent_here = [seq for seq, c in log if c == conn]
            assert [m["seq"] for m in got] == sent_here[:30]  # in order, none lost or duplicated
            assert server.sent_to(conn) == len(sent_here)
            assert server.connection(conn).sent == len(sent_here)
        assert conns == {1, 2, 3}
        assert server.connections == 3


async def test_payload_size_max_messages_and_no_streaming() -> None:
    async with FeedServer(interval=0, payload_size=100, max_messages=3) as server:
        async with ws_connect(server.url) as ws:
            messages = [json.loads(await ws.recv()) for _ in range(3)]
            assert [m["seq"] for m in messages] == [1, 2, 3]
            assert all(m["data"] == "x" * 100 and m["conn"] == 1 for m in messages)
            assert await barrier(ws) == []
    async with FeedServer(interval=None) as server:
        async with ws_connect(server.url) as ws:
            assert await barrier(ws) == []
            assert server.sent == 0


async def test_handshake_details_are_recorded_and_subprotocol_accepted() -> None:
    server = FeedServer(interval=None, subprotocol="feed.v1", response_headers={"X-Server": "test"})
    async with server:
        headers = {"Authorization": "Bearer secret-token"}
        async with ws_connect(
            server.url + "stream?symbols=a,b&x=1",
            additional_headers=headers,
            user_agent_header="nonstop-test/1.0",
            subprotocols=["other", "feed.v1"],
        ) as ws:
            assert ws.subprotocol == "feed.v1"
            assert ws.response.headers["X-Server"] == "test"
            info = server.connection(1)
            assert info.path == "/stream"
            assert info.query == "symbols=a,b&x=1"
            assert info.header("authorization") == "Bearer secret-token"
            assert info.header("User-Agent") == "nonstop-test/1.0"
            assert info.header("host") == f"127.0.0.1:{server.port}"
            assert info.subprotocols == ("other", "feed.v1")
            assert info.subprotocol == "feed.v1"
            assert info.phase == "open" and info.number == 1 and info.tcp == 1
        await server.wait_for(lambda: server.open_connections == 0)
        info = server.connection(1)
        assert info.phase == "closed"
        assert info.close_code == 1000
        assert server.history == [info]
        with pytest.raises(KeyError):
            server.connection(2)


async def test_subscriptions_are_recorded_and_acknowledged_and_echo_works() -> None:
    async with FeedServer(interval=None) as server:
        async with ws_connect(server.url) as ws:
            request = json.dumps({"op": "subscribe", "args": ["trades"]})
            await ws.send(request)
            assert json.loads(await ws.recv()) == {"event": "subscribed", "request": request}
            await ws.send("subscribe ticker")
            assert json.loads(await ws.recv()) == {"event": "subscribed", "request": "subscribe ticker"}
            await ws.send(json.dumps({"op": "unsubscribe"}))
            await ws.send("hello")
            await ws.send(b"echo:\x00binary")
            assert await ws.recv() == b"echo:\x00binary"
            await ws.send("echo:text")
            assert await ws.recv() == "echo:text"
        assert server.subscriptions == [(1, request), (1, "subscribe ticker")]
        assert [m for _, m in server.received] == [
            request,
            "subscribe ticker",
            json.dumps({"op": "unsubscribe"}),
            "hello",
            b"echo:\x00binary",
            "echo:text",
        ]
        assert server.received_count == 6


async def test_require_subscription_streams_only_after_the_ack() -> None:
    async with FeedServer(interval=0.001, require_subscription=True) as server:
        async with ws_connect(server.url) as ws:
            assert await quiet(ws) == []
            assert server.sent == 0
            await ws.send('{"op":"subscribe"}')
            assert json.loads(await ws.recv())["event"] == "subscribed"
            assert json.loads(await ws.recv())["seq"] == 1


async def test_ack_false_never_acknowledges() -> None:
    async with FeedServer(interval=None, ack=False) as server:
        async with ws_connect(server.url) as ws:
            await ws.send('{"op":"subscribe"}')
            assert await barrier(ws) == []
        assert server.subscriptions == [(1, '{"op":"subscribe"}')]


async def test_pings_are_answered() -> None:
    async with FeedServer(interval=None) as server:
        async with ws_connect(server.url) as ws:
            pong = await ws.ping(b"abc")
            with anyio.fail_after(5):
                await (pong.wait() if hasattr(pong, "wait") else pong)  # trio: an Event
        async with RawClient.connect(server.url) as client:
            await client.handshake()
            await client.send(Ping(payload=b"raw"))
            event = await client.next_event()
            assert isinstance(event, Pong) and event.payload == b"raw"
        assert server.connections == 2


async def test_broadcast_reaches_every_open_connection() -> None:
    async with FeedServer(interval=None) as server:
        async with ws_connect(server.url) as one, ws_connect(server.url) as two:
            await server.wait_connected(2)
            assert server.broadcast("hello all") == 2
            assert await one.recv() == "hello all"
            assert await two.recv() == "hello all"
            assert server.broadcast(b"\x01") == 2
            assert await one.recv() == b"\x01"


async def test_a_shared_stream_sends_every_number_on_every_connection() -> None:
    async with FeedServer(interval=0.002, shared_stream=True) as server:
        async with ws_connect(server.url) as one:
            first = json.loads(await one.recv())
            assert (first["seq"], first["conn"]) == (1, 1)
            async with ws_connect(server.url) as two:
                got_two = [json.loads(await two.recv()) for _ in range(5)]
                start = got_two[0]["seq"]
                assert [m["seq"] for m in got_two] == list(range(start, start + 5))
                assert all(m["conn"] == 2 for m in got_two)
                seqs_one = set()
                while not set(range(start, start + 5)) <= seqs_one:
                    seqs_one.add(json.loads(await one.recv())["seq"])  # the same numbers on one
                server.pause_streaming()
        log = server.sent_log
    assert {seq for seq, conn in log if conn == 2} <= {seq for seq, conn in log if conn == 1}
    assert server.sent == max(seq for seq, _ in log)


async def test_records_are_bounded_but_counters_exact() -> None:
    async with FeedServer(interval=None, record_limit=5) as server:
        async with ws_connect(server.url) as ws:
            for i in range(12):
                await ws.send(f"m{i}")
            await barrier(ws)
        assert server.received_count == 13
        assert [m for _, m in server.received] == ["m8", "m9", "m10", "m11", "echo:barrier"]


# -- faults ---------------------------------------------------------------------


async def test_close_sends_a_fin_without_a_close_frame() -> None:
    async with FeedServer(interval=0.005) as server, RawClient.connect(server.url) as client:
        await client.handshake()
        await client.recv_message()
        assert server.inject(Fault.CLOSE) == 1
        with anyio.fail_after(10):
            data = await client.read_until_eof()  # a clean EOF: no exception
        frames, tail = parse_frames(data[data.index(b"\r\n\r\n") + 4 :])
        assert tail == b""
        assert frames and all(first == 0x81 for first, _ in frames)  # text frames only, no close
        await server.wait_for(lambda: server.open_connections == 0)
        assert server.connection(1).ended_by == "fault CLOSE"


async def test_close_seen_by_websockets_as_abnormal_closure() -> None:
    async with FeedServer(interval=0.005) as server, ws_connect(server.url) as ws:
        await ws.recv()
        server.inject(Fault.CLOSE)
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(10):
                while True:
                    await ws.recv()
        assert info.value.rcvd is None  # no close frame came


async def test_reset_gives_connection_reset_on_the_client() -> None:
    async with FeedServer(interval=0.005) as server, RawClient.connect(server.url) as client:
        await client.handshake()
        await client.recv_message()
        assert server.inject(Fault.RESET) == 1
        with pytest.raises(anyio.BrokenResourceError) as info:
            with anyio.fail_after(10):
                await client.read_until_eof()
        assert isinstance(info.value.__cause__, ConnectionResetError)
        await server.wait_for(lambda: server.open_connections == 0)
        assert server.connection(1).ended_by == "fault RESET"


async def test_faults_can_target_one_connection() -> None:
    async with FeedServer(interval=None) as server:
        async with ws_connect(server.url) as one, ws_connect(server.url) as two:
            await server.wait_connected(2)
            assert server.inject(Fault.CLOSE_CODE, code=1001, connection=2) == 1
            with pytest.raises(ConnectionClosed):
                await two.recv()
            assert await barrier(one) == []
            assert server.inject(Fault.RESET, connection=99) == 0


async def test_silent_sends_nothing_but_keeps_tcp_open() -> None:
    async with FeedServer(interval=0.005) as server, ws_connect(server.url, ping_interval=None) as ws:
        await ws.recv()
        assert server.inject(Fault.SILENT) == 1
        await quiet(ws, 0.05)  # whatever was in flight
        await ws.send("echo:are you there")
        await ws.ping()
        assert await quiet(ws) == []
        await server.wait_for(lambda: server.received_count == 1)  # it still reads
        assert server.open_connections == 1
        sent = server.sent
        assert await quiet(ws) == []
        assert server.sent == sent


async def test_silent_connection_ends_when_the_client_hangs_up() -> None:
    async with FeedServer(interval=None) as server:
        async with RawClient.connect(server.url) as client:
            await client.handshake()
            server.inject(Fault.SILENT)
            await client.send(Ping(payload=b"x"))
            await client.send(CloseConnection(code=1000))
            with anyio.move_on_after(QUIET):
                await client.read_raw()
            assert client.wire.endswith(b"\r\n\r\n")  # nothing after the 101 response
            assert server.open_connections == 1
        await server.wait_for(lambda: server.open_connections == 0)


async def test_refuse_then_restore_on_the_same_port() -> None:
    async with FeedServer(interval=None) as server:
        port = server.port
        async with ws_connect(server.url) as ws:
            server.inject(Fault.REFUSE)
            assert not server.listening
            with pytest.raises(OSError) as info:
                await anyio.connect_tcp("127.0.0.1", port)
            refused = info.value if isinstance(info.value, ConnectionRefusedError) else info.value.__cause__
            assert isinstance(refused, ConnectionRefusedError)
            assert await barrier(ws) == []  # open connections are not touched
            server.inject(Fault.RESTORE)
            assert server.listening and server.port == port
            async with ws_connect(server.url) as again:
                assert await barrier(again) == []
        assert server.connections == 2


async def test_refuse_with_duration_restores_by_itself() -> None:
    async with FeedServer(interval=None) as server:
        port = server.port
        server.inject(Fault.REFUSE, duration=1.0)
        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", port)
        await server.wait_for(lambda: server.listening)
        async with ws_connect(server.url):
            pass
        assert server.port == port and server.connections == 1


@pytest.mark.parametrize(
    ("status", "retry_after"), [(401, None), (403, None), (404, None), (429, 7), (500, None), (503, 2.5)]
)
async def test_reject_answers_with_the_status_and_retry_after(status: int, retry_after: float | None) -> None:
    async with FeedServer(interval=None) as server:
        server.inject(Fault.REJECT, status=status, retry_after=retry_after)
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(server.url):
                pass
        response = info.value.response
        assert response.status_code == status
        assert response.headers.get("Retry-After") == (None if retry_after is None else str(retry_after))
        async with ws_connect(server.url):  # count=1: the next one gets in
            pass
        assert server.rejected == 1 and server.connections == 1
        assert server.history[0].rejected == status and server.history[0].number is None


async def test_reject_count_headers_body_and_restore() -> None:
    async with FeedServer(interval=None) as server:
        server.inject(Fault.REJECT, status=503, count=3, retry_after="Wed, 21 Oct 2015 07:28:00 GMT",
                      headers={"X-Why": "maintenance"}, body="down for maintenance")
        for _ in range(2):
            async with RawClient.connect(server.url) as client:
                await client.send_request()
                event = await client.next_event()
                assert isinstance(event, RejectConnection) and event.status_code == 503
                headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                assert headers["retry-after"] == "Wed, 21 Oct 2015 07:28:00 GMT"
                assert headers["x-why"] == "maintenance"
                body = await client.next_event()
                assert isinstance(body, RejectData)
                assert body.data == b"down for maintenance"
        server.restore()  # drops the third rejection
        async with ws_connect(server.url):
            pass
        assert server.rejected == 2


async def test_stall_handshake_never_answers_until_the_client_leaves() -> None:
    async with FeedServer(interval=None) as server:
        server.inject(Fault.STALL_HANDSHAKE)
        async with RawClient.connect(server.url) as client:
            await client.send_request("/stalled")
            await server.wait_for(lambda: server.stalled == 1)
            with anyio.move_on_after(QUIET):
                await client.read_raw()
            assert client.wire == b""
            assert server.history[0].path == "/stalled" and server.history[0].phase == "stalled"
        await server.wait_for(lambda: not any(i.phase == "stalled" for i in server.history))
        async with ws_connect(server.url):  # count=1
            pass
        assert server.connections == 1


async def test_stall_handshake_is_exempt_from_the_handshake_timeout() -> None:
    async with FeedServer(interval=None, handshake_timeout=0.05) as server:
        server.inject(Fault.STALL_HANDSHAKE, count=2)
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):  # (two classes before 3.11)
            async with ws_connect(server.url, open_timeout=QUIET):
                pass
        async with RawClient.connect(server.url) as client:
            await client.send_request()
            with anyio.move_on_after(QUIET):
                await client.read_raw()
            assert not client.eof and client.wire == b""


async def test_handshake_timeout_closes_idle_connections() -> None:
    async with FeedServer(interval=None, handshake_timeout=0.05) as server:
        async with RawClient.connect(server.url) as client:
            with anyio.fail_after(10):
                assert await client.read_until_eof() == b""
        assert server.history[0].ended_by == "handshake timeout"


@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (1001, "going away"), (1008, "policy"),
                                               (1011, "oops"), (1013, "try again later"), (4000, "custom")])
async def test_close_code_completes_the_closing_handshake(code: int, reason: str) -> None:
    async with FeedServer(interval=0.005) as server, ws_connect(server.url) as ws:
        await ws.recv()
        assert server.inject(Fault.CLOSE_CODE, code=code, reason=reason) == 1
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(10):
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (code, reason)
        await server.wait_for(lambda: server.open_connections == 0)
        assert server.connection(1).close_code == code  # the client's echo of the close
        ended_by = server.connection(1).ended_by
        assert ended_by is not None and "closing handshake completed" in ended_by


async def test_close_code_none_sends_an_empty_close_frame() -> None:
    async with FeedServer(interval=None) as server, RawClient.connect(server.url) as client:
        await client.handshake()
        server.inject(Fault.CLOSE_CODE, code=None)
        event = await client.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1005
        await client.send(event.response())
        with anyio.fail_after(10):
            await client.read_until_eof()


async def test_no_ack_then_restore() -> None:
    async with FeedServer(interval=None) as server:
        async with ws_connect(server.url) as ws:
            server.inject(Fault.NO_ACK)
            await ws.send('{"op":"subscribe","n":1}')
            assert await barrier(ws) == []
        async with ws_connect(server.url) as ws:  # future connections too
            await ws.send('{"op":"subscribe","n":2}')
            assert await barrier(ws) == []
            server.inject(Fault.RESTORE)
            await ws.send('{"op":"subscribe","n":3}')
            assert [json.loads(m)["event"] for m in await barrier(ws)] == ["subscribed"]
        assert len(server.subscriptions) == 3


async def test_garbage_is_a_protocol_error_for_the_client() -> None:
    async with FeedServer(interval=0.005) as server, RawClient.connect(server.url) as client:
        await client.handshake()
        await client.recv_message()
        assert server.inject(Fault.GARBAGE) == 1
        with anyio.fail_after(10):
            while True:
                event = await client.next_event()
                if isinstance(event, CloseConnection):
                    break
                assert isinstance(event, TextMessage)
        assert event.code == 1002
        assert client.ws.state is ConnectionState.OPEN  # wsproto's way of saying "parse failure"
        assert DEFAULT_GARBAGE in bytes(client.wire)
        assert bytes(client.wire).endswith(DEFAULT_GARBAGE)  # streaming stopped
        await client.stream.send(client.ws.send(CloseConnection(code=1002)))
        with anyio.fail_after(10):
            await client.read_until_eof()
        await server.wait_for(lambda: server.open_connections == 0)


async def test_garbage_with_custom_bytes_seen_by_websockets() -> None:
    async with FeedServer(interval=None) as server, ws_connect(server.url) as ws:
        await server.wait_connected()
        server.inject(Fault.GARBAGE, data=b"\x8f\x00")  # FIN + reserved opcode 0xF
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(10):
                await ws.recv()
        assert info.value.sent is not None and info.value.sent.code == 1002


async def test_half_frame_sends_half_a_frame_then_fin() -> None:
    async with FeedServer(interval=None) as server, RawClient.connect(server.url) as client:
        await client.handshake()
        assert server.inject(Fault.HALF_FRAME) == 1
        with anyio.fail_after(10):
            data = await client.read_until_eof()
        frames, tail = parse_frames(data[data.index(b"\r\n\r\n") + 4 :])
        assert frames == []
        assert tail[0] == 0x81 and tail[1] == 126  # a text frame with a 16-bit length...
        (length,) = struct.unpack("!H", tail[2:4])
        assert 0 < len(tail) - 4 < length  # ...cut in the middle of its payload


async def test_half_frame_seen_by_websockets_as_abnormal_closure() -> None:
    async with FeedServer(interval=None) as server, ws_connect(server.url) as ws:
        await server.wait_connected()
        server.inject(Fault.HALF_FRAME)
        with pytest.raises(ConnectionClosed) as info:
            with anyio.fail_after(10):
                await ws.recv()
        assert info.value.rcvd is None


async def test_frame_faults_skip_connections_still_in_the_handshake() -> None:
    async with FeedServer(interval=None) as server:
        server.inject(Fault.STALL_HANDSHAKE)
        async with RawClient.connect(server.url) as client:
            await client.send_request()
            await server.wait_for(lambda: server.stalled == 1)
            for fault in (Fault.GARBAGE, Fault.HALF_FRAME, Fault.CLOSE_CODE):
                assert server.inject(fault) == 0
            assert server.inject(Fault.RESET) == 1
            with pytest.raises(anyio.BrokenResourceError):
                await client.read_until_eof()


# -- TLS ------------------------------------------------------------------------------


async def test_wss_with_a_trustme_ca(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
    async with FeedServer(ssl_context=server_ssl, interval=0.005) as server:
        assert server.url == f"wss://localhost:{server.port}/"
        async with ws_connect(server.url, ssl=client_ssl) as ws:
            assert json.loads(await ws.recv())["seq"] == 1
            await ws.send('{"op":"subscribe"}')
            assert any(json.loads(m).get("event") == "subscribed" for m in await barrier(ws))
            assert server.connection(1).tls
        ip_server = FeedServer(ssl_context=server_ssl, url_host="127.0.0.1", interval=None)
        async with ip_server, ws_connect(ip_server.url, ssl=client_ssl) as ws:
            assert ip_server.url.startswith("wss://127.0.0.1:")
            assert await barrier(ws) == []


async def test_wss_faults(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
    async with FeedServer(ssl_context=server_ssl, interval=0.005) as server:
        async with RawClient.connect(server.url, ssl_context=client_ssl) as client:
            await client.handshake()
            await client.recv_message()
            server.inject(Fault.RESET)
            with pytest.raises(anyio.BrokenResourceError):
                with anyio.fail_after(10):
                    await client.read_until_eof()
        async with ws_connect(server.url, ssl=client_ssl) as ws:
            await ws.recv()
            server.inject(Fault.CLOSE_CODE, code=1013, reason="later")
            with pytest.raises(ConnectionClosed) as info:
                with anyio.fail_after(10):
                    while True:
                        await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        server.inject(Fault.REJECT, status=429, retry_after=3)
        with pytest.raises(InvalidStatus) as rejected:
            async with ws_connect(server.url, ssl=client_ssl):
                pass
        assert rejected.value.response.status_code == 429
        assert rejected.value.response.headers["Retry-After"] == "3"


async def test_a_client_that_does_not_trust_the_server_does_not_hurt_it(server_ssl: ssl.SSLContext) -> None:
    async with FeedServer(ssl_context=server_ssl, interval=None) as server:
        with pytest.raises(Exception) as info:  # asyncio: SSLError; trio: BrokenResourceError
            async with ws_connect(server.url, ssl=ssl.create_default_context()):
                pass
        error: BaseException | None = info.value
        while error is not None and not isinstance(error, ssl.SSLError):
            error = error.__cause__
        assert isinstance(error, ssl.SSLCertVerificationError)
        await server.wait_for(lambda: server.history[0].phase == "closed")
        assert server.history[0].ended_by is not None and "error" in server.history[0].ended_by


# -- misbehaving clients, cleanup --------------------------------------------------


async def test_misbehaving_clients_never_crash_the_server() -> None:
    async with FeedServer(interval=0, max_message_size=1000, handshake_timeout=5) as server:
        # connect and leave at once
        async with RawClient.connect(server.url):
            pass
        # not HTTP at all
        async with RawClient.connect(server.url) as client:
            await client.stream.send(b"NOT HTTP AT ALL\r\n\r\n")
            with anyio.fail_after(10):
                data = await client.read_until_eof()
            assert data.startswith(b"HTTP/1.1 400 ")
        # HTTP, but not an upgrade
        async with RawClient.connect(server.url) as client:
            await client.stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(10):
                assert (await client.read_until_eof()).startswith(b"HTTP/1.1 400 ")
        # an unmasked frame (clients must mask): 1002
        async with RawClient.connect(server.url) as client:
            await client.handshake()
            await client.stream.send(b"\x81\x02hi")
            with anyio.fail_after(10):
                data = await client.read_until_eof()
            frames, _ = parse_frames(data[data.index(b"\r\n\r\n") + 4 :])
            assert frames[-1][0] == 0x88 and frames[-1][1][:2] == struct.pack("!H", 1002)
        # a message bigger than max_message_size: 1009
        async with RawClient.connect(server.url) as client:
            await client.handshake()
            await client.send(TextMessage(data="y" * 5000))
            with anyio.fail_after(10):
                data = await client.read_until_eof()
            frames, _ = parse_frames(data[data.index(b"\r\n\r\n") + 4 :])
            assert frames[-1][0] == 0x88 and frames[-1][1][:2] == struct.pack("!H", 1009)
        # half a handshake, then gone
        async with RawClient.connect(server.url) as client:
            await client.stream.send(b"GET / HTTP/1.1\r\nHost: x\r\nUpg")
        # an RST from the client while the server streams as fast as it can
        async with RawClient.connect(server.url) as client:
            await client.handshake()
            await client.recv_message()
            raw = client.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await server.wait_for(lambda: len(server._conns) == 0)
        assert server.running and server.listening
        # and a normal client is still served
        async with ws_connect(server.url) as ws:
            assert "seq" in json.loads(await ws.recv())
        assert server.accepted == 8


async def test_a_slow_reader_blocks_only_its_own_connection() -> None:
    async with FeedServer(interval=0, payload_size=10_000) as server:
        async with RawClient.connect(server.url) as slow:
            await slow.handshake()
            await server.wait_for(lambda: server.sent > 50)  # buffers fill, then the writer waits
            async with ws_connect(server.url) as ws:
                first = json.loads(await ws.recv())
                assert first["conn"] == 2
            server.inject(Fault.RESET, connection=1)  # a blocked writer can still be reset
            with pytest.raises(anyio.BrokenResourceError):
                with anyio.fail_after(10):
                    await slow.read_until_eof()


async def test_exit_closes_every_socket() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with FeedServer(interval=0.005) as server:
            async with RawClient.connect(server.url) as open_one, RawClient.connect(server.url) as raw:
                await open_one.handshake()
                server.inject(Fault.STALL_HANDSHAKE)
                async with RawClient.connect(server.url) as stalled:
                    await stalled.send_request()
                    await server.wait_for(lambda: server.stalled == 1 and server.accepted == 3)
                    server.inject(Fault.SILENT)
                    port = server.port
                    await server.__aexit__(None, None, None)  # while everything is open
                    for client in (open_one, raw, stalled):
                        with anyio.fail_after(10):
                            await client.read_until_eof()
            assert not server.running
            with pytest.raises(OSError):
                await anyio.connect_tcp("127.0.0.1", port)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_an_error_in_the_body_propagates_unwrapped() -> None:
    with pytest.raises(LookupError):
        async with FeedServer() as server:
            async with ws_connect(server.url):
                raise LookupError("from the test")
    assert not server.running


async def test_the_server_can_be_restarted_on_the_same_port() -> None:
    server = FeedServer(interval=None)
    async with server:
        port = server.port
    async with server:
        assert server.port == port
        async with ws_connect(server.url):
            pass


async def test_connections_beyond_max_connections_are_dropped() -> None:
    async with FeedServer(interval=None, max_connections=1) as server:
        async with ws_connect(server.url) as ws:
            async with RawClient.connect(server.url) as extra:
                with anyio.fail_after(10):
                    assert await extra.read_until_eof() == b""
            assert server.dropped == 1
            assert await barrier(ws) == []


async def test_handshake_faults_can_be_queued_before_the_server_starts() -> None:
    server = FeedServer(interval=None)
    server.inject(Fault.REJECT, status=401)
    server.inject(Fault.NO_ACK)
    async with server:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(server.url):
                pass
        assert info.value.response.status_code == 401
        async with ws_connect(server.url) as ws:
            await ws.send("subscribe all")
            assert await barrier(ws) == []


# -- API misuse -----------------------------------------------------------------------


async def test_inject_validates_its_parameters() -> None:
    server = FeedServer()
    with pytest.raises(RuntimeError):
        server.inject(Fault.REFUSE)
    with pytest.raises(RuntimeError):
        _ = server.url  # port 0 is not known yet
    async with server:
        with pytest.raises(TypeError):
            server.inject(Fault.RESET, code=1000)
        with pytest.raises(TypeError):
            server.inject("reset")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            server.inject(Fault.REJECT, status=200)
        with pytest.raises(ValueError):
            server.inject(Fault.REJECT, retry_after=-1)
        with pytest.raises(ValueError):
            server.inject(Fault.REJECT, headers={"Bad\r\nHeader": "x"})
        with pytest.raises(ValueError):
            server.inject(Fault.CLOSE_CODE, code=1006)
        with pytest.raises(ValueError):
            server.inject(Fault.CLOSE_CODE, code=None, reason="no")
        with pytest.raises(TypeError):
            server.inject(Fault.GARBAGE, data="text")
        with pytest.raises(ValueError):
            server.inject(Fault.STALL_HANDSHAKE, count=0)
        with pytest.raises(RuntimeError):
            async with server:
                pass
        with pytest.raises(TimeoutError):
            await server.wait_connected(timeout=0.01)
    with pytest.raises(ValueError):
        FeedServer(interval=-1)
    with pytest.raises(TypeError):
        FeedServer(port="80")  # type: ignore[arg-type]


async def test_methods_refuse_other_threads() -> None:
    async with FeedServer() as server:
        with pytest.raises(RuntimeError, match="run_in_thread"):
            await anyio.to_thread.run_sync(server.inject, Fault.NO_ACK)


# -- blocking use (no event loop in the test) -------------------------------------------


@contextmanager
def raw_upgrade(url: str) -> Iterator[socket.socket]:
    """A blocking socket that has completed the upgrade by hand."""
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    try:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            assert chunk
            response += chunk
        assert response.startswith(b"HTTP/1.1 101 ")
        yield sock
    finally:
        sock.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_in_thread_from_blocking_code(backend: str) -> None:
    with FeedServer(interval=0.005).run_in_thread(backend=backend) as server:
        port = server.port
        with websockets.sync.client.connect(server.url, compression=None, close_timeout=2) as ws:
            assert json.loads(ws.recv(timeout=10))["seq"] == 1
            ws.send('{"op":"subscribe"}')
            server.wait_for(lambda: server.subscriptions != [])
            assert server.inject(Fault.CLOSE) == 1
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=10)
        with websockets.sync.client.connect(server.url, compression=None, close_timeout=2) as ws:
            server.wait_connected(n=2)
            assert json.loads(ws.recv(timeout=10))["conn"] == 2
        assert server.connections == 2
        assert server.received[0] == (1, '{"op":"subscribe"}')

        with raw_upgrade(server.url) as sock:
            server.wait_connected(n=3)
            server.inject(Fault.RESET)
            with pytest.raises(ConnectionResetError):
                while sock.recv(65536):
                    pass

        server.inject(Fault.REFUSE)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        server.restore()
        assert server.port == port and server.listening
        with websockets.sync.client.connect(server.url, compression=None) as ws:
            ws.recv(timeout=10)

        server.inject(Fault.REJECT, status=503, retry_after=1)
        with pytest.raises(InvalidStatus) as info:
            websockets.sync.client.connect(server.url, compression=None)
        assert info.value.response.headers["Retry-After"] == "1"
        with pytest.raises(TimeoutError):
            server.wait_connected(n=100, timeout=0.05)
        assert len(server.history) == server.accepted == 5  # the refused one never got in
    with pytest.raises(RuntimeError):
        server.inject(Fault.CLOSE)


def test_run_in_thread_reports_bind_errors() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError), FeedServer(port=port).run_in_thread():
            pass


# -- FakeClock --------------------------------------------------------------------------


def test_fake_clock() -> None:
    clock = FakeClock()
    assert clock.now == 0.0 and clock() == 0.0
    assert clock.advance(1.5) == 1.5
    assert clock.advance_to(10) == 10.0
    assert FakeClock(now=100.0).now == 100.0
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.advance_to(5)
    with pytest.raises(ValueError):
        clock.advance(float("nan"))
    with pytest.raises(TypeError):
        FakeClock(now="0")  # type: ignore[arg-type]
    assert repr(clock) == "FakeClock(now=10.0)"
