"""One benchmark worker process: one client, several cases, one JSON line out.

Theory of operation
-------------------
The runner starts a fresh worker per client and repetition, so every client
runs in a clean interpreter (no heap, loop or import state left by another
library) and a crash or hang is contained.  The worker imports the adapter
(:mod:`clients`), runs the planned cases in order -- receive runs on
``/stream`` and the echo run on ``/echo`` -- and prints one JSON object:
``{"results": {case: {...}}, "errors": {case: "traceback"}}``.  The garbage
collector is run between cases, never during one.

    python bench/worker.py --client nonstop-asyncio --port 8765 --plan '{"cases": [...]}'
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import sys
import traceback
from typing import Any

from clients import CLIENTS, MERGED


def run_case(module: Any, options: dict[str, str], port: int, case: dict[str, Any]) -> dict[str, float]:
    base = f"ws://127.0.0.1:{port}"
    if case["name"] == "echo":
        times = module.echo(f"{base}/echo", case["warmup"] + case["rounds"], case["message"], **options)
        times = sorted(times[case["warmup"] :])
        return {
            "median_us": statistics.median(times) * 1e6,
            "p90_us": times[int(len(times) * 0.9)] * 1e6,
            "rounds": float(len(times)),
        }
    warmup = case.get("warmup", 0)
    numbered = "&numbered=1" if case.get("numbered") else ""
    if warmup:  # untimed: the same stream, shorter
        url = f"{base}/stream?kind={case['kind']}&size={case['size']}&count={warmup}{numbered}"
        module.receive(url, warmup, case["size"], **options)
        gc.collect()
    url = f"{base}/stream?kind={case['kind']}&size={case['size']}&count={case['count']}{numbered}"
    seconds = module.receive(url, case["count"], case["size"], **options)
    return {
        "seconds": seconds,
        "rate": case["count"] / seconds,
        "mib_s": case["count"] * case["size"] / seconds / (1 << 20),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run benchmark cases for one client")
    parser.add_argument("--client", required=True, choices=sorted({**CLIENTS, **MERGED}))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--plan", required=True, help="JSON: {'cases': [...]} as built by run.py")
    args = parser.parse_args(argv)
    module_name, _needs, options = {**CLIENTS, **MERGED}[args.client]
    options = dict(options)
    fast = options.pop("fast", None)
    if fast is not None:  # read by nonstop.connect when its fast option is left at None
        os.environ["NONSTOP_FAST"] = fast
    if options.pop("loop", None) == "uvloop":  # asyncio.run and anyio.run make their loops from it
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    module = importlib.import_module(f"clients.{module_name}")
    plan = json.loads(args.plan)
    results: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for case in plan["cases"]:
        gc.collect()
        try:
            results[case["name"]] = run_case(module, options, args.port, case)
        except Exception:
            errors[case["name"]] = traceback.format_exc(limit=8)
    print(json.dumps({"results": results, "errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
