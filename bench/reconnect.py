"""The reconnect workload: what one connection loses when the network resets it.

``python bench/reconnect.py [--resets N] [--repeat R] [--period S] [--rate R] [--quick]``

Theory of operation
-------------------
A feed server (:func:`serve`, the ``websockets`` package's asyncio server,
in a process of its own) numbers the messages it publishes by the clock:
message ``seq`` is due at ``t0 + seq / rate``, whether anyone listens or not,
so a client that is away for 0.2 s misses about ``0.2 * rate`` of them.  A
client sends a subscription; the server acknowledges it and from then on
sends it every message as it falls due.  ``period`` seconds after a
connection subscribed, the server resets it (an RST: ``SO_LINGER`` 0 and an
abort) and notes the moment.

Each client (:data:`CLIENTS`) runs in a process of its own, with the
reconnect loop its documentation shows, for ``resets`` periods, and records
``(monotonic time, seq)`` of every message it gets.  ``time.monotonic`` is
the machine's one monotonic clock, so the server's reset times and the
client's receive times compare.  The two ``floor-*`` clients are no library at all: the least a client on
that event loop can do to come back (see :class:`_Floor`); what a client
measures above its loop's floor is its own cost.  For each reset: **break to first message**
is the time from the reset to the first message the client got on its new
connection; **missed** is the numbers it never got (the gap in its
sequence); **break to subscription at the server** is the time from the
reset to the server's reading the client's next subscription.  The first is
what a user sees, but it waits for the next message to fall due (up to
``1 / rate``, 1 ms by default); the last has no such step, so it tells
clients apart that the first cannot.  Every client runs ``repeat`` times, the clients interleaved
(A, B, C, ... then again), the server pinned to one core and the client to
the other; the table gives, per client, the median and p90 of the first
and the last over all its resets and the mean of the second, over ws and over wss (a
trustme certificate).

nonstop runs with its defaults but ``stable_after=1.0`` (a connection reset
every ``period`` seconds never stays up the default 10 s, and so never counts
as working: its retries would follow the backoff series, by design).  Timing
never fails the run; the exit status is 1 only if a client crashed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

#: Client name -> the packages it needs (a client without them is skipped).
CLIENTS = {
    "nonstop-asyncio": ("nonstop", "anyio"),
    "nonstop-trio": ("nonstop", "anyio", "trio"),
    "nonstop-blocking": ("nonstop",),
    "websockets": ("websockets",),
    "websocket-client": ("websocket",),
    "aiohttp": ("aiohttp",),
    "floor-asyncio": (),
    "floor-trio": ("trio",),
}
SUBSCRIBE = '{"op":"subscribe","channel":"ticks"}'


# ---------------------------------------------------------------------------
# the server
async def serve(port_file: str, rate: float, period: float, certs: str | None) -> None:
    from websockets.asyncio.server import ServerConnection
    from websockets.asyncio.server import serve as ws_serve

    t0 = time.monotonic()
    subscribers: set[ServerConnection] = set()
    resets: list[float] = []
    subscribed: list[float] = []

    def due() -> int:
        return int((time.monotonic() - t0) * rate)

    async def publish() -> None:
        sent = due()
        while True:
            await asyncio.sleep(0.001)
            now = due()
            for seq in range(sent + 1, now + 1):
                message = f'{{"seq":{seq}}}'
                for ws in list(subscribers):
                    ws.transport.write(_text_frame(message))
            sent = now

    async def reset_later(ws: ServerConnection) -> None:
        await asyncio.sleep(period)
        subscribers.discard(ws)
        sock = ws.transport.get_extra_info("socket")
        if sock is None or ws.transport.is_closing():
            return  # the client left first: nothing to reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        resets.append(time.monotonic())
        ws.transport.abort()

    async def handler(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, str) and '"subscribe"' in message:
                    subscribed.append(time.monotonic())
                    await ws.send('{"event":"subscribed"}')
                    subscribers.add(ws)
                    asyncio.get_running_loop().create_task(reset_later(ws))
        except Exception:  # reset: the handler's end
            pass
        finally:
            subscribers.discard(ws)

    context = None
    if certs is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(os.path.join(certs, "server.pem"))
    publisher = asyncio.get_running_loop().create_task(publish())
    async with ws_serve(handler, "127.0.0.1", 0, ssl=context, ping_interval=None,
                        compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        Path(port_file).write_text(str(port))
        loop = asyncio.get_running_loop()
        # stdin closed by the runner: print the resets and stop
        await loop.run_in_executor(None, sys.stdin.read)
        print(json.dumps({"resets": resets, "subscribed": subscribed}), flush=True)
    publisher.cancel()


def _text_frame(text: str) -> bytes:
    """A server's unmasked text frame (small: 7-bit length).  Written
    straight to the transport so that a message falls due and leaves in the
    same millisecond tick for every subscriber."""
    payload = text.encode()
    return bytes((0x81, len(payload))) + payload


# ---------------------------------------------------------------------------
# the clients: each records (time, seq) until `until`
def _seq(message: str | bytes) -> int | None:
    if isinstance(message, str) and message.startswith('{"seq"'):
        value: int = json.loads(message)["seq"]
        return value
    return None


def _context(certs: str | None) -> ssl.SSLContext | None:
    if certs is None:
        return None
    return ssl.create_default_context(cafile=os.path.join(certs, "ca.pem"))


def run_nonstop(url: str, until: float, certs: str | None, backend: str) -> list[tuple[float, int]]:
    import anyio

    import nonstop

    got: list[tuple[float, int]] = []
    options: dict[str, Any] = dict(subscribe=[nonstop.Subscription(message=SUBSCRIBE)],
                                   stable_after=1.0)
    if certs is not None:
        options["ssl"] = _context(certs)
    if backend == "blocking":
        with nonstop.sync.connect(url, **options) as feed:
            while time.monotonic() < until:
                try:
                    message = feed.receive(timeout=max(0.001, until - time.monotonic()))
                except TimeoutError:
                    break
                seq = _seq(message)
                if seq is not None:
                    got.append((time.monotonic(), seq))
        return got

    async def main() -> None:
        async with nonstop.connect(url, **options) as feed:
            with anyio.move_on_after(until - time.monotonic()):
                async for message in feed:
                    seq = _seq(message)
                    if seq is not None:
                        got.append((time.monotonic(), seq))

    anyio.run(main, backend=backend)
    return got


def _run_until(main: Any, until: float) -> None:
    """Run the coroutine *main* on asyncio until the monotonic time *until*."""
    async def bounded() -> None:
        try:
            await asyncio.wait_for(main, until - time.monotonic())
        except (asyncio.TimeoutError, TimeoutError):
            pass

    asyncio.run(bounded())


def run_websockets(url: str, until: float, certs: str | None) -> list[tuple[float, int]]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    got: list[tuple[float, int]] = []

    async def main() -> None:
        # the reconnect loop of websockets' documentation
        async for ws in connect(url, ssl=_context(certs), ping_interval=None, compression=None):
            try:
                await ws.send(SUBSCRIBE)
                async for message in ws:
                    seq = _seq(message)
                    if seq is not None:
                        got.append((time.monotonic(), seq))
            except ConnectionClosed:
                continue

    _run_until(main(), until)
    return got


def run_websocket_client(url: str, until: float, certs: str | None) -> list[tuple[float, int]]:
    import threading

    import websocket

    got: list[tuple[float, int]] = []

    def on_message(ws: Any, message: str) -> None:
        seq = _seq(message)
        if seq is not None:
            got.append((time.monotonic(), seq))

    app = websocket.WebSocketApp(url, on_open=lambda ws: ws.send(SUBSCRIBE), on_message=on_message)
    threading.Timer(max(0.0, until - time.monotonic()), app.close).start()
    sslopt = None if certs is None else {"ca_certs": os.path.join(certs, "ca.pem")}
    # the documented automatic reconnect: run_forever(reconnect=seconds to
    # wait before each new connection; its examples use 5, this is 1)
    while time.monotonic() < until:
        app.run_forever(sslopt=sslopt, reconnect=1)
    return got


def run_aiohttp(url: str, until: float, certs: str | None) -> list[tuple[float, int]]:
    import aiohttp

    got: list[tuple[float, int]] = []

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            while True:  # aiohttp has no reconnect of its own: the usual loop
                try:
                    async with session.ws_connect(url, ssl=_context(certs) or False,
                                                  autoping=False) as ws:
                        await ws.send_str(SUBSCRIBE)
                        async for message in ws:
                            if message.type is aiohttp.WSMsgType.TEXT:
                                seq = _seq(message.data)
                                if seq is not None:
                                    got.append((time.monotonic(), seq))
                except aiohttp.ClientError:
                    pass

    _run_until(main(), until)
    return got


# The floor: the least a client on an event loop can do to come back, with no
# library at all -- connect, write a fixed upgrade request, write the
# subscription as soon as the response head is in, read frames by hand, and
# on any error or EOF start over at once.  It checks nothing a real client must check (the 101,
# masking rules, close frames), so no client can be faster on that loop:
# what a client measures above its loop's floor is its own cost.
_KEY_REQUEST = (
    "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def _masked(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    return (bytes((0x81, 0x80 | len(payload))) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


class _Floor:
    """The bytes of one floor connection: skip the response head, then cut
    text frames (7- and 16-bit lengths) and record their numbers."""

    def __init__(self, got: list[tuple[float, int]]) -> None:
        self.got = got
        self.buf = b""
        self.head = True

    def feed(self, data: bytes) -> bool:
        """Take *data*; True when it completed the response head (the
        subscription goes out now)."""
        buf = self.buf + data
        opened = False
        if self.head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return False
            buf, self.head, opened = buf[end + 4:], False, True
        now = time.monotonic()
        while len(buf) >= 2:
            length, start = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, start = struct.unpack("!H", buf[2:4])[0], 4
            if len(buf) < start + length:
                break
            seq = _seq(buf[start:start + length].decode())
            if seq is not None:
                self.got.append((now, seq))
            buf = buf[start + length:]
        self.buf = buf
        return opened


def _floor_parts(url: str) -> tuple[str, int, bytes]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    return host, port, _KEY_REQUEST.format(host=f"{host}:{port}").encode()


def run_floor_asyncio(url: str, until: float, certs: str | None) -> list[tuple[float, int]]:
    got: list[tuple[float, int]] = []
    host, port, hello = _floor_parts(url)
    context = _context(certs)

    async def main() -> None:
        while True:
            conn = _Floor(got)
            try:
                reader, writer = await asyncio.open_connection(host, port, ssl=context)
                writer.write(hello)
                while data := await reader.read(65536):
                    if conn.feed(data):
                        writer.write(_masked(SUBSCRIBE))
                writer.close()
            except OSError:
                pass

    _run_until(main(), until)
    return got


def run_floor_trio(url: str, until: float, certs: str | None) -> list[tuple[float, int]]:
    import trio

    got: list[tuple[float, int]] = []
    host, port, hello = _floor_parts(url)
    context = _context(certs)

    async def main() -> None:
        with trio.move_on_at(trio.current_time() + until - time.monotonic()):
            while True:
                conn = _Floor(got)
                try:
                    stream: trio.abc.Stream
                    if context is None:
                        stream = await trio.open_tcp_stream(host, port)
                    else:
                        stream = await trio.open_ssl_over_tcp_stream(host, port,
                                                                     ssl_context=context)
                    await stream.send_all(hello)
                    while data := await stream.receive_some(65536):
                        if conn.feed(data):
                            await stream.send_all(_masked(SUBSCRIBE))
                    await trio.aclose_forcefully(stream)
                except (OSError, trio.BrokenResourceError):
                    pass

    trio.run(main)
    return got


def client_main(name: str, url: str, until: float, certs: str | None) -> None:
    if name == "floor-asyncio":
        got = run_floor_asyncio(url, until, certs)
    elif name == "floor-trio":
        got = run_floor_trio(url, until, certs)
    elif name.startswith("nonstop-"):
        got = run_nonstop(url, until, certs, name.removeprefix("nonstop-"))
    elif name == "websockets":
        got = run_websockets(url, until, certs)
    elif name == "websocket-client":
        got = run_websocket_client(url, until, certs)
    else:
        got = run_aiohttp(url, until, certs)
    print(json.dumps(got), flush=True)


# ---------------------------------------------------------------------------
# the runner
def analyse(got: list[tuple[float, int]], resets: list[float],
            subscribed: list[float]) -> dict[str, Any]:
    """Per reset: the time to the first message after it that follows a gap
    (or the first after it at all), the numbers missed at that gap, and the
    time until the server had the client's next subscription."""
    times = [t for t, _ in got]
    seqs = [s for _, s in got]
    back, missed = [], []
    for r in resets:
        i = next((k for k, t in enumerate(times) if t > r), None)
        if i is None or i == 0:
            continue
        # messages already on their way before the reset may arrive just after it
        while i + 1 < len(seqs) and seqs[i] == seqs[i - 1] + 1 and times[i] - r < 0.05:
            i += 1
        if seqs[i] == seqs[i - 1] + 1:
            continue  # no gap found near this reset
        back.append(times[i] - r)
        missed.append(seqs[i] - seqs[i - 1] - 1)
    again = [s - r for r in resets
             for s in [next((s for s in subscribed if s > r), None)] if s is not None]
    return {"back": back, "missed": missed, "subscribed": again}


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resets", type=int, default=8, help="resets per client and run")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of every client")
    parser.add_argument("--period", type=float, default=1.5)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--quick", action="store_true", help="one run of 2 resets: a smoke test")
    parser.add_argument("--serve", nargs=2, metavar=("PORT_FILE", "CERTS"), help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=4, metavar=("NAME", "URL", "UNTIL", "CERTS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        certs = None if args.serve[1] == "-" else args.serve[1]
        asyncio.run(serve(args.serve[0], args.rate, args.period, certs))
        return 0
    if args.client:
        name, url, until, certs = args.client
        client_main(name, url, float(until), None if certs == "-" else certs)
        return 0
    resets = 2 if args.quick else args.resets
    import importlib.util

    clients = []
    for name in (c for c in args.clients.split(",") if c):
        if name not in CLIENTS:
            parser.error(f"unknown client {name!r}; choose from {', '.join(CLIENTS)}")
        missing = [p for p in CLIENTS[name] if importlib.util.find_spec(p) is None]
        if missing:
            print(f"note: {name} skipped ({', '.join(missing)} not installed)", file=sys.stderr)
        else:
            clients.append(name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    repeat = 1 if args.quick else args.repeat
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    crashed = False
    with tempfile.TemporaryDirectory() as tmp:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(os.path.join(tmp, "ca.pem"))
        cert.private_key_and_cert_chain_pem.write_to_path(os.path.join(tmp, "server.pem"))
        for rep in range(repeat):
            for scheme in ("ws", "wss"):
                for name in clients:
                    try:
                        got, reset_times, subscribed = _one_run(name, scheme, tmp, env, cpus,
                                                                resets, args)
                    except RuntimeError as exc:
                        crashed = True
                        print(f"{name} {scheme}: crashed\n{exc}", file=sys.stderr)
                        continue
                    result = analyse(got, reset_times, subscribed)
                    pooled = samples.setdefault((name, scheme), {"back": [], "missed": [],
                                                                 "subscribed": [], "resets": []})
                    for key in ("back", "missed", "subscribed"):
                        pooled[key] += result[key]
                    pooled["resets"].append(len(reset_times))
                    print(f"[{rep + 1}/{repeat}] {name} {scheme}: {len(result['back'])} of "
                          f"{len(reset_times)} resets seen", file=sys.stderr, flush=True)
    print(f"\n{repeat} run(s) of {resets} resets per client, one every {args.period:g} s of "
          f"subscription, {args.rate:g} messages/s; the runs interleaved\n")
    print("| client | scheme | resets seen | break to first message, median ms | p90 ms "
          "| missed per reset | break to subscription at the server, median ms | p90 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for scheme in ("ws", "wss"):
        for name in clients:
            pooled = samples.get((name, scheme))
            if pooled is None:
                continue
            back, missed = pooled["back"], pooled["missed"]
            seen = f"{len(back)} of {int(sum(pooled['resets']))}"
            again = pooled["subscribed"]
            server_side = (f"{statistics.median(again) * 1000:.2f} | {_q(again, 0.9) * 1000:.2f}"
                           if again else "- | -")
            if not back:
                print(f"| {name} | {scheme} | {seen} | - | - | - | {server_side} |")
                continue
            print(f"| {name} | {scheme} | {seen} | {statistics.median(back) * 1000:.1f} "
                  f"| {_q(back, 0.9) * 1000:.1f} | {statistics.mean(missed):.1f} | {server_side} |")
    return 1 if crashed else 0


def _one_run(name: str, scheme: str, tmp: str, env: dict[str, str], cpus: list[int], resets: int,
             args: argparse.Namespace) -> tuple[list[tuple[float, int]], list[float], list[float]]:
    """One client against a fresh server: what it got, the resets, and when
    the server had its subscriptions."""
    port_file = os.path.join(tmp, "port")
    if os.path.exists(port_file):
        os.unlink(port_file)
    certs = tmp if scheme == "wss" else "-"
    server = subprocess.Popen(
        [sys.executable, __file__, "--rate", str(args.rate), "--period", str(args.period),
         "--serve", port_file, certs],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    if len(cpus) >= 2:  # the server on one core, the client on another
        os.sched_setaffinity(server.pid, {cpus[-1]})
    try:
        while not os.path.exists(port_file) or not Path(port_file).read_text():
            time.sleep(0.01)
        port = int(Path(port_file).read_text())
        host = "localhost" if scheme == "wss" else "127.0.0.1"
        url = f"{scheme}://{host}:{port}/"
        until = time.monotonic() + 0.5 + resets * (args.period + 0.3)
        client = subprocess.Popen(
            [sys.executable, __file__, "--client", name, url, str(until), certs],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        if len(cpus) >= 2:
            os.sched_setaffinity(client.pid, set(cpus[:-1]))
        out, err = client.communicate(timeout=resets * args.period + 60)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server_out = server.stdout.read() if server.stdout else b""
        server.wait(10)
    if client.returncode != 0:
        raise RuntimeError(err.decode()[-2000:])
    got = [(float(t), int(seq)) for t, seq in json.loads(out)]
    record = json.loads(server_out)
    return got, record["resets"], record["subscribed"]


if __name__ == "__main__":
    sys.exit(main())
