"""A listen key fetched over REST before every connection attempt.

What it shows: a private feed opened on ``/ws/<listen key>``, the key
issued by an HTTP ``POST`` and good for one connection.  The feed's ``url``
is a coroutine function, ``RestClient.listen_url``, that nonstop calls
before every attempt: after each of two connection resets it fetches a new
key and dials the new URL.  The log lines name the provider, never the key
(and the script checks that).

The server is nonstop's own test server (``nonstop.testing.FeedServer``)
on 127.0.0.1, issuing keys the way such feeds do; the HTTP call is plain
``urllib`` in a worker thread, so no dependency is needed.  Run it from the
repository's root::

    .venv/bin/python examples/auth_listen_key.py
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections import Counter

import anyio
import anyio.to_thread

import nonstop
from nonstop.testing import Fault, FeedServer, ListenKeys


class RestClient:
    """The account's REST API: here, just the call that issues listen keys."""

    def __init__(self, http_base: str, ws_base: str) -> None:
        self.http_base = http_base  # e.g. "https://api.exchange.example/"
        self.ws_base = ws_base  # e.g. "wss://stream.exchange.example/"
        #: The keys fetched so far (for the summary; a real client keeps none).
        self.keys: list[str] = []

    def _post_listen_key(self) -> str:
        request = urllib.request.Request(self.http_base + "listenKey", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            return str(json.load(answer)["listenKey"])

    async def listen_url(self) -> str:
        """The URL to dial now: a fresh key from ``POST /listenKey``.

        The blocking HTTP call runs in a worker thread: the provider runs in
        the event loop, and its time counts against ``connect_timeout``.
        """
        key = await anyio.to_thread.run_sync(self._post_listen_key)
        self.keys.append(key)
        return f"{self.ws_base}ws/{key}"


class LogLines(logging.Handler):
    """Keeps every formatted log line, to check what they show."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")
    captured = LogLines()
    logging.getLogger("nonstop").addHandler(captured)
    async with FeedServer(interval=0.01, auth=ListenKeys()) as server:
        rest = RestClient(server.http_url, server.url)
        async with nonstop.connect(
            rest.listen_url, backoff=nonstop.Backoff(initial=0.05, cap=0.2), stable_after=0.2,
        ) as feed:
            per_connection: Counter[int] = Counter()
            with anyio.fail_after(10):
                async for record in feed.records():
                    if isinstance(record, nonstop.Gap):
                        print(f"gap of {record.seconds:.3f}s ({record.reason})")
                        continue
                    per_connection[record.connection] += 1
                    if per_connection[record.connection] == 3:
                        seq = json.loads(record.data)["seq"]
                        print(f"connection {record.connection}: data seq={seq}")
                        if record.connection == 3:
                            break
                        server.inject(Fault.RESET)  # the server drops the connection
        print(f"server's verdicts: {[outcome for _, outcome in server.auth_log]}")
        print(f"listen keys issued: {server.listen_keys_issued}, fetched: {len(rest.keys)}, "
              f"all different: {len(set(rest.keys)) == len(rest.keys)}")
    shown = [line for line in captured.lines if any(key in line for key in rest.keys)]
    print(f"log lines: {len(captured.lines)}, showing a key: {len(shown)}")


if __name__ == "__main__":
    anyio.run(main)
