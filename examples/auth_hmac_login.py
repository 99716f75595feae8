"""A login signed afresh on every connection (HMAC over a timestamp).

What it shows: a private feed whose first message must be a login signed
with HMAC-SHA256 over the current time, valid for a few seconds and never
twice.  ``nonstop.Login`` calls ``sign_login()`` right after each upgrade,
holds the subscription until the server's ACK, and after two connection
resets logs in again with a new signature each time.  A second feed with a
wrong secret is refused three times in a row and stops with
``nonstop.CredentialsRefused`` instead of retrying forever.  The signature
never appears in a log line.

The server is nonstop's own test server (``nonstop.testing.FeedServer``)
on 127.0.0.1, checking logins the way such feeds do; the signing code is the
client's own, as it would be against a real exchange.  Run it from the
repository's root::

    .venv/bin/python examples/auth_hmac_login.py
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections import Counter

import anyio

import nonstop
from nonstop.testing import Fault, FeedServer, HmacLogin

API_KEY = "demo-api-key"
SECRET = "demo-secret-never-logged"
#: Quick retries, so that the resets below are over in a blink.
QUICK = nonstop.Backoff(initial=0.05, cap=0.2)


def signed_login(secret: str) -> dict[str, object]:
    """``{"op":"login","key":...,"ts":...,"sig":...}``, signed now.

    ``ts`` is the full ``time.time()`` (a fraction of a second in the
    signed text): the server refuses a signature it has seen before, so
    two logins close together (a quick reconnect, two redundant legs) must
    not sign the same text, as they would over whole seconds.
    """
    ts = time.time()
    sig = hmac.new(secret.encode(), f"{ts}GET/realtime".encode(), hashlib.sha256).hexdigest()
    return {"op": "login", "key": API_KEY, "ts": ts, "sig": sig}


def sign_login() -> dict[str, object]:
    return signed_login(SECRET)


def sign_login_with_a_wrong_secret() -> dict[str, object]:
    return signed_login("not-the-secret")


def login_accepted(message: str | bytes) -> bool:
    """The server's ACK: ``{"op":"login","success":true}``."""
    return isinstance(message, str) and '"op":"login"' in message and '"success":true' in message


def subscribed(message: str | bytes) -> bool:
    """The subscription's ACK: ``{"event":"subscribed",...}``."""
    return isinstance(message, str) and '"event":"subscribed"' in message


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")
    auth = HmacLogin(API_KEY, SECRET, max_age=5.0)  # what the server checks
    async with FeedServer(interval=0.01, auth=auth) as server:
        events: list[nonstop.AppEvent] = []
        print("== the right secret: log in, subscribe, two resets")
        async with nonstop.connect(
            server.url, name="orders",
            login=nonstop.Login(message=sign_login, ack=login_accepted),
            subscribe=[nonstop.Subscription(message={"op": "subscribe", "channel": "orders"},
                                            ack=subscribed, name="orders")],
            on_event=events.append, backoff=QUICK, stable_after=0.2,
        ) as feed:
            per_connection: Counter[int] = Counter()
            with anyio.fail_after(10):
                async for record in feed.records():
                    if isinstance(record, nonstop.Gap):
                        print(f"gap of {record.seconds:.3f}s ({record.reason})")
                        continue
                    text = str(record.data)  # (this server sends text frames only)
                    if "seq" not in json.loads(text):  # the login's and subscription's ACKs
                        print(f"connection {record.connection}: {text}")
                        continue
                    per_connection[record.connection] += 1
                    if per_connection[record.connection] == 3:
                        print(f"connection {record.connection}: data {text[:40]}...")
                        if record.connection == 3:
                            break
                        server.inject(Fault.RESET)  # the server drops the connection
        logins = [e for e in events if isinstance(e, nonstop.LoggedIn)]
        print(f"[LOGGED_IN] count: {len(logins)}")
        print(f"server's verdicts: {[outcome for _, outcome in server.auth_log]}")

        print("== a wrong secret: refused three times in a row, then the feed stops")
        try:
            async with nonstop.connect(
                server.url, name="wrong-secret",
                login=nonstop.Login(message=sign_login_with_a_wrong_secret, ack=login_accepted,
                                    max_rejections=3),
                backoff=QUICK, stable_after=0.2,
            ) as feed:
                with anyio.fail_after(10):
                    async for _ in feed:
                        pass
        except nonstop.CredentialsRefused as exc:
            print(f"CredentialsRefused: {exc}")


if __name__ == "__main__":
    anyio.run(main)
