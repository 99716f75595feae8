"""The ``nonstop`` command, run as a real subprocess against the testing server.

The server runs in this process (``FeedServer(...).run_in_thread()``) on
127.0.0.1; the command runs as ``python -m nonstop`` with pipes (or a pty
for stderr, to see the live status line).  Every test has a hard timeout and
checks behaviour, never a tight duration: what was printed against what the
server logged as sent, exit statuses, one-line errors, the metrics endpoint
scraped over HTTP.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from nonstop._demo import plan
from nonstop.cli import build_parser
from nonstop.testing import Fault, FeedServer, ThreadedFeedServer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(90)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NO_COLOR", None)
    return env


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nonstop", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL)


class Proc:
    """``python -m nonstop ...`` with its stdout and stderr read by threads."""

    def __init__(self, *args: str, stderr_fd: int | None = None) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "nonstop", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr_fd is None else stderr_fd,
            stdin=subprocess.DEVNULL, env=_env(), cwd=ROOT,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._read, args=(self.p.stdout, self.out), daemon=True)]
        if stderr_fd is None:
            self._threads.append(threading.Thread(target=self._read, args=(self.p.stderr, self.err),
                                                  daemon=True))
        for t in self._threads:
            t.start()

    def _read(self, stream: IO[bytes] | None, into: list[str]) -> None:
        assert stream is not None
        for raw in stream:
            with self._cond:
                into.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; stdout={self.out[-5:]} stderr={self.err[-10:]}")
                self._cond.wait(min(left, 0.1))

    def finish(self, timeout: float = 30) -> int:
        code = self.p.wait(timeout)
        for t in self._threads:
            t.join(10)
        return code

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.finish()
        for stream in (self.p.stdout, self.p.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def cli(*args: str, stderr_fd: int | None = None) -> Iterator[Proc]:
    proc = Proc(*args, stderr_fd=stderr_fd)
    try:
        yield proc
    finally:
        proc.close()


@contextmanager
def feed_server(**kwargs: Any) -> Iterator[ThreadedFeedServer]:
    with FeedServer(interval=0.01, **kwargs).run_in_thread() as server:
        yield server


def numbered(line: str) -> tuple[int, int] | None:
    if line.startswith('{"seq"'):
        item = json.loads(line)
        return int(item["seq"]), int(item["conn"])
    return None


# ----------------------------------------------------------------------
# help, version, usage errors


def test_help_shows_every_option_with_its_default() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and result.stderr == ""
    text = " ".join(result.stdout.split())  # argparse wraps lines anywhere
    assert text.startswith("usage: nonstop")
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in text, flag
        if action.option_strings and action.dest not in ("help", "version"):
            assert "default" in (action.help or ""), action.dest
    for expected in ("(default: 20)", "(default: 10)", "(default: 60)", "(default: raw)",
                     "nonstop demo", "--metrics-port", "raw,jsonl"):
        assert expected in text.replace("{raw,jsonl}", "raw,jsonl"), expected


def test_demo_help_and_version() -> None:
    result = run_cli("demo", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines anywhere
    for flag in ("--duration", "--seed", "--quiet", "(default: 30)", "(default: 1)"):
        assert flag in text
    result = run_cli("--version")
    assert result.returncode == 0 and re.fullmatch(r"nonstop \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "URL"),
        (("--bogus", "ws://127.0.0.1:1/"), "--bogus"),
        (("ws://127.0.0.1:1/", "--ping-interval", "soon"), "--ping-interval"),
        (("ws://127.0.0.1:1/", "--ping-timeout", "0"), "> 0"),
        (("ws://127.0.0.1:1/", "--backoff-cap", "-1"), "--backoff-cap"),
        (("ws://127.0.0.1:1/", "--output", "xml"), "--output"),
        (("ws://127.0.0.1:1/", "--header", "no colon"), "Name: value"),
        (("ws://127.0.0.1:1/", "--header", "Sec-WebSocket-Key: x"), "handshake"),
        (("ws://127.0.0.1:1/", "--metrics-port", "70000"), "port"),
        (("ws://127.0.0.1:1/", "--insecure"), "wss://"),
        (("http://127.0.0.1:1/",), "ws://"),
        (("ws://127.0.0.1:99999/",), "port"),
        (("ws://127.0.0.1:1/#frag",), "fragment"),
        (("demo", "--duration", "1"), "--duration"),
        (("demo", "--seed", "x"), "--seed"),
    ],
)
def test_usage_errors_and_bad_urls_exit_2_with_one_line(args: tuple[str, ...], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nonstop: error: ") and needle.lower() in lines[0].lower(), lines[0]


def test_metrics_port_in_use_exits_2() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("ws://127.0.0.1:1/", "--metrics-port", str(port))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "cannot serve metrics" in result.stderr


def test_uvloop_without_the_extra_exits_2_naming_it(tmp_path: Path) -> None:
    """Never a silent fallback to asyncio's loop that the user takes for uvloop."""
    (tmp_path / "uvloop").mkdir()
    (tmp_path / "uvloop" / "__init__.py").write_text("raise ImportError('No module named uvloop')\n")
    env = _env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    result = subprocess.run([sys.executable, "-m", "nonstop", "ws://127.0.0.1:1/", "--uvloop"],
                            capture_output=True, text=True, timeout=30, env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "nonstop: error: --uvloop needs uvloop: pip install 'nonstop[uvloop]' (see 'nonstop --help')"]


def test_console_script_is_installed_when_the_package_is() -> None:
    script = Path(sys.executable).parent / "nonstop"
    if not script.exists():
        pytest.skip("nonstop is not pip-installed in this environment (scripts/test installs it)")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("nonstop ")


# ----------------------------------------------------------------------
# following a feed


@pytest.mark.parametrize("loop", [(), ("--uvloop",)], ids=["asyncio", "uvloop"])
def test_raw_output_and_sigint_prints_everything_and_exits_0(loop: tuple[str, ...]) -> None:
    with feed_server() as server, cli(server.url, "--subscribe", '{"op":"subscribe","args":["a"]}',
                                      "--subscribe", "subscribe b", "--no-status", *loop) as proc:
        server.wait_connected()
        server.wait_for(lambda: server.sent >= 30)
        proc.p.send_signal(signal.SIGINT)
        assert proc.finish() == 0
        sent = server.sent_log
        subs = [message for _, message in server.subscriptions]
    printed = [n for n in map(numbered, proc.out) if n is not None]
    assert printed == sent  # every message the server sent, in order, nothing more
    acks = [line for line in proc.out if line.startswith('{"event":"subscribed"')]
    assert len(acks) == 2 and subs == ['{"op":"subscribe","args":["a"]}', "subscribe b"]
    text = "\n".join(proc.err)
    for keyword in ("[CONNECTING]", "[CONNECTED]", "[SUBSCRIBED]", "[SIGNAL] SIGINT",
                    "[DISCONNECTED]", "reason=stopped", "[STOPPED]", "[SUMMARY]"):
        assert keyword in text, keyword
    assert f"messages={len(proc.out)}" in text
    assert "\x1b[" not in text  # plain lines: stderr is not a terminal


def test_jsonl_output_survives_a_fault_and_sigterm_exits_0() -> None:
    before = time.time()
    with feed_server() as server, cli(server.url, "--output", "jsonl", "--name", "jl",
                                      "--backoff-cap", "0.5") as proc:
        server.wait_connected()
        server.wait_for(lambda: server.sent >= 10)
        server.pause_streaming()  # nothing in flight when the connection breaks
        time.sleep(0.3)
        server.inject(Fault.CLOSE)
        server.resume_streaming()
        server.wait_connected(n=2)
        server.wait_for(lambda: server.sent_to(2) >= 10)
        proc.p.send_signal(signal.SIGTERM)
        assert proc.finish() == 0
        sent = server.sent_log
    after = time.time()
    items = [json.loads(line) for line in proc.out]
    assert all(set(item) == {"received_at", "connection", "data"} for item in items)
    assert all(before <= item["received_at"] <= after for item in items)
    printed = [(json.loads(item["data"]), item["connection"]) for item in items]
    assert [(m["seq"], m["conn"]) for m, _ in printed] == sent
    assert all(m["conn"] == connection for m, connection in printed)  # connection numbers agree
    assert {connection for _, connection in printed} == {1, 2}
    text = "\n".join(proc.err)
    assert "[DISCONNECTED] feed=jl reason=eof" in text and "[RECONNECTING] feed=jl" in text
    assert "[SIGNAL] SIGTERM" in text and "reconnects=1" in text


def test_a_second_signal_abandons_the_close_handshake() -> None:
    with feed_server() as server, cli(server.url, "--no-status") as proc:
        proc.wait_until(lambda: any("[CONNECTED]" in line for line in proc.err))
        server.inject(Fault.SILENT)  # a zombie never answers our close frame
        proc.p.send_signal(signal.SIGINT)
        proc.wait_until(lambda: any("[SIGNAL] SIGINT" in line for line in proc.err))
        proc.p.send_signal(signal.SIGINT)
        assert proc.finish() == 130, "\n".join(proc.err)
    assert not any("Traceback" in line for line in proc.err)


def test_a_closed_stdout_ends_the_command_quietly() -> None:
    with feed_server() as server:
        p = subprocess.Popen([sys.executable, "-m", "nonstop", server.url, "--no-status"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             env=_env(), cwd=ROOT)
        try:
            assert p.stdout is not None and p.stderr is not None
            for _ in range(3):  # like `| head -n 3`
                assert p.stdout.readline()
            p.stdout.close()
            err = p.stderr.read().decode()  # until the command exits
            assert p.wait(30) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            p.stderr.close()  # type: ignore[union-attr]
    assert "[STOPPED]" in err and "Traceback" not in err and "BrokenPipe" not in err


def test_live_status_line_on_a_terminal() -> None:
    pytest.importorskip("rich")
    master, slave = pty.openpty()
    try:
        with feed_server() as server, cli(server.url, stderr_fd=slave) as proc:
            os.close(slave)
            slave = -1
            screen = b""
            deadline = time.monotonic() + 20
            while b"msg/s" not in screen or b"OPEN conn #1" not in screen:
                assert time.monotonic() < deadline, screen[-500:]
                ready, _, _ = select.select([master], [], [], 0.5)
                if ready:
                    screen += os.read(master, 65536)
            proc.p.send_signal(signal.SIGINT)
            while proc.p.poll() is None:  # keep the pty drained until the end
                if select.select([master], [], [], 0.2)[0]:
                    try:
                        screen += os.read(master, 65536)
                    except OSError:
                        break
            assert proc.finish() == 0
            sent = server.sent_log
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert b"\x1b[" in screen and b"[CONNECTED]" in screen  # drawn in place, with styles
    assert [n for n in map(numbered, proc.out) if n is not None] == sent  # stdout stays clean


# ----------------------------------------------------------------------
# metrics


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_endpoint_is_scraped_over_http() -> None:
    with feed_server() as server, cli(server.url, "--metrics-port", "0", "--name", "m",
                                      "--ping-interval", "0.1", "--backoff-cap", "0.5",
                                      "--no-status") as proc:
        proc.wait_until(lambda: any("[METRICS]" in line for line in proc.err))
        url = next(line for line in proc.err if "[METRICS]" in line).rpartition("url=")[2]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        server.wait_for(lambda: server.sent >= 20)
        first = _scrape(url)
        assert first['nonstop_up{feed="m"}'] == 1.0
        assert first['nonstop_state{feed="m",state="open"}'] == 1.0
        assert first['nonstop_messages_received_total{feed="m"}'] >= 20
        assert first['nonstop_connections_opened_total{feed="m"}'] == 1.0
        server.inject(Fault.RESET)
        server.wait_connected(n=2)
        server.wait_for(lambda: server.sent_to(2) >= 5)
        deadline = time.monotonic() + 20
        while True:
            later = _scrape(url)
            if later.get('nonstop_ping_rtt_seconds_count{feed="m"}', 0) >= 1 and \
                    later['nonstop_time_to_reconnect_seconds_count{feed="m"}'] >= 1:
                break
            assert time.monotonic() < deadline, later
            time.sleep(0.1)
        assert later['nonstop_disconnects_total{feed="m",reason="reset"}'] == 1.0
        assert later['nonstop_reconnects_total{feed="m"}'] == 1.0
        received = 'nonstop_messages_received_total{feed="m"}'
        assert later[received] > first[received]
        proc.p.send_signal(signal.SIGTERM)
        assert proc.finish() == 0


# ----------------------------------------------------------------------
# the demo


def test_demo_schedule_is_deterministic_given_the_seed() -> None:
    assert plan(1) == plan(1)
    assert plan(7, 12.0) == plan(7, 12.0)
    assert plan(1)[1] != plan(2)[1]
    timing, steps = plan(1)
    keys = [step.key for step in steps]
    assert keys == ["close", "reset", "zombie", "refused", "503", "garbage", "no_ack", "final"]
    refused = steps[keys.index("refused")]
    # refused long enough for the backoff to reach its cap: 0.1 * 2**n reaches 2.0 after 5 failures
    assert refused.hold > sum(min(timing.backoff.cap, 0.1 * 2 ** n) for n in range(5))
    # between two faults a connection stays up long enough to reset the backoff
    assert all(step.settle > timing.stable_after for step in steps)
    short, _ = plan(1, 6.0)
    assert short.ping_timeout < timing.ping_timeout


@pytest.mark.timeout(120)
def test_demo_rides_through_every_fault_and_prints_its_table() -> None:
    result = run_cli("demo", "--duration", "8", "--seed", "3", timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    table = result.stdout
    for title in ("server close (1001)", "reset (RST)", "silent zombie", "refused for",
                  "503, Retry-After: 1", "garbage bytes", "no ACKs for", "recovery, graceful stop"):
        row = next(line for line in table.splitlines() if title in line)
        assert row.rstrip().endswith("ok"), row
    total = next(line for line in table.splitlines() if line.startswith("total")).split()
    assert int(total[1]) == int(total[2]) > 0 and total[3] == "0"  # sent == delivered, no dups
    assert "nothing lost in-process, no duplicates" in table and "uptime: connected" in table
    for reason in ("server_closed code=1001", "reason=reset", "reason=ping_timeout", "reason=refused",
                   "status=503", "reason=protocol_error", "reason=ack_timeout", "[STOPPED]"):
        assert reason in result.stderr, reason


@pytest.mark.timeout(120)
def test_demo_with_two_legs_loses_nothing_and_reports_no_gap() -> None:
    result = run_cli("demo", "--duration", "8", "--seed", "3", "--redundancy", "2", timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    table = result.stdout
    rows = [line for line in table.splitlines() if line[:2] in {f"{i}." for i in range(1, 9)}]
    assert len(rows) == 8 and all(row.rstrip().endswith("ok") for row in rows), table
    total = next(line for line in table.splitlines() if line.startswith("total")).split()
    assert int(total[1]) == int(total[2]) > 0 and total[3:5] == ["0", "0"]  # no dups, no gaps
    assert "2 legs, one faulted at a time" in table
    assert 'feed="demo#1"' in result.stderr  # the second leg's lifecycle lines


@pytest.mark.timeout(120)
def test_demo_quiet_prints_only_the_table(capfd: pytest.CaptureFixture[str]) -> None:
    from nonstop._demo import run

    assert run(seed=5, duration=3, quiet=True) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert out.startswith("fault ") and "nothing lost in-process" in out


# ----------------------------------------------------------------------
# redundancy


def test_two_connections_merged_by_sequence_number_print_each_number_once() -> None:
    # The testing server numbers its messages across connections: each
    # number goes to one connection, so only the merge of both legs, in
    # sequence order, gives the whole stream.
    with feed_server() as server, cli(server.url, "--redundancy", "2", "--sequence", "seq",
                                      "--no-status") as proc:
        server.wait_connected(n=2)
        server.wait_for(lambda: server.sent >= 60)
        proc.p.send_signal(signal.SIGINT)
        assert proc.finish() == 0
        sent = server.sent_log
    printed = [seq for seq, _ in filter(None, map(numbered, proc.out))]
    assert len(printed) >= 55
    assert printed == sorted(set(printed))  # in order, each once
    assert set(printed) <= {seq for seq, _ in sent}
    assert {conn for _, conn in filter(None, map(numbered, proc.out))} == {1, 2}
    summary = next(line for line in proc.err if "[SUMMARY]" in line)
    assert "legs=2" in summary and "gaps=" in summary


@pytest.mark.parametrize(("args", "says"), [
    (("--redundancy", "0"), "'0' must be 1 or more connections"),
    (("--redundancy", "two"), "'two' is not a number of connections"),
    (("--sequence", "data..u"), "is not a JSON field path"),
    (("--max-lifetime", "0"), "must be a number of seconds > 0"),
    (("--max-lifetime", "5"), "max_lifetime (5.0s) must be longer than"),
])
def test_redundancy_options_that_make_no_sense_exit_2(args: tuple[str, ...], says: str) -> None:
    result = run_cli("ws://127.0.0.1:9/", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert says in result.stderr and len(result.stderr.splitlines()) == 1


def test_the_sequence_path_reads_an_integer_and_refuses_anything_else() -> None:
    from nonstop.cli import sequence_of

    sequence = sequence_of(["data", "u"])
    assert sequence('{"data": {"u": 42}}') == 42
    for bad in ('{"data": {"u": "42"}}', '{"data": {}}', "not json", '{"data": {"u": true}}'):
        with pytest.raises((TypeError, KeyError, ValueError)):
            sequence(bad)


def test_the_status_line_shows_legs_live_and_gaps() -> None:
    from nonstop import Metrics, State
    from nonstop._display import status_text

    base = dict(state=State.OPEN, running_time=10.0, uptime=5.0, total_uptime=9.0,
                connected_ratio=0.9, connection=3, attempts=3, reconnects=2,
                reconnects_last_minute=2, last_time_to_reconnect=0.01, consecutive_failures=0,
                messages_received=100, bytes_received=1000, last_message_age=0.0,
                last_ping_rtt=None, pending_acks=0, subscriptions=1, disconnects={},
                last_disconnect_reason="reset", alerts_active=())
    one = status_text(Metrics(**base, gaps=2), 10.0)  # type: ignore[arg-type]
    assert "legs" not in one and "2 gaps" in one
    two = status_text(Metrics(**base, legs=2, legs_live=1), 10.0)  # type: ignore[arg-type]
    assert "legs 1/2 live" in two and "gaps" not in two


@pytest.mark.parametrize(("flags", "negotiated"), [((), ["permessage-deflate"]),
                                                   (("--no-compression",), [])])
def test_compression_is_offered_unless_no_compression(flags: tuple[str, ...], negotiated: list[str]) -> None:
    """Against the websockets package's server (which accepts deflate): the
    command's messages arrive either way; the server saw the offer or not."""
    from websockets.sync.server import ServerConnection, serve

    seen: list[list[str]] = []

    def behaviour(ws: ServerConnection) -> None:
        seen.append([ext.name for ext in ws.protocol.extensions])
        for seq in range(3):
            ws.send(json.dumps({"seq": seq, "conn": 1, "pad": "x" * 500}))
        for _ in ws:
            pass

    with serve(behaviour, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            with cli(f"ws://127.0.0.1:{port}/", "--no-status", *flags) as proc:
                proc.wait_until(lambda: len(proc.out) >= 3)
                proc.p.send_signal(signal.SIGINT)
                assert proc.finish() == 0
        finally:
            server.shutdown()
            thread.join(10)
    assert [numbered(line) for line in proc.out[:3]] == [(0, 1), (1, 1), (2, 1)]
    assert seen == [negotiated]


@pytest.mark.parametrize(("args", "says"), [
    (("--proxy", "ftp://proxy:21"), "proxy scheme 'ftp' is not supported"),
    (("--proxy", "http://proxy:3128", "--no-proxy"), "contradict each other"),
])
def test_proxy_options_that_make_no_sense_exit_2(args: tuple[str, ...], says: str) -> None:
    result = run_cli("ws://127.0.0.1:9/", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert says in result.stderr and len(result.stderr.splitlines()) == 1


def test_the_command_reaches_the_feed_through_the_proxy_it_is_given(tmp_path: Path) -> None:
    """``--proxy`` against a real HTTP proxy (tinyproxy): the messages come
    through its tunnel."""
    from .transports.proxies import Tinyproxy

    with Tinyproxy(tmp_path) as proxy, feed_server() as server, \
            cli(server.url, "--no-status", "--proxy", proxy.url()) as proc:
        proc.wait_until(lambda: len(proc.out) >= 3)
        proc.p.send_signal(signal.SIGINT)
        assert proc.finish() == 0
        assert proxy.tunnels() == 1
    assert all(numbered(line) is not None for line in proc.out[:3])
