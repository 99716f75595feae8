"""Run the whole benchmark: ``python bench/run.py [--quick] [--repeat N]``.

Theory of operation
-------------------
1. Start the load server (:mod:`server`) in its own process on 127.0.0.1.
2. Find the clients whose packages are installed (:data:`clients.CLIENTS`);
   a missing one is skipped with a note, never an error.
3. For each repetition, for each client in a fixed order (A, B, C, ... then
   again), start a fresh :mod:`worker` process that runs every case for that
   client: 64 B text, 1 KiB text and 64 KiB binary receive throughput (each
   first run once untimed with a fifth of the messages), then the echo round
   trip (after its warm-up rounds).  Interleaving spreads slow drifts of the machine
   (thermal, other load) over all clients instead of penalising the last.
4. Run the idle test (:mod:`idle`) once: memory per connection and idle CPU
   of 1,000 keep-alive feeds, then the traced heap in a second process.
5. Take the median of the repetitions of every number, print a Markdown
   report -- the machine, the table, and the ratios phrased as the targets in
   ``docs/performance.md`` -- and write it to ``bench/results.md`` (``--output``).

Timing never fails the run: a missed target is reported as such.  The exit
status is 1 only if something crashed (a client raised, a worker died or
hung past ``--timeout``), so ``--quick`` doubles as a smoke test.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from clients import BASELINE, CLIENTS, RECEIVE_ONLY  # noqa: E402

#: (case name, payload kind, payload size, column title)
RECEIVE_CASES = [
    ("text64", "text", 64, "64 B text"),
    ("text1k", "text", 1024, "1 KiB text"),
    ("bin64k", "binary", 65536, "64 KiB binary"),
]
#: Messages per receive run and echo rounds: sized so that a full run takes a
#: few minutes on a 2-core machine while the fastest client still runs for
#: more than 0.1 s per case.
FULL_COUNTS = {"text64": 500_000, "text1k": 200_000, "bin64k": 50_000, "echo": 3000}
QUICK_COUNTS = {"text64": 2000, "text1k": 1000, "bin64k": 50, "echo": 50}
ECHO_WARMUP = {"full": 200, "quick": 5}
#: Echo worker processes per client and repetition.  A process's echo median
#: falls in one of two modes on the development VM (about 68 or 82 us for
#: the same client), at random from process to process: five samples let
#: one client draw three slow ones and another none.  More processes (the
#: echo is 0.2 s of each) make the median of their medians a fair draw.
ECHO_PROCESSES = {"full": 3, "quick": 1}
#: Every receive case first runs once untimed with a fifth of its messages:
#: a fresh interpreter's first large reads grow the heap (page faults: 12,000
#: in nonstop's first 1 KiB run, none after), which a feed that runs for
#: weeks pays once.  The same for every client.
RECEIVE_WARMUP_DIVISOR = 5
ECHO_MESSAGE = '{"op":"echo","id":123456,"ts":1700000000000,"payload":"0123456789"}'

TARGET_KIB = 50.0
TARGET_CPU = 2.0


@dataclass
class Samples:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, client: str, metric: str, value: float) -> None:
        self.values.setdefault((client, metric), []).append(value)

    def median(self, client: str, metric: str) -> float | None:
        got = self.values.get((client, metric))
        return statistics.median(got) if got else None

    def spread(self, client: str, metric: str) -> tuple[float, float] | None:
        got = self.values.get((client, metric))
        return (min(got), max(got)) if got else None


# ----------------------------------------------------------------------
# processes


def child_env(root: Path = ROOT) -> dict[str, str]:
    """Workers import nonstop from this checkout (or *root*, another one: a
    ``--baseline`` client), not from whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "server.py"), "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"the load server did not start (said {line!r})")
    return proc, int(line.split()[1])


def pin_cpus(server: subprocess.Popen[bytes]) -> str:
    """Put the server on one core and this runner (so every worker) on the others.

    On a VM a wake-up across cores costs tens of microseconds more than one on
    the same core, and the scheduler picks either from run to run: the echo
    round trip of one client came out bimodal (17 or 60 µs).  Fixed cores make
    runs comparable, keep the server off the client's core, and model a
    server that is somewhere else.  Returns a line for the report.
    """
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned to cores (no sched_setaffinity here)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "not pinned to cores (only one CPU available)"
    server_cpu, client_cpus = cpus[-1], set(cpus[:-1])
    os.sched_setaffinity(server.pid, {server_cpu})
    os.sched_setaffinity(0, client_cpus)
    clients = ", ".join(map(str, sorted(client_cpus)))
    return f"load server pinned to CPU {server_cpu}, clients to CPU {clients}"


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()  # the server exits when its standard input closes
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def run_json(args: list[str], timeout: float, root: Path = ROOT) -> tuple[dict[str, Any] | None, str]:
    """Run a child process that prints one JSON line; return (result, error text)."""
    try:
        done = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=child_env(root)
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None, f"exit status {done.returncode}\n{done.stderr.strip()[-3000:]}"
    try:
        return json.loads(lines[-1]), ""
    except ValueError:
        return None, f"unreadable output {lines[-1][:200]!r}\n{done.stderr.strip()[-3000:]}"


def available(names: list[str]) -> tuple[list[str], list[str]]:
    sys.path.insert(0, str(ROOT))
    try:
        present, notes = [], []
        for name in names:
            missing = [pkg for pkg in CLIENTS[name][1] if importlib.util.find_spec(pkg) is None]
            if missing:
                notes.append(
                    f"{name} skipped: {', '.join(missing)} not installed (pip install -e '.[bench]')"
                )
            else:
                present.append(name)
        return present, notes
    finally:
        sys.path.remove(str(ROOT))


def plan_for(client: str, counts: dict[str, int], warmup: int, receive: bool = True) -> dict[str, Any]:
    cases: list[dict[str, Any]] = [
        {"name": name, "kind": kind, "size": size, "count": counts[name],
         "warmup": max(1, counts[name] // RECEIVE_WARMUP_DIVISOR)}
        for name, kind, size, _title in RECEIVE_CASES
    ] if receive else []
    if client.split(BASELINE)[0] not in RECEIVE_ONLY:
        cases.append({"name": "echo", "rounds": counts["echo"], "warmup": warmup, "message": ECHO_MESSAGE})
    return {"cases": cases}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------
# formatting


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def fmt_cell(samples: Samples, client: str, metric: str, unit: str) -> str:
    med = samples.median(client, metric)
    if med is None:
        return "n/a"
    lo, hi = samples.spread(client, metric) or (med, med)
    if unit == "rate":
        text = fmt_rate(med)
        return text if lo == hi else f"{text} ({fmt_rate(lo)}-{fmt_rate(hi)})"
    text = f"{med:.0f}" if unit == "mib" else f"{med:.1f}"
    return text if lo == hi else f"{text} ({lo:.0f}-{hi:.0f})"


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for dist in ("wsproto", "anyio", "trio", "websockets", "aiohttp", "picows", "websocket-client"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = ""
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores ({platform.machine()})",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"- nonstop from this checkout{f' at {rev}' if rev else ''}; {', '.join(versions)}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
    ]


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**yes**" if ok else "no")


def ratio_rows(samples: Samples, idle: dict[str, Any]) -> list[str]:
    rows = [
        "| target | measured | ratio | wanted | met |",
        "|---|---|---|---|---|",
    ]

    def rate_row(label: str, a: str, b: str, metric: str, wanted: float) -> None:
        x, y = samples.median(a, metric), samples.median(b, metric)
        if x is None or y is None:
            rows.append(f"| {label} | not measured | - | ≥ {wanted:g}x | - |")
            return
        r = x / y
        rows.append(
            f"| {label} | {fmt_rate(x)} vs {fmt_rate(y)} msg/s | {r:.2f}x | ≥ {wanted:g}x "
            f"| {verdict(r >= wanted)} |"
        )

    for metric, title in (("text64", "64 B"), ("text1k", "1 KiB")):
        rate_row(f"{title}: nonstop asyncio vs picows", "nonstop-asyncio", "picows", metric, 1.0)
        rate_row(f"{title}: nonstop blocking vs picows", "nonstop-blocking", "picows", metric, 1.0)
        rate_row(f"{title}: nonstop trio vs websockets", "nonstop-trio", "websockets", metric, 4.0)
    for driver in ("asyncio", "trio", "blocking"):
        rate_row(f"64 KiB: nonstop {driver} vs raw socket", f"nonstop-{driver}", "raw-socket", "bin64k", 0.8)
    # on uvloop, against the peers on uvloop
    for metric, title, wanted in (("text64", "64 B", 1.5), ("text1k", "1 KiB", 1.0)):
        rate_row(f"{title} on uvloop: nonstop asyncio vs picows", "nonstop-asyncio-uvloop",
                 "picows-uvloop", metric, wanted)
    rate_row("64 KiB on uvloop: nonstop asyncio vs raw socket", "nonstop-asyncio-uvloop", "raw-socket",
             "bin64k", 0.8)
    for driver, peer in (("asyncio", "websockets"), ("trio", "websockets"), ("blocking", "websockets"),
                         ("asyncio-uvloop", "websockets-uvloop")):
        x, y = samples.median(f"nonstop-{driver}", "echo"), samples.median(peer, "echo")
        label = f"echo median: nonstop {driver} vs {peer}"
        if x is None or y is None:
            rows.append(f"| {label} | not measured | - | ≤ 1x | - |")
        else:
            r = x / y
            rows.append(f"| {label} | {x:.1f} vs {y:.1f} µs | {r:.2f}x | ≤ 1x | {verdict(r <= 1.0)} |")
    n = idle.get("connections")
    rss, heap, cpu = idle.get("rss_per_conn"), idle.get("heap_per_conn"), idle.get("cpu_percent")
    for label, value in (("RSS", rss), ("traced heap", heap)):
        if value is None:
            rows.append(
                f"| idle memory per connection ({label}) | not measured | - | < {TARGET_KIB:g} KiB | - |"
            )
        else:
            kib = value / 1024
            rows.append(
                f"| idle memory per connection ({label}), {n} feeds | {kib:.1f} KiB | "
                f"{kib / TARGET_KIB:.2f}x target | < {TARGET_KIB:g} KiB | {verdict(kib < TARGET_KIB)} |"
            )
    if cpu is None:
        rows.append(f"| idle CPU | not measured | - | < {TARGET_CPU:g} % | - |")
    else:
        rows.append(
            f"| idle CPU, {n} feeds, {idle['window']:.3g} s window | {cpu:.2f} % of one core | "
            f"{cpu / TARGET_CPU:.2f}x target | < {TARGET_CPU:g} % | {verdict(cpu < TARGET_CPU)} |"
        )
    return rows


def report(
    samples: Samples,
    clients: list[str],
    idle: dict[str, Any],
    notes: list[str],
    args: argparse.Namespace,
    counts: dict[str, int],
    elapsed: float,
    loads: tuple[float, float],
    pinning: str,
) -> str:
    out = ["# nonstop benchmark results", ""]
    out += machine()
    out.append(f"- {pinning}")
    out.append(
        f"- 1-minute load average {loads[0]:.2f} before the run, {loads[1]:.2f} after "
        f"(this run's own processes use up to 2 cores; more means other work competed)"
    )
    out.append(
        f"- {args.repeat} interleaved repetition(s), medians shown with (min-max); "
        f"messages per run: {', '.join(f'{t} {counts[n]:,}' for n, _k, _s, t in RECEIVE_CASES)}; "
        f"echo: {counts['echo']:,} round trips in each of {args.echo_processes} process(es) per "
        f"repetition, the median of the processes' medians; total run time {elapsed:.0f} s"
    )
    out += [
        "",
        "## Receive throughput (messages/s, higher is better) and echo round trip (µs, lower is better)",
        "",
    ]
    head = ["client"] + [t for _n, _k, _s, t in RECEIVE_CASES] + ["64 KiB MiB/s", "echo median µs"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for client in clients:
        cells = [client]
        cells += [fmt_cell(samples, client, name, "rate") for name, _k, _s, _t in RECEIVE_CASES]
        cells.append(fmt_cell(samples, client, "bin64k_mib", "mib"))
        cells.append(fmt_cell(samples, client, "echo", "us"))
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "## Idle connections (nonstop anyio driver on asyncio, keep-alive on)", ""]
    if idle:
        out.append(
            f"{idle.get('connections')} feeds with `ping_interval={idle.get('ping_interval')}` s: "
            f"opened in {idle.get('open_seconds', 0):.1f} s; RSS "
            f"{idle.get('rss_per_conn', 0) / 1024:.1f} KiB per connection; traced heap "
            + (f"{idle['heap_per_conn'] / 1024:.1f} KiB" if "heap_per_conn" in idle else "n/a")
            + f" per connection; CPU {idle.get('cpu_percent', 0):.2f} % of one core over "
            f"{idle.get('window', 0):.3g} s ({idle.get('pinged')} feeds measured a ping round trip, "
            f"{idle.get('reconnects')} reconnects, {idle.get('open')} still open)"
            + (
                f"; {idle['cpu_seconds'] / idle['connections'] * 1e6:.0f} µs of CPU per feed per window."
                if idle.get("cpu_seconds") is not None and idle.get("connections")
                else "."
            )
        )
    else:
        out.append("Not run.")
    out += ["", "## Against the targets", ""]
    out += ratio_rows(samples, idle)
    if notes or samples.errors:
        out += ["", "## Notes", ""]
        out += [f"- {note}" for note in notes]
        out += [f"- error: {err.splitlines()[0]}" for err in samples.errors]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the nonstop benchmark and write a Markdown table")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, not minutes)")
    parser.add_argument(
        "--repeat", type=int, default=None, help="interleaved repetitions (default 5, quick 1)"
    )
    parser.add_argument(
        "--echo-processes", type=int, default=None,
        help="echo worker processes per client and repetition (default 3, quick 1)",
    )
    parser.add_argument("--clients", default="", help="comma-separated subset of: " + ", ".join(CLIENTS))
    parser.add_argument("--skip-idle", action="store_true", help="leave out the idle-connections test")
    parser.add_argument("--connections", type=int, default=None, help="idle feeds (default 1000, quick 20)")
    parser.add_argument("--ping-interval", type=float, default=None, help="idle keep-alive (default 20 s)")
    parser.add_argument(
        "--output", default=None, help="Markdown file (default bench/results.md; quick: none)"
    )
    parser.add_argument("--no-pin", action="store_true", help="let the OS place server and clients")
    parser.add_argument("--json", default=None, help="also write every sample to this JSON file")
    parser.add_argument(
        "--baseline", default=None, metavar="CHECKOUT",
        help="also run each nonstop client from this other checkout of nonstop (a before/after "
             f"table in one run: rows named CLIENT{BASELINE})",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per worker (default 300, quick 60)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.repeat = args.repeat or (1 if quick else 5)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.echo_processes = args.echo_processes or ECHO_PROCESSES["quick" if quick else "full"]
    if args.echo_processes < 1:
        parser.error("--echo-processes must be at least 1")
    counts = QUICK_COUNTS if quick else FULL_COUNTS
    warmup = ECHO_WARMUP["quick" if quick else "full"]
    timeout = args.timeout or (60.0 if quick else 300.0)
    wanted = [c.strip() for c in args.clients.split(",") if c.strip()] or list(CLIENTS)
    unknown = [c for c in wanted if c not in CLIENTS]
    if unknown:
        parser.error(f"unknown client(s) {', '.join(unknown)}; choose from {', '.join(CLIENTS)}")
    clients, notes = available(wanted)
    for note in notes:
        log(f"note: {note}")
    baseline = Path(args.baseline).resolve() if args.baseline else None
    if baseline is not None:
        if not (baseline / "nonstop" / "__init__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no nonstop package there (give a checkout's root)")
        clients += [c + BASELINE for c in clients if c.startswith("nonstop-") and not c.endswith("-plain")]
    output = args.output if args.output is not None else (None if quick else str(BENCH / "results.md"))

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    samples = Samples()
    idle: dict[str, Any] = {}
    server, port = start_server()
    pinning = "not pinned to cores (--no-pin)"
    try:
        if not args.no_pin:
            pinning = pin_cpus(server)
        # Each repetition: every client once with all its cases, then every
        # client that echoes once more per extra echo process (interleaved).
        rounds = [(client, True) for client in clients]
        for _ in range(args.echo_processes - 1):
            rounds += [(client, False) for client in clients if client.split(BASELINE)[0] not in RECEIVE_ONLY]
        for rep in range(1, args.repeat + 1):
            for client, receive in rounds:
                plan = json.dumps(plan_for(client, counts, warmup, receive))
                name = client.split(BASELINE)[0]
                root = baseline if baseline is not None and client.endswith(BASELINE) else ROOT
                worker = [str(BENCH / "worker.py"), "--client", name, "--port", str(port), "--plan", plan]
                result, error = run_json(worker, timeout, root)
                if result is None:
                    samples.errors.append(f"{client} (repetition {rep}): worker failed: {error}")
                    log(f"[{rep}/{args.repeat}] {client}: WORKER FAILED: {error}")
                    continue
                for case, err in result["errors"].items():
                    last_line = err.strip().splitlines()[-1]
                    samples.errors.append(f"{client} {case} (repetition {rep}): {last_line}")
                    log(f"[{rep}/{args.repeat}] {client} {case}: ERROR\n{err}")
                shown = []
                for case, value in result["results"].items():
                    if case == "echo":
                        samples.add(client, "echo", value["median_us"])
                        shown.append(f"echo {value['median_us']:.1f} µs")
                    else:
                        samples.add(client, case, value["rate"])
                        if case == "bin64k":
                            samples.add(client, "bin64k_mib", value["mib_s"])
                        shown.append(f"{case} {fmt_rate(value['rate'])}/s")
                log(f"[{rep}/{args.repeat}] {client}: {', '.join(shown)}")
        if not args.skip_idle and "nonstop-asyncio" in clients:
            n = args.connections or (20 if quick else 1000)
            ping = args.ping_interval or (0.5 if quick else 20.0)
            base = [str(BENCH / "idle.py"), "--port", str(port), "--connections", str(n)]
            base += ["--ping-interval", str(ping)]
            log(f"idle: {n} feeds, ping every {ping:g} s, CPU over {ping:g} s ...")
            result, error = run_json(base, timeout + 2 * ping)
            if result is None:
                samples.errors.append(f"idle test failed: {error}")
                log(f"idle: FAILED: {error}")
            else:
                idle.update(result, ping_interval=ping)
                result, error = run_json([*base, "--tracemalloc"], timeout)
                if result is None:
                    samples.errors.append(f"idle test (tracemalloc) failed: {error}")
                    log(f"idle (tracemalloc): FAILED: {error}")
                else:
                    idle["heap_per_conn"] = result["heap_per_conn"]
                log(f"idle: {json.dumps(idle)}")
                if idle.get("reconnects") or idle.get("open") != n:
                    samples.errors.append(
                        f"idle test: {idle.get('open')} of {n} feeds open, "
                        f"{idle.get('reconnects')} reconnects"
                    )
    finally:
        stop_server(server)

    elapsed = time.perf_counter() - started
    loads = (load_before, os.getloadavg()[0])
    text = report(samples, clients, idle, notes, args, counts, elapsed, loads, pinning)
    print(text)
    if output:
        Path(output).write_text(text)
        log(f"wrote {output}")
    if args.json:
        data = {f"{c}/{m}": v for (c, m), v in samples.values.items()}
        dump = {"samples": data, "idle": idle, "errors": samples.errors}
        Path(args.json).write_text(json.dumps(dump, indent=1))
    if samples.errors:
        log(f"{len(samples.errors)} error(s): something crashed (timings never fail this run)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
