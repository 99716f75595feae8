"""A fresh token in the subscription message of every connection (blocking API).

What it shows: a private channel whose subscription must carry a short-lived
signed token (``"exp.nonce.signature"``, like a JWT with an expiry and an
id), good for one connection only.  The subscription's message is a
function, ``subscribe_fills()``, so nonstop builds it at each send: after
each of two connection resets the replayed subscription carries a token
minted for that connection.  The ``[SUBSCRIBED]`` lines name the
subscription (``fills``); the token is never logged.

The server is nonstop's own test server (``nonstop.testing.FeedServer``),
run in a thread for blocking code; the minting code is the client's own.
Run it from the repository's root::

    .venv/bin/python examples/auth_token_subscription.py
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter

import nonstop
import nonstop.sync
from nonstop.testing import Fault, FeedServer, TokenSubscriptions

TOKEN_SECRET = "token-signing-secret"
TOKEN_LIFETIME = 120  # seconds: a token is useless soon after, so mint one per connection
#: What each call of subscribe_fills() minted, for the summary (a real
#: application keeps no such list).
minted: list[str] = []


def mint_token() -> str:
    """``f"{exp}.{nonce}.{hex}"``, hex being HMAC-SHA256(secret, f"{exp}.{nonce}")."""
    claims = f"{int(time.time()) + TOKEN_LIFETIME}.{secrets.token_hex(8)}"
    signature = hmac.new(TOKEN_SECRET.encode(), claims.encode(), hashlib.sha256).hexdigest()
    return f"{claims}.{signature}"


def subscribe_fills() -> dict[str, object]:
    """The subscription as sent on this connection, with a token minted now."""
    minted.append(mint_token())
    return {"op": "subscribe", "channel": "fills", "token": minted[-1]}


def subscribed(message: str | bytes) -> bool:
    """The server's ACK: ``{"event":"subscribed","request":...}``."""
    return isinstance(message, str) and '"event":"subscribed"' in message


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")
    server = FeedServer(interval=0.01, require_subscription=True,
                        auth=TokenSubscriptions(TOKEN_SECRET, ttl=TOKEN_LIFETIME))
    with server.run_in_thread() as running:
        fills = nonstop.Subscription(message=subscribe_fills, ack=subscribed, name="fills")
        with nonstop.sync.connect(
            running.url, name="account", subscribe=[fills],
            backoff=nonstop.Backoff(initial=0.05, cap=0.2), stable_after=0.2,
        ) as feed:
            per_connection: Counter[int] = Counter()
            for record in feed.records():
                if isinstance(record, nonstop.Gap):
                    print(f"gap of {record.seconds:.3f}s ({record.reason})")
                    continue
                message = json.loads(record.data)
                if message.get("event") == "subscribed":
                    # The ACK repeats the request, token included: not printed.
                    print(f"connection {record.connection}: subscription acknowledged")
                    continue
                per_connection[record.connection] += 1
                if per_connection[record.connection] == 3:
                    print(f"connection {record.connection}: data seq={message['seq']}")
                    if record.connection == 3:
                        break
                    running.inject(Fault.RESET)  # the server drops the connection
        verdicts = [outcome for _, outcome in running.auth_log]

    print(f"server's verdicts: {verdicts}")
    for n, token in enumerate(minted, 1):
        exp, nonce, _signature = token.split(".")
        left = int(exp) - time.time()
        print(f"token {n}: nonce {nonce}, expires in {left:.0f}s (signature not shown)")
    print(f"tokens minted: {len(minted)}, all different: {len(set(minted)) == len(minted)}")


if __name__ == "__main__":
    main()
