"""``FeedServer.pause_streaming`` / ``resume_streaming``: exact, per server,
and harmless to the connections (the chaos demo relies on it to keep frames
out of flight before it breaks a connection).

Checked with the ``websockets`` client, which shares no code with nonstop.
Async tests run under asyncio and trio (see conftest), with hard timeouts;
absence checks wait a little and assert nothing came.
"""

from __future__ import annotations

import json

import anyio
import pytest
import websockets.sync.client

from nonstop.testing import Fault, FeedServer

pytestmark = pytest.mark.timeout(60)


def _seq(message: str | bytes) -> int | None:
    if isinstance(message, str) and message.startswith('{"seq"'):
        return int(json.loads(message)["seq"])
    return None


def test_pause_is_exact_and_resume_continues_gap_free() -> None:
    with FeedServer(interval=0.002).run_in_thread() as server, \
            websockets.sync.client.connect(server.url, open_timeout=10) as ws:
        server.wait_for(lambda: server.sent >= 20)
        server.pause_streaming()
        assert server.streaming_paused
        frozen = server.sent
        got: list[int] = []
        while len(got) < frozen:  # everything committed before the pause arrives...
            seq = _seq(ws.recv(timeout=10))
            if seq is not None:
                got.append(seq)
        assert got == list(range(1, frozen + 1))
        with pytest.raises(TimeoutError):  # ...and nothing after it
            ws.recv(timeout=0.3)
        assert server.sent == frozen
        # the connection is still served while paused: echo and ping work
        ws.send("echo:still here")
        assert ws.recv(timeout=10) == "echo:still here"
        ws.ping().wait(timeout=10)
        server.resume_streaming()
        assert not server.streaming_paused
        server.wait_for(lambda: server.sent >= frozen + 10)
        for _ in range(10):
            seq = _seq(ws.recv(timeout=10))
            assert seq == got[-1] + 1  # gap-free across the pause
            got.append(seq)
        log = server.sent_log  # (one snapshot: the server's thread goes on streaming)
        assert [c for _, c in log] == [1] * len(log)


@pytest.mark.anyio
async def test_connections_opened_while_paused_stream_only_on_resume(anyio_backend: object) -> None:
    server = FeedServer(interval=0.002)
    server.pause_streaming()  # allowed before the server runs
    async with server:
        with anyio.fail_after(30):

            def client() -> list[int]:
                with websockets.sync.client.connect(server_url, open_timeout=10) as ws:
                    ws.send("echo:ready")
                    assert ws.recv(timeout=10) == "echo:ready"  # open, yet nothing streamed
                    seqs: list[int] = []
                    while len(seqs) < 5:
                        seq = _seq(ws.recv(timeout=10))
                        if seq is not None:
                            seqs.append(seq)
                    return seqs

            server_url = server.url
            async with anyio.create_task_group() as tg:
                result: list[list[int]] = []

                async def run_client() -> None:
                    result.append(await anyio.to_thread.run_sync(client))

                tg.start_soon(run_client)
                await server.wait_connected()
                await server.wait_for(lambda: server.received_count >= 1)  # the echo
                await anyio.sleep(0.2)
                assert server.sent == 0 and server.open_connections == 1
                server.resume_streaming()
            assert result == [[1, 2, 3, 4, 5]]


@pytest.mark.anyio
async def test_faults_still_work_while_paused(anyio_backend: object) -> None:
    async with FeedServer(interval=0.002) as server:
        with anyio.fail_after(30):
            server.pause_streaming()

            def client() -> None:
                with websockets.sync.client.connect(server_url, open_timeout=10) as ws:
                    try:
                        while True:
                            ws.recv(timeout=10)
                    except websockets.exceptions.ConnectionClosed as exc:
                        assert exc.rcvd is not None and exc.rcvd.code == 1012

            server_url = server.url
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, client)
                await server.wait_connected()
                assert server.inject(Fault.CLOSE_CODE, code=1012) == 1
            assert server.sent == 0
            server.resume_streaming()
            server.resume_streaming()  # idempotent
