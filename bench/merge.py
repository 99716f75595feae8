"""The cost of the merge: ``python bench/merge.py [--quick] [--repeat N]``.

Theory of operation
-------------------
A redundant feed (``redundancy=2``) reads every message twice, parses it
twice and asks the merge about it twice; only the first arrival is handed
out.  This bench measures what that costs, in the same run, per driver:

* ``nonstop-<driver>``: one connection, plain (the reference);
* ``nonstop-<driver>-seq``: one connection through the merge, by sequence
  number (``sequence=``): the merge's own cost;
* ``nonstop-<driver>-2legs``: two connections merged by key (the payload);
* ``nonstop-<driver>-2legs-seq``: two connections merged by sequence number.

The load server (:mod:`server`, its own process and core) sends the
numbered 64 B stream (``/stream?...&numbered=1``): the same distinct
messages, in the same order, on every connection, as fast as the socket
takes them.  Each client runs in a fresh :mod:`worker` process, the clients
interleaved repetition by repetition; the table gives the median messages
per second (distinct messages handed to the application) and the ratio to
one plain connection of the same driver.  Timing never fails the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from clients import CLIENTS, MERGED  # noqa: E402
from run import fmt_rate, log, machine, pin_cpus, run_json, start_server, stop_server  # noqa: E402

DRIVERS = ("asyncio", "trio", "blocking")
VARIANTS = ("", "-seq", "-2legs", "-2legs-seq")
COUNTS = {"full": 300_000, "quick": 2000}
#: What two connections should keep of one's throughput at 64 B.
TARGET = 0.6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few messages, one repetition")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default: %(default)s)")
    parser.add_argument("--drivers", default=",".join(DRIVERS),
                        help="comma-separated subset of: " + ", ".join(DRIVERS))
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a worker may take")
    args = parser.parse_args(argv)
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    unknown = [d for d in drivers if d not in DRIVERS]
    if unknown:
        parser.error(f"unknown driver(s) {', '.join(unknown)}; choose from {', '.join(DRIVERS)}")
    count = COUNTS["quick" if args.quick else "full"]
    repeat = 1 if args.quick else max(1, args.repeat)
    clients = [f"nonstop-{driver}{variant}" for driver in drivers for variant in VARIANTS]
    table = {**CLIENTS, **MERGED}
    plan = {"cases": [{"name": "numbered64", "kind": "text", "size": 64, "count": count,
                       "warmup": max(1, count // 5), "numbered": True}]}
    rates: dict[str, list[float]] = {client: [] for client in clients}
    crashed = False
    server, port = start_server()
    try:
        pinned = pin_cpus(server)
        for rep in range(repeat):
            for client in clients:
                assert client in table
                log(f"[{rep + 1}/{repeat}] {client}")
                result, error = run_json(
                    [str(BENCH / "worker.py"), "--client", client, "--port", str(port),
                     "--plan", json.dumps(plan)], args.timeout)
                case = None if result is None else result.get("results", {}).get("numbered64")
                if case is None:
                    crashed = True
                    why = error or json.dumps(result.get("errors", {}) if result else {})[-2000:]
                    log(f"    {client} failed: {why}")
                    continue
                rates[client].append(case["rate"])
    finally:
        stop_server(server)

    lines = ["# The cost of the merge (64 B numbered messages)", "", *machine(), f"- {pinned}",
             f"- {count:,} distinct messages per run, {repeat} repetition(s), medians", "",
             "| client | messages/s | of one connection | target |", "|---|---|---|---|"]
    for driver in drivers:
        base = rates[f"nonstop-{driver}"]
        base_rate = statistics.median(base) if base else None
        for variant in VARIANTS:
            client = f"nonstop-{driver}{variant}"
            got = rates[client]
            rate = statistics.median(got) if got else None
            ratio = "-" if rate is None or not base_rate else f"{rate / base_rate:.2f}x"
            target = ""
            if "2legs" in variant and rate is not None and base_rate:
                target = f">= {TARGET}x: " + ("met" if rate / base_rate >= TARGET else "missed")
            lines.append(f"| {client} | {fmt_rate(rate)} | {ratio} | {target} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.output is not None:
        args.output.write_text(report, encoding="utf-8")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
