"""The ``nonstop`` command: follow a WebSocket feed from a shell, or watch the chaos demo.

Theory of operation
-------------------
``nonstop URL [options]`` is a thin shell around :func:`nonstop.connect` (the
anyio driver, run on asyncio):

* **stdout** gets every message, one per line, in the order received:
  ``raw`` (the message itself) or ``jsonl`` (``{"received_at": <Unix
  seconds>, "connection": <n>, "data": ...}``; binary messages as base64
  with ``"binary": true``).  Output is flushed every 50 ms and at the end,
  so ``| jq`` sees messages at once.
* **stderr** gets the lifecycle lines of the ``nonstop`` logger
  (``[CONNECTED] ...``, see ``docs/observability.md``) with a time stamp,
  and, on a terminal with ``rich`` installed (``nonstop[cli]``), a live
  status line at the bottom (:mod:`nonstop._display`).  At the end, one
  ``[SUMMARY]`` line.
* **SIGINT / SIGTERM** ask the feed to stop gracefully: close handshake, then
  every message already received is printed, exit 0.  A second signal
  abandons the close handshake at once (exit 130).
* **--metrics-port** serves the feed's metrics for Prometheus
  (:mod:`nonstop.prometheus`, the ``nonstop[prometheus]`` extra) from a
  daemon thread; port 0 picks a free port, reported on stderr as
  ``[METRICS] url=...``.

Exit status: 0 after a graceful stop (or when stdout was closed by the
reader), 1 when the feed gave up or crashed, 2 for a usage error, a bad URL
or option, or a metrics port that cannot be opened (one line on stderr),
130 when interrupted twice.

``nonstop demo`` is the chaos demo (:mod:`nonstop._demo`).  :func:`main` is
the console script; ``python -m nonstop`` calls it too.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import logging
import math
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, NoReturn

import anyio
import anyio.abc

from . import __version__
from ._api import connect
from ._demo import main as demo_main
from ._display import Display, Rate, UsageError, status_text
from .core import Backoff, Config, ConfigError, Gap, InvalidURL, Message, Metrics
from .errors import FeedGaveUp
from .transports._anyio import AsyncFeed

__all__ = ["main", "build_parser"]

PROG = "nonstop"
FLUSH_EVERY = 0.05
STATUS_EVERY = 0.25


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _proxy_option(args: argparse.Namespace) -> dict[str, Any]:
    """``proxy=`` for ``connect``: the one named, none, or (left out) the environment's."""
    if args.no_proxy and args.proxy is not None:
        raise ConfigError("--proxy and --no-proxy contradict each other: give one")
    if args.no_proxy:
        return {"proxy": None}
    return {} if args.proxy is None else {"proxy": args.proxy}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of seconds > 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be a port number from 0 to 65535")
    return value


def _legs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of connections") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more connections")
    return value


def _field_path(text: str) -> list[str]:
    path = text.split(".")
    if not all(path):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a JSON field path (names joined by dots: seq, data.u)")
    return path


def sequence_of(path: list[str]) -> Callable[[str | bytes], int]:
    """The ``sequence`` function of ``--sequence a.b``: the integer at that
    path of a JSON message.  It raises for a message that is not JSON or
    has no integer there: the feed delivers that message and counts it."""
    def sequence(message: str | bytes) -> int:
        item: Any = json.loads(message)
        for name in path:
            item = item[name]
        if type(item) is not int:
            raise TypeError(f"{'.'.join(path)} is {type(item).__name__}, not an integer")
        return item

    return sequence


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"{text!r} is not a header: write it as 'Name: value'")
    return name, value


_EPILOG = """\
stdout: every message, one per line (raw: as received; jsonl: a JSON object
with received_at, connection and data).  stderr: lifecycle lines such as
[CONNECTED] and [DISCONNECTED], and on a terminal a live status line (with
the nonstop[cli] extra).  SIGINT/SIGTERM stop gracefully; everything received
is printed.  Exit status: 0 stopped, 1 gave up, 2 usage error or bad URL.

examples:
  nonstop wss://stream.example/ws --subscribe '{"op":"subscribe","args":["trades"]}'
  nonstop ws://127.0.0.1:8765/ --output jsonl --metrics-port 9464 | jq .data
  nonstop demo                       # the chaos demo: see `nonstop demo --help`
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``nonstop URL [options]`` (``nonstop demo`` has its own)."""
    parser = _Parser(
        prog=PROG,
        usage="%(prog)s [-h] [--version] URL [options]\n"
        "       %(prog)s demo [--duration S] [--seed N] [--quiet]",
        description="Follow a WebSocket feed and keep receiving, whatever the network does: "
        "reconnects with capped, jittered backoff, subscriptions replayed, dead connections "
        "detected by pings and a silence watchdog.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("url", metavar="URL", help="ws:// or wss:// URL of the feed")
    add("--subscribe", metavar="MSG", action="append", default=[],
        help="text message sent after every connect, in order (repeatable; default: none)")
    add("--header", metavar="'K: V'", action="append", default=[], type=_header,
        help="extra HTTP header on the upgrade request (repeatable; default: none; never logged)")
    add("--ping-interval", metavar="S", type=_seconds, default=20.0,
        help="seconds between protocol pings; 0 disables them (default: %(default)g)")
    add("--ping-timeout", metavar="S", type=_positive_seconds, default=10.0,
        help="a connection with nothing received this long after a ping is dead (default: %(default)g)")
    add("--silence-timeout", metavar="S", type=_seconds, default=60.0,
        help="a connection with no data message for this long (pongs do not count) is a zombie; 0 disables "
        "(default: %(default)g)")
    add("--redundancy", metavar="N", type=_legs, default=1,
        help="connections kept to the feed at once, merged into one stream with each message once "
        "(default: %(default)s)")
    add("--sequence", metavar="FIELD", type=_field_path, default=None,
        help="JSON field path of the feed's sequence number (e.g. seq, data.u): duplicates are "
        "dropped by it and missing numbers reported as [GAP] lines (default: none; by payload)")
    add("--max-lifetime", metavar="S", type=_positive_seconds, default=None,
        help="replace each connection before it is this old (make-before-break), for servers "
        "that cut connections at a fixed age (default: off)")
    add("--backoff-cap", metavar="S", type=_positive_seconds, default=60.0,
        help="longest wait between reconnect attempts (default: %(default)g)")
    add("--no-compression", action="store_true",
        help="do not offer permessage-deflate (default: offered; most feeds then send compressed)")
    add("--proxy", metavar="URL", default=None,
        help="reach the feed through this proxy: http://[user:pass@]host:port, https://..., "
             "socks5://, socks5h:// or socks4a:// (default: the environment's https_proxy, "
             "http_proxy, all_proxy and no_proxy)")
    add("--no-proxy", action="store_true",
        help="connect directly, whatever proxy the environment names (default: the environment decides)")
    add("--insecure", action="store_true",
        help="wss:// only: do not verify the server's certificate (default: verify)")
    add("--output", choices=("raw", "jsonl"), default="raw",
        help="how messages are printed on stdout (default: %(default)s)")
    add("--metrics-port", metavar="PORT", type=_port, default=None,
        help="serve Prometheus metrics on this port, 0 for any free port (needs nonstop[prometheus]; "
        "default: off)")
    add("--metrics-host", metavar="HOST", default="127.0.0.1",
        help="address the metrics endpoint listens on (default: %(default)s)")
    add("--name", metavar="NAME", default=None,
        help="the feed's name in log lines and metric labels (default: the URL, secrets redacted)")
    add("--uvloop", action="store_true",
        help="run on uvloop's event loop (needs nonstop[uvloop]; default: asyncio's own)")
    add("--no-status", action="store_true",
        help="no live status line, even on a terminal (default: shown on a terminal with rich)")
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nonstop`` command; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["demo"]:
            return demo_main(args[1:])
        return _follow(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc} (see '{PROG} --help')", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130


# ----------------------------------------------------------------------
# nonstop URL


def _follow(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        label = args.name or Config(url=args.url).label
    except (InvalidURL, ConfigError) as exc:
        raise UsageError(str(exc)) from None
    context: ssl.SSLContext | None = None
    if args.insecure:
        if not args.url.lower().startswith("wss:"):
            raise UsageError("--insecure applies to wss:// URLs only")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

    backend_options: dict[str, Any] = {}
    if args.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise UsageError("--uvloop needs uvloop: pip install 'nonstop[uvloop]'") from None
        backend_options["use_uvloop"] = True

    exporter: Any = None
    if args.metrics_port is not None:
        try:
            from prometheus_client import CollectorRegistry

            from .prometheus import Exporter
        except ImportError:
            raise UsageError(
                "--metrics-port needs prometheus_client: pip install 'nonstop[prometheus]'"
            ) from None
        exporter = Exporter(CollectorRegistry())

    cap = args.backoff_cap
    try:
        feed = _connect(args, label, context, cap, exporter)
    except (InvalidURL, ConfigError) as exc:
        raise UsageError(str(exc)) from None

    metrics_server = None
    if exporter is not None:
        try:
            metrics_server = exporter.serve(args.metrics_port, args.metrics_host)
        except OSError as exc:
            raise UsageError(
                f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc.strerror or exc}"
            ) from None

    display = Display(live=False if args.no_status else None, prefix=_wall_clock)
    logger = logging.getLogger("nonstop")
    handler = display.handler()
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with display:
            if args.insecure:
                display.line("[WARNING] --insecure: the server's certificate is not verified",
                             logging.WARNING)
            if metrics_server is not None:
                display.line(f"[METRICS] feed={label} url={metrics_server.url}")
            runner = _Runner(feed, args.output, display, exporter, label)
            return anyio.run(runner.run, backend="asyncio", backend_options=backend_options)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        if metrics_server is not None:
            metrics_server.close()


def _connect(args: argparse.Namespace, label: str, context: ssl.SSLContext | None, cap: float,
             exporter: Any) -> AsyncFeed:
    return connect(
        args.url,
        subscribe=list(args.subscribe),
        headers=list(args.header) or None,
        name=label,
        ping_interval=args.ping_interval or None,
        ping_timeout=args.ping_timeout,
        silence_timeout=args.silence_timeout or None,
        backoff=Backoff(initial=min(0.5, cap), cap=cap),
        redundancy=args.redundancy,
        sequence=None if args.sequence is None else sequence_of(args.sequence),
        max_lifetime=args.max_lifetime,
        compression=None if args.no_compression else "deflate",
        **_proxy_option(args),
        ssl=context,
        on_event=None if exporter is None else exporter.on_event(label),
    )


def _wall_clock() -> str:
    now = datetime.datetime.now()
    return now.strftime("%H:%M:%S.") + f"{now.microsecond // 1000:03d} "


def summary_line(label: str, m: Metrics) -> str:
    """The ``[SUMMARY]`` line printed when the command ends."""
    name = label if label.isprintable() and not any(c in label for c in ' "\\') else json.dumps(label)
    return (
        f"[SUMMARY] feed={name}"
        f" messages={m.messages_received} connections={m.connection} reconnects={m.reconnects}"
        f" connected={m.total_uptime:.3f}s running={m.running_time:.3f}s"
        f" ratio={m.connected_ratio:.3f} gaps={m.gaps}"
        + (f" legs={m.legs} duplicates={m.duplicates}" if m.legs > 1 else "")
        + (f" missing={m.missing}" if m.missing else "")
        + (f" rotations={m.rotations}" if m.rotations else "")
    )


class _Output:
    """Writes messages to stdout as raw lines or JSON lines; see the module docstring."""

    def __init__(self, fmt: str, display: Display) -> None:
        self._jsonl = fmt == "jsonl"
        self._display = display if display.owns_stdout else None
        self._out: BinaryIO = sys.stdout.buffer
        self._chunks: list[bytes] = []
        self._offset = time.time() - anyio.current_time()
        self.broken = False
        self.count = 0

    def write(self, record: Message) -> None:
        if self.broken:
            return
        data = record.data
        if self._jsonl:
            item: dict[str, object] = {
                "received_at": round(record.received_at + self._offset, 6),
                "connection": record.connection,
            }
            if isinstance(data, str):
                item["data"] = data
            else:
                item["binary"] = True
                item["data"] = base64.b64encode(data).decode("ascii")
            line = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        elif isinstance(data, str):
            line = data.encode("utf-8") + b"\n"
        else:
            line = bytes(data) + b"\n"
        self._chunks.append(line)
        self.count += 1
        if len(self._chunks) >= 4096:
            self.flush()

    def flush(self) -> None:
        self._offset = time.time() - anyio.current_time()
        chunks, self._chunks = self._chunks, []
        if not chunks or self.broken:
            return
        data = b"".join(chunks)
        try:
            if self._display is not None:
                self._display.out(data.decode("utf-8", "replace"))
            else:
                self._out.write(data)
                self._out.flush()
        except BrokenPipeError:
            self.broken = True
            # Later writes (and the interpreter's final flush) go nowhere.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)


class _Runner:
    def __init__(self, feed: AsyncFeed, fmt: str, display: Display, exporter: Any, label: str) -> None:
        self.feed = feed
        self.fmt = fmt
        self.display = display
        self.exporter = exporter
        self.label = label
        self.signals = 0

    async def run(self) -> int:
        feed = self.feed
        out = _Output(self.fmt, self.display)
        code = 0
        with anyio.CancelScope() as outer:
            self._outer = outer
            async with anyio.create_task_group() as tg:
                await tg.start(self._watch_signals)
                try:
                    async with feed:
                        if self.exporter is not None:
                            self.exporter.add(self.label, feed)
                        tg.start_soon(self._flusher, out)
                        if self.display.live:
                            tg.start_soon(self._status)
                        try:
                            async for record in feed.records():
                                if type(record) is Gap:
                                    continue  # its [GAP] line is on stderr already
                                assert type(record) is Message
                                out.write(record)
                                if out.broken:
                                    feed.stop()
                        except FeedGaveUp as exc:
                            self.display.line(f"{PROG}: {exc}", logging.ERROR)
                            code = 1
                        out.flush()
                        self.display.line(summary_line(self.label, feed.metrics()))
                finally:
                    out.flush()
                    tg.cancel_scope.cancel()
        if outer.cancelled_caught or self.signals > 1:
            return 130
        return code

    async def _watch_signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        except NotImplementedError:  # pragma: no cover - e.g. Windows: Ctrl-C raises instead
            task_status.started()
            return
        with receiver as signals:
            task_status.started()
            async for signum in signals:
                self.signals += 1
                if self.signals == 1:
                    name = signal.Signals(signum).name
                    self.display.line(f"[SIGNAL] {name}: stopping gracefully (again to abort)")
                    self.feed.stop()
                else:
                    self._outer.cancel()
                    return

    async def _flusher(self, out: _Output) -> None:
        while True:
            await anyio.sleep(FLUSH_EVERY)
            out.flush()

    async def _status(self) -> None:
        rate = Rate()
        while True:
            m = self.feed.metrics()
            self.display.status(status_text(m, rate.update(anyio.current_time(), m.messages_received)))
            await anyio.sleep(STATUS_EVERY)
